"""Tests for agent/swarm/protocol.py: node ids, chunk ranges, targets, ownership and errors.

Pure: every function takes strings, bytes and numbers (time included) and returns values, so
no sockets, no clock and no event loop.  Peers are untrusted, so the parsers are also fuzzed:
whatever they are fed, they answer a value or a P2PProtocolError, never another exception.
"""

from __future__ import annotations

import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.swarm.protocol import (
    MAX_CHUNKS,
    MAX_DEPTH,
    MAX_HAVE_CHARS,
    MAX_NONCE,
    MAX_REPORTS,
    NODE_MAX,
    ChunkTarget,
    P2PError,
    P2PProtocolError,
    PlanTarget,
    clip_ranges,
    decode_ranges,
    encode_ranges,
    parse_node,
    parse_target,
)
from agent.swarm.signing import P2PAuthError

HEX64 = "0123456789abcdef" * 4
HEX128 = HEX64 * 2
DIGEST = f"sha256:{HEX64}"
DIGEST512 = f"sha512:{HEX128}"
CHUNK = f"/p2p/v1/chunk/{DIGEST}/7"

# --------------------------------------------------------------------------------------------
# Strategies

digests = st.one_of(
    st.text("0123456789abcdef", min_size=64, max_size=64).map(lambda h: f"sha256:{h}"),
    st.text("0123456789abcdef", min_size=128, max_size=128).map(lambda h: f"sha512:{h}"),
)
ports = st.integers(1, 65535)
_label = st.from_regex(r"[a-z][a-z0-9-]{0,10}[a-z0-9]", fullmatch=True)
hostnames = st.lists(_label, min_size=1, max_size=4).map(".".join)
ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(lambda a: f"[{a.compressed}]")
nodes = st.tuples(st.one_of(ipv4, ipv6, hostnames), ports).map(lambda hp: f"{hp[0]}:{hp[1]}")
nodes = nodes.filter(lambda n: len(n) <= NODE_MAX)
upstreams = st.one_of(
    hostnames,
    st.tuples(st.one_of(ipv4, ipv6, hostnames), ports).map(lambda hp: f"{hp[0]}:{hp[1]}"),
)
_component = st.from_regex(r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*", fullmatch=True)
repos = st.lists(_component.filter(lambda c: len(c) < 40), min_size=1, max_size=4).map("/".join)
chunk_indexes = st.integers(0, 5000)


@st.composite
def plan_targets(draw: st.DrawFn) -> PlanTarget:
    n_done = draw(st.integers(0, MAX_REPORTS))
    n_failed = draw(st.integers(0, MAX_REPORTS - n_done))
    n_missing = draw(st.integers(0, MAX_REPORTS - n_done - n_failed))
    n_finishing = draw(st.integers(0, MAX_REPORTS - n_done - n_failed - n_missing))
    return PlanTarget(
        digest=draw(digests),
        upstream=draw(upstreams),
        repo=draw(repos),
        want=draw(st.integers(0, 256)),
        have=draw(st.none() | st.frozensets(chunk_indexes, max_size=300)),
        done=tuple(draw(st.tuples(chunk_indexes, nodes)) for _ in range(n_done)),
        failed=tuple(draw(st.tuples(chunk_indexes, nodes, st.booleans())) for _ in range(n_failed)),
        missing=tuple(draw(st.tuples(chunk_indexes, nodes)) for _ in range(n_missing)),
        finishing=tuple(draw(st.tuples(chunk_indexes, nodes)) for _ in range(n_finishing)),
        past=draw(st.integers(0, 5000)),
        depth=draw(st.integers(1, MAX_DEPTH)),
        fresh=draw(st.booleans()),
        poll=draw(st.booleans()),
        handed=draw(st.booleans()),
    )


# --------------------------------------------------------------------------------------------
# Node ids


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("10.0.0.5:65002", "10.0.0.5:65002"),
        ("[::1]:1", "[::1]:1"),
        ("[FD00:0:0::1]:65002", "[fd00::1]:65002"),
        ("[fd00:0000:0000:0000:0000:0000:0000:0001]:80", "[fd00::1]:80"),
        ("Root-0.Pollen.svc:65002", "root-0.pollen.svc:65002"),
        ("localhost:1", "localhost:1"),
        ("10.0.0.5:0080", "10.0.0.5:80"),
    ],
)
def test_node_ids(text: str, canonical: str) -> None:
    assert parse_node(text) == canonical
    assert parse_node(canonical) == canonical


