"""The preheat request and reply (agent/swarm/preheat.py): one spelling each way, every field
checked, and nothing but P2PProtocolError out of a peer's bytes."""

from __future__ import annotations

import json

import pytest

from agent.swarm.preheat import (
    MAX_LAYER_BYTES,
    PreheatReply,
    PreheatTarget,
    parse_p2p_target,
)
from agent.swarm.protocol import ChunkTarget, P2PProtocolError, PlanTarget

DIGEST = "sha256:" + "ab" * 32


def test_a_target_renders_and_parses_back_the_same() -> None:
    for target in (
        PreheatTarget(digest=DIGEST, upstream="reg.example:5000", repo="team/app"),
        PreheatTarget(digest=DIGEST, upstream="[fd00::1]:5000", repo="a", size=0, nonce=9),
        PreheatTarget(digest=DIGEST, upstream="reg.example", repo="x/y/z", size=123456789),
    ):
        text = target.target()
        assert text.startswith(f"/p2p/v1/preheat/{DIGEST}?upstream=")
        assert "[" not in text  # IPv6 brackets are percent-encoded in the query
        assert parse_p2p_target("GET", text) == target


def test_other_p2p_targets_still_parse_as_before() -> None:
    chunk = ChunkTarget(digest=DIGEST, index=3)
    assert parse_p2p_target("HEAD", chunk.target()) == chunk
    plan = PlanTarget(digest=DIGEST, upstream="reg.example", repo="team/app", want=2)
    assert parse_p2p_target("GET", plan.target()) == plan


@pytest.mark.parametrize(
    ("method", "target", "status", "words"),
    [
        ("POST", f"/p2p/v1/preheat/{DIGEST}?upstream=r&repo=a", 405, "not allowed"),
        ("GET", f"/p2p/v1/preheat/{DIGEST}/x?upstream=r&repo=a", 404, "expected"),
        ("GET", f"/p2p/v1/preheat/{DIGEST}?upstream=r", 400, "lacks repo"),
        ("GET", f"/p2p/v1/preheat/{DIGEST}?upstream=r&repo=a&repo=b", 400, "twice"),
        ("GET", f"/p2p/v1/preheat/{DIGEST}?upstream=r&repo=a&want=1", 400, "unknown"),
        ("GET", f"/p2p/v1/preheat/{DIGEST}?upstream=r&repo=a&size=01", 400, "decimal"),
        ("GET", f"/p2p/v1/preheat/{DIGEST}?upstream=r&repo=a&size={MAX_LAYER_BYTES}", 400, "range"),
        ("GET", f"/p2p/v1/preheat/{DIGEST}?upstream=R&repo=a", 400, "lower-case"),
        ("GET", f"/p2p/v1/preheat/{DIGEST}?upstream=r&repo=A", 400, "repository"),
        ("GET", "/p2p/v1/preheat/sha256:xyz?upstream=r&repo=a", 400, "digest"),
        ("GET", f"/p2p/v1/preheat/{DIGEST}?upstream=r&repo=a&n", 400, "no value"),
        ("GET", "/p2p/v1/preheat/" + "a" * 9000, 414, "longer"),
    ],
)
def test_a_bad_target_is_refused_with_its_status(
    method: str, target: str, status: int, words: str
) -> None:
    with pytest.raises(P2PProtocolError) as refused:
        parse_p2p_target(method, target)
    assert refused.value.status_hint == status
    assert words in refused.value.message


def test_a_reply_round_trips_through_json() -> None:
    for reply in (
        PreheatReply(size=None),
        PreheatReply(size=100, stored=40),
        PreheatReply(size=100, stored=100, complete=True),
        PreheatReply(size=0, stored=0, complete=True, cached=True),
        PreheatReply.failed(404, "upstream answered 404"),
    ):
        assert PreheatReply.from_json(reply.to_json()) == reply


@pytest.mark.parametrize(
    "fields",
    [
        {"size": 10, "stored": 11},  # beyond the size
        {"size": 10, "stored": 5, "complete": True},  # complete but not all stored
        {"size": None, "stored": 0, "complete": True},  # complete without a size
        {"size": 10, "stored": 5, "cached": True},  # cached but not complete
        {"size": 10, "stored": 0, "error": "x"},  # error without its status
        {"size": 10, "stored": 0, "error": "x", "error_status": 200},  # not an error status
        {"size": 10, "stored": 10, "complete": True, "error": "x", "error_status": 500},
        {"size": -1},
        {"size": 10, "stored": True},  # a bool is no count
        {"size": 10, "complete": 1},
        {"size": None, "error": "line\nbreak", "error_status": 502},
    ],
)
def test_an_inconsistent_reply_is_refused(fields: dict[str, object]) -> None:
    with pytest.raises(P2PProtocolError):
        PreheatReply(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"[]",
        b'{"size": 1}',
        b"{" + b'"a":' * 2000 + b"1" + b"}" * 2000,
        json.dumps({**json.loads(PreheatReply(size=1).to_json()), "extra": 1}).encode(),
        b'{"size": NaN, "stored": 0, "complete": false, "cached": false, "error": null, '
        b'"error_status": null}',
        b" " * 5000,
        b"\xff\xfe",
    ],
)
def test_a_malformed_reply_raises_only_the_protocol_error(body: bytes) -> None:
    with pytest.raises(P2PProtocolError):
        PreheatReply.from_json(body)


def test_failed_makes_any_message_fit_a_reply() -> None:
    reply = PreheatReply.failed(502, "a\nb\tc" + "x" * 5000)
    assert reply.error is not None and reply.error.isprintable()
    assert reply.error.startswith("a b c") and len(reply.error) <= 1024
    assert PreheatReply.from_json(reply.to_json()) == reply
