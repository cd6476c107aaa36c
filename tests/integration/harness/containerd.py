"""A private containerd 1.6 daemon (with its CRI plugin) under a test's tmp dir.

Everything that could touch the host's containerd is moved: root, state, grpc and ttrpc
sockets, the `opt` plugin path, CNI dirs (empty: the CRI image service works without
CNI; the daemon logs "failed to load cni during init" and carries on), and the CRI
registry `config_path` (our own certs.d with hosts.toml files). The metadata plugin's
`content_sharing_policy = "isolated"` keeps a blob fetched in one namespace from making
another namespace's pull skip its request.

Sockets live in a short directory under /tmp because unix socket paths are limited to
108 bytes and pytest's tmp paths can be longer.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from .cri import CriClient, CriImage
from .procs import HarnessError, ManagedProcess, run, wait_until

CONTAINERD_BIN = "containerd"
CTR_BIN = "ctr"
CRI_NAMESPACE = "k8s.io"  # where the CRI plugin keeps images and content

Snapshotter = Literal["auto", "overlayfs", "native"]


def _toml_str(s: str | Path) -> str:
    return '"' + str(s).replace("\\", "\\\\").replace('"', '\\"') + '"'


def hosts_toml(
    server_url: str | None = None,
    mirror_url: str | None = None,
    *,
    ca: Path | None = None,
    capabilities: Sequence[str] = ("pull", "resolve"),
    skip_verify: bool = False,
) -> str:
    """The text of one hosts.toml (containerd's `config_path` / `ctr --hosts-dir` format).

    `server_url` is where containerd goes when the mirror fails (keep it on loopback in
    tests); `mirror_url` gets `capabilities`. `ca` is written for each https host.

    containerd 1.6 rejects a file with no `[host."..."]` table ("failed to decode
    hosts.toml: invalid `host` tree", logged, then it silently uses defaults), so with
    no mirror the server itself is written as the one host table.
    """
    if not (server_url or mirror_url):
        raise ValueError("need a server_url or a mirror_url")
    lines: list[str] = []
    host_url = mirror_url or server_url
    assert host_url is not None
    if server_url:
        lines.append(f"server = {_toml_str(server_url)}")
        if mirror_url and ca and server_url.startswith("https://"):
            lines.append(f"ca = {_toml_str(ca)}")
        if mirror_url and skip_verify:
            lines.append("skip_verify = true")
        lines.append("")
    lines.append(f"[host.{_toml_str(host_url)}]")
    caps = ", ".join(_toml_str(c) for c in capabilities)
    lines.append(f"  capabilities = [{caps}]")
    if ca and host_url.startswith("https://"):
        lines.append(f"  ca = {_toml_str(ca)}")
    if skip_verify:
        lines.append("  skip_verify = true")
    lines.append("")
    return "\n".join(lines)


HOSTS_DECODE_ERROR = "failed to decode hosts.toml"


def check_hosts_decode(output: str) -> None:
    """Raise if containerd said it could not parse a hosts.toml: it would otherwise
    carry on with default hosts, and a test would pass for the wrong reason."""
    if HOSTS_DECODE_ERROR in output:
        line = next(ln for ln in output.splitlines() if HOSTS_DECODE_ERROR in ln)
        raise HarnessError(f"containerd ignored a hosts.toml: {line}")


def write_hosts_toml(
    hosts_dir: Path,
    registry_host: str,
    server_url: str | None = None,
    mirror_url: str | None = None,
    *,
    ca: Path | None = None,
    capabilities: Sequence[str] = ("pull", "resolve"),
    skip_verify: bool = False,
) -> Path:
    """Write `<hosts_dir>/<registry_host>/hosts.toml`; returns its path.

    `registry_host` is the host[:port] in the image reference (`_default` for all).
    """
    d = Path(hosts_dir) / registry_host
    d.mkdir(parents=True, exist_ok=True)
    path = d / "hosts.toml"
    path.write_text(
        hosts_toml(
            server_url, mirror_url, ca=ca, capabilities=capabilities, skip_verify=skip_verify
        )
    )
    return path


class Containerd:
    """Private containerd; a context manager. `ctr()` and `cri_*()` talk to it."""

    def __init__(
        self,
        workdir: Path,
        *,
        snapshotter: Snapshotter = "auto",
        namespace: str = "pollen-test",
        log_level: str = "info",
        binary: str = CONTAINERD_BIN,
        ctr_binary: str = CTR_BIN,
    ) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.requested_snapshotter = snapshotter
        self.snapshotter = "overlayfs" if snapshotter == "auto" else snapshotter
        self.namespace = namespace
        self.log_level = log_level
        self.binary = binary
        self.ctr_binary = ctr_binary
        self.root = self.workdir / "root"
        self.state = self.workdir / "state"
        self.certs_dir = self.workdir / "certs.d"
        self.certs_dir.mkdir(exist_ok=True)
        self._sock_dir: Path | None = None
        self.proc: ManagedProcess | None = None
        self._cri: CriClient | None = None
        self._starts = 0

    @property
    def socket(self) -> Path:
        assert self._sock_dir is not None, "not started"
        return self._sock_dir / "c.sock"

    # -- lifecycle -------------------------------------------------------------------

    def _config_text(self) -> str:
        cri = '[plugins."io.containerd.grpc.v1.cri"]'
        return "\n".join(
            [
                "version = 2",
                f"root = {_toml_str(self.root)}",
                f"state = {_toml_str(self.state)}",
                "disabled_plugins = []",
                "[grpc]",
                f"  address = {_toml_str(self.socket)}",
                "[ttrpc]",
                f"  address = {_toml_str(str(self.socket) + '.ttrpc')}",
                "[debug]",
                f"  level = {_toml_str(self.log_level)}",
                "[plugins]",
                f"  {cri}",
                "    disable_tcp_service = true",
                '    stream_server_address = "127.0.0.1"',
                '    stream_server_port = "0"',
                "    enable_selinux = false",
                '    [plugins."io.containerd.grpc.v1.cri".containerd]',
                f"      snapshotter = {_toml_str(self.snapshotter)}",
                '    [plugins."io.containerd.grpc.v1.cri".cni]',
                f"      bin_dir = {_toml_str(self.workdir / 'cni' / 'bin')}",
                f"      conf_dir = {_toml_str(self.workdir / 'cni' / 'conf')}",
                '    [plugins."io.containerd.grpc.v1.cri".registry]',
                f"      config_path = {_toml_str(self.certs_dir)}",
                '  [plugins."io.containerd.internal.v1.opt"]',
                f"    path = {_toml_str(self.workdir / 'opt')}",
                '  [plugins."io.containerd.metadata.v1.bolt"]',
                '    content_sharing_policy = "isolated"',
                "",
            ]
        )

    def start(self, *, timeout: float = 30.0) -> Containerd:
        """Start the daemon and wait until `ctr version` answers.

        With snapshotter "auto", fall back to "native" if the overlayfs plugin did not
        load (e.g. overlay on overlay).
        """
        self._start_once(timeout)
        if self.requested_snapshotter == "auto" and not self._plugin_ok(
            "io.containerd.snapshotter.v1", "overlayfs"
        ):
            self.stop()
            self.snapshotter = "native"
            self._start_once(timeout)
        return self

    def _start_once(self, timeout: float) -> None:
        self._starts += 1
        self._sock_dir = Path(tempfile.mkdtemp(prefix="pollen-ctd-", dir="/tmp"))
        for d in (
            self.root,
            self.state,
            self.workdir / "cni" / "bin",
            self.workdir / "cni" / "conf",
            self.workdir / "opt",
        ):
            d.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "config.toml"
        config.write_text(self._config_text())
        self.proc = ManagedProcess(
            [self.binary, "--config", str(config)],
            name=f"containerd-{self._starts}",
            log_dir=self.workdir / "logs",
        )
        self.proc.start()

        def ready() -> bool:
            assert self.proc is not None
            self.proc.check_alive()
            if not self.socket.exists():
                return False
            cp = self.ctr("version", check=False, timeout=5)
            return cp.returncode == 0

        wait_until(
            ready,
            timeout=timeout,
            what="containerd to answer `ctr version`",
            interval=0.1,
            on_timeout=self.proc.describe_failure,
        )

    def _plugin_ok(self, ptype: str, pid: str) -> bool:
        for line in self.ctr("plugins", "ls").stdout.splitlines():
            parts = line.split()
            if len(parts) >= 4 and parts[0] == ptype and parts[1] == pid:
                return parts[-1] == "ok"
        return False

    def stop(self) -> None:
        if self._cri is not None:
            self._cri.close()
            self._cri = None
        if self.proc is not None:
            self.proc.stop()
        self._unmount_leftovers()
        if self._sock_dir is not None:
            shutil.rmtree(self._sock_dir, ignore_errors=True)

    def _unmount_leftovers(self) -> None:
        """Unmount anything still mounted under our root/state (a killed unpack can leave
        a temp mount); only our own paths, deepest first."""
        prefixes = (str(self.root) + "/", str(self.state) + "/")
        try:
            mounts = Path("/proc/self/mounts").read_text().splitlines()
        except OSError:
            return
        targets = [m.split()[1] for m in mounts if len(m.split()) > 1]
        ours = sorted((t for t in targets if t.startswith(prefixes)), key=len, reverse=True)
        for t in ours:
            subprocess.run(["umount", "-l", t], capture_output=True, timeout=10, check=False)

    def __enter__(self) -> Containerd:
        return self.start()

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is not None and self.proc is not None:
            print(f"\n=== containerd log tail ===\n{self.proc.log_tail()}", file=sys.stderr)
        self.stop()

    # -- ctr -------------------------------------------------------------------------

    def ctr(
        self, *args: str, namespace: str | None = None, check: bool = True, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """`ctr --address <sock> --namespace <ns> <args...>`, bounded by `timeout`."""
        argv = [
            self.ctr_binary,
            "--address",
            str(self.socket),
            "--namespace",
            namespace or self.namespace,
            *args,
        ]
        return run(
            argv, timeout=timeout, check=check, env={"CONTAINERD_SNAPSHOTTER": self.snapshotter}
        )

    def write_hosts_toml(
        self,
        registry_host: str,
        server_url: str | None = None,
        mirror_url: str | None = None,
        *,
        ca: Path | None = None,
        capabilities: Sequence[str] = ("pull", "resolve"),
        skip_verify: bool = False,
    ) -> Path:
        """hosts.toml in this daemon's certs.d (read by the CRI plugin and `pull()`)."""
        return write_hosts_toml(
            self.certs_dir,
            registry_host,
            server_url,
            mirror_url,
            ca=ca,
            capabilities=capabilities,
            skip_verify=skip_verify,
        )

    def _registry_flags(self, user: tuple[str, str] | None, hosts_dir: Path | None) -> list[str]:
        flags = ["--hosts-dir", str(hosts_dir or self.certs_dir)]
        if user:
            flags += ["--user", f"{user[0]}:{user[1]}"]
        return flags

    def pull(
        self,
        ref: str,
        *,
        user: tuple[str, str] | None = None,
        hosts_dir: Path | None = None,
        namespace: str | None = None,
        check: bool = True,
        timeout: float = 120.0,
    ) -> subprocess.CompletedProcess[str]:
        """`ctr images pull --hosts-dir <certs.d>` (fetch in ctr's process, then unpack)."""
        cp = self.ctr(
            "images",
            "pull",
            *self._registry_flags(user, hosts_dir),
            ref,
            namespace=namespace,
            check=check,
            timeout=timeout,
        )
        check_hosts_decode(cp.stderr)
        return cp

    def fetch(
        self,
        ref: str,
        *,
        user: tuple[str, str] | None = None,
        hosts_dir: Path | None = None,
        namespace: str | None = None,
        check: bool = True,
        timeout: float = 120.0,
    ) -> subprocess.CompletedProcess[str]:
        """`ctr content fetch --hosts-dir <certs.d>` (no unpack)."""
        cp = self.ctr(
            "content",
            "fetch",
            *self._registry_flags(user, hosts_dir),
            ref,
            namespace=namespace,
            check=check,
            timeout=timeout,
        )
        check_hosts_decode(cp.stderr)
        return cp

    def content_digests(self, namespace: str | None = None) -> set[str]:
        """Digests of the blobs containerd holds in `namespace` (`ctr content ls -q`)."""
        out = self.ctr("content", "ls", "-q", namespace=namespace).stdout
        return {line.strip() for line in out.splitlines() if line.strip()}

    def image_names(self, namespace: str | None = None) -> set[str]:
        out = self.ctr("images", "ls", "-q", namespace=namespace).stdout
        return {line.strip() for line in out.splitlines() if line.strip()}

    # -- CRI -------------------------------------------------------------------------

    def cri(self, *, timeout: float = 20.0) -> CriClient:
        """A CRI client on the daemon socket, once the CRI service answers Version."""
        if self._cri is None:
            client = CriClient(self.socket)

            def ready() -> bool:
                assert self.proc is not None
                self.proc.check_alive()
                try:
                    client.version(timeout=2.0)
                    return True
                except Exception:  # grpc errors while the CRI plugin initialises
                    return False

            try:
                wait_until(
                    ready,
                    timeout=timeout,
                    what="the CRI service to answer Version",
                    interval=0.1,
                    on_timeout=self.proc.describe_failure if self.proc else None,
                )
            except HarnessError:
                client.close()
                raise
            self._cri = client
        return self._cri

    def cri_pull(
        self, image_ref: str, auth: tuple[str, str] | None = None, *, timeout: float = 120.0
    ) -> str:
        """CRI ImageService.PullImage (as the kubelet does); returns the image ref (id).

        Resolution uses this daemon's certs.d, so write a hosts.toml first for plain HTTP
        or private-CA registries. Content lands in namespace "k8s.io".
        """
        assert self.proc is not None
        log_before = len(self.proc.log_text())
        try:
            return self.cri().pull_image(image_ref, auth, timeout=timeout)
        finally:
            check_hosts_decode(self.proc.log_text()[log_before:])

    def cri_remove_image(self, image_ref: str) -> None:
        self.cri().remove_image(image_ref)

    def cri_list_images(self) -> list[CriImage]:
        return self.cri().list_images()
