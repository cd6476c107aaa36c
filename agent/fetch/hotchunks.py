"""The chunks a layer's download keeps in memory after they arrived, without I/O.

A chunk that just arrived is read from memory by the readers close behind it and by the peers
the root sends to its new holder at once; the cache file has it too once written. Memory here
is dear to keep and, in a VM that hands free pages back to its host, dearer to take afresh
(a GiB of fresh memory cost 2-2.4 CPU-s on the test machine against 0.4 for pages freed a
moment before). So a download keeps every chunk not yet written, and of the written ones only
the last few to arrive (`KEEP`):

- A written chunk goes even while chunks below it are still missing. The swarm's chunks come
  in any order, and keeping the stretch above the first gap held most of a layer in memory
  (0.6 GiB of page faults per GiB a fresh agent received, 0.4 without). A reader that gets
  there, and a whole-layer pass without a seal, read it back from the disk: that costs 0.1
  CPU-s per GiB read (an O_DIRECT read into a pooled buffer, its xxh3 checked), and an agent
  reads back about 0.7 GiB per GiB received, against the 2 CPU-s per GiB of fresh memory
  here. Keeping the next few chunks a reader reads as well cut the reads to 0.3 GiB but
  faulted in 0.52 GiB instead of 0.42 on a first pull, for no gain in CPU.
- Once the download has ended, a chunk goes as soon as no reader needs it any more. A root's
  tracker keeps a layer's download for as long as it tracks the layer, and a finished download
  waits for the garbage collector to break its reference cycles: their last chunks went back
  to the buffer pool only then, and the next pull faulted in fresh memory meanwhile.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection

from agent.fetch.fanout import Chunk

KEEP = 2  # written chunks kept in memory for readers close behind, the last to arrive


class HotChunks:
    """A download's chunks in memory, in order of arrival."""

    def __init__(self) -> None:
        self._chunks: OrderedDict[int, Chunk] = OrderedDict()

    def __contains__(self, index: int) -> bool:
        return index in self._chunks

    def __len__(self) -> int:
        return len(self._chunks)

    def get(self, index: int) -> Chunk | None:
        return self._chunks.get(index)

    def add(self, index: int, data: Chunk) -> None:
        self._chunks[index] = data

    def drop(self, index: int) -> None:
        """Chunk `index` left the cache (a ring's slot took another): memory must not keep it."""
        self._chunks.pop(index, None)

    def written(self, unwritten: Collection[int]) -> None:
        """A write ended: of the chunks on disk, keep only the last KEEP to arrive."""
        done = [i for i in self._chunks if i not in unwritten]
        for old in done[: max(0, len(done) - KEEP)]:
            del self._chunks[old]

    def ended(self, first_needed: int | None) -> None:
        """The download has ended (or a reader moved on since): the chunks below
        `first_needed`, the first one a reader still needs, go (None: the download failed,
        every chunk goes)."""
        if first_needed is None:
            self._chunks.clear()
            return
        for index in [i for i in self._chunks if i < first_needed]:
            del self._chunks[index]
