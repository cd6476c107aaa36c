"""The admission webhook end to end over HTTPS, with a CA made in the test.

The Kubernetes API server is the only stand-in here (harness/kubeapi.py: the same REST paths,
JSON, Status errors and resourceVersion rules, over TLS with a bearer token), because there
is no API server on these machines. Everything else is real: the webhook's TLS server (in
this process, and as a `pollen webhook` process), our Kubernetes client, and an independent
HTTPS client (http.client) playing kube-apiserver's part of calling the webhook.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any

import jsonpatch
import pytest
import trio
from cryptography import x509
from harness import (
    ManagedProcess,
    TLSFiles,
    free_port,
    http_get,
    make_ca_and_cert,
    memory_mib,
    wait_until,
    write_secret_volume,
)
from harness.kubeapi import KubeStandIn
from prometheus_client.parser import text_string_to_metric_families

from agent import __version__
from agent.core.config import load_config
from agent.kube.admission import CONFIG_ANNOTATION
from agent.kube.api import KubeAPI
from agent.kube.certs import (
    CertBundle,
    CertsJob,
    NotMounted,
    make_bundle,
    problem_with,
    service_names,
)
from agent.kube.certs import run_certs as run_certs_job
from agent.kube.webhook import MAX_REVIEW_BYTES, AdmissionWebhook, serve, settings_from

ACR = "test-registry-vpc.cn-hangzhou.cr.aliyuncs.com"
ACR_P2P = "test-registry-vpc.distributed.cn-hangzhou.cr.aliyuncs.com:65001"
NAMESPACE = "team"
OWN_NAMESPACE = "pollen-system"
TOKEN = "s3cr3t-service-account-token"
REPO_ROOT = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture
def api_tls(tmp_path: Path) -> TLSFiles:
    return make_ca_and_cert(tmp_path / "api-tls", prefix="apiserver")


@pytest.fixture
def kube(api_tls: TLSFiles) -> Iterator[KubeStandIn]:
    with KubeStandIn(cert=api_tls.cert, key=api_tls.key, token=TOKEN) as standin:
        yield standin


@pytest.fixture
def account_dir(tmp_path: Path, api_tls: TLSFiles) -> Path:
    """What Kubernetes mounts at /var/run/secrets/kubernetes.io/serviceaccount."""
    d = tmp_path / "serviceaccount"
    d.mkdir()
    (d / "token").write_text(TOKEN + "\n")
    (d / "ca.crt").write_bytes(api_tls.ca.read_bytes())
    (d / "namespace").write_text(OWN_NAMESPACE)
    return d


def kube_env(kube: KubeStandIn) -> dict[str, str]:
    return {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(kube.port)}


def pull_secret(name: str, auths: dict[str, Any]) -> dict[str, Any]:
    payload = base64.b64encode(json.dumps({"auths": auths}).encode()).decode()
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "type": "kubernetes.io/dockerconfigjson",
        "data": {".dockerconfigjson": payload},
    }


def auths_of(secret: dict[str, Any]) -> dict[str, Any]:
    return json.loads(base64.b64decode(secret["data"][".dockerconfigjson"]))["auths"]


def review(
    *, secrets: tuple[str, ...] = ("test-registry",), dry_run: bool = False, uid: str = "u-1"
) -> dict[str, Any]:
    pod: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"generateName": "web-", "namespace": NAMESPACE, "labels": {"app": "web"}},
        "spec": {
            "containers": [{"name": "web", "image": f"{ACR}/docker-builder/nginx:latest"}],
            "initContainers": [{"name": "init", "image": "busybox:1.36"}],
        },
    }
    if secrets:
        pod["spec"]["imagePullSecrets"] = [{"name": s} for s in secrets]
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": NAMESPACE,
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": pod,
            "oldObject": None,
            "dryRun": dry_run,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        },
    }


def https_call(
    port: int,
    ca: Path,
    method: str,
    path: str,
    body: bytes = b"",
    *,
    server_hostname: str | None = None,
) -> tuple[int, bytes]:
    """One HTTPS request, verifying the webhook's certificate against `ca` as the API server
    does against caBundle (for `server_hostname`, default 127.0.0.1)."""
    context = ssl.create_default_context(cafile=str(ca))
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=20)
    if server_hostname is not None:
        # Connect to 127.0.0.1 but check the certificate for the Service's DNS name.
        conn.host = server_hostname

        def connect() -> None:
            import socket

            raw = socket.create_connection(("127.0.0.1", port), timeout=20)
            conn.sock = context.wrap_socket(raw, server_hostname=server_hostname)

        conn.connect = connect  # type: ignore[method-assign]
    try:
        headers = {"content-type": "application/json"} if body else {}
        conn.request(method, path, body=body or None, headers=headers)
        reply = conn.getresponse()
        return reply.status, reply.read()
    finally:
        conn.close()


def decode_answer(status: int, raw: bytes, rev: dict[str, Any]) -> tuple[dict, dict]:
    """(response object, pod after applying the patch)."""
    assert status == 200, raw
    answer = json.loads(raw)
    assert answer["apiVersion"] == "admission.k8s.io/v1" and answer["kind"] == "AdmissionReview"
    response = answer["response"]
    assert response["uid"] == rev["request"]["uid"] and response["allowed"] is True
    pod = rev["request"]["object"]
    if "patch" in response:
        assert response["patchType"] == "JSONPatch"
        pod = jsonpatch.apply_patch(pod, json.loads(base64.b64decode(response["patch"])))
    return response, pod


@contextlib.asynccontextmanager
async def running_webhook(
    kube: KubeStandIn, account_dir: Path, tls: TLSFiles, *, secret_timeout: float = 5.0
) -> AsyncIterator[tuple[AdmissionWebhook, int]]:
    config = load_config(
        {
            "POLLEN_TLS_CERT": str(tls.cert),
            "POLLEN_TLS_KEY": str(tls.key),
            "POLLEN_WEBHOOK_PORT": "0",
            "POLLEN_LISTEN_ADDRESS": "127.0.0.1",
        }
    )
    api = KubeAPI.in_cluster(environ=kube_env(kube), account_dir=account_dir)
    webhook = AdmissionWebhook(
        settings_from(config, KubeAPI.in_cluster_namespace(account_dir)),
        api,
        secret_timeout=secret_timeout,
    )
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve, config, webhook)
        try:
            yield webhook, port
        finally:
            nursery.cancel_scope.cancel()
            await api.aclose()


async def admit(port: int, ca: Path, rev: dict[str, Any]) -> tuple[dict, dict]:
    status, raw = await trio.to_thread.run_sync(
        https_call, port, ca, "POST", "/mutate?timeout=10s", json.dumps(rev).encode()
    )
    return decode_answer(status, raw, rev)


# --------------------------------------------------------------------------------------------
# In-process server


async def test_rewrites_and_creates_the_pull_secret_before_answering(
    kube: KubeStandIn, account_dir: Path, tls_files: TLSFiles
) -> None:
    creds = {"username": "u", "password": "p", "auth": base64.b64encode(b"u:p").decode()}
    kube.put_object("secrets", NAMESPACE, pull_secret("test-registry", {ACR: creds}))
    async with running_webhook(kube, account_dir, tls_files) as (webhook, port):
        response, pod = await admit(port, tls_files.ca, review())
        # By the time the answer arrived, the secret it names existed.
        copy = kube.secret(NAMESPACE, "acr-credential-test-registry-p2p")
    assert copy is not None
    assert copy["type"] == "kubernetes.io/dockerconfigjson"
    assert auths_of(copy) == {ACR_P2P: creds}
    assert pod["spec"]["containers"][0]["image"] == f"{ACR_P2P}/docker-builder/nginx:latest"
    assert pod["spec"]["initContainers"][0]["image"] == "busybox:1.36"  # not eligible
    assert pod["spec"]["imagePullSecrets"] == [
        {"name": "test-registry"},
        {"name": "acr-credential-test-registry-p2p"},
    ]
    assert CONFIG_ANNOTATION in pod["metadata"]["annotations"]
    assert webhook.statistics()["rewritten"] == 1
    assert kube.calls("POST", f"/api/v1/namespaces/{NAMESPACE}/secrets")


async def test_the_copy_follows_the_source_secret(
    kube: KubeStandIn, account_dir: Path, tls_files: TLSFiles
) -> None:
    kube.put_object("secrets", NAMESPACE, pull_secret("test-registry", {ACR: {"auth": "b2xk"}}))
    async with running_webhook(kube, account_dir, tls_files) as (webhook, port):
        await admit(port, tls_files.ca, review(uid="1"))
        first = kube.secret(NAMESPACE, "acr-credential-test-registry-p2p")
        assert first is not None and auths_of(first) == {ACR_P2P: {"auth": "b2xk"}}
        # The password changes in S: the next admission updates the copy.
        kube.put_object("secrets", NAMESPACE, pull_secret("test-registry", {ACR: {"auth": "bmV3"}}))
        await admit(port, tls_files.ca, review(uid="2"))
        second = kube.secret(NAMESPACE, "acr-credential-test-registry-p2p")
        assert second is not None and auths_of(second) == {ACR_P2P: {"auth": "bmV3"}}
        assert second["metadata"]["uid"] == first["metadata"]["uid"]  # updated, not recreated
        # Updated by a JSON patch of its data, never a PUT of the whole object.
        assert len(kube.calls("PATCH")) == 1 and not kube.calls("PUT")
        # Unchanged S: no write at all.
        await admit(port, tls_files.ca, review(uid="3"))
        assert len(kube.calls("PATCH")) == 1 and not kube.calls("PUT")
    stats = webhook.statistics()
    assert stats["secrets_created"] == 1 and stats["secrets_updated"] == 1


async def test_a_copy_replaced_by_someone_else_meanwhile_is_not_overwritten(
    kube: KubeStandIn, account_dir: Path, tls_files: TLSFiles
) -> None:
    """Between the webhook's read of its copy and its patch, another client puts its own
    secret under that name: the patch's tests fail on the API server (the stand-in applies
    them as kube-apiserver does), the webhook reads again, sees it is not ours, leaves it."""
    kube.put_object("secrets", NAMESPACE, pull_secret("test-registry", {ACR: {"auth": "b2xk"}}))
    target = "acr-credential-test-registry-p2p"
    theirs = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": target},
        "type": "kubernetes.io/dockerconfigjson",
        "data": {".dockerconfigjson": "e30="},
    }
    stored: list[dict[str, Any]] = []

    def replace_before_the_patch(method: str, path: str) -> None:
        if method == "PATCH" and not stored:
            stored.append(kube.put_object("secrets", NAMESPACE, theirs))

    async with running_webhook(kube, account_dir, tls_files) as (webhook, port):
        await admit(port, tls_files.ca, review(uid="1"))  # creates our copy
        kube.put_object("secrets", NAMESPACE, pull_secret("test-registry", {ACR: {"auth": "bmV3"}}))
        kube.before = replace_before_the_patch
        response, pod = await admit(port, tls_files.ca, review(uid="2"))
    assert "patch" not in response and pod["spec"]["containers"][0]["image"].startswith(ACR)
    assert kube.secret(NAMESPACE, target) == stored[0]
    assert webhook.statistics()["secrets_foreign"] == 1


@pytest.mark.parametrize("fault", ["write-fails", "source-missing", "api-too-slow"])
async def test_pod_is_admitted_unchanged_when_the_secret_cannot_be_written(
    kube: KubeStandIn, account_dir: Path, tls_files: TLSFiles, fault: str
) -> None:
    if fault != "source-missing":
        kube.put_object("secrets", NAMESPACE, pull_secret("test-registry", {ACR: {"auth": "eA=="}}))
    if fault == "write-fails":
        kube.fail("POST", f"/api/v1/namespaces/{NAMESPACE}/secrets", 500)
    if fault == "api-too-slow":
        kube.delay = 1.0
    async with running_webhook(kube, account_dir, tls_files, secret_timeout=0.5) as (wh, port):
        rev = review()
        response, pod = await admit(port, tls_files.ca, rev)
        assert "patch" not in response
        assert pod == rev["request"]["object"]  # the original images, which it can pull
        assert "P2P not applied" in response["warnings"][0]
        assert wh.statistics()["secret_failures"] == 1
        kube.delay = 0
        # The webhook is still healthy and serves the next review.
        status, _ = await trio.to_thread.run_sync(https_call, port, tls_files.ca, "GET", "/healthz")
        assert status == 200
    assert kube.secret(NAMESPACE, "acr-credential-test-registry-p2p") is None


async def test_dry_run_has_no_side_effects(
    kube: KubeStandIn, account_dir: Path, tls_files: TLSFiles
) -> None:
    kube.put_object("secrets", NAMESPACE, pull_secret("test-registry", {ACR: {"auth": "eA=="}}))
    before = list(kube.requests)
    async with running_webhook(kube, account_dir, tls_files) as (webhook, port):
        response, pod = await admit(port, tls_files.ca, review(dry_run=True))
    assert pod["spec"]["containers"][0]["image"].startswith(ACR_P2P)
    assert kube.requests == before  # not even a read
    assert kube.secret(NAMESPACE, "acr-credential-test-registry-p2p") is None
    assert webhook.statistics() == {"dry_run": 1}


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{not json", "not JSON"),
        (b"[]", "JSON object"),
        (
            json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}).encode(),
            "request",
        ),
        (
            json.dumps({**review(), "request": {**review()["request"], "object": None}}).encode(),
            "object",
        ),
    ],
)
async def test_malformed_review_gets_400_with_a_reason(
    kube: KubeStandIn, account_dir: Path, tls_files: TLSFiles, body: bytes, reason: str
) -> None:
    async with running_webhook(kube, account_dir, tls_files) as (webhook, port):
        status, raw = await trio.to_thread.run_sync(
            https_call, port, tls_files.ca, "POST", "/mutate", body
        )
        assert status == 400
        assert reason in json.loads(raw)["error"]
        # Never a crash: the same server answers the next request.
        status, _ = await trio.to_thread.run_sync(https_call, port, tls_files.ca, "GET", "/readyz")
        assert status == 200
    assert webhook.statistics() == {"bad_requests": 1}


async def test_routes_health_and_limits(
    kube: KubeStandIn, account_dir: Path, tls_files: TLSFiles
) -> None:
    async with running_webhook(kube, account_dir, tls_files) as (webhook, port):
        call = lambda *a: trio.to_thread.run_sync(https_call, port, tls_files.ca, *a)  # noqa: E731
        assert (await call("GET", "/healthz"))[0] == 200
        assert (await call("GET", "/readyz"))[0] == 200
        assert (await call("GET", "/mutate"))[0] == 405
        assert (await call("GET", "/nope"))[0] == 404
        status, raw = await call("GET", "/_pollen/status")
        assert status == 200 and json.loads(raw) == {"role": "webhook", "ready": True, "counts": {}}
        webhook.ready = False
        assert (await call("GET", "/readyz"))[0] == 503
        webhook.ready = True
        too_big = b"{" + b" " * (5 * 1024 * 1024) + b"}"
        assert (await call("POST", "/mutate", too_big))[0] == 413
        assert (await call("GET", "/healthz"))[0] == 200


async def test_two_replicas_racing_for_one_secret(
    kube: KubeStandIn, account_dir: Path, tls_files: TLSFiles
) -> None:
    kube.put_object("secrets", NAMESPACE, pull_secret("test-registry", {ACR: {"auth": "eA=="}}))
    results: list[dict] = []
    async with (
        running_webhook(kube, account_dir, tls_files) as (one, port_one),
        running_webhook(kube, account_dir, tls_files) as (two, port_two),
    ):

        async def go(port: int, uid: str) -> None:
            response, _ = await admit(port, tls_files.ca, review(uid=uid))
            results.append(response)

        async with trio.open_nursery() as nursery:
            for i in range(6):
                nursery.start_soon(go, (port_one, port_two)[i % 2], f"uid-{i}")
    assert len(results) == 6 and all("patch" in r for r in results)
    assert kube.secret(NAMESPACE, "acr-credential-test-registry-p2p") is not None
    stats = [one.statistics(), two.statistics()]
    assert sum(s.get("secrets_created", 0) for s in stats) == 1
    assert sum(s.get("secret_failures", 0) for s in stats) == 0


# --------------------------------------------------------------------------------------------
# The real command


@contextlib.contextmanager
def webhook_process(
    tmp_path: Path,
    kube: KubeStandIn,
    account_dir: Path,
    tls_files: TLSFiles,
    env: Mapping[str, str] | None = None,
) -> Iterator[tuple[ManagedProcess, int]]:
    """A `pollen webhook` process talking to the stand-in API server, ready to serve (`env`
    adds to or overrides its environment)."""
    port = free_port()
    proc = ManagedProcess(
        [sys.executable, "-m", "agent", "webhook", "--service-account-dir", str(account_dir)],
        name="webhook",
        log_dir=tmp_path / f"webhook-log-{port}",
        env={
            **kube_env(kube),
            "POLLEN_TLS_CERT": str(tls_files.cert),
            "POLLEN_TLS_KEY": str(tls_files.key),
            "POLLEN_WEBHOOK_PORT": str(port),
            "POLLEN_LISTEN_ADDRESS": "127.0.0.1",
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        },
        cwd=REPO_ROOT,
        drop_env_prefixes=("POLLEN_", "KUBERNETES_"),
    )
    proc.start()
    try:

        def ready() -> bool:
            proc.check_alive()
            try:
                return https_call(port, tls_files.ca, "GET", "/readyz")[0] == 200
            except OSError:
                return False

        wait_until(ready, timeout=20, what="the webhook's /readyz", on_timeout=proc.log_tail)
        yield proc, port
    finally:
        proc.stop()


def test_pollen_webhook_process(
    tmp_path: Path, kube: KubeStandIn, account_dir: Path, tls_files: TLSFiles
) -> None:
    kube.put_object("secrets", NAMESPACE, pull_secret("test-registry", {ACR: {"auth": "eA=="}}))
    with webhook_process(tmp_path, kube, account_dir, tls_files) as (proc, port):
        rev = review()
        status, raw = https_call(port, tls_files.ca, "POST", "/mutate", json.dumps(rev).encode())
        response, pod = decode_answer(status, raw, rev)
        assert pod["spec"]["containers"][0]["image"].startswith(ACR_P2P)
        assert kube.secret(NAMESPACE, "acr-credential-test-registry-p2p") is not None
        assert "1 image(s) rewritten" in proc.log_text()
        proc.popen.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        assert proc.popen.wait(timeout=20) == 0  # type: ignore[union-attr]


def test_a_registry_port_survives_the_rewrite(
    tmp_path: Path, kube: KubeStandIn, account_dir: Path, tls_files: TLSFiles
) -> None:
    """Issue 13, item 3: `<acr>:5000/...` became `<acr p2p>:65001/...` -- the agent's name for
    `<acr>` on 443, another registry -- and the copy's credential for it was `<acr>`'s, the
    :5000 one overwritten. Now the port is in the name, and each credential under its own."""
    on_5000 = {"auth": base64.b64encode(b"five:thousand").decode()}
    on_443 = {"auth": base64.b64encode(b"four:forty-three").decode()}
    kube.put_object(
        "secrets", NAMESPACE, pull_secret("test-registry", {f"{ACR}:5000": on_5000, ACR: on_443})
    )
    p2p_5000 = "test-registry-vpc.distributed-5000.cn-hangzhou.cr.aliyuncs.com:65001"
    with webhook_process(tmp_path, kube, account_dir, tls_files) as (_, port):
        rev = review()
        rev["request"]["object"]["spec"]["containers"].append(
            {"name": "app", "image": f"{ACR}:5000/team/app:v1"}
        )
        status, raw = https_call(port, tls_files.ca, "POST", "/mutate", json.dumps(rev).encode())
        _, pod = decode_answer(status, raw, rev)
    images = [c["image"] for c in pod["spec"]["containers"]]
    assert images == [f"{ACR_P2P}/docker-builder/nginx:latest", f"{p2p_5000}/team/app:v1"]
    copy = kube.secret(NAMESPACE, "acr-credential-test-registry-p2p")
    assert copy is not None
    assert auths_of(copy) == {p2p_5000: on_5000, ACR_P2P: on_443}


def costly_review(size: int) -> bytes:
    """A well-formed review of about `size` bytes whose parse costs the most memory per byte
    (an array of empty objects: 3 bytes each in JSON, some 70 in memory)."""
    head = (
        b'{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"x","j":['
    )
    count = (size - len(head) - 3) // 3
    return head + b",".join([b"{}"] * count) + b"]}}"


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_a_huge_review_is_refused_before_it_is_parsed(
    tmp_path: Path, kube: KubeStandIn, account_dir: Path, tls_files: TLSFiles
) -> None:
    """Issue 13, item 2: a 4 MiB review of empty objects was parsed, raising the process's
    peak RSS by ~105 MiB (its limit in the Deployment is 256 MiB). Now anything over
    MAX_REVIEW_BYTES (1 MiB) is refused with 413 unparsed, and the costliest review that fits
    stays far below that."""
    with webhook_process(tmp_path, kube, account_dir, tls_files) as (proc, port):
        peak = memory_mib(proc.pid, "VmHWM")
        big = costly_review(4 * 1024 * 1024 - 512)
        assert len(big) < 4 * 1024 * 1024  # what the old limit let through
        status, _ = https_call(port, tls_files.ca, "POST", "/mutate", big)
        assert status == 413
        assert memory_mib(proc.pid, "VmHWM") - peak < 16
        # The costliest review under the limit is answered, at a bounded cost.
        fits = costly_review(MAX_REVIEW_BYTES - 512)
        status, _ = https_call(port, tls_files.ca, "POST", "/mutate", fits)
        assert status == 200
        assert memory_mib(proc.pid, "VmHWM") - peak < 48
        # Nesting deeper than the parser goes is a bad request, not a crash.
        deep = b"[" * (MAX_REVIEW_BYTES // 2 - 1) + b"]" * (MAX_REVIEW_BYTES // 2 - 1)
        status, raw = https_call(port, tls_files.ca, "POST", "/mutate", deep)
        assert status == 400 and b"nested too deeply" in raw
        assert https_call(port, tls_files.ca, "GET", "/healthz")[0] == 200


def forged(namespace: str, secret: str, uid: str) -> dict[str, Any]:
    """A review nobody's API server sent: a pod in `namespace` naming pull secret `secret`."""
    rev = review(secrets=(secret,), uid=uid)
    rev["request"]["namespace"] = namespace
    rev["request"]["object"]["metadata"]["namespace"] = namespace
    return rev