@pytest.mark.parametrize(
    "text",
    [
        "",
        "10.0.0.5",  # no port
        "10.0.0.5:0",
        "10.0.0.5:65536",
        "10.0.0.5:",
        "fd00::1:65002",  # IPv6 without brackets
        "[fd00::1]",
        "[fe80::1%eth0]:65002",  # zone ids mean nothing to another node
        "[10.0.0.5]:1",
        "010.0.0.5:1",
        "1.2.3:5",
        " 10.0.0.5:1",
        "10.0.0.5:1 ",
        "a b:1",
        "-host:1",
        "host_name:1",
        "h\u00f6st:1",
        "a" * NODE_MAX + ":1",
        "10.0.0.5:1/x",
    ],
)
def test_bad_node_ids(text: str) -> None:
    with pytest.raises(P2PProtocolError):
        parse_node(text)


@pytest.mark.parametrize("value", [None, 5, b"10.0.0.5:1", ["10.0.0.5:1"]])
def test_node_ids_must_be_strings(value: object) -> None:
    with pytest.raises(P2PProtocolError, match="must be a string"):
        parse_node(value)


# --------------------------------------------------------------------------------------------
# Ranges


@pytest.mark.parametrize(
    ("indexes", "text"),
    [
        ([], ""),
        ([0], "0"),
        ([0, 1], "0-1"),
        ([0, 1, 2, 3, 4, 5, 8, 10, 11, 12], "0-5,8,10-12"),
        ([12, 8, 3, 3, 2], "2-3,8,12"),
        (range(2000), "0-1999"),
        ([1999], "1999"),
    ],
)
def test_encode_ranges(indexes: list[int], text: str) -> None:
    assert encode_ranges(indexes) == text
    assert decode_ranges(text, 2000) == frozenset(indexes)


@pytest.mark.parametrize(
    ("text", "indexes"),
    [
        ("5,1-3", {1, 2, 3, 5}),  # any order
        ("1-3,2-4", {1, 2, 3, 4}),  # overlaps
        ("7-7", {7}),
        ("3,3", {3}),
    ],
)
def test_decode_accepts_any_order(text: str, indexes: set[int]) -> None:
    assert decode_ranges(text, 100) == indexes


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a", "decimal"),
        ("1,", "decimal"),
        (",1", "decimal"),
        ("1,,2", "decimal"),
        ("01", "decimal"),
        ("-1", "decimal"),
        ("+1", "decimal"),
        ("1-", "decimal"),
        ("1-2-3", "decimal"),
        (" 1", "decimal"),
        ("1 ", "decimal"),
        ("\u0661", "decimal"),  # Arabic-Indic one: int() would take it
        ("5-3", "backwards"),
        ("100", "out of range"),
        ("0-100", "out of range"),
        ("0-99,0-99", "more than 100"),  # overlaps count twice: the work stays bounded
        ("9" * 40, "decimal"),
    ],
)
def test_decode_rejects(text: str, message: str) -> None:
    with pytest.raises(P2PProtocolError, match=message):
        decode_ranges(text, 100)


@pytest.mark.parametrize("indexes", [[-1], [1.5], [True], ["3"]])
def test_encode_rejects_non_indexes(indexes: list[object]) -> None:
    with pytest.raises((P2PProtocolError, TypeError)):
        encode_ranges(indexes)  # type: ignore[arg-type]


@given(st.frozensets(st.integers(0, 3000)))
def test_ranges_round_trip(indexes: frozenset[int]) -> None:
    text = encode_ranges(indexes)
    assert decode_ranges(text, 3001) == indexes
    assert len(text) <= len(",".join(map(str, sorted(indexes))))  # never longer than a list


@given(st.text(alphabet="0123456789-,", max_size=40) | st.text(max_size=20))
def test_decode_raises_only_protocol_errors(text: str) -> None:
    try:
        got = decode_ranges(text, 1000)
    except P2PProtocolError:
        return
    assert all(0 <= i < 1000 for i in got)


def longest_encoding(n: int) -> int:
    """The longest encode_ranges() text of any subset of range(n), by dynamic programming.

    best[i] is the longest text for holdings in [i, n) whose first run starts at i.  A run
    longer than three never helps (its text is that of a run of three), and a gap longer than
    two never helps (the skipped index could start a run of its own), so the search is small.
    """
    best = [0] * (n + 1)
    for i in range(n - 1, -1, -1):
        options = []
        for j in range(i, min(n, i + 3)):  # the run i..j
            text = len(str(i)) if j == i else len(str(i)) + 1 + len(str(j))
            rest = [1 + best[k] for k in range(j + 2, min(n, j + 4))]
            options.append(text + max(rest, default=0))
        best[i] = max(options)
    return max(best[:3], default=0)


