"""Real clients pulling real images through a real agent process, counted at the registry.

Every test checks the digests of what the client received and, where it matters, that a
second pull did not make the registry send a blob again (its own access log says so).
"""

from __future__ import annotations

import concurrent.futures
import hashlib
from collections.abc import Callable
from pathlib import Path

from harness import (
    AgentProcess,
    Containerd,
    Image,
    Registry,
    TLSFiles,
    blob_gets,
    etc_hosts_entry,
    http_get,
    make_cert_dir,
    pull_dir,
    push_image,
    write_registries_conf,
)

MiB = 1 << 20


def upstream_of(registry: Registry) -> str:
    return f"http://{registry.host}"


def test_skopeo_direct_pull_is_cached(
    tmp_path: Path,
    registry: Registry,
    small_image: Image,
    make_agent: Callable[..., AgentProcess],
) -> None:
    push_image(small_image, registry, "team/app", "v1")
    agent = make_agent(upstreams=upstream_of(registry))
    first = pull_dir(f"{agent.host}/team/app:v1", tmp_path / "pull1")
    assert set(small_image.layer_digests) <= first
    assert all(n == 1 for n in blob_gets(registry, small_image).values())
    second = pull_dir(f"{agent.host}/team/app:v1", tmp_path / "pull2")
    assert second == first
    assert all(n == 1 for n in blob_gets(registry, small_image).values()), (
        "the second pull must come from the agent's cache"
    )


def test_skopeo_through_registries_conf_mirror(
    tmp_path: Path,
    registry: Registry,
    small_image: Image,
    make_agent: Callable[..., AgentProcess],
) -> None:
    push_image(small_image, registry, "team/app", "v1")
    agent = make_agent(upstreams=upstream_of(registry))
    conf = write_registries_conf(tmp_path / "registries.conf", {registry.host: [agent.host]})
    mark = registry.log_mark()
    got = pull_dir(f"{registry.host}/team/app:v1", tmp_path / "pull", registries_conf=conf)
    assert set(small_image.layer_digests) <= got
    assert all(n == 1 for n in blob_gets(registry, small_image).values())
    # The second pull's blobs came from the agent's cache: proof the mirror was in the path.
    mark = registry.log_mark()
    pull_dir(f"{registry.host}/team/app:v1", tmp_path / "pull2", registries_conf=conf)
    assert all(n == 1 for n in blob_gets(registry, small_image).values())
    assert any("/manifests/" in e["path"] for e in registry.requests_log(since=mark))


def test_containerd_fetch_and_pull_with_hosts_toml_send_ns(
    registry: Registry,
    small_image: Image,
    containerd: Containerd,
    make_agent: Callable[..., AgentProcess],
) -> None:
    push_image(small_image, registry, "team/app", "v1")
    # The registry is named "localhost:<port>" so containerd adds ?ns= for the mirror. The
    # agent's default upstream is a name that does not resolve: only ns= can route the pull.
    upstream = f"http://localhost:{registry.port}"
    agent = make_agent(upstreams=f"https://unused.invalid,{upstream}")
    name = f"localhost:{registry.port}"
    containerd.write_hosts_toml(name, upstream, agent.url)
    containerd.fetch(f"{name}/team/app:v1")
    assert set(small_image.layer_digests) <= containerd.content_digests()
    assert all(n == 1 for n in blob_gets(registry, small_image).values())
    containerd.pull(f"{name}/team/app:v1", namespace="second")
    assert all(n == 1 for n in blob_gets(registry, small_image).values())


def test_cri_pull_through_agent(
    registry: Registry,
    small_image: Image,
    containerd: Containerd,
    make_agent: Callable[..., AgentProcess],
) -> None:
    push_image(small_image, registry, "team/app", "v1")
    upstream = f"http://localhost:{registry.port}"
    agent = make_agent(upstreams=upstream)
    name = f"localhost:{registry.port}"
    containerd.write_hosts_toml(name, upstream, agent.url)
    ref = containerd.cri_pull(f"{name}/team/app:v1")
    assert ref
    assert set(small_image.layer_digests) <= containerd.content_digests("k8s.io")
    counts = blob_gets(registry, small_image)
    assert all(n == 1 for n in counts.values()), counts
    containerd.cri_remove_image(f"{name}/team/app:v1")


def test_distributed_host_name_resolves_upstream(
    tmp_path: Path,
    registry: Registry,
    small_image: Image,
    make_agent: Callable[..., AgentProcess],
) -> None:
    push_image(small_image, registry, "team/app", "v1")
    with (
        etc_hosts_entry("reg.pollen-test.internal"),
        etc_hosts_entry("reg.distributed.pollen-test.internal"),
    ):
        agent = make_agent(
            upstreams=f"http://127.0.0.1:1,http://reg.pollen-test.internal:{registry.port}"
        )
        got = pull_dir(
            f"reg.distributed.pollen-test.internal:{agent.port}/team/app:v1", tmp_path / "pull"
        )
    assert set(small_image.layer_digests) <= got
    assert all(n == 1 for n in blob_gets(registry, small_image).values())


