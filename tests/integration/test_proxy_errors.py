"""How a real agent fails: bad requests, a missing or failing upstream, redirects, wrong
bytes, and stopping (SIGTERM, kill -9) — each checked on the wire and at the registry.

Upstream request counts come from the registry's own access log or from the test's own
`RegistryFront` (harness/fronts.py), never from the agent.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import signal
import socket
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

import pytest
from harness import (
    AgentProcess,
    Image,
    ObjectServer,
    Registry,
    RegistryFront,
    agent_status,
    blob_path_pattern,
    blob_url,
    cache_blob_dir,
    free_port,
    http_status,
    push_image,
    raw_get,
    skopeo_copy_to_dir,
    verify_dir_blobs,
    wait_until,
)

KiB = 1 << 10
MiB = 1 << 20


def flip_byte(path: Path, offset: int) -> None:
    """Change one byte in place (same length), as disk or storage corruption would."""
    with open(path, "r+b") as f:
        f.seek(offset)
        old = f.read(1)
        f.seek(offset)
        f.write(bytes([old[0] ^ 0xFF]))


def registry_blob_file(registry: Registry, digest: str) -> Path:
    hexd = digest.split(":", 1)[1]
    return (
        registry.workdir
        / "data"
        / "docker"
        / "registry"
        / "v2"
        / "blobs"
        / "sha256"
        / hexd[:2]
        / hexd
        / "data"
    )


# -- requests the agent refuses itself -------------------------------------------------------


def test_bad_requests_are_refused_without_contacting_anyone(
    make_registry: Callable[..., Registry],
    small_image: Image,
    make_agent: Callable[..., AgentProcess],
) -> None:
    registry = make_registry()
    other = make_registry()  # a real registry the agent is NOT allowed to contact
    push_image(small_image, registry, "team/app", "v1")
    agent = make_agent(upstreams=f"http://{registry.host}")
    digest = small_image.layer_digests[0]
    mark = registry.log_mark()

    for bad, why in (
        ("sha256:nothex", "digest"),
        ("sha256:" + "a" * 63, "64"),
        ("sha256:" + "A" * 64, "lower-case"),
        ("md5:" + "0" * 32, "md5"),
    ):
        r = raw_get(agent.port, blob_url("team/app", bad))
        assert r.status == 400, (bad, r.status, r.body)
        assert r.error_codes() == ["DIGEST_INVALID"], r.body
        assert why in r.error_text(), r.body

    r = raw_get(agent.port, blob_url("Team/App", digest))
    assert r.status == 400 and r.error_codes() == ["NAME_INVALID"], r.body
    assert "Team/App" in r.error_text()
    r = raw_get(agent.port, "/v2/team//app/manifests/v1")
    assert r.status == 400 and r.error_codes() == ["NAME_INVALID"], r.body

    ns = "?ns=" + quote(other.host, safe="")
    for target in ("/v2/", "/v2/team/app/manifests/v1", blob_url("team/app", digest)):
        r = raw_get(agent.port, target + ns)
        assert r.status == 403, (target, r.body)
        assert r.error_codes() == ["DENIED"] and other.host in r.error_text(), r.body
    assert raw_get(agent.port, "/v2/team/app/manifests/v1" + ns, method="HEAD").status == 403

    for method in ("POST", "PUT", "DELETE", "PATCH"):
        r = raw_get(agent.port, "/v2/team/app/blobs/uploads/", method=method)
        assert r.status == 405, (method, r.status)
        assert r.error_codes() == ["UNSUPPORTED"] and method in r.error_text()

    big = raw_get(agent.port, "/v2/", ("X-Pad", "a" * (33 * KiB)))
    assert big.status == 431, (big.status, big.body)
    many = raw_get(agent.port, "/v2/", *((f"X-Pad-{i}", "b" * 1024) for i in range(40)))
    assert many.status == 431, (many.status, many.body)
    assert raw_get(agent.port, "/v2/", ("X-Pad", "a" * (16 * KiB))).status == 200  # under the limit

    # Nothing above was forwarded anywhere; the registry not in upstreams saw nothing at all.
    other.sync_log()
    assert other.requests_log() == []
    registry.sync_log()
    assert [e["path"] for e in registry.requests_log(since=mark)] == ["/v2/"]  # the 16 KiB one
    # And the agent still serves the real thing.
    ok = raw_get(agent.port, blob_url("team/app", digest))
    assert ok.status == 200 and ok.sha256 == digest


def test_a_request_head_sent_a_byte_at_a_time_is_cut_at_the_read_timeout(
    make_agent: Callable[..., AgentProcess],
) -> None:
    """One header byte every 0.5 s, each well within the 2 s read timeout: the whole head
    still has only the read timeout, then the agent closes the connection (each read having
    its own timeout kept it open as long as bytes trickled in)."""
    agent = make_agent(upstreams="http://127.0.0.1:9", env={"POLLEN_READ_TIMEOUT": "2"})
    with socket.create_connection(("127.0.0.1", agent.port), timeout=5) as sock:
        sock.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        started = time.monotonic()
        closed = False
        for _ in range(20):  # 10 s of trickle at most
            time.sleep(0.5)
            try:
                sock.sendall(b"a")
                sock.setblocking(False)
                try:
                    closed = sock.recv(1024) == b""
                except BlockingIOError:
                    pass
                finally:
                    sock.setblocking(True)
            except (BrokenPipeError, ConnectionResetError):
                closed = True
            if closed:
                break
        assert closed, "the agent kept a trickling request head open"
        assert time.monotonic() - started < 5


def test_tls_client_hello_on_the_plain_port_is_closed_cleanly(
    registry: Registry,
    small_image: Image,
    make_agent: Callable[..., AgentProcess],
) -> None:
    push_image(small_image, registry, "team/app", "v1")
    agent = make_agent(upstreams=f"http://{registry.host}")
    # A real ClientHello, made by Python's TLS stack into memory.
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    hello = outgoing.read()
    assert hello[0] == 0x16

    for _ in range(3):
        with socket.create_connection(("127.0.0.1", agent.port), timeout=10) as s:
            s.sendall(hello)
            # A clean close: EOF (FIN), no HTTP answer, no reset.
            assert s.recv(4096) == b""

    # skopeo's real dance (HTTPS first, then plain HTTP) then works on the same port.
    assert http_status(f"{agent.url}/healthz") == 200
    r = raw_get(agent.port, blob_url("team/app", small_image.layer_digests[0]))
    assert r.status == 200 and r.sha256 == small_image.layer_digests[0]
    assert agent.proc is not None and agent.proc.alive()
    assert "Traceback" not in agent.log_text()


# -- the upstream is missing or failing ------------------------------------------------------


def test_upstream_gone_answers_502_quickly(make_agent: Callable[..., AgentProcess]) -> None:
    dead = free_port()  # nothing listens there
    agent = make_agent(upstreams=f"http://127.0.0.1:{dead}")
    digest = "sha256:" + "1" * 64
    for target in ("/v2/", "/v2/team/app/manifests/v1", blob_url("team/app", digest)):
        t0 = time.monotonic()
        r = raw_get(agent.port, target)
        elapsed = time.monotonic() - t0
        assert r.status == 502, (target, r.status, r.body)
        assert (r.header("content-type") or "").startswith("application/json")
        assert r.error_codes() == ["UNAVAILABLE"], r.body
        assert f"127.0.0.1:{dead}" in r.error_text(), r.body
        assert elapsed < 15, f"{target} took {elapsed:.1f}s"


def test_upstream_503_is_retried_until_it_succeeds(
    registry: Registry,
    make_image: Callable[..., Image],
    make_front: Callable[..., RegistryFront],
    make_agent: Callable[..., AgentProcess],
) -> None:
    image = make_image(layers=(256 * KiB,), seed=21)
    push_image(image, registry, "team/retry", "v1")
    digest = image.layer_digests[0]
    front = make_front(registry.url)
    blob = blob_path_pattern(digest)
    front.fail(blob, 503, times=2)
    agent = make_agent(upstreams=front.url, env={"POLLEN_UPSTREAM_RETRIES": "3"})
    r = raw_get(agent.port, blob_url("team/retry", digest))
    assert r.status == 200 and r.complete and r.sha256 == digest
    assert [e.status for e in front.seen("GET", blob)] == [503, 503, 200]
    assert registry.blob_get_count(digest) == 1


def test_upstream_retries_counts_retries_not_attempts(
    registry: Registry,
    make_image: Callable[..., Image],
    make_front: Callable[..., RegistryFront],
    make_agent: Callable[..., AgentProcess],
) -> None:
    image = make_image(layers=(64 * KiB,), seed=22)
    push_image(image, registry, "team/retry", "v1")
    digest = image.layer_digests[0]
    front = make_front(registry.url)
    blob = blob_path_pattern(digest)
    front.fail(blob, 503, times=1)
    agent = make_agent(upstreams=front.url, env={"POLLEN_UPSTREAM_RETRIES": "1"})
    r = raw_get(agent.port, blob_url("team/retry", digest))
    assert [e.status for e in front.seen("GET", blob)] == [503, 200]
    assert r.status == 200 and r.sha256 == digest


def target_for(kind: str, repo: str, image: Image) -> tuple[str, re.Pattern[str]]:
    """The request a fault is aimed at: the image's first layer, or its manifest by tag."""
    if kind == "blob":
        digest = image.layer_digests[0]
        return blob_url(repo, digest), blob_path_pattern(digest)
    return f"/v2/{repo}/manifests/v1", re.compile(rf"^/v2/{re.escape(repo)}/manifests/v1$")


