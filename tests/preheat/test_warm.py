"""Warming each blob at its owning root (agent/preheat/warm.py), against a fake P2P client:
the owner is asked first, a root that does not answer is skipped (once, with a warning), a
root's refusal fails the blob, a blob is followed until complete, and a timeout ends it."""

from __future__ import annotations

from collections.abc import Callable

import trio

from agent.core.upstream import Upstream
from agent.preheat.images import Descriptor
from agent.preheat.manifests import BlobRef, RepoAccess
from agent.preheat.progress import BlobState
from agent.preheat.warm import Warmer
from agent.swarm.client import PeerError
from agent.swarm.ownership import rendezvous_order
from agent.swarm.preheat import PreheatReply, PreheatTarget

ROOTS = ["10.0.0.1:65002", "10.0.0.2:65002", "10.0.0.3:65002"]
UPSTREAM = Upstream("http", "127.0.0.1", 5000)

Script = Callable[[str, PreheatTarget, int], PreheatReply]


class FakeClient:
    """Answers preheat requests as `script(root, target, how many times asked)` says."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.asked: list[tuple[str, str, bytes | None]] = []

    async def preheat(
        self, root: str, target: PreheatTarget, authorization: bytes | None
    ) -> PreheatReply:
        await trio.sleep(0.01)
        self.asked.append((root, target.digest, authorization))
        count = sum(1 for r, d, _ in self.asked if (r, d) == (root, target.digest))
        return self.script(root, target, count)


def jobs(*numbers: int) -> list[tuple[BlobState, BlobRef]]:
    access = RepoAccess(UPSTREAM, "team/app", "127.0.0.1:5000", None, None)  # type: ignore[arg-type]
    access.authorization = b"Bearer t"
    out = []
    for n in numbers:
        digest = f"sha256:{n:064x}"
        state = BlobState(digest=digest, size=100, kind="layer")
        out.append((state, BlobRef(Descriptor(digest, 100, "x"), "layer", access)))
    return out


def complete(root: str, target: PreheatTarget, count: int) -> PreheatReply:
    return PreheatReply(size=100, stored=100, complete=True)


async def test_each_blob_goes_to_its_owner_with_the_authorization() -> None:
    client = FakeClient(complete)
    warmer = Warmer(client, ROOTS)  # type: ignore[arg-type]
    work = jobs(1, 2, 3, 4)
    await warmer.warm(work, timeout=10)
    for state, _ in work:
        owner = rendezvous_order(state.digest, ROOTS)[0]
        assert (state.state, state.root) == ("fetched", owner)
    assert sorted(client.asked) == sorted(
        (rendezvous_order(s.digest, ROOTS)[0], s.digest, b"Bearer t") for s, _ in work
    )
    assert warmer.warnings == [] and not warmer.all_down


async def test_a_blob_is_followed_until_its_root_has_it() -> None:
    def slowly(root: str, target: PreheatTarget, count: int) -> PreheatReply:
        if count < 3:
            return PreheatReply(size=100, stored=30 * count)
        return PreheatReply(size=100, stored=100, complete=True)

    client = FakeClient(slowly)
    [(state, blob)] = jobs(1)
    await Warmer(client, ROOTS).warm([(state, blob)], timeout=10)  # type: ignore[arg-type]
    assert state.state == "fetched" and len(client.asked) == 3


async def test_a_root_that_does_not_answer_is_skipped_for_every_blob() -> None:
    dead = ROOTS[0]

    def refuse_dead(root: str, target: PreheatTarget, count: int) -> PreheatReply:
        if root == dead:
            raise PeerError(root, "connect failed")
        return complete(root, target, count)

    client = FakeClient(refuse_dead)
    warmer = Warmer(client, ROOTS)  # type: ignore[arg-type]
    work = jobs(*range(1, 13))
    await warmer.warm(work, timeout=10)
    assert all(s.state == "fetched" and s.root != dead for s, _ in work)
    owned_by_dead = [s for s, _ in work if rendezvous_order(s.digest, ROOTS)[0] == dead]
    assert owned_by_dead, "the test needs blobs the dead root owns"
    for state in owned_by_dead:
        assert state.root == rendezvous_order(state.digest, ROOTS)[1]
    assert sum(1 for r, _, _ in client.asked if r == dead) <= len(owned_by_dead)
    assert len(warmer.warnings) == 1 and dead in warmer.warnings[0]
    assert "connect failed" in warmer.warnings[0]


async def test_no_root_answering_fails_every_blob_with_the_reasons() -> None:
    def nobody(root: str, target: PreheatTarget, count: int) -> PreheatReply:
        raise PeerError(root, f"down {root[-7:]}")

    warmer = Warmer(FakeClient(nobody), ROOTS)  # type: ignore[arg-type]
    work = jobs(1, 2)
    await warmer.warm(work, timeout=10)
    assert warmer.all_down
    for state, _ in work:
        assert state.state == "failed" and state.error is not None
        assert all(root in state.error for root in ROOTS)


async def test_a_root_s_refusal_fails_the_blob_and_others_go_on() -> None:
    bad = "sha256:" + f"{2:064x}"

    def refuse_one(root: str, target: PreheatTarget, count: int) -> PreheatReply:
        if target.digest == bad:
            return PreheatReply.failed(404, "upstream answered 404")
        return complete(root, target, count)

    warmer = Warmer(FakeClient(refuse_one), ROOTS)  # type: ignore[arg-type]
    work = jobs(1, 2, 3)
    await warmer.warm(work, timeout=10)
    states = {s.digest: s for s, _ in work}
    assert states[bad].state == "failed"
    assert states[bad].error == f"{states[bad].root} answered 404: upstream answered 404"
    assert [s.state for d, s in states.items() if d != bad] == ["fetched", "fetched"]
    assert not warmer.all_down


async def test_a_blob_not_complete_by_the_timeout_fails() -> None:
    def never(root: str, target: PreheatTarget, count: int) -> PreheatReply:
        return PreheatReply(size=100, stored=10)

    [(state, blob)] = jobs(1)
    with trio.fail_after(5):
        await Warmer(FakeClient(never), ROOTS).warm([(state, blob)], timeout=0.5)  # type: ignore[arg-type]
    assert state.state == "failed" and "--timeout" in (state.error or "")
