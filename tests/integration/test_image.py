"""The container image, for real: `make image` builds Containerfile with buildah into an OCI
archive; a private containerd imports it (`ctr images import`) and runs it with runc
(`ctr run --net-host`), as a node would.

- `pollen --version`, under the name the manifests run (`pollen:0.1.0`, which containerd knows as
  docker.io/library/pollen:0.1.0), as the image's non-root user.
- `pollen agent` in the container, as that user with no capabilities, a read-only root
  filesystem and containerd's default seccomp profile, serving skopeo pulls from a loopback
  docker-registry through its cache (a host directory bind-mounted as the cache hostPath is),
  every blob checked against its digest. `pollen status` in a second container says which
  cache I/O engine runs; the same again under that profile without io_uring (as newer
  runtimes ship it) must fall back to Linux AIO with a note and no error.
- The agent over a cache it may not write (the kubelet's root-owned hostPath) still serves,
  without caching, and says why: what running the agent as non-root costs. As uid 0 with no
  capability at all (the DaemonSet's agent), it caches there.
- `pollen webhook` in the container, as the non-root user, over HTTPS, against the Kubernetes
  API stand-in (harness/kubeapi.py; there is no API server on these machines).

`make image` runs once per session when build/ lacks a current archive (make compares it with
the Containerfile and the sources); a cold build downloads Debian packages and Python wheels
from the package repositories, as `make test` installs its packages.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import shutil
import ssl
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from harness import (
    Containerd,
    Image,
    ManagedProcess,
    Registry,
    dir_manifest_digest,
    free_port,
    make_ca_and_cert,
    pull_dir,
    push_image,
    skopeo_copy_to_registry,
    wait_http_ok,
    wait_until,
)
from harness.containerd import CONTAINERD_BIN, CTR_BIN
from harness.containers import (
    Container,
    Mount,
    allows,
    run_container,
    seccomp_profile_of,
    without_syscalls,
)
from harness.kubeapi import KubeStandIn

from agent import __version__

REPO = Path(__file__).resolve().parents[2]
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
ARCHIVE = REPO / "build" / f"pollen-{VERSION}.oci.tar"
#: The image's user (Containerfile USER), the one the manifests name as runAsUser.
USER = 65532
MiB = 1 << 20
BUILD_TIMEOUT = 1500.0
IO_URING = ("io_uring_setup", "io_uring_enter", "io_uring_register")


def manifest_image() -> str:
    """The image deploy/kubernetes runs, as containerd names it (docker.io/library/...)."""
    kustomization = yaml.safe_load(
        (REPO / "deploy" / "kubernetes" / "kustomization.yaml").read_text()
    )
    (entry,) = [i for i in kustomization["images"] if i["name"] == "pollen"]
    name = f"{entry['newName']}:{entry['newTag']}"
    return name if "/" in name else f"docker.io/library/{name}"


def require_tools(*names: str) -> None:
    missing = [n for n in names if shutil.which(n) is None]
    if missing:
        pytest.skip(f"missing {', '.join(missing)} (`make system-deps` installs them)")
    if os.geteuid() != 0:
        pytest.skip("buildah and a private containerd need root")


@pytest.fixture(scope="module")
def image_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`make image`: a no-op when the archive is newer than everything it is built from."""
    require_tools("buildah", "mmdebstrap", "make")
    log = tmp_path_factory.mktemp("image-build") / "make-image.log"
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    started = time.monotonic()
    with log.open("wb") as out:
        done = subprocess.run(
            ["make", "-C", str(REPO), "image"],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            timeout=BUILD_TIMEOUT,
        )
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
    assert done.returncode == 0, f"make image failed:\n{tail}"
    print(f"\nmake image: {time.monotonic() - started:.1f} s, {ARCHIVE.stat().st_size} bytes")
    return ARCHIVE


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, image_archive: Path) -> Iterator[Containerd]:
    """A private containerd holding the image, imported from the archive."""
    require_tools(CONTAINERD_BIN, CTR_BIN)
    with Containerd(tmp_path_factory.mktemp("node")) as daemon:
        daemon.ctr("images", "import", str(image_archive), timeout=300)
        yield daemon


