"""Every native I/O engine under a real agent: a pull that fills the cache, a pull served from
it, and the engine the status page reports (with the reason a preferred one was skipped)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from harness import (
    AgentProcess,
    Image,
    Registry,
    agent_status,
    pull_from,
    push_image,
)

MiB = 1 << 20


@pytest.mark.parametrize(
    ("aio", "engine", "expected"),
    [
        ("1", "auto", "io_uring"),
        ("1", "aio", "aio"),
        ("1", "pread", "pread"),
        ("0", "auto", "pread"),
    ],
)
def test_pull_through_each_engine(
    tmp_path: Path,
    registry: Registry,
    make_image: Callable[..., Image],
    make_agent: Callable[..., AgentProcess],
    aio: str,
    engine: str,
    expected: str,
) -> None:
    # Layer sizes that are not multiples of 4096: the O_DIRECT tail must come back exact.
    image = make_image(layers=(3 * MiB + 123, 777), seed=31)
    push_image(image, registry, "team/app", "v1")
    agent = make_agent(
        upstreams=f"http://{registry.host}",
        env={
            "POLLEN_CACHE_AIO_ENABLE": aio,
            "POLLEN_CACHE_IO_ENGINE": engine,
            "POLLEN_CACHE_CHUNK_SIZE": "1MiB",
        },
    )
    io = agent_status(agent)["io_engine"]
    assert io["name"] == expected
    assert io["direct"] == (aio == "1")
    for attempt in ("cold", "warm"):
        assert set(image.layer_digests) <= pull_from(agent, "team/app:v1", tmp_path / attempt)
    for digest in image.layer_digests:
        assert registry.blob_get_count(digest) == 1, "the warm pull must come from the cache"
    io = agent_status(agent)["io_engine"]
    # The warm pull reads through the engine with O_DIRECT; through the page cache each chunk
    # is checked where it lies and sent with sendfile, no engine read at all.
    assert io["writes"] > 0 and (io["reads"] > 0) == (aio == "1")
    if aio == "1":
        assert io["copies"] == 0, "chunk buffers are aligned: O_DIRECT writes need no copy"