def test_a_forged_review_never_overwrites_a_secret_pollen_did_not_make(
    tmp_path: Path, kube: KubeStandIn, account_dir: Path, tls_files: TLSFiles
) -> None:
    """Issue 13, item 1: `acr-credential-regcred-p2p` in namespace `victim` is someone's
    Opaque secret; a forged review naming `regcred` (a real pull secret there) must leave it
    as it is, and still admit the pod (unchanged: the copy it would need is not ours)."""
    victim = "victim"
    source = pull_secret("regcred", {ACR: {"auth": "eA=="}})
    source["metadata"]["namespace"] = victim
    kube.put_object("secrets", victim, source)
    theirs = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "acr-credential-regcred-p2p", "labels": {"team": "payments"}},
        "type": "Opaque",
        "data": {"api-key": base64.b64encode(b"do-not-lose-me").decode()},
    }
    before = kube.put_object("secrets", victim, theirs)
    with webhook_process(tmp_path, kube, account_dir, tls_files) as (proc, port):
        rev = forged(victim, "regcred", "forged-1")
        status, raw = https_call(port, tls_files.ca, "POST", "/mutate", json.dumps(rev).encode())
        response, pod = decode_answer(status, raw, rev)
        assert "patch" not in response and pod == rev["request"]["object"]
        assert "P2P not applied" in response["warnings"][0]
        status, raw = https_call(port, tls_files.ca, "GET", "/_pollen/status")
        counts = json.loads(raw)["counts"]
        assert counts["secrets_foreign"] == 1 and counts["secret_failures"] == 1
        assert "victim/acr-credential-regcred-p2p left untouched" in proc.log_text()
    assert kube.secret(victim, "acr-credential-regcred-p2p") == before
    assert not kube.calls("PUT") and not kube.calls("PATCH")