def test_longest_encoding_matches_brute_force() -> None:
    for n in range(1, 13):
        brute = max(
            len(encode_ranges(i for i in range(n) if mask >> i & 1)) for mask in range(1 << n)
        )
        assert longest_encoding(n) == brute


def test_worst_2000_chunk_holding_fits() -> None:
    # Runs of two with gaps of one spell longest.
    worst = {i for i in range(2000) if i % 3 != 2}
    assert len(encode_ranges(worst)) == longest_encoding(2000) == 5928 <= MAX_HAVE_CHARS
    assert PlanTarget(digest=DIGEST, upstream="r.io", repo="x", want=1, have=worst).have == worst


@given(st.frozensets(st.integers(0, 20000), max_size=3000), st.integers(0, 400))
def test_clip_ranges(indexes: frozenset[int], max_chars: int) -> None:
    kept = clip_ranges(indexes, max_chars)
    assert len(encode_ranges(kept)) <= max_chars
    assert kept <= indexes
    if len(encode_ranges(indexes)) <= max_chars:
        assert kept == indexes
    else:
        lost = indexes - kept
        assert not kept or max(kept) < min(lost)  # the lowest are kept


def test_clip_ranges_keeps_the_lowest_whole_runs() -> None:
    assert clip_ranges([0, 1, 2, 10, 11, 12, 20], 9) == {0, 1, 2, 10, 11, 12}
    assert clip_ranges([0, 1, 2, 10, 11, 12, 20], 8) == {0, 1, 2}
    assert clip_ranges([100, 101], 3) == frozenset()
    big = {i for i in range(20000) if i % 2}
    assert len(encode_ranges(clip_ranges(big))) <= MAX_HAVE_CHARS


# --------------------------------------------------------------------------------------------
# Targets that parse


def plan(**fields: object) -> PlanTarget:
    base: dict[str, object] = {
        "digest": DIGEST,
        "upstream": "registry.example.com",
        "repo": "library/nginx",
        "want": 4,
    }
    return PlanTarget(**{**base, **fields})  # type: ignore[arg-type]


PLAN = f"/p2p/v1/plan/{DIGEST}?upstream=registry.example.com&repo=library/nginx&want=4"


@pytest.mark.parametrize(
    ("method", "target", "parsed"),
    [
        ("GET", CHUNK, ChunkTarget(digest=DIGEST, index=7)),
        ("HEAD", CHUNK, ChunkTarget(digest=DIGEST, index=7)),
        ("GET", f"/p2p/v1/chunk/{DIGEST}/0", ChunkTarget(digest=DIGEST, index=0)),
        (
            "GET",
            f"/p2p/v1/chunk/{DIGEST512}/{MAX_CHUNKS - 1}",
            ChunkTarget(digest=DIGEST512, index=MAX_CHUNKS - 1),
        ),
        ("GET", PLAN, plan()),
        ("GET", PLAN + "&have=", plan(have=frozenset())),
        ("GET", PLAN + "&have=0-5,8,10-12", plan(have={0, 1, 2, 3, 4, 5, 8, 10, 11, 12})),
        (
            "GET",
            PLAN + "&done=3@10.0.0.1:65002,4@%5Bfd00::1%5D:65002",
            plan(done=((3, "10.0.0.1:65002"), (4, "[fd00::1]:65002"))),
        ),
        (
            "GET",
            PLAN + "&failed=5@10.0.0.1:65002,6!@root-0.pollen:65002",
            plan(failed=((5, "10.0.0.1:65002", False), (6, "root-0.pollen:65002", True))),
        ),
        (
            "GET",
            f"/p2p/v1/plan/{DIGEST}?want=0&repo=a/b&upstream=%5B::1%5D:5000&done=&failed=",
            plan(want=0, repo="a/b", upstream="[::1]:5000"),
        ),
        (
            "GET",
            f"/p2p/v1/plan/{DIGEST}?upstream=127.0.0.1:5000&repo=x&want=256",
            plan(upstream="127.0.0.1:5000", repo="x", want=256),
        ),
        # lower-case percent-encoding of brackets and unencoded brackets are understood too
        (
            "GET",
            PLAN + "&done=1@%5bfd00::1%5d:1,2@[FD00::2]:1",
            plan(done=((1, "[fd00::1]:1"), (2, "[fd00::2]:1"))),
        ),
    ],
)
def test_targets(method: str, target: str, parsed: object) -> None:
    assert parse_target(method, target) == parsed


