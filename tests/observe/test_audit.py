"""The audit log writer: one task, a bounded queue that drops rather than waits, SIGHUP reopen."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import trio

from agent.observe.audit import AuditLog
from agent.observe.auditline import LINE_RE


async def wait_written(log: AuditLog, n: int) -> None:
    with trio.fail_after(5):
        while log.written < n:
            await trio.sleep(0.01)


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


async def test_file_mode_writes_exact_lines_and_reopens(tmp_path: Path) -> None:
    log = AuditLog(enabled=True, mode="file", log_dir=str(tmp_path / "logs"))
    path = tmp_path / "logs" / "audit.log"
    async with trio.open_nursery() as nursery:
        await nursery.start(log.run)
        assert path.exists()  # the directory is made and the file opened at start
        log.record("filewrite", "/cache/data", 4096, 4096, 120)
        log.record("fileread", "/cache/data", 0, -1, 7)
        await wait_written(log, 2)
        first = lines(path)
        assert len(first) == 2 and all(LINE_RE.fullmatch(ln) for ln in first)
        assert first[1].endswith("fileread[pathname=/cache/data][offset=0][size=-1][latency=7]")
        # The th= of both lines names this (the calling) task.
        assert len({LINE_RE.fullmatch(ln)["task"] for ln in first}) == 1  # type: ignore[index]

        path.rename(tmp_path / "logs" / "audit.log.1")
        await log.reopen()
        log.record("http:pread", "/https://r/v2/a/blobs/sha256:00", 0, 10, 5)
        await wait_written(log, 3)
        assert len(lines(path)) == 1 and "http:pread" in lines(path)[0]
        assert len(lines(tmp_path / "logs" / "audit.log.1")) == 2
        assert log.statistics()["reopens"] == 1
        nursery.cancel_scope.cancel()


async def test_a_full_queue_drops_instead_of_waiting() -> None:
    out = io.StringIO()
    log = AuditLog(enabled=True, mode="stdout", capacity=2, stream=out)
    # No writer running: the queue fills, and record() still returns at once.
    with trio.fail_after(1):
        for i in range(5):
            log.record("rpc:pread", f"/p2p/v1/chunk/x/{i}", 0, 1, 1)
    assert log.dropped == 3
    async with trio.open_nursery() as nursery:
        await nursery.start(log.run)
        await wait_written(log, 2)
        nursery.cancel_scope.cancel()
    assert [ln.split("|")[3][:9] for ln in out.getvalue().splitlines()] == ["rpc:pread"] * 2
    assert log.statistics()["dropped"] == 3


async def test_lines_queued_at_shutdown_are_written() -> None:
    out = io.StringIO()
    log = AuditLog(enabled=True, mode="stdout", stream=out)
    async with trio.open_nursery() as nursery:
        await nursery.start(log.run)
        for i in range(100):
            log.record("download", "/https://r/v2/a/blobs/sha256:00", i, 1, 1)
        nursery.cancel_scope.cancel()  # before the writer ran: the last flush writes them
    assert len(out.getvalue().splitlines()) == 100


async def test_disabled_log_records_nothing() -> None:
    out = io.StringIO()
    log = AuditLog(enabled=False, stream=out)
    log.record("download", "/x", 0, 1, 1)
    async with trio.open_nursery() as nursery:
        await nursery.start(log.run)  # returns at once
    await log.reopen()
    assert out.getvalue() == "" and log.statistics()["pending"] == 0


async def test_an_unwritable_directory_counts_errors(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    log = AuditLog(enabled=True, mode="file", log_dir=str(blocker))
    async with trio.open_nursery() as nursery:
        await nursery.start(log.run)
        log.record("download", "/x", 0, 1, 1)
        with trio.fail_after(5):
            while log.errors < 1:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert log.written == 0


def test_bad_mode_is_refused() -> None:
    with pytest.raises(ValueError):
        AuditLog(enabled=True, mode="syslog")
