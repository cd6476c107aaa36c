"""Tests for agent/swarm/signing.py: P2P request signatures and their check.

Pure: every function takes strings, bytes and numbers (time included) and returns values, so
no sockets, no clock and no event loop.  Peers are untrusted, so the check is also fuzzed:
whatever headers it is fed, it answers a node id or a P2PAuthError, never another exception.
"""

from __future__ import annotations

import hashlib
import hmac

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.swarm.protocol import P2PProtocolError, parse_node
from agent.swarm.signing import (
    MAX_SKEW,
    PROTOCOL_VERSION,
    P2PAuthError,
    request_auth,
    request_headers,
    sign,
    sign_reply,
    verify,
    verify_reply,
)
from tests.swarm.test_protocol import CHUNK, nodes

TOKEN = b"cluster-secret"
NODE = "10.0.0.5:65002"
NOW = 1_700_000_000.0

# --------------------------------------------------------------------------------------------
# Signing


def headers_for(
    method: str = "GET", target: str = CHUNK, now: float = NOW, node: str = NODE
) -> list[tuple[bytes, bytes]]:
    return request_headers(TOKEN, node, method, target, now)


def auth_error(
    headers: list[tuple[bytes, bytes]],
    *,
    method: str = "GET",
    target: str = CHUNK,
    now: float = NOW,
    token: bytes = TOKEN,
) -> str:
    with pytest.raises(P2PAuthError) as info:
        verify(token, method, target, headers, now)
    assert info.value.status_hint == 401
    return info.value.reason


def replace(
    headers: list[tuple[bytes, bytes]], name: bytes, value: bytes | None
) -> list[tuple[bytes, bytes]]:
    out = [(n, v) for n, v in headers if n != name]
    return out if value is None else [*out, (name, value)]


def test_signature_is_hmac_sha256_of_the_documented_encoding() -> None:
    # Written out by hand, so a change of the encoding (which would split a cluster running
    # two versions) fails here.
    target = CHUNK
    message = (
        b"pollen-p2p-auth\n1:1\n10:1700000000\n14:10.0.0.5:65002\n3:GET\n"
        + f"{len(target)}:{target}\n".encode()
    )
    want = hmac.new(TOKEN, message, hashlib.sha256).hexdigest()
    got = sign(TOKEN, version=1, time=1_700_000_000, node=NODE, method="GET", target=target)
    assert got == want


def test_request_headers() -> None:
    hdrs = dict(headers_for(now=NOW + 0.9))  # whole seconds, rounded down
    assert hdrs[b"x-pollen-version"] == b"1"
    assert hdrs[b"x-pollen-time"] == b"1700000000"
    assert hdrs[b"x-pollen-node"] == NODE.encode()
    assert (
        hdrs[b"x-pollen-auth"]
        == sign(
            TOKEN, version=1, time=1_700_000_000, node=NODE, method="GET", target=CHUNK
        ).encode()
    )
    assert PROTOCOL_VERSION == 1 and MAX_SKEW == 300


@given(
    token=st.binary(min_size=1, max_size=64),
    node=nodes,
    method=st.sampled_from(["GET", "HEAD"]),
    target=st.text(min_size=1, max_size=200),
    now=st.floats(0, 4e9),
    skew=st.integers(-MAX_SKEW + 1, MAX_SKEW - 1),
)
def test_sign_verify_round_trip(
    token: bytes, node: str, method: str, target: str, now: float, skew: int
) -> None:
    headers = request_headers(token, node, method, target, now)
    assert verify(token, method, target, headers, now + skew) == parse_node(node)


_FIELDS = {"version": 1, "time": 1_700_000_000, "node": NODE, "method": "GET", "target": CHUNK}


@given(
    name=st.sampled_from(sorted(_FIELDS)),
    text=st.text(max_size=30),
    number=st.integers(0, 2**40),
)
def test_any_single_field_change_breaks_the_signature(name: str, text: str, number: int) -> None:
    changed = dict(_FIELDS)
    changed[name] = number if isinstance(_FIELDS[name], int) else text
    if changed[name] == _FIELDS[name]:
        return
    assert sign(TOKEN, **changed) != sign(TOKEN, **_FIELDS)  # type: ignore[arg-type]


