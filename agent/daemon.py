"""Wiring: the one place that builds the components of a running agent and connects them.

Everything below this module is constructed here from `Config` and handed its collaborators;
nothing reads the environment or starts tasks on its own. The agent runs until SIGTERM or
SIGINT, then drains: `/readyz` turns 503, the listeners close, responses in flight get
``shutdownGrace`` to finish.
"""

from __future__ import annotations

import logging
import signal
import ssl
from pathlib import Path

import trio

from agent import __version__, native
from agent.authcheck import AuthChecker
from agent.cache import ChunkCache
from agent.config import Config
from agent.httpclient import HttpClient, make_client_ssl_context
from agent.httpserver import HttpServer, ServerSettings, listener_port, open_listeners
from agent.layerfetch import LayerFetcher
from agent.nodeaddr import detect_node_ip
from agent.proxy import RegistryProxy, protocol_error_response
from agent.upstream import RegistryClient

log = logging.getLogger(__name__)


def server_ssl_context(cert: str, key: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    context.set_alpn_protocols(["http/1.1"])
    return context


class Agent:
    """A running agent's components, built from the configuration."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.node_ip = config.node_ip or detect_node_ip()
        self.engine = native.open_engine("pread", config.cache_queue_depth)
        self.cache = ChunkCache(
            Path(config.cache_path),
            capacity=config.cache_capacity,
            chunk_size=config.cache_chunk_size,
            engine=self.engine,
            files=native,
            write_retry=config.cache_write_retry,
        )
        self.http = HttpClient(
            make_client_ssl_context(config.upstream_ca_file or None),
            timeout=config.upstream_timeout,
        )
        self.registry = RegistryClient(self.http, retries=config.upstream_retries)
        self.auth = AuthChecker(self.registry, ttl=config.auth_cache_ttl)
        self.fetcher = LayerFetcher(
            self.cache,
            self.registry,
            concurrency_limit=config.proxy_concurrency_limit,
            retries=config.upstream_retries,
        )
        self.proxy = RegistryProxy(
            config=config,
            registry=self.registry,
            auth=self.auth,
            fetcher=self.fetcher,
            status=self.status,
        )
        self.server = HttpServer(
            self.proxy.handle,
            ServerSettings(read_timeout=config.read_timeout, idle_timeout=config.idle_timeout),
            name="proxy",
            on_protocol_error=protocol_error_response,
        )
        self.proxy_port = 0

    def status(self) -> dict[str, object]:
        """The JSON of ``/_pollen/status`` (and `pollen status`)."""
        return {
            "version": __version__,
            "mode": self.config.mode,
            "node": f"{self.node_ip}:{self.config.p2p_port}",
            "proxy_port": self.proxy_port,
            "ready": self.proxy.ready,
            "io_engine": self.engine.statistics(),
            "cache": self.cache.statistics(),
            "downloads": self.fetcher.statistics(),
            "layers_in_flight": [
                {
                    "digest": p.digest,
                    "upstream": p.upstream,
                    "size": p.size,
                    "received": p.received,
                    "mode": p.mode,
                    "readers": p.readers,
                    "seconds": round(trio.current_time() - p.started_at, 3),
                }
                for p in self.fetcher.in_flight()
            ],
            "auth_checks": dict(self.auth.results),
            "server": self.server.statistics(),
            "upstreams": [str(u) for u in self.config.upstreams],
        }

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        config = self.config
        await trio.to_thread.run_sync(self.cache.load)
        tls = server_ssl_context(config.tls_cert, config.tls_key) if config.tls_cert else None
        listeners = await open_listeners(config.listen_address, config.proxy_port, tls)
        self.proxy_port = listener_port(listeners)
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.fetcher.run)
                await nursery.start(self.server.serve, listeners)
                self.proxy.ready = True
                log.info(
                    "pollen %s agent serving the registry API on %s port %d (%s), upstreams %s",
                    __version__,
                    config.listen_address or "*",
                    self.proxy_port,
                    "https" if tls else "http",
                    ", ".join(str(u) for u in config.upstreams),
                )
                task_status.started(self.proxy_port)
                with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                    async for signum in signals:
                        log.info("received %s: draining", signal.Signals(signum).name)
                        break
                self.proxy.ready = False
                await self.server.drain(config.shutdown_grace)
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await self.http.aclose()
                await self.engine.aclose()
        log.info("agent stopped")