def test_builders() -> None:
    assert ChunkTarget(digest=DIGEST, index=7).target() == CHUNK
    built = plan(
        have={0, 1, 2, 9},
        done=((3, "10.0.0.1:65002"),),
        failed=((5, "[FD00::1]:65002", False), (6, "10.0.0.2:65002", True)),
    ).target()
    assert built == (
        PLAN + "&have=0-2,9&done=3@10.0.0.1:65002&failed=5@%5Bfd00::1%5D:65002,6!@10.0.0.2:65002"
    )


@pytest.mark.parametrize(
    ("field", "node", "spelled"),
    [
        ("missing", "[FD00::2]:65002", "4@%5Bfd00::2%5D:65002"),
        ("finishing", "10.0.0.3:65002", None),
    ],
)
def test_missing_and_finishing_reports_are_encoded_like_done_and_counted_with_the_rest(
    field: str, node: str, spelled: str | None
) -> None:
    target = PlanTarget(digest=DIGEST, upstream="r.io", repo="x", want=0, **{field: ((4, node),)})
    assert target.target().endswith(f"&{field}={spelled or '4@' + node}")
    assert parse_target("GET", target.target()) == target
    with pytest.raises(P2PProtocolError, match="done/failed/missing/finishing reports"):
        PlanTarget(
            digest=DIGEST,
            upstream="r.io",
            repo="x",
            want=0,
            done=tuple((i, "10.0.0.1:1") for i in range(MAX_REPORTS)),
            **{field: ((0, "10.0.0.2:1"),)},
        )
    with pytest.raises(P2PProtocolError, match=f"{field} entries"):
        PlanTarget(digest=DIGEST, upstream="r.io", repo="x", want=0, **{field: ((1, "a:1", True),)})


@given(plan_targets())
def test_plan_target_round_trip(original: PlanTarget) -> None:
    target = original.target()
    parsed = parse_target("GET", target)
    assert parsed == original
    assert parsed.target() == target


def test_every_nonce_a_plan_target_takes_is_read_back() -> None:
    """PlanTarget takes nonces below MAX_NONCE; the query parser read 16 digits at most."""
    for nonce in (0, 10**16, MAX_NONCE - 1):
        target = PlanTarget(digest=DIGEST, upstream="r.io", repo="x", want=1, nonce=nonce)
        assert parse_target("GET", target.target()).nonce == nonce
    with pytest.raises(P2PProtocolError, match="out of range"):
        parse_target("GET", f"{PLAN}&n={MAX_NONCE}")


@given(digests, st.integers(0, MAX_CHUNKS - 1), st.sampled_from(["GET", "HEAD"]))
def test_chunk_round_trip(digest: str, index: int, method: str) -> None:
    original = ChunkTarget(digest=digest, index=index)
    assert parse_target(method, original.target()) == original


