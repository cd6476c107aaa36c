"""Target: a P2P request as `agent.swarm.server.P2PServer.handle` reads it -- its x-pollen-*
headers (`agent.swarm.signing.verify`) and its method and target
(`agent.swarm.preheat.parse_p2p_target`: chunk targets, plan queries with their ranges and
reports, preheat queries).

The input is ``<method> <target>`` and then header lines ``name: value``, one a line, in
latin-1 (header values as bytes, as h11 hands them on). Both checks see every input: the
signature is never valid (the fuzzer does not know the token), but everything before the MAC
comparison runs.

Contract: verify raises only P2PAuthError (401); the parser raises only P2PProtocolError,
with the hint the server answers (400, 404, 405 or 414); an accepted target renders back
(`target()`) to a canonical spelling that parses to the same target, so what the agent sends
and what the root reads agree. (The canonical spelling may be longer: unencoded brackets of
IPv6 node ids are understood, and written percent-encoded.)
"""

from __future__ import annotations

from agent.swarm.preheat import parse_p2p_target
from agent.swarm.protocol import P2PProtocolError
from agent.swarm.signing import P2PAuthError, verify

TOKEN = b"fuzz-cluster-token"
NOW = 1_700_000_000.0


def fuzz_one(data: bytes) -> None:
    """One request line and its headers through the P2P server's checks."""
    first, _, rest = data.partition(b"\n")
    line = first.decode("latin-1")
    method, _, target = line.partition(" ")
    headers = []
    for header in rest.split(b"\n") if rest else []:
        name, _, value = header.partition(b":")
        headers.append((name.strip().lower(), value.strip()))
    try:
        verify(TOKEN, method, target, headers, NOW)
    except P2PAuthError as exc:
        assert exc.status_hint == 401
    else:
        raise AssertionError("a request was verified without the token")
    try:
        parsed = parse_p2p_target(method, target)
    except P2PProtocolError as exc:
        assert exc.status_hint in (400, 404, 405, 414), exc.status_hint
        return
    rendered = parsed.target()
    again = parse_p2p_target(method, rendered)
    assert again == parsed, (again, parsed)
    assert again.target() == rendered