def test_the_answer_does_not_tell_a_missing_secret_from_one_of_the_wrong_type(
    tmp_path: Path, kube: KubeStandIn, account_dir: Path, tls_files: TLSFiles
) -> None:
    """Issue 13, item 1: whoever sends a review reads the warning; whether a secret exists, or
    what type it has, is for the webhook's log only."""
    kube.put_object(
        "secrets",
        "victim",
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "db-password", "namespace": "victim"},
            "type": "Opaque",
            "data": {"password": "aHVudGVyMg=="},
        },
    )
    answers = []
    with webhook_process(tmp_path, kube, account_dir, tls_files) as (proc, port):
        for secret in ("no-such-secret", "db-password"):
            rev = forged("victim", secret, "same-uid")
            body = json.dumps(rev).encode()
            status, raw = https_call(port, tls_files.ca, "POST", "/mutate", body)
            response, _ = decode_answer(status, raw, rev)
            assert "patch" not in response
            answers.append(response)
        log = proc.log_text()
    assert answers[0] == answers[1]
    warning = answers[0]["warnings"][0]
    for telltale in ("Opaque", "type", "exist", "not found", "NotFound", "db-password"):
        assert telltale not in warning
    # The operator still learns why, from the log.
    assert "no-such-secret does not exist" in log and "'Opaque'" in log
    assert kube.secret("victim", "acr-credential-db-password-p2p") is None


