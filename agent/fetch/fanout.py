"""A streamed layer's readers: the bytes of a layer that does not fit the cache, handed to
each reader through a channel of its own, in order, then an end marker once the layer
matched its digest.

The channel holds one chunk, so the download goes at the pace of its slowest reader; a
reader that keeps the others waiting longer than slowReaderTimeout is dropped (its channel
closes early: its response is cut), so one client that stops reading cannot stall the layer
for the rest.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import trio

Chunk = bytearray | memoryview  # one chunk's bytes; aligned memory when the cache is O_DIRECT
STREAM_CHANNEL_CHUNKS = 1


class Fanout:
    """The send ends of a streamed layer's reader channels."""

    def __init__(self, patience: float, dropped: Callable[[int], None]) -> None:
        self._patience = patience
        self._dropped = dropped  # told how many slow readers were dropped
        self._sends: list[trio.MemorySendChannel[Chunk | None]] = []

    def __len__(self) -> int:
        return len(self._sends)

    def subscribe(self) -> trio.MemoryReceiveChannel[Chunk | None]:
        send, receive = trio.open_memory_channel[Chunk | None](STREAM_CHANNEL_CHUNKS)
        self._sends.append(send)
        return receive

    async def send(self, data: Chunk | None) -> int:
        """Hand `data` (None: the end marker) to every reader; the readers still there."""
        # A reader may hold the others back only so long; alone, it holds back no one.
        patience = self._patience if len(self._sends) > 1 else math.inf
        alive = []
        for send in self._sends:
            with trio.move_on_after(patience) as waited:
                try:
                    await send.send(data)
                    alive.append(send)
                except trio.BrokenResourceError:
                    pass
            if waited.cancelled_caught:
                send.close()  # its reader sees the stream end early
                self._dropped(1)
        self._sends = alive
        return len(alive)

    def close(self) -> None:
        for send in self._sends:
            send.close()
        self._sends.clear()
