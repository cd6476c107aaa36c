"""`pollen doctor`: does this node's container runtime really pull through its agent?

A runtime that silently bypasses the mirror is the most common failure users of P2P agents
report: the pods start, the images come from the registry, and nothing says the agent was
never asked. The doctor checks, in order, and prints what is wrong and how to fix it:

1. containerd's config (``/etc/containerd/config.toml``) gives the CRI plugin a registry
   ``config_path``, so it reads hosts.toml files at all (and not the deprecated ``mirrors``);
2. for every configured registry (``upstreams``) there is a hosts.toml under that path whose
   first host is the local agent with pull and resolve -- for registries matching
   ``webhook.registries`` the ``.distributed.`` name the webhook rewrites images to, for the
   others the registry's own name or ``_default`` (agent/node/mirrors.py says which);
3. the agent answers (``/readyz``) and shows its status;
4. a canary pull through the runtime reaches it: the doctor asks containerd (over CRI, as the
   kubelet does; or with ``ctr`` and the same hosts directory) to pull
   ``<registry>/pollen-doctor/canary:<nonce>``, a tag that exists nowhere, so the pull fails
   -- and then looks for the nonce in the agent's recent requests (``/_pollen/status``).
   Seen: the runtime's pulls go through the agent. Not seen: they bypass it.

`pollen doctor hosts --dir DIR` writes the hosts.toml files of step 2 (the DaemonSet's init
container runs it on every node).
"""

from __future__ import annotations

import json
import secrets
import shutil
import ssl
import subprocess
import tomllib
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.core.config import Config
from agent.node.mirrors import (
    DEFAULT_DIR,
    MARKER,
    Route,
    agent_url,
    cri_config_path,
    hosts_toml,
    image_host,
    legacy_mirrors,
    routes_to_agent,
    wanted_routes,
)

CONTAINERD_CONFIG = Path("/etc/containerd/config.toml")
CONTAINERD_SOCKET = Path("/run/containerd/containerd.sock")
CRI_NAMESPACE = "k8s.io"
CANARY_REPO = "pollen-doctor/canary"
CANARY_TIMEOUT = 60.0
_NO_PROXY = urllib.request.ProxyHandler({})


@dataclass
class Finding:
    ok: bool
    what: str
    fix: str = ""
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# The agent


def _open(url: str, timeout: float) -> Any:
    handlers: list[urllib.request.BaseHandler] = [_NO_PROXY]
    if url.startswith("https://"):
        # The agent's own certificate on loopback: the doctor checks reachability, not PKI.
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        handlers.append(urllib.request.HTTPSHandler(context=context))
    return urllib.request.build_opener(*handlers).open(url, timeout=timeout)


def agent_status(base: str, timeout: float = 5.0) -> dict[str, Any]:
    """The agent's /_pollen/status JSON; OSError/ValueError when it does not answer."""
    with _open(base + "/_pollen/status", timeout) as reply:
        status = json.load(reply)
    if not isinstance(status, dict):
        raise ValueError("status is not a JSON object")
    return status


def check_agent(base: str) -> Finding:
    try:
        with _open(base + "/readyz", 5.0) as reply:
            reply.read()
        status = agent_status(base)
    except urllib.error.HTTPError as exc:
        return Finding(
            False,
            f"the agent at {base} answers /readyz with {exc.code}",
            "wait for it to finish starting, or look at its log (journalctl -u pollen-agent)",
        )
    except (OSError, ValueError) as exc:
        return Finding(
            False,
            f"no agent answers at {base}: {exc}",
            "start it (systemctl start pollen-agent, or check the pollen-agent DaemonSet pod "
            "on this node); pass --address if it listens elsewhere",
        )
    return Finding(True, f"the agent at {base} is ready ({status.get('mode', '?')})")


def seen_by_agent(base: str, nonce: str) -> bool:
    status = agent_status(base)
    servers = [status.get("server")] + [v for v in status.values() if isinstance(v, dict)]
    for server in servers:
        if isinstance(server, dict):
            for line in server.get("recent_requests") or []:
                if isinstance(line, str) and nonce in line:
                    return True
    return False


# --------------------------------------------------------------------------------------------
# containerd's configuration


def check_containerd_config(path: Path) -> tuple[Finding, Path | None]:
    """Does containerd read hosts.toml files, and from where?"""
    fix_lines = (
        f"add to {path}:\n"
        '  [plugins."io.containerd.grpc.v1.cri".registry]\n'
        '    config_path = "/etc/containerd/certs.d"\n'
        "and restart containerd (systemctl restart containerd)"
    )
    try:
        config = tomllib.loads(path.read_text())
    except OSError as exc:
        return Finding(
            False, f"cannot read containerd's config {path}: {exc}", "pass --containerd-config"
        ), None
    except tomllib.TOMLDecodeError as exc:
        return Finding(False, f"containerd's config {path} is not valid TOML: {exc}"), None
    hosts_dir = cri_config_path(config)
    if hosts_dir is None:
        return Finding(
            False,
            f"{path} sets no CRI registry config_path: containerd ignores hosts.toml files "
            "and pulls straight from the registries",
            fix_lines,
        ), None
    finding = Finding(True, f"containerd reads hosts.toml files from {hosts_dir}")
    if legacy_mirrors(config):
        finding = Finding(
            False,
            f"{path} also sets the deprecated registry.mirrors table, which containerd "
            "refuses together with config_path",
            "remove the registry.mirrors table and restart containerd",
        )
    return finding, Path(hosts_dir)


