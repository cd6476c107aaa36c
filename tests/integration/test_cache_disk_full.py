"""A full or unwritable cache disk costs caching, never a pull.

The cache lives on a real tmpfs mounted by the test with a small size, so writes really fail
with ENOSPC; the layer must still reach the client intact, and caching must come back once
space returns.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from harness import (
    AgentProcess,
    Image,
    Registry,
    pull_from,
    push_image,
    wait_until,
)

MiB = 1 << 20


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs (root only), unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount_point = tmp_path / "smallfs"
    mount_point.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount_point)], check=True)
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_disk_full_streams_the_layer_and_caching_resumes(
    tmp_path: Path,
    small_fs: Path,
    registry: Registry,
    make_image: Callable[..., Image],
    make_agent: Callable[..., AgentProcess],
) -> None:
    image = make_image(layers=(int(1.5 * MiB),), seed=11)
    push_image(image, registry, "team/app", "v1")
    layer = image.layer_digests[0]
    # Leave ~0.5 MiB free: the 1.5 MiB layer is admitted (capacity is 1 GiB) but its writes
    # run out of space part way through.
    filler = small_fs / "filler"
    filler.write_bytes(b"\0" * int(1.5 * MiB))
    agent = make_agent(
        upstreams=f"http://{registry.host}",
        env={
            "POLLEN_CACHE_PATH": str(small_fs / "cache"),
            "POLLEN_CACHE_CAPACITY": "1GiB",
            "POLLEN_CACHE_CHUNK_SIZE": "256KiB",
            "POLLEN_CACHE_WRITE_RETRY": "1s",
        },
    )
    assert layer in pull_from(agent, "team/app:v1", tmp_path / "pull1")
    assert "write failed" in agent.log_text()
    assert registry.blob_get_count(layer) >= 1
    # Space returns: once the retry pause is over a pull caches the layer, and from then on
    # pulls are hits (the registry sends it no more).
    filler.unlink()
    attempt = 0

    def pull_was_a_hit() -> bool:
        nonlocal attempt
        attempt += 1
        before = registry.blob_get_count(layer)
        assert layer in pull_from(agent, "team/app:v1", tmp_path / f"pull-{attempt}")
        return registry.blob_get_count(layer) == before

    wait_until(pull_was_a_hit, timeout=30, interval=0.5, what="caching to resume")
    assert attempt >= 2, "the first pull after the disk filled up must not have been a hit"


def test_unwritable_cache_directory_still_serves(
    tmp_path: Path,
    registry: Registry,
    make_image: Callable[..., Image],
    make_agent: Callable[..., AgentProcess],
) -> None:
    image = make_image(layers=(512 * 1024,), seed=12)
    push_image(image, registry, "team/app", "v1")
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the cache directory should be\n")
    agent = make_agent(
        upstreams=f"http://{registry.host}",
        env={"POLLEN_CACHE_PATH": str(blocker / "cache")},
    )
    assert image.layer_digests[0] in pull_from(agent, "team/app:v1", tmp_path / "pull1")
    assert image.layer_digests[0] in pull_from(agent, "team/app:v1", tmp_path / "pull2")
    assert "write failed" in agent.log_text()
