"""A root that lies: its chunk table and its chunks are self-consistent, and wrong.

Run as a process: `python -P lyingroot.py <address> <port> <token> <size> <chunk_size>`. It
speaks the real P2P protocol (signed requests verified, plans, chunk reads) for any layer it
is asked about: the layer has `size` bytes, its chunks are bytes of a fixed random stream, and
the plan's sha256 table matches those bytes, so every chunk passes the agent's check and only
the whole-layer digest can tell. It holds the cluster token (an insider: it signs its plans),
which is what reply signatures cannot help against. It prints "ready" once it listens.
"""

from __future__ import annotations

import hashlib
import random
import sys
import time

import trio

from agent.http.responses import JSON, Response, bytes_response
from agent.http.server import HttpServer, Request, ServerSettings, open_listeners
from agent.swarm.plan import Plan
from agent.swarm.protocol import ChunkTarget, parse_target
from agent.swarm.signing import HEADER_REPLY_AUTH, request_auth, sign_reply, verify


async def main(address: str, port: int, token: str, size: int, chunk_size: int) -> None:
    node = f"{address}:{port}"
    data = random.Random(7).randbytes(size)
    count = -(-size // chunk_size)
    chunks = [data[i * chunk_size : (i + 1) * chunk_size] for i in range(count)]
    table = {i: hashlib.sha256(c).hexdigest() for i, c in enumerate(chunks)}
    handed: dict[str, set[int]] = {}  # asker -> chunks assigned to it

    async def handle(request: Request) -> Response:
        asker = verify(token.encode(), request.method, request.target, request.headers, time.time())
        target = parse_target(request.method, request.target)
        if isinstance(target, ChunkTarget):
            body = chunks[target.index]
            return Response(
                status=200, headers=[(b"content-length", str(len(body)).encode())], body=body
            )
        given = handed.setdefault(asker, set())
        given.update(c for c, _ in target.done)
        todo = [c for c in range(count) if c not in given][: max(0, target.want)]
        given.update(todo)
        plan = Plan(
            size=size,
            chunk_size=chunk_size,
            chunk_sha256={c: table[c] for c in todo},
            assignments=tuple((c, node) for c in todo),
            complete=True,
        )
        body = plan.to_json()
        signature = sign_reply(token.encode(), request_auth(request.headers), body)
        return bytes_response(200, body, JSON, [(HEADER_REPLY_AUTH, signature.encode())])

    server = HttpServer(handle, ServerSettings(), name="lying-root")
    listeners = await open_listeners(address, port, None)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve, listeners)
        print("ready", flush=True)
        await trio.sleep_forever()


if __name__ == "__main__":
    a = sys.argv[1:]
    trio.run(main, a[0], int(a[1]), a[2], int(a[3]), int(a[4]))