OCI_ACCEPT = ("Accept", "application/vnd.oci.image.manifest.v1+json")
KINDS = ["manifest", "blob"]


@pytest.mark.parametrize("kind", KINDS)
def test_upstream_always_500_gives_502(
    kind: str,
    registry: Registry,
    make_image: Callable[..., Image],
    make_front: Callable[..., RegistryFront],
    make_agent: Callable[..., AgentProcess],
    tmp_path: Path,
) -> None:
    image = make_image(layers=(64 * KiB,), seed=23)
    push_image(image, registry, "team/broken", "v1")
    front = make_front(registry.url)
    target, pattern = target_for(kind, "team/broken", image)
    front.fail(pattern, 500)
    retries = 3
    agent = make_agent(upstreams=front.url, env={"POLLEN_UPSTREAM_RETRIES": str(retries)})
    t0 = time.monotonic()
    r = raw_get(agent.port, target, OCI_ACCEPT)
    assert time.monotonic() - t0 < 15
    assert r.status == 502, (r.status, r.body)
    assert r.error_codes() == ["UNAVAILABLE"] and front.host in r.error_text(), r.body
    assert "500" in r.error_text()
    attempts = front.count("GET", pattern)
    assert 2 <= attempts <= retries + 1, attempts  # retried, and bounded
    assert raw_get(agent.port, "/healthz").status == 200  # the agent lives on
    # skopeo gives up on a 5xx from the mirror (a blob 500 is fatal for it).
    pull = skopeo_copy_to_dir(f"{agent.host}/team/broken:v1", tmp_path / "pull")
    assert pull.returncode != 0
    assert front.count("GET", pattern) > attempts  # skopeo's request did reach the upstream
    assert registry.blob_get_count(image.layer_digests[0]) == 0


