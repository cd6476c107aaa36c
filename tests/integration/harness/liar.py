"""A peer that lies: it tells a root it holds every chunk of a layer, then serves wrong bytes.

Run as a process: `python liar.py <address> <port> <root> <token> <upstream> <repo> <digest>`.
It speaks the real P2P protocol (signed requests, the plan endpoint, chunk reads), so the only
thing wrong about it is the bytes. It prints "ready" once the root has accepted its claim.
"""

from __future__ import annotations

import os
import sys
import time

import trio

from agent.http.client import HttpClient
from agent.http.responses import Response
from agent.http.server import HttpServer, Request, ServerSettings, open_listeners
from agent.http.tls import make_client_ssl_context
from agent.swarm.client import P2PClient
from agent.swarm.protocol import ChunkTarget, PlanTarget, parse_target
from agent.swarm.signing import verify


async def main(
    address: str, port: int, root: str, token: str, upstream: str, repo: str, digest: str
) -> None:
    node = f"{address}:{port}"
    served = 0

    async def handle(request: Request) -> Response:
        nonlocal served
        verify(token.encode(), request.method, request.target, request.headers, time.time())
        target = parse_target(request.method, request.target)
        assert isinstance(target, ChunkTarget)
        length = int(os.environ.get("LIAR_CHUNK", "262144"))
        layer_size = int(os.environ["LIAR_SIZE"])
        start = target.index * length
        n = max(0, min(length, layer_size - start))
        served += 1
        print(f"served a bad chunk {target.index}", flush=True)
        return Response(
            status=200, headers=[(b"content-length", str(n).encode())], body=os.urandom(n)
        )

    server = HttpServer(handle, ServerSettings(), name="liar")
    listeners = await open_listeners(address, port, None)
    client = P2PClient(
        HttpClient(make_client_ssl_context(None), timeout=10),
        token=token.encode(),
        node=node,
        tls=False,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve, listeners)
        # Learn the layer's size, then claim every chunk.
        for _ in range(200):
            plan = await client.plan(
                root, PlanTarget(digest=digest, upstream=upstream, repo=repo, want=0), None
            )
            if plan.size is not None:
                break
            await trio.sleep(0.05)
        assert plan.size is not None and plan.count is not None
        os.environ["LIAR_SIZE"] = str(plan.size)
        os.environ["LIAR_CHUNK"] = str(plan.chunk_size)
        claim = PlanTarget(
            digest=digest, upstream=upstream, repo=repo, want=0, have=frozenset(range(plan.count))
        )
        await client.plan(root, claim, None)
        print("ready", flush=True)
        await trio.sleep_forever()


if __name__ == "__main__":
    a = sys.argv[1:]
    trio.run(main, a[0], int(a[1]), a[2], a[3], a[4], a[5], a[6])