# --------------------------------------------------------------------------------------------
# `pollen webhook certs`, then the webhook serving what it made, verified the way
# kube-apiserver verifies it: against the caBundle written into the
# MutatingWebhookConfiguration, for the Service's DNS name.

MWC_NAME = "pollen-webhook"
SERVICE_DNS = f"pollen-webhook.{OWN_NAMESPACE}.svc"


def mwc() -> dict[str, Any]:
    """As deploy/kubernetes applies it: two entries, no caBundle yet."""
    entry = {
        "clientConfig": {
            "service": {"name": "pollen-webhook", "namespace": OWN_NAMESPACE, "path": "/mutate"}
        },
        "admissionReviewVersions": ["v1"],
        "sideEffects": "NoneOnDryRun",
        "failurePolicy": "Ignore",
    }
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": MWC_NAME},
        "webhooks": [
            {"name": "namespaces.p2p.pollen.io", **entry},
            {"name": "pods.p2p.pollen.io", **entry},
        ],
    }


def run_certs(standin: KubeStandIn, sa_dir: Path, out: Path) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "agent", "webhook", "--service-account-dir", str(sa_dir)]
    argv += ["certs", "--out-dir", str(out), "--cluster-token-secret", "pollen-cluster-token"]
    env = {"PATH": "/usr/bin:/bin", **kube_env(standin)}
    return subprocess.run(
        argv, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60, check=False
    )


