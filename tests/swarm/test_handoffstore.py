"""A root's handoff records on disk: written after each handoff, read back by the next run, and
an unusable file set aside rather than trusted or fatal."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from agent.swarm.handoffstore import FILE_NAME, HandoffStore
from agent.swarm.ownership import HANDOFF_MIN_CHUNKS, Fetching, Handoffs

ME, NEXT = "10.0.0.11:65002", "10.0.0.12:65002"
DIGEST = "sha256:" + "a" * 64
BUSY = Fetching("sha256:" + "b" * 64, HANDOFF_MIN_CHUNKS)


async def test_records_written_by_one_run_are_read_by_the_next(tmp_path: Path) -> None:
    handoffs = Handoffs()
    handoffs.decide(DIGEST, me=ME, order=[ME, NEXT], held=False, fetching=[BUSY], now=0.0)
    await HandoffStore(tmp_path).save(handoffs)
    after_restart = Handoffs()
    await HandoffStore(tmp_path).load(after_restart)
    assert after_restart.target(DIGEST, trio.current_time()) == NEXT
    assert not list(tmp_path.glob("*.tmp"))


async def test_no_file_is_no_records(tmp_path: Path) -> None:
    handoffs = Handoffs()
    await HandoffStore(tmp_path).load(handoffs)
    assert len(handoffs) == 0


async def test_an_unusable_file_is_set_aside_and_ignored(tmp_path: Path) -> None:
    (tmp_path / FILE_NAME).write_bytes(b'{"sha256:short": "10.0.0.1:1"}')
    handoffs = Handoffs()
    await HandoffStore(tmp_path).load(handoffs)
    assert len(handoffs) == 0
    assert not (tmp_path / FILE_NAME).exists()
    assert (tmp_path / "handoffs.bad").read_bytes().startswith(b'{"sha256:short"')


async def test_a_write_that_fails_is_logged_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = HandoffStore(tmp_path / "gone")  # its directory does not exist
    await store.save(Handoffs())
    assert "cannot write" in caplog.text
