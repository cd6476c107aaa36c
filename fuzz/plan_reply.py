"""Target: a root's plan reply as the agent reads it (`agent.swarm.client.PeerClient.plan`):
the reply's signature (`agent.swarm.signing.verify_reply`), then its JSON
(`agent.swarm.plan.Plan.from_json`).

The input's first byte chooses the signature: even, the body is signed with the cluster token
for the request (so the fuzzer's time goes into the JSON parser, as a root that is a member
but buggy or compromised would send); odd, the signature header is the input's next 64 bytes.
The rest is the body.

Contract: verify_reply raises only P2PAuthError and passes every correctly signed body;
from_json raises only P2PProtocolError; an accepted plan encodes (`to_json`, what a root
sends) to a reply that parses back equal.
"""

from __future__ import annotations

from typing import Protocol, Self

from agent.swarm.plan import Plan
from agent.swarm.protocol import P2PProtocolError
from agent.swarm.signing import HEADER_REPLY_AUTH, P2PAuthError, sign_reply, verify_reply

TOKEN = b"fuzz-cluster-token"
REQUEST_AUTH = "5e" * 32  # the x-pollen-auth of the plan request this reply answers
SIGNATURE_BYTES = 64


class Reply(Protocol):
    """What a root answers a signed request with (a plan, a preheat reply)."""

    @classmethod
    def from_json(cls, body: bytes) -> Self: ...

    def to_json(self) -> bytes: ...


def fuzz_signed_reply(data: bytes, reply_type: type[Reply]) -> None:
    """One reply through the client's signature check and `reply_type`'s parser (the
    contract above; `preheat_reply` holds its reply to the same one)."""
    if not data:
        return
    signed = data[0] % 2 == 0
    if signed:
        body = data[1:]
        signature = sign_reply(TOKEN, REQUEST_AUTH, body).encode()
    else:
        signature, body = data[1 : 1 + SIGNATURE_BYTES], data[1 + SIGNATURE_BYTES :]
    try:
        verify_reply(TOKEN, REQUEST_AUTH, body, [(HEADER_REPLY_AUTH, signature)])
    except P2PAuthError as exc:
        assert not signed, f"a signed reply was refused: {exc}"
        return
    try:
        reply = reply_type.from_json(body)
    except P2PProtocolError:
        return
    again = reply_type.from_json(reply.to_json())
    assert again == reply, (again, reply)
    assert again.to_json() == reply.to_json()


def fuzz_one(data: bytes) -> None:
    """One plan reply through the agent's signature check and parser."""
    fuzz_signed_reply(data, Plan)