def test_certs_then_the_webhook_serves_them(
    tmp_path: Path,
    kube: KubeStandIn,
    account_dir: Path,
) -> None:
    kube.put_object("mutatingwebhookconfigurations", "", mwc())
    out = tmp_path / "tls"
    done = run_certs(kube, account_dir, out)
    assert done.returncode == 0, done.stderr

    stored = kube.secret(OWN_NAMESPACE, "pollen-webhook-tls")
    assert stored is not None and stored["type"] == "kubernetes.io/tls"
    configuration = kube.objects[("mutatingwebhookconfigurations", "", MWC_NAME)]
    bundles = {w["clientConfig"]["caBundle"] for w in configuration["webhooks"]}
    assert bundles == {stored["data"]["ca.crt"]}
    assert (out / "tls.crt").read_text() == base64.b64decode(stored["data"]["tls.crt"]).decode()
    assert (out / "tls.key").stat().st_mode & 0o777 == 0o600
    token = kube.secret(OWN_NAMESPACE, "pollen-cluster-token")
    assert token is not None and len(base64.b64decode(token["data"]["token"])) == 64

    # Idempotent: a second run (another replica, a restart) writes nothing.
    writes = len(kube.calls("PUT")) + len(kube.calls("POST"))
    again = run_certs(kube, account_dir, tmp_path / "tls2")
    assert again.returncode == 0, again.stderr
    assert len(kube.calls("PUT")) + len(kube.calls("POST")) == writes
    assert (tmp_path / "tls2" / "tls.crt").read_bytes() == (out / "tls.crt").read_bytes()

    # The webhook serves that certificate; the API server's check (caBundle, Service name)
    # passes.
    ca_file = tmp_path / "cabundle.pem"
    ca_file.write_bytes(base64.b64decode(bundles.pop()))
    port = free_port()
    proc = ManagedProcess(
        [sys.executable, "-m", "agent", "webhook", "--service-account-dir", str(account_dir)],
        name="webhook",
        log_dir=tmp_path / "log",
        env={
            **kube_env(kube),
            "POLLEN_TLS_CERT": str(out / "tls.crt"),
            "POLLEN_TLS_KEY": str(out / "tls.key"),
            "POLLEN_WEBHOOK_PORT": str(port),
            "POLLEN_LISTEN_ADDRESS": "127.0.0.1",
        },
        cwd=REPO_ROOT,
        drop_env_prefixes=("POLLEN_", "KUBERNETES_"),
    )
    proc.start()
    try:

        def ready() -> bool:
            proc.check_alive()
            try:
                status, _ = https_call(port, ca_file, "GET", "/readyz", server_hostname=SERVICE_DNS)
            except OSError:
                return False
            return status == 200

        wait_until(ready, timeout=20, what="the webhook's /readyz", on_timeout=proc.log_tail)
        rev = review(secrets=())
        status, raw = https_call(
            port, ca_file, "POST", "/mutate", json.dumps(rev).encode(), server_hostname=SERVICE_DNS
        )
        _, pod = decode_answer(status, raw, rev)
        assert ".distributed." in pod["spec"]["containers"][0]["image"]
        assert pod["metadata"]["namespace"] == NAMESPACE
    finally:
        proc.stop()


