"""The small requests tests make of agents and registries: one home instead of a copy per file.

- `blob_url`, `blob_gets`: a blob's API path, and how often the registry served each layer
- `http_get`: one GET with http.client (status, lower-cased headers, body)
- `raw_get`: one request to 127.0.0.1 through `rawhttp` (every header line, cut bodies kept)
- `agent_status`: an agent's ``/_pollen/status`` document
- `pull_dir`, `pull_from`: skopeo into a directory, failing unless every blob verifies
"""

from __future__ import annotations

import http.client
import json
from pathlib import Path
from typing import Any

from .agent import AgentProcess
from .images import Image, skopeo_copy_to_dir, verify_dir_blobs
from .rawhttp import RawResponse, raw_request
from .registry import Registry


def blob_url(repo: str, digest: str) -> str:
    return f"/v2/{repo}/blobs/{digest}"


def blob_gets(registry: Registry, image: Image) -> dict[str, int]:
    """GETs the registry answered for each of the image's layers (its access log)."""
    return {d: registry.blob_get_count(d) for d in image.layer_digests}


def http_get(
    host: str,
    port: int,
    path: str,
    headers: dict[str, str] | None = None,
    *,
    timeout: float = 30,
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body
    finally:
        conn.close()


def raw_get(
    port: int, target: str, *headers: tuple[str, str], method: str = "GET", **kw: Any
) -> RawResponse:
    """`method target` to 127.0.0.1:`port` with these header lines (GET unless told)."""
    return raw_request("127.0.0.1", port, method, target, headers, **kw)


def agent_status(agent: AgentProcess) -> dict[str, Any]:
    status, _, body = http_get(agent.address, agent.port, "/_pollen/status", timeout=10)
    assert status == 200, body[:500]
    return json.loads(body)


def pull_dir(ref: str, dest: Path, **kwargs: Any) -> set[str]:
    """skopeo copy into dest; returns the verified blob digests (fails on any mismatch)."""
    result = skopeo_copy_to_dir(ref, dest, **kwargs)
    assert result.returncode == 0, result.stderr
    return verify_dir_blobs(dest)


def pull_from(agent: AgentProcess, ref: str, dest: Path) -> set[str]:
    """`pull_dir` of `<agent>/<ref>`: the agent as the registry skopeo talks to."""
    return pull_dir(f"{agent.host}/{ref}", dest)


def cache_blob_dir(cache_path: Path, digest: str) -> Path:
    """Where an agent's cache keeps a layer (its data and index files)."""
    return cache_path / "blobs" / "sha256" / digest.split(":", 1)[1]
