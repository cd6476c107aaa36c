"""The audit log: records handed over by the data path, written by one task, never waited for.

Theory of operation. `AuditLog.record` is called on the data path (a chunk read, a response
sent): it stamps the time and the task and puts the record into a bounded memory channel with
``send_nowait``. When the channel is full the record is counted in ``dropped`` and forgotten:
an audit log that slows the pulls it describes would be worse than one with a gap. One writer
task (`run`, started in the daemon's nursery) takes records in batches, formats them
(`agent.observe.auditline`, pure) and writes each batch in a worker thread, so a slow disk
never stalls the event loop. ``logAuditMode`` picks stdout or ``<logDir>/audit.log``; `reopen`
(SIGHUP, for logrotate) closes the file and opens the path again, so lines after it land in a new
file.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import TextIO

import trio

from agent.core.config import Config
from agent.observe.auditline import AuditRecord, format_line

log = logging.getLogger(__name__)

CHANNEL_RECORDS = 8192  # ~1-2 MiB of pending records at most; beyond that they are dropped
BATCH_RECORDS = 1024
REOPEN_RETRY = 5.0  # seconds between attempts to open a file that could not be opened


def _task_id() -> int:
    try:
        return id(trio.lowlevel.current_task())
    except RuntimeError:  # not on the trio thread
        return 0


class AuditLog:
    def __init__(
        self,
        *,
        enabled: bool,
        mode: str = "stdout",
        log_dir: str = "",
        capacity: int = CHANNEL_RECORDS,
        stream: TextIO | None = None,
    ) -> None:
        if mode not in ("stdout", "file"):
            raise ValueError(f"audit mode must be stdout or file, got {mode!r}")
        self.enabled = enabled
        self.mode = mode
        self.path = os.path.join(log_dir, "audit.log") if mode == "file" else ""
        self._stream = stream
        self._send, self._receive = trio.open_memory_channel[AuditRecord](capacity)
        self._file: TextIO | None = None
        self._next_open = 0.0
        self._lock = trio.Lock()
        self.written = 0
        self.dropped = 0
        self.errors = 0
        self.reopens = 0

    @classmethod
    def from_config(cls, config: Config) -> AuditLog:
        return cls(enabled=config.log_audit, mode=config.log_audit_mode, log_dir=config.log_dir)

    def record(
        self, op: str, pathname: str, offset: int, size: int, latency_us: int, task: int = 0
    ) -> None:
        """Queue one line; never blocks (a full queue drops it and counts it)."""
        if not self.enabled:
            return
        rec = AuditRecord(
            when=time.time(),
            task=task or _task_id(),
            op=op,
            pathname=pathname,
            offset=offset,
            size=size,
            latency_us=latency_us,
        )
        try:
            self._send.send_nowait(rec)
        except trio.WouldBlock:
            self.dropped += 1

    def statistics(self) -> dict[str, object]:
        return {
            "enabled": self.enabled,
            "mode": self.mode,
            "path": self.path,
            "written": self.written,
            "dropped": self.dropped,
            "errors": self.errors,
            "pending": self._receive.statistics().current_buffer_used,
            "reopens": self.reopens,
        }

    # -- the writer -------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Write records until cancelled; then write what is still queued and close."""
        if not self.enabled:
            task_status.started()
            return
        async with self._lock:
            await trio.to_thread.run_sync(self._open)
        task_status.started()
        log.info("audit log to %s", self.path or "stdout")
        batch: list[AuditRecord] = []  # taken from the queue, not yet written
        try:
            while True:
                batch.append(await self._receive.receive())
                while len(batch) < BATCH_RECORDS:
                    try:
                        batch.append(self._receive.receive_nowait())
                    except trio.WouldBlock:
                        break
                text = "".join(format_line(r) + "\n" for r in batch)
                async with self._lock:
                    await trio.to_thread.run_sync(self._write, text, len(batch))
                batch = []
        finally:
            # Shutting down: what was taken or is still queued is written here, blocking.
            while True:
                try:
                    batch.append(self._receive.receive_nowait())
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
            if batch:
                self._write("".join(format_line(r) + "\n" for r in batch), len(batch))
            self._close()

    async def reopen(self) -> None:
        """Close the file and open its path again (after logrotate moved it)."""
        if not self.enabled or self.mode != "file":
            return
        async with self._lock:
            await trio.to_thread.run_sync(self._reopen)

    # -- blocking parts, run in a worker thread -------------------------------------------

    def _reopen(self) -> None:
        self._close()
        self._next_open = 0.0
        self._open()
        self.reopens += 1
        log.info("audit log reopened: %s", self.path)

    def _open(self) -> None:
        if self.mode == "stdout":
            return
        if time.monotonic() < self._next_open:
            return
        try:
            os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
            self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - kept open
        except OSError as exc:
            self._file = None
            self._next_open = time.monotonic() + REOPEN_RETRY
            log.error("audit log: cannot open %s: %s", self.path, exc)

    def _close(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except OSError as exc:
                log.warning("audit log: closing %s: %s", self.path, exc)
            self._file = None

    def _write(self, text: str, count: int) -> None:
        if self.mode == "stdout":
            stream = self._stream or sys.stdout
        else:
            if self._file is None:
                self._open()
            stream = self._file
        if stream is None:
            self.errors += count
            return
        try:
            stream.write(text)
            stream.flush()
        except (OSError, ValueError) as exc:
            self.errors += count
            log.warning("audit log: write to %s failed: %s", self.path or "stdout", exc)
            return
        self.written += count
