"""A root's handoff records on disk (`agent.swarm.ownership.Handoffs`), next to its cache.

Why: the root a layer was handed to keeps it in its cache across restarts, and so must the
record that sends pulls there. Without it, the first pull after this root restarts would find
it idle and not holding the layer, and it would fetch the layer from the origin a second time.

The file is rewritten whole (a temporary file, then a rename) after each new handoff; handoffs
are rare (a new layer while another is on its way in), the file small (~100 bytes a record). A
file that cannot be read back is logged, set aside and ignored: records only save origin
traffic, a pull never depends on them.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import trio

from agent.swarm.ownership import Handoffs

log = logging.getLogger(__name__)

FILE_NAME = "handoffs.json"


class HandoffStore:
    def __init__(self, directory: Path) -> None:
        self.path = directory / FILE_NAME
        self._lock = trio.Lock()  # one rewrite at a time: they share the temporary file

    async def load(self, handoffs: Handoffs) -> None:
        """Read the records an earlier run wrote, if any."""
        try:
            data = await trio.to_thread.run_sync(self.path.read_bytes)
        except FileNotFoundError:
            return
        except OSError as exc:
            log.warning("handoffs: cannot read %s: %s (starting without)", self.path, exc)
            return
        try:
            count = handoffs.restore(data, trio.current_time())
        except ValueError as exc:
            aside = self.path.with_suffix(".bad")
            log.warning("handoffs: %s is unusable (%s); moved to %s", self.path, exc, aside)
            await trio.to_thread.run_sync(os.replace, self.path, aside)
            return
        log.info("handoffs: %d layers handed to other roots, from %s", count, self.path)

    async def save(self, handoffs: Handoffs) -> None:
        """Write the records as they are now; a failure is logged (the next handoff retries)."""
        async with self._lock:
            data = handoffs.dump()  # as they are when our turn comes: the last write wins
            try:
                await trio.to_thread.run_sync(self._write, data)
            except OSError as exc:
                log.warning("handoffs: cannot write %s: %s", self.path, exc)

    def _write(self, data: bytes) -> None:
        partial = self.path.with_suffix(".tmp")
        with open(partial, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, self.path)
