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
from fuzz.plan_reply import fuzz_signed_reply


def fuzz_one(data: bytes) -> None:
    """One preheat reply through the client's signature check and parser."""
    fuzz_signed_reply(data, PreheatReply)