@pytest.mark.parametrize("kind", KINDS)
def test_upstream_429_passes_through(
    kind: str,
    registry: Registry,
    make_image: Callable[..., Image],
    make_front: Callable[..., RegistryFront],
    make_agent: Callable[..., AgentProcess],
) -> None:
    image = make_image(layers=(64 * KiB,), seed=24)
    push_image(image, registry, "team/busy", "v1")
    front = make_front(registry.url)
    target, pattern = target_for(kind, "team/busy", image)
    front.fail(pattern, 429, headers={"Retry-After": "1"})
    agent = make_agent(upstreams=front.url, env={"POLLEN_UPSTREAM_RETRIES": "2"})
    t0 = time.monotonic()
    r = raw_get(agent.port, target, OCI_ACCEPT)
    assert time.monotonic() - t0 < 15
    assert r.status == 429, (r.status, r.body)
    assert r.header("retry-after") == "1"
    assert r.error_codes() == ["TOOMANYREQUESTS"], r.body
    assert 2 <= front.count("GET", pattern) <= 3  # retried after Retry-After, then given up
    # Once the registry recovers, the same agent serves it (nothing bad was kept).
    front.clear_faults()
    ok = raw_get(agent.port, target, OCI_ACCEPT)
    assert ok.status == 200, (ok.status, ok.body)
    if kind == "blob":
        assert ok.sha256 == image.layer_digests[0]
    else:
        assert ok.sha256 == image.manifest_digest