def test_longest_plan_request_line_is_under_8_KiB() -> None:
    upstream = ".".join(["a" * 63] * 3 + ["b" * 61]) + ":65535"  # 253-character name
    repo = "/".join(["r" * 63] * 4)  # 255 characters
    node = "n" * 63 + "." + "x" * 10 + ":65535"  # the longest node id
    assert parse_node(node) == node and len(node) == NODE_MAX
    worst_have = {i for i in range(2000) if i % 3 != 2}
    big = MAX_CHUNKS - 1
    target = PlanTarget(
        digest=DIGEST512,
        upstream=upstream,
        repo=repo,
        want=256,
        have=worst_have,
        done=tuple((big, node) for _ in range(MAX_REPORTS // 2 - 1)),
        failed=tuple((big, node, True) for _ in range(MAX_REPORTS - MAX_REPORTS // 2)),
        missing=((big, node),),
        past=big,
        depth=MAX_DEPTH,
        fresh=True,
        poll=True,
        nonce=MAX_NONCE - 1,  # the most digits a parser reads
        handed=True,
    ).target()

    request_line = f"GET {target} HTTP/1.1\r\n"
    assert len(request_line) < 8192, len(request_line)
    assert parse_target("GET", target).have == worst_have


# --------------------------------------------------------------------------------------------
# Targets that are refused


@pytest.mark.parametrize(
    ("method", "target", "status", "message"),
    [
        ("GET", "/v2/", 404, "no P2P endpoint"),
        ("GET", "/p2p/v2/chunk/x/1", 404, "no P2P endpoint"),
        ("GET", "/p2p/v1/chunk/", 404, "expected"),
        ("GET", f"/p2p/v1/chunk/{DIGEST}", 404, "expected"),
        ("GET", f"/p2p/v1/chunk/{DIGEST}/1/2", 404, "expected"),
        ("GET", f"/p2p/v1/plan/{DIGEST}/x?want=1", 404, "expected"),
        ("PUT", CHUNK, 405, "not allowed"),
        ("POST", PLAN, 405, "not allowed"),
        ("HEAD", PLAN, 405, "not allowed"),
        ("GET", CHUNK + "?x=1", 400, "no query"),
        ("GET", CHUNK + "?", 400, "no query"),
        ("GET", f"/p2p/v1/chunk/sha256:{HEX64[:-1]}/1", 400, "64 lower-case hex"),
        ("GET", f"/p2p/v1/chunk/sha256:{HEX64.upper()}/1", 400, "64 lower-case hex"),
        ("GET", f"/p2p/v1/chunk/md5:{HEX64[:32]}/1", 400, "unsupported digest"),
        ("GET", f"/p2p/v1/chunk/{DIGEST}/-1", 400, "decimal"),
        ("GET", f"/p2p/v1/chunk/{DIGEST}/01", 400, "decimal"),
        ("GET", f"/p2p/v1/chunk/{DIGEST}/", 400, "decimal"),
        ("GET", f"/p2p/v1/chunk/{DIGEST}/{MAX_CHUNKS}", 400, "out of range"),
        ("GET", f"/p2p/v1/chunk/{DIGEST}/1%30", 400, "decimal"),
        ("GET", CHUNK + "#x", 400, "visible ASCII"),
        ("GET", CHUNK.replace("/7", "/\u0667"), 400, "visible ASCII"),
        ("GET", CHUNK + " ", 400, "visible ASCII"),
        ("GET", "/p2p/v1/chunk/" + "a" * 9000, 414, "longer than"),
        ("GET", f"/p2p/v1/plan/{DIGEST}", 400, "lacks upstream, repo, want"),
        ("GET", f"/p2p/v1/plan/{DIGEST}?", 400, "lacks upstream, repo, want"),
        ("GET", f"/p2p/v1/plan/{DIGEST}?upstream=r.io&repo=x", 400, "lacks want"),
        ("GET", PLAN + "&want=5", 400, "given twice"),
        ("GET", PLAN + "&busy=1", 400, "unknown plan parameter"),
        ("GET", PLAN + "&", 400, "unknown plan parameter"),
        ("GET", PLAN + "&have", 400, "has no value"),
        ("GET", PLAN.replace("want=4", "want=257"), 400, "out of range"),
        ("GET", PLAN.replace("want=4", "want=x"), 400, "decimal"),
        ("GET", PLAN.replace("library/nginx", "Library/nginx"), 400, "invalid repository"),
        ("GET", PLAN.replace("library/nginx", "a//b"), 400, "invalid repository"),
        ("GET", PLAN.replace("library/nginx", "a%2Fb"), 400, "percent-encoding"),
        ("GET", PLAN.replace("registry.example.com", "Registry.io"), 400, "lower-case"),
        ("GET", PLAN.replace("registry.example.com", "r.io:0"), 400, "bad upstream"),
        ("GET", PLAN.replace("registry.example.com", "fd00::1"), 400, "bad upstream"),
        ("GET", PLAN.replace("registry.example.com", ""), 400, "lower-case"),
        ("GET", PLAN + "&have=1-", 400, "decimal"),
        ("GET", PLAN + "&have=3-1", 400, "backwards"),
        ("GET", PLAN + f"&have={MAX_CHUNKS}", 400, "out of range"),
        ("GET", PLAN + "&have=" + "1," * 3001 + "1", 400, "have longer than"),
        ("GET", PLAN + "&done=3", 400, "not <chunk>@<node>"),
        ("GET", PLAN + "&done=3@10.0.0.1", 400, "needs a port"),
        ("GET", PLAN + "&done=3!@10.0.0.1:1", 400, "decimal"),  # no "bad" mark on done
        ("GET", PLAN + "&done=@10.0.0.1:1", 400, "decimal"),
        ("GET", PLAN + "&failed=3!!@10.0.0.1:1", 400, "decimal"),
        ("GET", PLAN + "&failed=3@fd00::1:1", 400, "bad node id"),
        ("GET", PLAN + "&done=" + ",".join(["1@10.0.0.1:1"] * 17), 400, "more than 16"),
        (
            "GET",
            PLAN + "&done=" + ",".join(["1@a:1"] * 9) + "&failed=" + ",".join(["1@a:1"] * 8),
            400,
            "more than 16",
        ),
    ],
)
def test_refused_targets(method: str, target: str, status: int, message: str) -> None:
    with pytest.raises(P2PProtocolError) as info:
        parse_target(method, target)
    assert info.value.status_hint == status
    assert message in info.value.message


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"digest": "sha256:x"}, "64 lower-case hex"),
        ({"want": -1}, "out of range"),
        ({"want": True}, "must be an integer"),
        ({"have": {-1}}, "out of range"),
        ({"have": {1.0}}, "must be an integer"),
        ({"have": "0-3"}, "set of chunk indexes"),
        ({"have": set(range(0, 6000, 2))}, "clip_ranges"),
        ({"done": ((1, "10.0.0.1"),)}, "needs a port"),
        ({"done": ((1,),)}, "(chunk, source)"),
        ({"failed": ((1, "10.0.0.1:1"),)}, "(chunk, source, bad)"),
        ({"failed": ((1, "10.0.0.1:1", 1),)}, "(chunk, source, bad)"),
        ({"done": tuple((i, "a:1") for i in range(17))}, "more than 16"),
        ({"depth": 0}, "depth 0 out of range (1..16)"),
        ({"depth": MAX_DEPTH + 1}, "out of range"),
    ],
)
def test_plan_target_validates_its_fields(fields: dict[str, object], message: str) -> None:
    with pytest.raises(P2PProtocolError, match=message.replace("(", r"\(").replace(")", r"\)")):
        plan(**fields)


