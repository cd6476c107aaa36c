"""Tests for agent/swarm/plan.py: the root's plan replies, built and parsed.

Pure: a Plan is built from values and parsed from bytes, so no sockets, no clock and no event
loop.  A peer's reply is untrusted, so the parser is also fuzzed: whatever it is fed, it
answers a Plan or a P2PProtocolError, never another exception.
"""

from __future__ import annotations

import hashlib
import json
import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.swarm.plan import Plan, table_digest
from agent.swarm.protocol import MAX_CHUNKS, P2PProtocolError
from tests.swarm.test_protocol import nodes

SHA_A = hashlib.sha256(b"a").hexdigest()
SHA_B = hashlib.sha256(b"b").hexdigest()

# --------------------------------------------------------------------------------------------
# Strategies


@st.composite
def plans(draw: st.DrawFn) -> Plan:
    chunk_size = draw(st.integers(1, 8 << 20))
    size = draw(st.none() | st.integers(0, 200 * chunk_size))
    count = 0 if size is None else -(-size // chunk_size)
    sha = st.text("0123456789abcdef", min_size=64, max_size=64)
    hashes = draw(st.dictionaries(st.integers(0, count - 1), sha, max_size=50)) if count else {}
    pairs = st.tuples(st.sampled_from(sorted(hashes)), nodes)
    assignments = draw(st.lists(pairs, max_size=20, unique=True)) if hashes else []
    if draw(st.integers(0, 9)) == 0:  # a handoff says nothing else
        return Plan(size=None, chunk_size=chunk_size, handoff=draw(nodes))
    error = draw(st.none() | st.text(string.printable.strip(), max_size=60))
    complete = False if error is not None or size is None else draw(st.booleans())
    return Plan(
        size=size,
        chunk_size=chunk_size,
        chunk_sha256=hashes,
        assignments=() if error is not None else tuple(assignments),
        complete=complete,
        table_sha256=draw(st.none() | sha) if complete else None,
        error=error,
        error_status=None if error is None else draw(st.integers(400, 599)),
        retry_after=draw(st.floats(0, 60)),
    )


# --------------------------------------------------------------------------------------------
# Plan replies


def reply(**fields: object) -> bytes:
    doc: dict[str, object] = {
        "size": 10,
        "chunk_size": 4,
        "chunk_sha256": {"0": SHA_A, "2": SHA_B},
        "assignments": [[0, "10.0.0.1:65002"], [2, "[fd00::1]:65002"]],
        "complete": False,
        "table_sha256": None,
        "error": None,
        "error_status": None,
        "retry_after": 0.5,
    }
    doc.update(fields)
    doc.setdefault("head_chunk", None if doc.get("size") is None else doc.get("chunk_size"))
    return json.dumps(doc).encode()


def test_a_plan_says_how_the_layers_head_is_cut() -> None:
    """The head chunk size goes with the size, by agent.cache.chunks' rule when not given;
    the chunk numbers the plan checks are that layout's."""
    plan = Plan(size=64 << 20, chunk_size=4 << 20)
    assert plan.head_chunk == 2 << 20 and plan.count == 8 + 12
    assert json.loads(plan.to_json())["head_chunk"] == 2 << 20
    assert Plan.from_json(plan.to_json()) == plan
    uniform = Plan.from_json(reply(size=64 << 20, chunk_size=4 << 20, head_chunk=4 << 20))
    assert uniform.count == 16
    assert Plan(size=None, chunk_size=4 << 20).head_chunk is None
    # Chunk 17 exists only in the layout with a head.
    Plan(size=64 << 20, chunk_size=4 << 20, chunk_sha256={17: SHA_A})
    with pytest.raises(P2PProtocolError, match="out of range"):
        Plan.from_json(
            reply(
                size=64 << 20,
                chunk_size=4 << 20,
                head_chunk=4 << 20,
                chunk_sha256={"17": SHA_A},
                assignments=[],
            )
        )


def test_a_seal_is_the_sha256_of_the_chunk_table_in_order() -> None:
    table = [SHA_A, SHA_B]
    assert table_digest(table) == hashlib.sha256((SHA_A + SHA_B).encode()).hexdigest()
    assert table_digest(table) != table_digest(reversed(table))
    sealed = Plan.from_json(reply(complete=True, table_sha256=table_digest(table)))
    assert sealed.table_sha256 == table_digest(table) and sealed.complete


def test_plan_from_json() -> None:
    got = Plan.from_json(reply())
    assert got == Plan(
        size=10,
        chunk_size=4,
        chunk_sha256={0: SHA_A, 2: SHA_B},
        assignments=((0, "10.0.0.1:65002"), (2, "[fd00::1]:65002")),
        retry_after=0.5,
    )
    assert got.count == 3
    assert Plan.from_json(got.to_json()) == got


def test_plan_error_reply() -> None:
    got = Plan.from_json(
        reply(chunk_sha256={}, assignments=[], size=None, error="unauthorized", error_status=401)
    )
    assert (got.error, got.error_status, got.size, got.count) == ("unauthorized", 401, None, None)


def test_a_handoff_reply_names_the_root_and_nothing_else() -> None:
    doc = reply(size=None, chunk_sha256={}, assignments=[], handoff="[FD00::2]:65002")
    got = Plan.from_json(doc)
    assert got.handoff == "[fd00::2]:65002" and got.size is None
    assert Plan.from_json(got.to_json()) == got
    assert b"handoff" not in Plan(size=None, chunk_size=4).to_json()  # read as before


@given(plans())
def test_plan_round_trip(original: Plan) -> None:
    data = original.to_json()
    assert Plan.from_json(data) == original
    assert Plan.from_json(data.decode()) == original


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "not JSON"),
        (b"{", "not JSON"),
        (b"\xff", "not JSON"),
        (b"[]", "JSON object"),
        (b"null", "JSON object"),
        (b"[" * 100_000 + b"]" * 100_000, "not JSON"),
        (b" " * (9 << 20), "larger than"),
        (reply(size=-1), "non-negative"),
        (reply(size="10"), "non-negative"),
        (reply(size=10.0), "non-negative"),
        (reply(size=True), "non-negative"),
        (reply(chunk_size=0), "chunk_size"),
        (reply(chunk_size=None), "chunk_size"),
        (reply(chunk_size=1 << 31), "chunk_size"),
        (reply(size=MAX_CHUNKS + 1, chunk_size=1, chunk_sha256={}, assignments=[]), "more than"),
        (reply(chunk_sha256=[]), "JSON object"),
        (reply(chunk_sha256={"3": SHA_A}, assignments=[]), "out of range"),
        (reply(chunk_sha256={"-1": SHA_A}, assignments=[]), "decimal"),
        (reply(chunk_sha256={"00": SHA_A}, assignments=[]), "decimal"),
        (reply(chunk_sha256={"x": SHA_A}, assignments=[]), "decimal"),
        (reply(chunk_sha256={"0": SHA_A.upper()}, assignments=[]), "hex"),
        (reply(chunk_sha256={"0": SHA_A[:-1]}, assignments=[]), "hex"),
        (reply(chunk_sha256={"0": 5}, assignments=[]), "hex"),
        (reply(assignments={}), "JSON array"),
        (reply(assignments=[[0]]), "(chunk, source)"),
        (reply(assignments=[0]), "(chunk, source)"),
        (reply(assignments=[[0, "10.0.0.1:65002", 1]]), "(chunk, source)"),
        (reply(assignments=[[1, "10.0.0.1:65002"]]), "without its sha256"),
        (reply(assignments=[[3, "10.0.0.1:65002"]]), "out of range"),
        (reply(assignments=[["0", "10.0.0.1:65002"]]), "must be an integer"),
        (reply(assignments=[[0.0, "10.0.0.1:65002"]]), "must be an integer"),
        (reply(assignments=[[0, "10.0.0.1"]]), "needs a port"),
        (reply(assignments=[[0, 7]]), "must be a string"),
        (reply(assignments=[[0, "a:1"], [0, "a:1"]]), "twice"),
        (reply(assignments=[[0, "a:1"]] * 1025), "more than 1024"),
        (reply(size=None, chunk_sha256={}, assignments=[[0, "a:1"]]), "no chunks yet"),
        (reply(complete="yes"), "true or false"),
        (reply(complete=1), "true or false"),
        (reply(complete=True, table_sha256="AB" * 32), "table_sha256 must be 64 lower-case"),
        (reply(complete=True, table_sha256=7), "table_sha256 must be 64 lower-case"),
        (reply(table_sha256="ab" * 32), "only a complete layer is sealed"),
        (reply(size=None, chunk_sha256={}, assignments=[], complete=True), "must have a size"),
        (reply(error="x"), "go together"),
        (reply(error_status=404), "go together"),
        (reply(error="x", error_status=200, assignments=[]), "HTTP error status"),
        (reply(error="x", error_status=True, assignments=[]), "HTTP error status"),
        (reply(error="x", error_status=404.0, assignments=[]), "HTTP error status"),
        (reply(error="x", error_status=404), "neither assigns"),
        (reply(error="x", error_status=404, assignments=[], complete=True), "neither assigns"),
        (reply(error="a\nb", error_status=404, assignments=[]), "printable"),
        (reply(error=5, error_status=404, assignments=[]), "printable"),
        (reply(error="x" * 1025, error_status=404, assignments=[]), "longer than"),
        (reply(retry_after=-1), "retry_after"),
        (reply(retry_after=61), "retry_after"),
        (reply(retry_after="1"), "retry_after"),
        (reply(retry_after=False), "retry_after"),
        (reply().replace(b'"retry_after": 0.5', b'"retry_after": NaN'), "not JSON"),
        (reply().replace(b'"retry_after": 0.5', b'"retry_after": Infinity'), "not JSON"),
        (reply().replace(b'"retry_after": 0.5', b'"retry_after": 1e999'), "retry_after"),
        (reply().replace(b'"size": 10', b'"size": ' + b"9" * 5000), "not JSON"),
        (reply(extra=1), "unknown ['extra']"),
        (reply(handoff="10.0.0.2:65002"), "says nothing else"),
        (reply(size=None, chunk_sha256={}, assignments=[], handoff="x"), "needs a port"),
        (reply(size=None, chunk_sha256={}, assignments=[], handoff=5), "must name a root"),
        (reply().replace(b'"complete": false, ', b""), "missing ['complete']"),
        (reply(head_chunk=5), "head_chunk must be an integer in 1..chunk_size"),
        (reply(head_chunk=0), "head_chunk must be an integer in 1..chunk_size"),
        (reply(head_chunk="4"), "head_chunk must be an integer in 1..chunk_size"),
        (reply(size=None, chunk_sha256={}, assignments=[], head_chunk=4), "comes with the size"),
        (reply().replace(b', "head_chunk": 4', b""), "missing ['head_chunk']"),
    ],
)
def test_malformed_replies(data: bytes, message: str) -> None:
    with pytest.raises(P2PProtocolError) as info:
        Plan.from_json(data)
    assert message in info.value.message
    assert info.value.status_hint == 400


PLAN_FIELDS = (
    "size",
    "chunk_size",
    "chunk_sha256",
    "assignments",
    "complete",
    "error",
    "error_status",
    "retry_after",
)
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=20,
)


@given(
    st.fixed_dictionaries(
        {},
        optional=dict.fromkeys(PLAN_FIELDS, _json),
    )
    | _json
)
def test_from_json_raises_only_protocol_errors(doc: object) -> None:
    try:
        Plan.from_json(json.dumps(doc))
    except P2PProtocolError:
        pass


@given(plans(), st.data())
def test_mutated_replies_parse_or_fail_cleanly(original: Plan, data: st.DataObject) -> None:
    text = original.to_json()
    at = data.draw(st.integers(0, len(text)))
    insert = data.draw(st.binary(max_size=4))
    try:
        Plan.from_json(text[:at] + insert + text[at + data.draw(st.integers(0, 4)) :])
    except P2PProtocolError:
        pass