def test_a_bad_stored_certificate_is_replaced(
    tmp_path: Path,
    kube: KubeStandIn,
    account_dir: Path,
) -> None:
    kube.put_object("mutatingwebhookconfigurations", "", mwc())
    wrong = make_bundle(["some-other-service.elsewhere.svc"])
    kube.put_object(
        "secrets",
        OWN_NAMESPACE,
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "pollen-webhook-tls"},
            "type": "kubernetes.io/tls",
            "data": {
                "tls.crt": base64.b64encode(wrong.cert).decode(),
                "tls.key": base64.b64encode(wrong.key).decode(),
                "ca.crt": base64.b64encode(wrong.ca).decode(),
            },
        },
    )
    done = run_certs(kube, account_dir, tmp_path / "tls")
    assert done.returncode == 0, done.stderr
    assert "not valid for" in done.stderr
    stored = kube.secret(OWN_NAMESPACE, "pollen-webhook-tls")
    assert stored is not None
    bundle = CertBundle(
        ca=base64.b64decode(stored["data"]["ca.crt"]),
        cert=base64.b64decode(stored["data"]["tls.crt"]),
        key=base64.b64decode(stored["data"]["tls.key"]),
    )
    assert problem_with(bundle, service_names("pollen-webhook", OWN_NAMESPACE)) is None


def test_missing_webhook_configuration_fails_so_the_init_container_retries(
    tmp_path: Path,
    kube: KubeStandIn,
    account_dir: Path,
) -> None:
    done = run_certs(kube, account_dir, tmp_path / "tls")
    assert done.returncode == 1
    assert "mutatingwebhookconfigurations" in done.stderr and "not found" in done.stderr


def test_problem_with_names_every_reason() -> None:
    names = service_names("pollen-webhook", "pollen-system")
    good = make_bundle(names)
    assert problem_with(good, names) is None
    other = make_bundle(names)
    assert "does not match" in (
        problem_with(CertBundle(good.ca, good.cert, other.key), names) or ""
    )
    assert "not issued" in (problem_with(CertBundle(other.ca, good.cert, good.key), names) or "")
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=5 * 365 - 10)
    assert "expires" in (problem_with(good, names, now=later) or "")
    assert "unreadable" in (problem_with(CertBundle(b"x", b"y", b"z"), names) or "")
    assert "not valid for" in (problem_with(good, [*names, "extra.example"]) or "")


@pytest.mark.parametrize("names", [["pollen-webhook.ns.svc", "127.0.0.1"]])
def test_bundle_has_ip_and_dns_names(names: list[str]) -> None:
    assert problem_with(make_bundle(names), names) is None


# --------------------------------------------------------------------------------------------
# Refusals at start, and the client's errors


