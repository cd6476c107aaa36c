"""The proxy port on IPv6 and IPv4 at once, and the node's upload cap (throttleLimitMB)."""

from __future__ import annotations

import hashlib
import http.client
import time
from collections.abc import Callable
from pathlib import Path

from harness import (
    AgentProcess,
    Image,
    Registry,
    free_port,
    pull_dir,
    push_image,
)

MiB = 1 << 20


def test_listens_on_ipv4_and_ipv6(
    tmp_path: Path,
    registry: Registry,
    small_image: Image,
    make_agent: Callable[..., AgentProcess],
) -> None:
    push_image(small_image, registry, "team/app", "v1")
    port = free_port("::")  # free on both families (dual-stack), as the agent binds it
    # "::" (like the default 0.0.0.0) means every address, on both families.
    agent = make_agent(
        upstreams=f"http://{registry.host}", env={"POLLEN_LISTEN_ADDRESS": "::"}, port=port
    )
    # skopeo cannot name a bracketed IPv6 registry, so IPv6 is checked with a plain client.
    assert set(small_image.layer_digests) <= pull_dir(
        f"127.0.0.1:{port}/team/app:v1", tmp_path / "v4"
    )
    for digest in small_image.layer_digests:
        conn = http.client.HTTPConnection("::1", port, timeout=30)
        conn.request("GET", f"/v2/team/app/blobs/{digest}")
        response = conn.getresponse()
        body = response.read()
        conn.close()
        assert response.status == 200
        assert "sha256:" + hashlib.sha256(body).hexdigest() == digest
    assert agent.proc is not None and agent.proc.alive()


def test_throttle_caps_bytes_served(
    registry: Registry,
    make_image: Callable[..., Image],
    make_agent: Callable[..., AgentProcess],
) -> None:
    image = make_image(layers=(6 * MiB,), seed=41)
    push_image(image, registry, "team/app", "v1")
    agent = make_agent(
        upstreams=f"http://{registry.host}",
        env={"POLLEN_THROTTLE_LIMIT_MB": "2", "POLLEN_CACHE_CHUNK_SIZE": "256KiB"},
    )
    digest = image.layer_digests[0]

    def get() -> tuple[bytes, float]:
        conn = http.client.HTTPConnection("127.0.0.1", agent.port, timeout=60)
        started = time.monotonic()
        conn.request("GET", f"/v2/team/app/blobs/{digest}")
        body = conn.getresponse().read()
        conn.close()
        return body, time.monotonic() - started

    get()  # fill the cache
    body, seconds = get()
    assert "sha256:" + hashlib.sha256(body).hexdigest() == digest
    # 6 MiB at 2 MiB/s (one 256 KiB chunk of burst): it cannot take much less than 3 s.
    assert seconds >= 2.5, f"served 6 MiB in {seconds:.2f}s past a 2 MiB/s cap"