@pytest.fixture(scope="module")
def default_seccomp(node: Containerd, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """containerd's default seccomp profile, as it applied it to a container."""
    logs = tmp_path_factory.mktemp("seccomp-probe")
    # A shell as PID 1 exits on the SIGTERM that stops it (a bare sleep would ignore it).
    probe = ["sh", "-c", "trap 'exit 0' TERM; sleep 60 & wait"]
    with Container(node, manifest_image(), "seccomp-probe", probe, log_dir=logs):
        return seccomp_profile_of(node, "seccomp-probe")


def owned_dir(path: Path, uid: int, mode: int = 0o700) -> Path:
    path.mkdir(parents=True)
    os.chown(path, uid, uid)
    path.chmod(mode)
    return path


def archive_config(archive: Path) -> dict[str, Any]:
    """The image configuration inside an OCI archive (index → manifest → config)."""
    import tarfile

    with tarfile.open(archive) as tar:

        def blob(digest: str) -> dict[str, Any]:
            member = tar.extractfile(f"blobs/sha256/{digest.split(':', 1)[1]}")
            assert member is not None
            return json.load(member)

        index_file = tar.extractfile("index.json")
        assert index_file is not None
        (entry,) = json.load(index_file)["manifests"]
        manifest = blob(entry["digest"])
        return {
            "digest": entry["digest"],
            "ref": entry["annotations"]["org.opencontainers.image.ref.name"],
            "config": blob(manifest["config"]["digest"])["config"],
            "layers": manifest["layers"],
        }


def no_capabilities_and_non_root(container: Container) -> None:
    status = container.process_status()
    assert status["Uid"].split() == [str(USER)] * 4
    assert status["Gid"].split() == [str(USER)] * 4
    assert int(status["CapEff"], 16) == 0 and int(status["CapPrm"], 16) == 0
    assert status["NoNewPrivs"] == "1"


# --------------------------------------------------------------------------------------------


def test_the_archive_holds_the_image_the_manifests_run(
    image_archive: Path, node: Containerd, registry: Registry, tmp_path: Path
) -> None:
    inside = archive_config(image_archive)
    assert inside["ref"] == manifest_image()
    assert manifest_image() in node.image_names()
    assert inside["config"]["User"] == f"{USER}:{USER}"
    assert inside["config"]["Entrypoint"] == ["pollen"]
    # The target of issue 14: at most 150 MiB to pull (the archive's layers are gzip'ed).
    compressed = sum(layer["size"] for layer in inside["layers"])
    assert compressed <= 150 * MiB, f"{compressed / MiB:.1f} MiB"
    print(f"\nimage {manifest_image()}: {compressed / MiB:.1f} MiB compressed")
    # README's way to a registry: skopeo copies the archive as it is (same manifest digest).
    pushed = f"{registry.host}/pollen:{VERSION}"
    skopeo_copy_to_registry(
        f"oci-archive:{image_archive}", pushed, workdir=tmp_path / "skopeo", timeout=300
    )
    pulled = pull_dir(pushed, tmp_path / "pulled", timeout=300)
    assert {layer["digest"] for layer in inside["layers"]} <= pulled
    assert dir_manifest_digest(tmp_path / "pulled") == inside["digest"]


def test_pollen_version_in_the_container(node: Containerd, tmp_path: Path) -> None:
    status, output = run_container(
        node, manifest_image(), "version", ["pollen", "--version"], log_dir=tmp_path
    )
    assert (status, output.strip()) == (0, f"pollen {__version__}")
    # The native modules load: Pollen's own (the I/O engines are built on it), and those of its
    # dependencies, stripped in the build.
    check = (
        "import agent.cache._pollen_io as m, _cffi_backend, xxhash, yaml, grpc;"
        "from cryptography.hazmat.primitives.asymmetric import ec;"
        "ec.generate_private_key(ec.SECP256R1());"
        "assert yaml.__with_libyaml__;"
        "print(m.__file__)"
    )
    status, output = run_container(
        node, manifest_image(), "native", ["python3", "-c", check], log_dir=tmp_path
    )
    assert status == 0, output
    assert output.strip().startswith("/opt/pollen-app/agent/cache/_pollen_io")


def agent_container(
    node: Containerd,
    registry: Registry,
    cache: Path,
    *,
    port: int,
    log_dir: Path,
    seccomp: bool | Path = True,
) -> Container:
    return Container(
        node,
        manifest_image(),
        f"agent-{port}",
        ["pollen", "agent"],
        log_dir=log_dir,
        env={
            "POLLEN_PROXY_PORT": str(port),
            "POLLEN_LISTEN_ADDRESS": "127.0.0.1",
            "POLLEN_NODE_IP": "127.0.0.1",
            "POLLEN_UPSTREAMS": f"http://{registry.host}",
            "POLLEN_CACHE_AIO_ENABLE": "1",
            "POLLEN_CACHE_CHUNK_SIZE": "1MiB",
        },
        mounts=[Mount(cache, "/var/cache/pollen")],
        seccomp=seccomp,
    )


def status_in_a_container(node: Containerd, port: int, log_dir: Path) -> dict[str, Any]:
    """`pollen status --json` from the image, on the host network like the agent."""
    status, output = run_container(
        node,
        manifest_image(),
        f"status-{port}",
        ["pollen", "status", "--json", "--address", f"127.0.0.1:{port}"],
        log_dir=log_dir,
    )
    assert status == 0, output
    return json.loads(output)


def io_uring_usable_here() -> bool:
    """The kernel may turn io_uring off for everyone (2) or the unprivileged (1)."""
    knob = Path("/proc/sys/kernel/io_uring_disabled")
    return not knob.exists() or knob.read_text().strip() == "0"


@pytest.mark.parametrize("profile", ["containerd-default", "default-without-io_uring"])
def test_agent_in_the_container_serves_pulls_under_seccomp(
    node: Containerd,
    default_seccomp: dict[str, Any],
    registry: Registry,
    make_image: Callable[..., Image],
    tmp_path: Path,
    profile: str,
) -> None:
    image = make_image(layers=(3 * MiB + 123, 777), seed=14)
    push_image(image, registry, "team/app", "v1")
    seccomp: bool | Path = True
    applied = default_seccomp
    if profile == "default-without-io_uring":
        applied = without_syscalls(default_seccomp, IO_URING)
        seccomp = tmp_path / "seccomp.json"
        seccomp.write_text(json.dumps(applied))
    expected = "io_uring" if allows(applied, "io_uring_setup") and io_uring_usable_here() else "aio"

    cache = owned_dir(tmp_path / "cache", USER)
    port = free_port()
    with agent_container(node, registry, cache, port=port, log_dir=tmp_path, seccomp=seccomp) as c:
        wait_http_ok(f"http://127.0.0.1:{port}/readyz", proc=c.proc, timeout=60)
        no_capabilities_and_non_root(c)
        assert c.process_status()["Seccomp"] == "2"
        for attempt in ("cold", "warm"):
            pulled = pull_dir(f"127.0.0.1:{port}/team/app:v1", tmp_path / attempt)
            assert set(image.layer_digests) <= pulled
        for digest in image.layer_digests:
            assert registry.blob_get_count(digest) == 1, "the warm pull must come from the cache"
        engine = status_in_a_container(node, port, tmp_path)["io_engine"]
        print(f"\nseccomp {profile}: cache I/O engine {engine['name']}, notes {engine['notes']}")
        assert engine["name"] == expected
        assert engine["direct"] is True
        assert engine["writes"] > 0 and engine["reads"] > 0 and engine["errors"] == 0
        if expected == "aio":
            (note,) = engine["notes"]
            assert note.startswith("io_uring unavailable") and note.endswith("using aio"), note
        else:
            assert engine["notes"] == []
        assert list((cache / "blobs" / "sha256").iterdir()), "the cache is the mounted directory"
    output = c.output()
    assert "Traceback" not in output and " ERROR " not in output, output[-3000:]
    assert "agent stopped" in output


def test_agent_as_non_root_over_a_root_owned_cache_serves_without_caching(
    node: Containerd,
    registry: Registry,
    make_image: Callable[..., Image],
    tmp_path: Path,
) -> None:
    """What the kubelet's DirectoryOrCreate hostPath (root:root 0755) means to an agent running
    as the image's user: it serves, but every pull goes to the registry (and the log says why),
    which is why the DaemonSet runs the agent as uid 0 (still without capabilities)."""
    image = make_image(layers=(1 * MiB + 5,), seed=15)
    push_image(image, registry, "team/app", "v1")
    cache = owned_dir(tmp_path / "cache", 0, mode=0o755)
    port = free_port()
    with agent_container(node, registry, cache, port=port, log_dir=tmp_path) as c:
        wait_http_ok(f"http://127.0.0.1:{port}/readyz", proc=c.proc, timeout=60)
        for attempt in ("first", "second"):
            assert set(image.layer_digests) <= pull_dir(
                f"127.0.0.1:{port}/team/app:v1", tmp_path / attempt
            )
        (digest,) = image.layer_digests
        assert registry.blob_get_count(digest) == 2
        assert not any(cache.iterdir())
    assert "Permission denied: '/var/cache/pollen/blobs'" in c.output()


def test_agent_as_uid_0_without_capabilities_caches_in_a_root_owned_directory(
    registry: Registry, make_image: Callable[..., Image], tmp_path: Path
) -> None:
    """What the DaemonSet's agent is (uid 0, `capabilities: drop: [ALL]`, no new privileges),
    measured outside a container because ctr 1.6 cannot override the image's user: setpriv
    empties the bounding set, so the agent holds no capability, and it still caches in the
    kubelet's root-owned 0755 hostPath, which uid 0 owns."""
    require_tools("setpriv")
    image = make_image(layers=(2 * MiB + 9,), seed=16)
    push_image(image, registry, "team/app", "v1")
    cache = owned_dir(tmp_path / "cache", 0, mode=0o755)
    port = free_port()
    no_capabilities = ["--inh-caps=-all", "--ambient-caps=-all", "--bounding-set=-all"]
    proc = ManagedProcess(
        ["setpriv", "--reuid=0", "--regid=0", "--clear-groups", *no_capabilities]
        + ["--no-new-privs", "--", sys.executable, "-m", "agent", "agent"],
        name="agent-uid0",
        log_dir=tmp_path,
        env={
            "POLLEN_PROXY_PORT": str(port),
            "POLLEN_LISTEN_ADDRESS": "127.0.0.1",
            "POLLEN_NODE_IP": "127.0.0.1",
            "POLLEN_UPSTREAMS": f"http://{registry.host}",
            "POLLEN_CACHE_PATH": str(cache),
            "POLLEN_LOG_DIR": str(tmp_path / "log"),
            "POLLEN_CACHE_AIO_ENABLE": "1",
            "PYTHONUNBUFFERED": "1",
        },
        cwd=REPO,
        drop_env_prefixes=("POLLEN_",),
    )
    proc.start()
    try:
        wait_http_ok(f"http://127.0.0.1:{port}/readyz", proc=proc, timeout=30)
        status = dict(
            line.split(":\t", 1)
            for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines()
            if ":\t" in line
        )
        assert status["Uid"].split() == ["0"] * 4
        assert int(status["CapEff"], 16) == int(status["CapBnd"], 16) == 0
        for attempt in ("cold", "warm"):
            assert set(image.layer_digests) <= pull_dir(
                f"127.0.0.1:{port}/team/app:v1", tmp_path / attempt
            )
        (digest,) = image.layer_digests
        assert registry.blob_get_count(digest) == 1, "the warm pull must come from the cache"
    finally:
        proc.stop()
    assert "Permission denied" not in proc.log_text()


# --------------------------------------------------------------------------------------------
# The webhook


def https_status(
    port: int, ca: Path, method: str, path: str, body: bytes = b""
) -> tuple[int, bytes]:
    context = ssl.create_default_context(cafile=str(ca))
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=20)
    try:
        conn.request(method, path, body=body or None, headers={"content-type": "application/json"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_webhook_in_the_container_runs_as_non_root(node: Containerd, tmp_path: Path) -> None:
    api_tls = make_ca_and_cert(tmp_path / "api-tls", prefix="apiserver")
    serving = make_ca_and_cert(tmp_path / "serving")
    # What Kubernetes mounts: the service account (token, CA, namespace) and the serving
    # certificate, readable by the pod's user.
    account = owned_dir(tmp_path / "serviceaccount", USER)
    (account / "token").write_text("webhook-token\n")
    shutil.copy(api_tls.ca, account / "ca.crt")
    (account / "namespace").write_text("pollen-system")
    tls = owned_dir(tmp_path / "tls", USER)
    shutil.copy(serving.cert, tls / "tls.crt")
    shutil.copy(serving.key, tls / "tls.key")
    for path in (*account.iterdir(), *tls.iterdir()):
        os.chown(path, USER, USER)
        path.chmod(0o400)

    port = free_port()
    with (
        KubeStandIn(cert=api_tls.cert, key=api_tls.key, token="webhook-token") as kube,
        Container(
            node,
            manifest_image(),
            "webhook",
            ["pollen", "webhook"],
            log_dir=tmp_path,
            env={
                "KUBERNETES_SERVICE_HOST": "127.0.0.1",
                "KUBERNETES_SERVICE_PORT": str(kube.port),
                "POLLEN_TLS_CERT": "/tls/tls.crt",
                "POLLEN_TLS_KEY": "/tls/tls.key",
                "POLLEN_WEBHOOK_PORT": str(port),
                "POLLEN_LISTEN_ADDRESS": "127.0.0.1",
            },
            mounts=[
                Mount(account, "/var/run/secrets/kubernetes.io/serviceaccount", read_only=True),
                Mount(tls, "/tls", read_only=True),
            ],
        ) as c,
    ):

        def ready() -> bool:
            c.proc.check_alive()
            try:
                return https_status(port, serving.ca, "GET", "/readyz")[0] == 200
            except OSError:
                return False

        wait_until(ready, timeout=60, what="the webhook's /readyz", on_timeout=c.proc.log_tail)
        no_capabilities_and_non_root(c)
        acr = "test-registry-vpc.cn-hangzhou.cr.aliyuncs.com"
        review = {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "u-1",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": "team",
                "operation": "CREATE",
                "object": {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {"name": "web", "namespace": "team"},
                    "spec": {"containers": [{"name": "web", "image": f"{acr}/app/web:1"}]},
                },
            },
        }
        status, raw = https_status(port, serving.ca, "POST", "/mutate", json.dumps(review).encode())
        assert status == 200, raw
        response = json.loads(raw)["response"]
        assert response["allowed"] is True and response["uid"] == "u-1"
        patch = json.loads(base64.b64decode(response["patch"]))
        images = [op["value"] for op in patch if op["path"] == "/spec/containers/0/image"]
        assert images == [
            "test-registry-vpc.distributed.cn-hangzhou.cr.aliyuncs.com:65001/app/web:1"
        ]
    assert "Traceback" not in c.output()