def test_a_depth_of_one_is_left_out_of_the_target_and_any_other_is_read_back() -> None:
    """Depth 1 is what a request without it means: roots from before it read the same."""
    assert "depth" not in plan(depth=1).target()
    deep = plan(depth=9)
    assert "&depth=9" in deep.target()
    assert parse_target("GET", deep.target()) == deep
    with pytest.raises(P2PProtocolError, match="depth"):
        parse_target("GET", plan().target() + "&depth=0")


def test_chunk_target_validates_its_fields() -> None:
    with pytest.raises(P2PProtocolError):
        ChunkTarget(digest=DIGEST, index=-1)
    with pytest.raises(P2PProtocolError):
        ChunkTarget(digest=DIGEST, index=MAX_CHUNKS)
    with pytest.raises(P2PProtocolError):
        ChunkTarget(digest="sha1:" + "0" * 40, index=0)


_TARGET_ALPHABET = string.ascii_letters + string.digits + "/:?&=,@!-%[]#.+ \u00e9"


@given(
    method=st.sampled_from(["GET", "HEAD", "PUT", ""]),
    target=st.one_of(
        st.text(max_size=200),
        st.text(alphabet=_TARGET_ALPHABET, max_size=200).map(lambda t: "/p2p/v1/plan/" + t),
        st.text(alphabet=_TARGET_ALPHABET, max_size=200).map(lambda t: PLAN + t),
        st.text(alphabet=_TARGET_ALPHABET, max_size=80).map(lambda t: "/p2p/v1/chunk/" + t),
    ),
)
def test_parser_raises_only_protocol_errors(method: str, target: str) -> None:
    try:
        parse_target(method, target)
    except P2PProtocolError as e:
        assert e.status_hint in (400, 404, 405, 414)


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(plan_targets(), st.data())
def test_mutated_plan_targets_parse_or_fail_cleanly(
    original: PlanTarget, data: st.DataObject
) -> None:
    target = original.target()
    at = data.draw(st.integers(0, len(target)))
    cut = data.draw(st.integers(0, 5))
    insert = data.draw(st.text(alphabet=_TARGET_ALPHABET, max_size=5))
    mutated = target[:at] + insert + target[at + cut :]
    try:
        parsed = parse_target("GET", mutated)
    except P2PProtocolError:
        return
    assert isinstance(parsed, (PlanTarget, ChunkTarget))


# --------------------------------------------------------------------------------------------
# Errors


def test_error_family() -> None:
    assert issubclass(P2PProtocolError, P2PError) and issubclass(P2PAuthError, P2PError)
    assert P2PProtocolError("x").status_hint == 400
    assert P2PProtocolError("x", status_hint=414).status_hint == 414
    err = P2PAuthError("bad signature")
    assert (err.status_hint, err.reason, str(err)) == (401, "bad signature", "bad signature")