def test_tls_on_the_proxy_port(
    tmp_path: Path,
    registry: Registry,
    small_image: Image,
    tls_files: TLSFiles,
    make_agent: Callable[..., AgentProcess],
) -> None:
    push_image(small_image, registry, "team/app", "v1")
    agent = make_agent(
        upstreams=upstream_of(registry), tls=(tls_files.cert, tls_files.key), ca=tls_files.ca
    )
    cert_dir = make_cert_dir(tls_files.ca, tmp_path / "certs")
    got = pull_dir(
        f"{agent.host}/team/app:v1", tmp_path / "pull", tls_verify=True, cert_dir=cert_dir
    )
    assert set(small_image.layer_digests) <= got


def test_layer_bigger_than_the_cache_still_pulls(
    tmp_path: Path,
    registry: Registry,
    make_image: Callable[..., Image],
    make_agent: Callable[..., AgentProcess],
) -> None:
    image = make_image(layers=(3 * MiB, 256 * 1024), seed=7)
    push_image(image, registry, "team/big", "v1")
    agent = make_agent(
        upstreams=upstream_of(registry),
        env={"POLLEN_CACHE_CAPACITY": "1MiB", "POLLEN_CACHE_CHUNK_SIZE": "256KiB"},
    )
    got = pull_dir(f"{agent.host}/team/big:v1", tmp_path / "pull")
    assert set(image.layer_digests) <= got
    cache_bytes = sum(p.stat().st_size for p in agent.cache_path.rglob("data"))
    assert cache_bytes <= MiB


def test_concurrent_requests_share_one_upstream_fetch(
    registry: Registry,
    make_image: Callable[..., Image],
    make_agent: Callable[..., AgentProcess],
) -> None:
    image = make_image(layers=(8 * MiB,), seed=3)
    push_image(image, registry, "team/one", "v1")
    agent = make_agent(upstreams=upstream_of(registry), env={"POLLEN_CACHE_CHUNK_SIZE": "1MiB"})
    digest = image.layer_digests[0]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        path = f"/v2/team/one/blobs/{digest}"
        results = list(pool.map(lambda _: http_get("127.0.0.1", agent.port, path), range(8)))
    for status, _headers, body in results:
        assert status == 200
        assert "sha256:" + hashlib.sha256(body).hexdigest() == digest
    assert registry.blob_get_count(digest) == 1


def test_range_requests_on_cached_and_uncached_blobs(
    registry: Registry,
    make_image: Callable[..., Image],
    make_agent: Callable[..., AgentProcess],
) -> None:
    image = make_image(layers=(3 * MiB,), seed=5)
    push_image(image, registry, "team/range", "v1")
    agent = make_agent(upstreams=upstream_of(registry), env={"POLLEN_CACHE_CHUNK_SIZE": "1MiB"})
    digest = image.layer_digests[0]
    whole = image.blob_path(digest).read_bytes()
    path = f"/v2/team/range/blobs/{digest}"
    # Uncached: a resume-style range straight away (the download starts behind it).
    status, headers, body = http_get("127.0.0.1", agent.port, path, {"Range": "bytes=1000000-"})
    assert status == 206
    assert headers["content-range"] == f"bytes 1000000-{len(whole) - 1}/{len(whole)}"
    assert body == whole[1000000:]
    # Cached: a middle range crossing a chunk boundary, a suffix, and an unsatisfiable one.
    status, _, body = http_get("127.0.0.1", agent.port, path, {"Range": "bytes=1048000-1049999"})
    assert (status, body) == (206, whole[1048000:1050000])
    status, _, body = http_get("127.0.0.1", agent.port, path, {"Range": "bytes=-10"})
    assert (status, body) == (206, whole[-10:])
    status, headers, _ = http_get("127.0.0.1", agent.port, path, {"Range": f"bytes={len(whole)}-"})
    assert status == 416 and headers["content-range"] == f"bytes */{len(whole)}"
    # A position of 5000 digits (past Python's int() limit: it was a 500 with a traceback).
    status, headers, _ = http_get(
        "127.0.0.1", agent.port, path, {"Range": "bytes=" + "9" * 5000 + "-"}
    )
    assert status == 416 and headers["content-range"] == f"bytes */{len(whole)}"
    status, _, body = http_get("127.0.0.1", agent.port, path, {"Range": "bytes=-" + "9" * 5000})
    assert (status, body) == (206, whole)
    assert registry.blob_get_count(digest) == 1