def test_webhook_refuses_to_start_without_tls_or_a_cluster(
    tmp_path: Path, tls_files: TLSFiles
) -> None:
    def pollen(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "agent", "webhook"]
        argv += ["--service-account-dir", str(tmp_path / "none")]
        return subprocess.run(
            argv,
            cwd=REPO_ROOT,
            env={"PATH": "/usr/bin:/bin", **env},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    no_tls = pollen({})
    assert no_tls.returncode == 2 and "needs TLS" in no_tls.stderr
    tls = {"POLLEN_TLS_CERT": str(tls_files.cert), "POLLEN_TLS_KEY": str(tls_files.key)}
    no_cluster = pollen(tls)
    assert no_cluster.returncode == 2 and "KUBERNETES_SERVICE_HOST" in no_cluster.stderr
    other = make_ca_and_cert(tmp_path / "other")
    mismatched = pollen({**tls, "POLLEN_TLS_KEY": str(other.key)})
    assert mismatched.returncode == 2 and "Traceback" not in mismatched.stderr
    assert f"cannot serve {tls_files.cert} with key {other.key}" in mismatched.stderr
    assert "KEY_VALUES_MISMATCH" in mismatched.stderr


async def test_kubeapi_errors_carry_status_and_reason(
    kube: KubeStandIn, account_dir: Path, tmp_path: Path
) -> None:
    from agent.kube.api import KubeError

    api = KubeAPI.in_cluster(environ=kube_env(kube), account_dir=account_dir)
    try:
        assert await api.get_secret(NAMESPACE, "absent") is None
        created = await api.create_secret(NAMESPACE, pull_secret("s", {}))
        assert created["metadata"]["resourceVersion"]
        with pytest.raises(KubeError) as exists:
            await api.create_secret(NAMESPACE, pull_secret("s", {}))
        assert (exists.value.status, exists.value.reason) == (409, "AlreadyExists")
        stale = [
            {"op": "test", "path": "/metadata/resourceVersion", "value": "1"},
            {"op": "replace", "path": "/data", "value": {}},
        ]
        with pytest.raises(KubeError) as conflict:
            await api.patch_secret(NAMESPACE, "s", stale)
        assert (conflict.value.status, conflict.value.reason) == (422, "Invalid")
        (account_dir / "token").write_text("rotated-but-wrong")  # re-read on every call
        with pytest.raises(KubeError) as denied:
            await api.get_secret(NAMESPACE, "s")
        assert denied.value.status == 401
    finally:
        await api.aclose()
    gone = KubeAPI.in_cluster(
        environ={"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": "1"},
        account_dir=account_dir,
    )
    with pytest.raises(KubeError) as unreachable:
        await gone.get_secret(NAMESPACE, "s")
    assert unreachable.value.status == 0
    with pytest.raises(KubeError, match="NotInCluster"):
        KubeAPI.in_cluster(environ={}, account_dir=tmp_path)


# --------------------------------------------------------------------------------------------
# Operating it (issue 14, item 3): the metrics Prometheus scrapes from the real process, and a
# renewed serving certificate taken without a restart. The API server is the stand-in here
# too; the webhook, its TLS, its exporter port and the files under it are real.

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(port: int) -> Samples:
    """The exporter port's /metrics, parsed with prometheus-client's parser as Prometheus
    would read it."""
    status, headers, body = http_get("127.0.0.1", port, "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain"), body[:300]
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


def metric(samples: Samples, name: str, **labels: str) -> float:
    key = (name, frozenset(labels.items()))
    assert key in samples, (name, labels, sorted(k for k in samples if k[0] == name))
    return samples[key]


def exporter_env(metrics_port: int, **extra: str) -> dict[str, str]:
    return {
        "POLLEN_EXPORTER_ENABLE": "1",
        "POLLEN_EXPORTER_PORT": str(metrics_port),
        "POLLEN_NODE_IP": "127.0.0.1",
        **extra,
    }


def post_review(port: int, ca: Path, rev: dict[str, Any]) -> dict[str, Any]:
    status, raw = https_call(port, ca, "POST", "/mutate", json.dumps(rev).encode())
    response, _ = decode_answer(status, raw, rev)
    return response


def test_the_webhook_process_counts_what_it_did_on_its_metrics_port(
    tmp_path: Path, kube: KubeStandIn, account_dir: Path, tls_files: TLSFiles
) -> None:
    """Issue 14, item 3: the webhook's admissions, secrets and latency were in no metric. A real
    `pollen webhook` answers reviews of every outcome and writes (or fails to write) secrets
    of every action; its exporter port counts each, with `node` on every series."""
    kube.put_object("secrets", NAMESPACE, pull_secret("test-registry", {ACR: {"auth": "eA=="}}))
    victim = pull_secret("regcred", {ACR: {"auth": "eA=="}})
    victim["metadata"]["namespace"] = "victim"
    kube.put_object("secrets", "victim", victim)
    kube.put_object(
        "secrets",
        "victim",
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "acr-credential-regcred-p2p"},
            "type": "Opaque",
            "data": {"k": "dg=="},
        },
    )
    other_registry = review(secrets=(), uid="other")
    other_registry["request"]["object"]["spec"]["containers"][0]["image"] = "quay.io/team/app:1"
    metrics_port = free_port()
    env = exporter_env(metrics_port)
    with webhook_process(tmp_path, kube, account_dir, tls_files, env) as (proc, port):
        node = f"127.0.0.1:{port}"
        before = scrape(metrics_port)
        ca = tls_files.ca
        assert "patch" in post_review(port, ca, review(uid="1"))  # rewritten; copy created
        assert "patch" in post_review(port, ca, review(uid="2"))  # rewritten; copy unchanged
        changed = pull_secret("test-registry", {ACR: {"auth": "bmV3"}})
        kube.put_object("secrets", NAMESPACE, changed)
        assert "patch" in post_review(port, ca, review(uid="3"))  # rewritten; copy updated
        assert "patch" in post_review(port, ca, review(dry_run=True, uid="4"))
        assert "patch" not in post_review(port, ca, other_registry)  # unchanged
        assert "warnings" in post_review(port, ca, forged("victim", "regcred", "5"))  # foreign
        assert "warnings" in post_review(port, ca, review(secrets=("absent",), uid="6"))  # failed
        assert https_call(port, ca, "POST", "/mutate", b"{not json")[0] == 400
        after = scrape(metrics_port)
        assert proc.alive()

    admissions = {
        "rewritten": 3,
        "unchanged": 1,
        "dry_run": 1,
        "secret_failure": 2,
        "malformed": 1,
    }
    for outcome, count in admissions.items():
        name = "pollen_webhook_admissions_total"
        assert metric(before, name, node=node, outcome=outcome) == 0
        assert metric(after, name, node=node, outcome=outcome) == count, outcome
    actions = {"created": 1, "unchanged": 1, "updated": 1, "foreign": 1, "failed": 1}
    for action, count in actions.items():
        name = "pollen_webhook_secrets_total"
        assert metric(before, name, node=node, action=action) == 0
        assert metric(after, name, node=node, action=action) == count, action
    assert metric(after, "pollen_webhook_admission_seconds_count", node=node) == 8
    assert metric(after, "pollen_webhook_admission_seconds_sum", node=node) > 0
    le_10 = metric(after, "pollen_webhook_admission_seconds_bucket", node=node, le="10.0")
    assert le_10 == 8  # all well inside the API server's timeout
    info = {"version": __version__, "mode": "webhook", "node": node, "io_engine": ""}
    assert metric(after, "pollen_info", **info) == 1
    expiry = x509.load_pem_x509_certificate(tls_files.cert.read_bytes()).not_valid_after_utc
    served = metric(after, "pollen_webhook_certificate_expiry_timestamp_seconds", node=node)
    assert served == expiry.timestamp()
    unlabelled = [name for name, labels in after if dict(labels).get("node") != node]
    assert not unlabelled, unlabelled