# -- redirects to object storage -------------------------------------------------------------


def test_redirect_to_another_host_drops_authorization(
    tmp_path: Path,
    registry: Registry,
    make_image: Callable[..., Image],
    make_front: Callable[..., RegistryFront],
    make_agent: Callable[..., AgentProcess],
) -> None:
    image = make_image(layers=(192 * KiB, 256 * KiB), seed=31)
    push_image(image, registry, "team/redir", "v1")
    front = make_front(registry.url)
    with ObjectServer(image.layout_dir / "blobs", host="127.0.0.2") as objects:
        front.redirect(blob_path_pattern(), lambda m: objects.location(m["digest"]))
        agent = make_agent(upstreams=front.url)
        first = image.layer_digests[0]
        secret = ("Authorization", "Bearer pollen-test-secret")
        r = raw_get(agent.port, blob_url("team/redir", first), secret)
        assert r.status == 200 and r.complete and r.sha256 == first
        # The credential went to the registry (the auth check and the GET) ...
        assert all(e.has_header("authorization") for e in front.seen(path=blob_path_pattern(first)))
        assert front.count("GET", blob_path_pattern(first)) == 1
        # ... and not across the redirect to another host.
        served = objects.seen("GET", first)
        assert len(served) == 1 and not served[0].has_header("authorization"), served

        pull = skopeo_copy_to_dir(f"{agent.host}/team/redir:v1", tmp_path / "pull")
        assert pull.returncode == 0, pull.stderr
        assert verify_dir_blobs(tmp_path / "pull") == image.blob_digests
        for digest in image.blob_digests:
            assert front.count("GET", blob_path_pattern(digest)) == 1, digest
            assert objects.count("GET", digest) == 1, digest
            assert registry.blob_get_count(digest) == 0  # bytes came from object storage
        assert not any(e.has_header("authorization") for e in objects.seen())


def test_a_manifest_redirect_is_not_followed(
    registry: Registry,
    make_image: Callable[..., Image],
    make_front: Callable[..., RegistryFront],
    make_agent: Callable[..., AgentProcess],
) -> None:
    """Registries serve manifests themselves; a redirect of one (here to another loopback
    address) is answered 502 and its target never contacted. Blob redirects still work
    (above)."""
    image = make_image(layers=(64 * KiB,), seed=32)
    push_image(image, registry, "team/mredir", "v1")
    front = make_front(registry.url)
    with ObjectServer(image.layout_dir / "blobs", host="127.0.0.2") as objects:
        front.redirect(r"^/v2/team/mredir/manifests/", lambda m: objects.location("x"))
        agent = make_agent(upstreams=front.url)
        r = raw_get(agent.port, "/v2/team/mredir/manifests/v1")
        assert r.status == 502 and b"redirected" in r.body, r.body
        assert objects.count() == 0


