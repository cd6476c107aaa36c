"""A root's window of a layer bigger than its cache: which chunks it must keep, and which only
the origin has now. Pure, no I/O; read from the schedule's ledger (agent/swarm/ledger.py).

A root whose cache is smaller than the layer holds a window of it (`LayerSchedule.root_stored`,
`root_released`). A chunk may go once every live node has it or is past it; a chunk nodes wait
for that nobody they may take it from holds is lost, and the root fetches it again.
"""

from __future__ import annotations

from agent.swarm.ledger import ROOT, Ledger


def root_keeps(ledger: Ledger, chunk: int) -> bool:
    """Whether the root must keep `chunk`: it is sending it, or a live node still wants it
    (peers' windows let chunks go too: a node that joins later gets it fetched again)."""
    if ledger.root_sending[chunk]:
        return True
    if ledger.root_lagging and any(c == chunk and src == ROOT for _, c, src in ledger.lagging):
        return True  # a lagging copy still reads it
    return any(not p.held[chunk] and chunk >= p.past for p in ledger.peers.values())


def lost_chunks(ledger: Ledger, origin: int) -> list[int]:
    """Chunks a node waits for that no peer it may take them from holds, the root's download
    has passed (below `origin`) and the root no longer holds: only the origin has them now."""
    out = []
    for c, waiters in ledger.waiting.items():
        if c >= origin or ledger.root_held[c]:
            continue
        holders = ledger.holders[c]
        if not holders or all(holders <= ledger.peers[w].avoid for w in waiters):
            out.append(c)
    return sorted(out)