def peer_serial(port: int) -> int:
    """The serial of the certificate a new TLS connection to `port` is shown."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # which certificate is served is what is checked
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return int(x509.load_der_x509_certificate(der).serial_number)


def serial_of(tls: TLSFiles) -> int:
    return int(x509.load_pem_x509_certificate(tls.cert.read_bytes()).serial_number)


def replace_in_place(cert: Path, key: Path, new: TLSFiles) -> None:
    """As an operator (or a tool writing plain files) would: each file replaced by a rename,
    the key first -- the pair is not switched in one step."""
    for target, source in ((key, new.key), (cert, new.cert)):
        staged = target.with_name(f".{target.name}.new")
        staged.write_bytes(source.read_bytes())
        os.replace(staged, target)


@pytest.mark.parametrize("writer", ["kubelet", "in-place"])
def test_a_renewed_certificate_is_served_without_a_restart(
    tmp_path: Path, kube: KubeStandIn, account_dir: Path, writer: str
) -> None:
    """Issue 14, item 3: the webhook read its certificate once, at start. Now a renewed pair --
    written as the kubelet updates a mounted Secret (a `..data` symlink swap), or replaced in
    place -- is what the next connection gets, from the same process; a pair that does not
    match is refused with an error in the log while the current one goes on serving."""
    first, second, third = (make_ca_and_cert(tmp_path / n) for n in ("first", "second", "third"))
    volume = tmp_path / "volume"
    if writer == "kubelet":
        write_secret_volume(
            volume, {"tls.crt": first.cert.read_bytes(), "tls.key": first.key.read_bytes()}
        )
    else:
        volume.mkdir()
        replace_in_place(volume / "tls.crt", volume / "tls.key", first)
    served = TLSFiles(first.ca, volume / "tls.crt", volume / "tls.key")
    metrics_port = free_port()
    env = exporter_env(metrics_port, POLLEN_TLS_RELOAD_INTERVAL="200ms")
    with webhook_process(tmp_path, kube, account_dir, served, env) as (proc, port):
        popen = proc.popen
        assert peer_serial(port) == serial_of(first)
        if writer == "kubelet":
            write_secret_volume(
                volume, {"tls.crt": second.cert.read_bytes(), "tls.key": second.key.read_bytes()}
            )
        else:
            replace_in_place(served.cert, served.key, second)
        wait_until(
            lambda: peer_serial(port) == serial_of(second),
            timeout=30,
            interval=0.1,
            what="a new connection shown the renewed certificate",
            on_timeout=proc.log_tail,
        )
        # The same process, never restarted, verified as the API server verifies it.
        assert proc.popen is popen and proc.alive()
        rev = review(secrets=(), uid="after-renewal")
        status, raw = https_call(port, second.ca, "POST", "/mutate", json.dumps(rev).encode())
        assert "patch" in decode_answer(status, raw, rev)[0]
        log = proc.log_text()
        assert f"TLS certificate reloaded from {served.cert}: serial {serial_of(second):#x}" in log
        if writer == "in-place":
            return
        # A pair whose key does not match: refused, logged, and the renewed one still served.
        write_secret_volume(
            volume, {"tls.crt": third.cert.read_bytes(), "tls.key": second.key.read_bytes()}
        )
        wait_until(
            lambda: "does not load" in proc.log_text(),
            timeout=30,
            interval=0.1,
            what="the mismatched pair refused in the log",
            on_timeout=proc.log_tail,
        )
        for _ in range(3):
            assert peer_serial(port) == serial_of(second)
        assert https_call(port, second.ca, "GET", "/readyz")[0] == 200
        (refusal,) = [line for line in proc.log_text().splitlines() if "does not load" in line]
        assert (
            "ERROR" in refusal
            and f"still serving the one loaded before (serial {serial_of(second):#x}" in refusal
        )
        samples = scrape(metrics_port)
        assert proc.popen is popen and proc.alive()
    node = f"127.0.0.1:{port}"
    reloads = "pollen_webhook_certificate_reloads_total"
    assert metric(samples, reloads, node=node, result="reloaded") == 1
    assert metric(samples, reloads, node=node, result="failed") == 1
    expiry = x509.load_pem_x509_certificate(second.cert.read_bytes()).not_valid_after_utc
    served_until = metric(samples, "pollen_webhook_certificate_expiry_timestamp_seconds", node=node)
    assert served_until == expiry.timestamp()


def test_certs_waits_until_the_kubelet_filled_the_mounted_secret(
    tmp_path: Path, kube: KubeStandIn, account_dir: Path
) -> None:
    """deploy/kubernetes mounts the TLS Secret (optional) for the webhook to follow; on the
    first install the init container makes the Secret after the volume was mounted empty, so
    it waits (`--wait-for-mount`) until the kubelet has filled it -- played here by writing
    the Secret's data into the directory the kubelet's way."""
    kube.put_object("mutatingwebhookconfigurations", "", mwc())
    volume = tmp_path / "mounted"
    volume.mkdir()
    argv = [sys.executable, "-m", "agent", "webhook", "--service-account-dir", str(account_dir)]
    argv += ["certs", "--wait-for-mount", str(volume)]
    proc = ManagedProcess(
        argv,
        name="certs",
        log_dir=tmp_path / "certs-log",
        env=kube_env(kube),
        cwd=REPO_ROOT,
        drop_env_prefixes=("POLLEN_", "KUBERNETES_"),
    )
    proc.start()
    try:
        wait_until(
            lambda: "waiting for the kubelet" in proc.log_text() or proc.check_alive(),
            timeout=60,
            what="certs waiting for the mount",
            on_timeout=proc.log_tail,
        )
        stored = kube.secret(OWN_NAMESPACE, "pollen-webhook-tls")
        assert stored is not None and proc.alive()  # the Secret is made, the volume empty
        write_secret_volume(
            volume, {name: base64.b64decode(value) for name, value in stored["data"].items()}
        )
        assert proc.popen is not None and proc.popen.wait(timeout=30) == 0, proc.log_tail()
        assert f"{volume} holds the serving certificate" in proc.log_text()
    finally:
        proc.stop()


async def test_certs_fails_when_the_mounted_secret_stays_empty(
    kube: KubeStandIn, account_dir: Path, tmp_path: Path
) -> None:
    kube.put_object("mutatingwebhookconfigurations", "", mwc())
    job = CertsJob(
        namespace=OWN_NAMESPACE,
        service="pollen-webhook",
        secret="pollen-webhook-tls",
        configuration=MWC_NAME,
        wait_for_mount=tmp_path / "never-filled",
        mount_timeout=0.5,
    )
    api = KubeAPI.in_cluster(environ=kube_env(kube), account_dir=account_dir)
    try:
        with pytest.raises(NotMounted, match="is secret pollen-system/pollen-webhook-tls mounted"):
            await run_certs_job(api, job, OWN_NAMESPACE)
    finally:
        await api.aclose()