def _route_finding(hosts_dir: Path, route: Route, agent_urls: list[str]) -> Finding:
    path = hosts_dir / route.name / "hosts.toml"
    fix = (
        f"run `pollen doctor hosts --dir {hosts_dir}`"
        + (" --mirror" if route.kind == "mirror" else "")
        + f", or write {path}:\n"
        + "\n".join("  " + line for line in hosts_toml(route, agent_urls[0]).splitlines())
    )
    try:
        text = path.read_text()
    except FileNotFoundError:
        return Finding(False, f"{route.name}: no {path}", fix)
    except OSError as exc:
        return Finding(False, f"{route.name}: cannot read {path}: {exc}", fix)
    problem = routes_to_agent(text, agent_urls)
    if problem is not None:
        return Finding(False, f"{route.name}: {path}: {problem}", fix)
    return Finding(True, f"{route.name}: {path} sends pulls to the agent")


def check_routes(
    config: Config, hosts_dir: Path, agent_urls: list[str]
) -> tuple[list[Finding], list[str]]:
    """Findings for every configured registry, and the image host names to canary."""
    findings: list[Finding] = []
    canaries: list[str] = []
    routes = wanted_routes(
        config.upstreams, config.webhook_registries, config.webhook_endpoint_port, mirror=True
    )
    default_ok = (hosts_dir / DEFAULT_DIR / "hosts.toml").is_file() and (
        routes_to_agent((hosts_dir / DEFAULT_DIR / "hosts.toml").read_text(), agent_urls) is None
    )
    for up in config.upstreams:
        mine = [r for r in routes if r.upstream == str(up)]
        for route in mine:
            result = _route_finding(hosts_dir, route, agent_urls)
            if route.kind == "distributed":
                findings.append(result)
                canaries.append(route.name)
            elif result.ok or not any(r.kind == "distributed" for r in mine):
                if not result.ok and default_ok:
                    result = Finding(True, f"{route.name}: routed by {DEFAULT_DIR}/hosts.toml")
                findings.append(result)
                canaries.append(image_host(up))
    return findings, canaries


# --------------------------------------------------------------------------------------------
# The canary pull


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | 0x80 if n else b)
        if not n:
            return bytes(out)


def _field(number: int, data: bytes) -> bytes:
    return _varint((number << 3) | 2) + _varint(len(data)) + data


def cri_pull(socket: Path, image: str, timeout: float) -> str:
    """CRI ImageService.PullImage (as the kubelet calls it); '' on success, else the error.

    PullImageRequest { ImageSpec image = 1 { string image = 1; } }, the same in runtime.v1
    and v1alpha2, encoded by hand: grpcio carries raw bytes, no generated stubs needed.
    """
    import grpc  # optional dependency (pollen[doctor]); callers fall back to ctr without it

    request = _field(1, _field(1, image.encode()))
    with grpc.insecure_channel(f"unix:{socket}", options=[("grpc.enable_http_proxy", 0)]) as ch:
        for api in ("runtime.v1", "runtime.v1alpha2"):
            rpc = ch.unary_unary(f"/{api}.ImageService/PullImage")
            try:
                rpc(request, timeout=timeout)
                return ""
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                    continue
                return f"{exc.code().name}: {exc.details()}"
    return "the CRI image service is not implemented on this socket"


def ctr_pull(socket: Path, hosts_dir: Path, image: str, timeout: float) -> str:
    """`ctr images pull --hosts-dir` (containerd's resolver in ctr's process, with the same
    hosts.toml files); '' on success, else the error."""
    ctr = shutil.which("ctr")
    if ctr is None:
        return "ctr is not installed"
    argv = [ctr, "--address", str(socket), "--namespace", CRI_NAMESPACE, "images", "pull"]
    argv += ["--hosts-dir", str(hosts_dir), image]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return f"ctr did not finish within {timeout:g}s"
    if done.returncode == 0:
        return ""
    return (done.stderr.strip().splitlines() or ["ctr failed"])[-1]


def choose_via(via: str) -> str:
    if via != "auto":
        return via
    try:
        import grpc  # noqa: F401
    except ImportError:
        return "ctr"
    return "cri"


