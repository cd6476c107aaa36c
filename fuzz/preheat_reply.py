"""Target: a root's preheat reply as `pollen preheat` reads it
(`agent.swarm.client.P2PClient.preheat`): the reply's signature
(`agent.swarm.signing.verify_reply`), then its JSON (`agent.swarm.preheat.PreheatReply`).

The input's first byte chooses the signature, as in `plan_reply`: even, the body is signed
with the cluster token for the request; odd, the signature header is the input's next 64
bytes. The rest is the body.

Contract: verify_reply raises only P2PAuthError and passes every correctly signed body;
from_json raises only P2PProtocolError; an accepted reply encodes (`to_json`, what a root
sends) to one that parses back equal.
"""

from __future__ import annotations

from agent.swarm.preheat import PreheatReply
from agent.swarm.protocol import P2PProtocolError
from agent.swarm.signing import HEADER_REPLY_AUTH, P2PAuthError, sign_reply, verify_reply

TOKEN = b"fuzz-cluster-token"
REQUEST_AUTH = "5e" * 32  # the x-pollen-auth of the preheat request this reply answers
SIGNATURE_BYTES = 64


def fuzz_one(data: bytes) -> None:
    """One preheat reply through the client's signature check and parser."""
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
        reply = PreheatReply.from_json(body)
    except P2PProtocolError:
        return
    again = PreheatReply.from_json(reply.to_json())
    assert again == reply, (again, reply)
    assert again.to_json() == reply.to_json()