# -- bytes that do not match their digest ----------------------------------------------------


def test_corrupt_upstream_layer_is_cut_short_and_never_cached(
    tmp_path: Path,
    registry: Registry,
    make_image: Callable[..., Image],
    make_agent: Callable[..., AgentProcess],
) -> None:
    image = make_image(layers=(320 * KiB,), seed=41)
    push_image(image, registry, "team/bad", "v1")
    digest = image.layer_digests[0]
    size = image.layers[0].size
    stored = registry_blob_file(registry, digest)
    assert stored.stat().st_size == size
    flip_byte(stored, size // 2)
    agent = make_agent(
        upstreams=f"http://{registry.host}", env={"POLLEN_CACHE_CHUNK_SIZE": "64KiB"}
    )

    for attempt in (1, 2):
        r = raw_get(agent.port, blob_url("team/bad", digest))
        assert r.status == 200 and r.content_length == size
        assert not r.complete, "a layer with wrong bytes must be cut short"
        assert len(r.body) < size
        assert registry.blob_get_count(digest) == attempt, "nothing wrong may be cached"
        assert raw_get(agent.port, "/healthz").status == 200

    status = agent_status(agent)
    assert status["cache"]["layers"] == 0 and status["cache"]["used"] == 0, status
    assert all(p["digest"] != digest for p in status["layers_in_flight"]), status
    assert not cache_blob_dir(agent.cache_path, digest).exists()
    assert f"layer {digest}: upstream bytes hash to" in agent.log_text()

    pull = skopeo_copy_to_dir(f"{agent.host}/team/bad:v1", tmp_path / "pull")
    assert pull.returncode != 0
    assert registry.blob_get_count(digest) == 3


# -- stopping ----------------------------------------------------------------------------------


def test_sigterm_finishes_the_response_in_flight_then_exits_0(
    registry: Registry,
    make_image: Callable[..., Image],
    make_front: Callable[..., RegistryFront],
    make_agent: Callable[..., AgentProcess],
) -> None:
    image = make_image(layers=(1 * MiB,), seed=51)
    push_image(image, registry, "team/slow", "v1")
    digest = image.layer_digests[0]
    front = make_front(registry.url)
    front.trickle(blob_path_pattern(digest), piece=64 * KiB, delay=0.1)  # ~1.6 s for the layer
    grace = 10.0
    agent = make_agent(
        upstreams=front.url,
        env={"POLLEN_SHUTDOWN_GRACE": f"{grace:g}s", "POLLEN_CACHE_CHUNK_SIZE": "64KiB"},
    )
    assert agent.proc is not None and agent.proc.popen is not None
    conn = http.client.HTTPConnection("127.0.0.1", agent.port, timeout=30)
    try:
        conn.request("GET", blob_url("team/slow", digest))
        resp = conn.getresponse()
        assert resp.status == 200
        head = resp.read(64 * KiB)  # the download is under way
        t0 = time.monotonic()
        os.kill(agent.proc.pid, signal.SIGTERM)

        wait_until(
            lambda: http_status(f"{agent.url}/readyz", timeout=1.0) != 200,
            timeout=5,
            what="/readyz to stop answering 200 after SIGTERM",
        )

        def refused() -> bool:
            try:
                socket.create_connection(("127.0.0.1", agent.port), timeout=1).close()
            except (ConnectionRefusedError, ConnectionResetError):
                # Reset: the kernel's backlog took the handshake as the listener closed.
                return True
            return False

        wait_until(refused, timeout=5, what="new connections to be refused while draining")
        rest = resp.read()
    finally:
        conn.close()
    body = head + rest
    assert len(body) == image.layers[0].size
    assert "sha256:" + hashlib.sha256(body).hexdigest() == digest
    assert agent.proc.popen.wait(timeout=grace + 5) == 0
    assert time.monotonic() - t0 < grace + 5
    log = agent.log_text()
    # The layer finished after the signal: the response really was in flight.
    assert log.index("received SIGTERM") < log.index(f"layer {digest}: ")
    assert "agent stopped" in log


def test_kill_9_mid_layer_then_restart_and_disk_corruption(
    tmp_path: Path,
    registry: Registry,
    make_image: Callable[..., Image],
    make_front: Callable[..., RegistryFront],
    make_agent: Callable[..., AgentProcess],
) -> None:
    image = make_image(layers=(1 * MiB, 256 * KiB), seed=61)
    push_image(image, registry, "team/crash", "v1")
    big = image.layer_digests[0]
    front = make_front(registry.url)
    front.trickle(blob_path_pattern(big), piece=64 * KiB, delay=0.2, times=1)
    env = {"POLLEN_CACHE_CHUNK_SIZE": "64KiB"}
    first = make_agent(upstreams=front.url, env=env)
    conn = http.client.HTTPConnection("127.0.0.1", first.port, timeout=30)
    try:
        conn.request("GET", blob_url("team/crash", big))
        resp = conn.getresponse()
        assert resp.status == 200
        assert len(resp.read(128 * KiB)) == 128 * KiB  # chunks of the layer are on disk
        index = cache_blob_dir(first.cache_path, big) / "index"
        assert index.exists() and "\nc 0 " in index.read_text()
        assert "\nv\n" not in index.read_text()
        first.kill()
    finally:
        conn.close()

    second = make_agent(
        upstreams=front.url, env={**env, "POLLEN_CACHE_PATH": str(first.cache_path)}
    )
    # The chunks on disk survive the crash (checked against their xxh3), for peers and for
    # the next download of the layer; no client reads the layer before it verifies.
    assert "0 layers kept" in second.log_text()
    assert "1 partial kept" in second.log_text()
    mark = registry.log_mark()
    pull = skopeo_copy_to_dir(f"{second.host}/team/crash:v1", tmp_path / "pull")
    assert pull.returncode == 0, pull.stderr
    assert verify_dir_blobs(tmp_path / "pull") == image.blob_digests
    assert registry.blob_get_count(big, since=mark) == 1
    assert f"resuming {big}" in second.log_text()

    # Damage the cached layer on disk: detected, and the client still gets the right bytes.
    data = cache_blob_dir(first.cache_path, big) / "data"
    flip_byte(data, 100 * KiB)  # in chunk 1
    r = raw_get(second.port, blob_url("team/crash", big))
    assert r.status == 200 and r.complete and r.sha256 == big
    assert f"chunk 1 of {big} failed its checksum" in second.log_text()
    # Re-fetched from the registry once, and cached again (test below).
    assert registry.blob_get_count(big, since=mark) >= 2
    assert raw_get(second.port, "/healthz").status == 200


def test_layer_refetched_after_disk_corruption_is_cached_again(
    registry: Registry,
    make_image: Callable[..., Image],
    make_agent: Callable[..., AgentProcess],
) -> None:
    image = make_image(layers=(512 * KiB,), seed=62)
    push_image(image, registry, "team/heal", "v1")
    digest = image.layer_digests[0]
    agent = make_agent(
        upstreams=f"http://{registry.host}", env={"POLLEN_CACHE_CHUNK_SIZE": "64KiB"}
    )
    path = blob_url("team/heal", digest)
    assert raw_get(agent.port, path).sha256 == digest
    flip_byte(cache_blob_dir(agent.cache_path, digest) / "data", 200 * KiB)
    r = raw_get(agent.port, path)
    assert r.status == 200 and r.complete and r.sha256 == digest  # detected, refetched
    assert f"of {digest} failed its checksum" in agent.log_text()
    assert registry.blob_get_count(digest) == 2, "re-fetched exactly once"
    for _ in range(2):
        r = raw_get(agent.port, path)
        assert r.status == 200 and r.complete and r.sha256 == digest
    assert registry.blob_get_count(digest) == 2, "the fresh copy must be served from the cache"
    assert "No such file" not in agent.log_text()