@given(fields=st.lists(st.text(max_size=8), min_size=3, max_size=3), cut=st.integers(0, 24))
def test_field_boundaries_are_unambiguous(fields: list[str], cut: int) -> None:
    # Moving characters from one field to the next never gives the same MAC.
    node, method, target = fields
    joined = method + target
    cut = min(cut, len(joined))
    moved = (joined[:cut], joined[cut:])
    same = sign(TOKEN, version=1, time=5, node=node, method=method, target=target)
    other = sign(TOKEN, version=1, time=5, node=node, method=moved[0], target=moved[1])
    assert (same == other) == (moved == (method, target))


def test_verify_returns_the_canonical_node() -> None:
    node = "[FD00:0:0::1]:65002"
    target = CHUNK
    auth = sign(TOKEN, version=1, time=int(NOW), node=node, method="GET", target=target)
    headers = [
        (b"X-Pollen-Version", b"1"),
        (b"X-Pollen-Time", str(int(NOW)).encode()),
        (b"X-Pollen-Node", node.encode()),
        (b"X-Pollen-Auth", auth.encode()),
        (b"host", b"10.0.0.1:65002"),
    ]
    assert verify(TOKEN, "GET", target, headers, NOW) == "[fd00::1]:65002"


@pytest.mark.parametrize(
    ("skew", "ok"),
    [(0, True), (MAX_SKEW, True), (-MAX_SKEW, True), (MAX_SKEW + 1, False), (-MAX_SKEW - 1, False)],
)
def test_clock_skew(skew: int, ok: bool) -> None:
    headers = headers_for(now=NOW)
    if ok:
        assert verify(TOKEN, "GET", CHUNK, headers, NOW + skew) == NODE
    else:
        reason = auth_error(headers, now=NOW + skew)
        assert ("stale" if skew > 0 else "future") in reason


def test_custom_max_skew() -> None:
    headers = headers_for(now=NOW)
    assert verify(TOKEN, "GET", CHUNK, headers, NOW + 10, max_skew=10) == NODE
    with pytest.raises(P2PAuthError, match="stale"):
        verify(TOKEN, "GET", CHUNK, headers, NOW + 11, max_skew=10)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({b"x-pollen-version": None}, "missing x-pollen-version"),
        ({b"x-pollen-time": None}, "missing x-pollen-time"),
        ({b"x-pollen-node": None}, "missing x-pollen-node"),
        ({b"x-pollen-auth": None}, "missing x-pollen-auth"),
        ({b"x-pollen-version": b"2"}, "unsupported protocol version 2"),
        ({b"x-pollen-version": b"0"}, "unsupported protocol version 0"),
        ({b"x-pollen-version": b"v1"}, "malformed x-pollen-version"),
        ({b"x-pollen-version": b""}, "malformed x-pollen-version"),
        ({b"x-pollen-time": b"-1"}, "malformed x-pollen-time"),
        ({b"x-pollen-time": b"1e9"}, "malformed x-pollen-time"),
        ({b"x-pollen-time": b"9" * 40}, "malformed x-pollen-time"),
        ({b"x-pollen-time": b"1700000001"}, "bad signature"),
        ({b"x-pollen-node": b"10.0.0.6:65002"}, "bad signature"),
        ({b"x-pollen-node": b"10.0.0.5"}, "needs a port"),
        ({b"x-pollen-node": b"not a node"}, "bad x-pollen-node"),
        ({b"x-pollen-node": "n\u00f6de:1".encode()}, "non-ASCII"),
        ({b"x-pollen-auth": b"00" * 32}, "bad signature"),
        ({b"x-pollen-auth": b"zz" * 32}, "malformed x-pollen-auth"),
        ({b"x-pollen-auth": b"00" * 31}, "malformed x-pollen-auth"),
    ],
)
def test_refused_headers(change: dict[bytes, bytes | None], reason: str) -> None:
    headers = headers_for()
    for name, value in change.items():
        headers = replace(headers, name, value)
    assert reason in auth_error(headers)