def canary(
    name: str, *, base: str, via: str, socket: Path, hosts_dir: Path | None, timeout: float
) -> Finding:
    nonce = f"doctor-{secrets.token_hex(6)}"
    image = f"{name}/{CANARY_REPO}:{nonce}"
    if via == "cri":
        try:
            error = cri_pull(socket, image, timeout)
        except ImportError:
            return Finding(
                False,
                f"{name}: no canary pull: the CRI client needs grpcio",
                "pip install 'pollen[doctor]', or pass --via ctr",
            )
    else:
        error = ctr_pull(socket, hosts_dir or Path("/etc/containerd/certs.d"), image, timeout)
    how = "CRI PullImage" if via == "cri" else "ctr images pull"
    try:
        seen = seen_by_agent(base, nonce)
    except (OSError, ValueError) as exc:
        return Finding(False, f"{name}: cannot read the agent's status after the canary: {exc}")
    if seen:
        return Finding(True, f"{name}: a canary pull through containerd ({how}) reached the agent")
    return Finding(
        False,
        f"{name}: a canary pull through containerd ({how}) of {image} never reached the agent: "
        f"the runtime bypasses it (containerd said: {error or 'pulled'})",
        "containerd reads config_path only at start: restart it after changing its config; "
        "check that the hosts.toml directory is the one in containerd's config and that its "
        "name matches the image's registry host exactly (with the port, if any)",
    )


# --------------------------------------------------------------------------------------------
# Entry points


@dataclass(kw_only=True)
class DoctorOptions:
    address: str | None = None
    containerd_config: Path = CONTAINERD_CONFIG
    hosts_dir: Path | None = None
    socket: Path = CONTAINERD_SOCKET
    via: str = "auto"
    canary: bool = True
    timeout: float = CANARY_TIMEOUT


def agent_base(config: Config, address: str | None) -> str:
    if address:
        return (address if "://" in address else f"http://{address}").rstrip("/")
    return agent_url(config.proxy_port, tls=bool(config.tls_cert))


def diagnose(config: Config, options: DoctorOptions) -> list[Finding]:
    base = agent_base(config, options.address)
    agent_urls = [base, agent_url(config.proxy_port, tls=bool(config.tls_cert))]
    findings: list[Finding] = []
    config_finding, hosts_dir = check_containerd_config(options.containerd_config)
    if options.hosts_dir is not None:
        hosts_dir = options.hosts_dir
        config_finding.notes.append(f"checking hosts.toml files in {hosts_dir} (--hosts-dir)")
    findings.append(config_finding)
    canaries: list[str] = []
    if hosts_dir is not None:
        route_findings, canaries = check_routes(config, hosts_dir, agent_urls)
        findings += route_findings
    else:
        canaries = [image_host(u) for u in config.upstreams]
    agent = check_agent(base)
    findings.append(agent)
    if options.canary and agent.ok:
        via = choose_via(options.via)
        for name in dict.fromkeys(canaries):
            findings.append(
                canary(
                    name,
                    base=base,
                    via=via,
                    socket=options.socket,
                    hosts_dir=hosts_dir,
                    timeout=options.timeout,
                )
            )
    return findings


def report(findings: list[Finding]) -> str:
    lines = []
    for f in findings:
        lines.append(f"[{'ok' if f.ok else 'FAIL'}] {f.what}")
        lines += [f"       {note}" for note in f.notes]
        if not f.ok and f.fix:
            first, *rest = f.fix.splitlines()
            lines.append(f"       fix: {first}")
            lines += [f"            {line}" for line in rest]
    bad = sum(not f.ok for f in findings)
    lines.append(
        "all good: this node pulls through its agent"
        if not bad
        else f"{bad} problem(s): pulls on this node may bypass the agent"
    )
    return "\n".join(lines)


def write_hosts(
    config: Config, hosts_dir: Path, *, mirror: bool, default: bool, force: bool
) -> list[str]:
    """Write the routes' hosts.toml files; lines saying what was done. A file that Pollen did
    not write is kept unless `force`."""
    url = agent_url(config.proxy_port, tls=bool(config.tls_cert))
    done = []
    routes = wanted_routes(
        config.upstreams,
        config.webhook_registries,
        config.webhook_endpoint_port,
        mirror=mirror,
        default=default,
    )
    for route in routes:
        path = hosts_dir / route.name / "hosts.toml"
        text = hosts_toml(route, url)
        if path.exists() and not force:
            current = path.read_text(errors="replace")
            if MARKER not in current:
                done.append(f"kept {path}: not written by pollen (--force replaces it)")
                continue
            if current == text:
                done.append(f"unchanged {path}")
                continue
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(".hosts.toml.pollen-tmp")
        tmp.write_text(text)
        tmp.replace(path)
        done.append(f"wrote {path} ({route.kind}, for {route.upstream})")
    if not routes:
        done.append(
            "nothing to write: no upstream matches webhook.registries (use --mirror to route "
            "the upstreams' own names)"
        )
    return done