def test_signature_in_upper_case_is_refused() -> None:
    headers = headers_for()
    auth = dict(headers)[b"x-pollen-auth"]
    assert "malformed" in auth_error(replace(headers, b"x-pollen-auth", auth.upper()))


def test_repeated_header_is_refused() -> None:
    headers = headers_for()
    assert "repeated x-pollen-node" in auth_error([*headers, (b"X-Pollen-Node", NODE.encode())])


@pytest.mark.parametrize(
    ("method", "target", "token"),
    [
        ("HEAD", CHUNK, TOKEN),  # the method is signed
        ("GET", CHUNK.replace("/7", "/8"), TOKEN),  # the target is signed
        ("GET", CHUNK + "?x", TOKEN),
        ("GET", CHUNK, b"another-secret"),  # another cluster
    ],
)
def test_altered_requests_are_refused(method: str, target: str, token: bytes) -> None:
    reason = auth_error(headers_for("GET", CHUNK), method=method, target=target, token=token)
    assert "bad signature" in reason


def test_no_token_refuses_everything() -> None:
    with pytest.raises(P2PAuthError, match="no cluster token"):
        verify(b"", "GET", CHUNK, headers_for(), NOW)
    with pytest.raises(ValueError, match="empty cluster token"):
        sign(b"", version=1, time=1, node=NODE, method="GET", target=CHUNK)


def test_request_headers_refuse_a_bad_node() -> None:
    with pytest.raises(P2PProtocolError, match="needs a port"):
        request_headers(TOKEN, "10.0.0.5", "GET", CHUNK, NOW)


@given(
    headers=st.lists(
        st.tuples(
            st.sampled_from(
                [
                    b"x-pollen-version",
                    b"x-pollen-time",
                    b"x-pollen-node",
                    b"x-pollen-auth",
                    b"X-Pollen-Auth",
                    b"other",
                ]
            ),
            st.binary(max_size=80),
        ),
        max_size=6,
    )
)
def test_verify_raises_only_auth_errors(headers: list[tuple[bytes, bytes]]) -> None:
    try:
        verify(TOKEN, "GET", CHUNK, headers, NOW)
    except P2PAuthError:
        pass


# --------------------------------------------------------------------------------------------
# Plan replies


def test_a_reply_signature_is_the_documented_hmac_and_verifies() -> None:
    body = b'{"size":10}'
    mac = sign_reply(TOKEN, "ab" * 32, body)
    want = hmac.new(
        TOKEN, b"pollen-p2p-reply\n64:" + b"ab" * 32 + b"\n" + body, hashlib.sha256
    ).hexdigest()
    assert mac == want
    verify_reply(TOKEN, "ab" * 32, body, [(b"X-Pollen-Reply-Auth", mac.encode())])


@pytest.mark.parametrize(
    ("token", "request_mac", "body", "headers", "reason"),
    [
        (TOKEN, "ab" * 32, b"{}", "none", "unsigned reply"),
        (TOKEN, "ab" * 32, b'{"size":11}', "once", "bad reply signature"),  # altered body
        (TOKEN, "cd" * 32, b'{"size":10}', "once", "bad reply signature"),  # another request's
        (b"other", "ab" * 32, b'{"size":10}', "once", "bad reply signature"),  # not the token
        (TOKEN, "ab" * 32, b'{"size":10}', "twice", "repeated"),
    ],
    ids=["unsigned", "altered", "other-request", "other-token", "repeated"],
)
def test_a_reply_not_signed_for_its_request_and_body_is_refused(
    token: bytes, request_mac: str, body: bytes, headers: str, reason: str
) -> None:
    mac = sign_reply(TOKEN, "ab" * 32, b'{"size":10}').encode()
    copies = {"none": 0, "once": 1, "twice": 2}[headers]
    with pytest.raises(P2PAuthError, match=reason):
        verify_reply(token, request_mac, body, [(b"x-pollen-reply-auth", mac)] * copies)


def test_the_request_mac_a_reply_binds_to_is_its_x_pollen_auth() -> None:
    headers = request_headers(TOKEN, "10.0.0.1:65002", "GET", "/p2p/plan?x=1", 1_700_000_000)
    assert request_auth(headers) == dict(headers)[b"x-pollen-auth"].decode()
    assert request_auth([]) == ""
