"""Wiring: the one place that builds the components of a running agent and connects them.

Everything below this module is constructed here from `Config` and handed its collaborators;
nothing reads the environment or starts tasks on its own. The agent runs until SIGTERM or
SIGINT, then drains: `/readyz` turns 503, the listeners close, responses in flight get
``shutdownGrace`` to finish. SIGHUP reopens the audit log file (logrotate).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import ssl
from collections.abc import Callable
from pathlib import Path

import trio

from agent import __version__
from agent.cache import native
from agent.cache.store import ChunkCache
from agent.core.config import Config
from agent.core.errors import ConfigError
from agent.fetch.layerfetch import LayerFetcher, SwarmContext
from agent.http.client import HttpClient, make_client_ssl_context
from agent.http.server import HttpServer, ServerSettings, listener_port, open_listeners
from agent.http.throttle import TokenBucket
from agent.node.address import detect_node_ip
from agent.observe.audit import AuditLog
from agent.observe.metrics import Telemetry
from agent.registry.authcheck import AuthChecker
from agent.registry.client import RegistryClient
from agent.registry.proxy import RegistryProxy, protocol_error_response
from agent.swarm.client import P2PClient
from agent.swarm.protocol import parse_node
from agent.swarm.roots import RootSet
from agent.swarm.server import P2PService
from agent.swarm.tracker import Tracker

log = logging.getLogger(__name__)

# Upload connections one node serves at once on its P2P port (peers keep one or two each).
P2P_MAX_CONNECTIONS = 256


def server_ssl_context(cert: str, key: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    context.set_alpn_protocols(["http/1.1"])
    return context


def p2p_server_ssl_context(config: Config) -> ssl.SSLContext:
    """The P2P port's TLS: this node's certificate, and peers must show one from the CA."""
    context = server_ssl_context(config.p2p_tls_cert, config.p2p_tls_key)
    if config.p2p_tls_ca:
        context.load_verify_locations(cafile=config.p2p_tls_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def p2p_client_ssl_context(config: Config) -> ssl.SSLContext:
    context = make_client_ssl_context(config.p2p_tls_ca or None)
    context.load_cert_chain(config.p2p_tls_cert, config.p2p_tls_key)
    return context


class Throttle:
    """The node's upload cap (throttleLimitMB), awaited before each piece any server sends."""

    def __init__(self, bucket: TokenBucket) -> None:
        self._bucket = bucket

    async def __call__(self, n: int) -> None:
        delay = self._bucket.reserve(n, trio.current_time())
        if delay > 0:
            await trio.sleep(delay)


def _join_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Agent:
    """A running agent's components, built from the configuration."""

    def __init__(self, config: Config, *, mode: str | None = None) -> None:
        self.config = config
        self.mode = mode or config.mode
        if self.mode == "root" and not config.cluster_token:
            raise ConfigError("clusterToken", "a root needs POLLEN_CLUSTER_TOKEN (clusterToken)")
        self.node_ip = config.node_ip or detect_node_ip()
        self.node = parse_node(_join_host_port(self.node_ip, config.p2p_port))
        # Metrics, the audit log and the per-layer summary: one observer for the data path.
        self.audit = AuditLog.from_config(config)
        self.telemetry = Telemetry(
            node=self.node, mode=self.mode, labels=config.labels, audit=self.audit
        )
        # Logs which engine runs and why a preferred one was passed over (config.io_engines:
        # io_uring -> aio -> pread with aioEnable=1, or the one cache.ioEngine forces).
        self.engine = native.open_preferred_engine(
            config.io_engines, config.cache_queue_depth, direct=config.cache_aio_enable
        )
        self.cache = ChunkCache(
            Path(config.cache_path),
            capacity=config.cache_capacity,
            chunk_size=config.cache_chunk_size,
            engine=self.engine,
            files=native,
            direct=config.cache_aio_enable,
            write_retry=config.cache_write_retry,
            chunk_tables=self.mode == "root",
            observer=self.telemetry,
        )
        self.http = HttpClient(
            make_client_ssl_context(config.upstream_ca_file or None),
            timeout=config.upstream_timeout,
        )
        self.registry = RegistryClient(self.http, retries=config.upstream_retries)
        self.auth = AuthChecker(self.registry, ttl=config.auth_cache_ttl)
        bucket = TokenBucket(config.throttle_bytes_per_second, burst=config.cache_chunk_size)
        self.throttle = Throttle(bucket)
        self.p2p_enabled = self.mode == "root" or bool(config.roots)
        p2p_tls = bool(config.p2p_tls_cert)
        self.swarm: SwarmContext | None = None
        self.roots: RootSet | None = None
        if config.roots:
            self.roots = RootSet(config.roots, p2p_port=config.p2p_port)
            p2p_http = HttpClient(
                p2p_client_ssl_context(config) if p2p_tls else make_client_ssl_context(None),
                timeout=config.upstream_timeout,
            )
            self.swarm = SwarmContext(
                node=self.node,
                roots=self.roots,
                client=P2PClient(
                    p2p_http, token=config.cluster_token.encode(), node=self.node, tls=p2p_tls
                ),
            )
        self.fetcher = LayerFetcher(
            self.cache,
            self.registry,
            concurrency_limit=config.proxy_concurrency_limit,
            retries=config.upstream_retries,
            swarm=self.swarm,
            observer=self.telemetry,
        )
        self.tracker: Tracker | None = None
        if self.mode == "root":
            self.tracker = Tracker(
                node=self.node, config=config, fetcher=self.fetcher, cache=self.cache
            )
        self.p2p = P2PService(
            token=config.cluster_token.encode(),
            cache=self.cache,
            plan_handler=self.tracker.plan if self.tracker else None,
            observer=self.telemetry,
        )
        self.p2p_server = HttpServer(
            self.p2p.handle,
            ServerSettings(
                read_timeout=config.read_timeout,
                idle_timeout=config.idle_timeout,
                throttle=self.throttle,
                max_connections=P2P_MAX_CONNECTIONS,
                on_request=self._on_request("p2p"),
            ),
            name="p2p",
        )
        self.proxy = RegistryProxy(
            config=config,
            registry=self.registry,
            auth=self.auth,
            fetcher=self.fetcher,
            status=self.status,
            metrics=self.telemetry.metrics_response if self._metrics_on_proxy_port else None,
            observer=self.telemetry,
        )
        self.server = HttpServer(
            self.proxy.handle,
            ServerSettings(
                read_timeout=config.read_timeout,
                idle_timeout=config.idle_timeout,
                throttle=self.throttle,
                on_request=self._on_request("proxy"),
            ),
            name="proxy",
            on_protocol_error=protocol_error_response,
        )
        self.proxy_port = 0
        self.exporter: HttpServer | None = None
        self.exporter_port = 0
        if config.exporter_enable and config.exporter_standalone_port:
            self.exporter = HttpServer(
                self.telemetry.handle,
                ServerSettings(read_timeout=config.read_timeout, idle_timeout=config.idle_timeout),
                name="exporter",
            )
        self.telemetry.bind(
            alive=lambda: self.proxy.ready,
            cache=self.cache,
            auth=self.auth,
            fetcher=self.fetcher,
            swarm=self.swarm,
            p2p=self.p2p if self.p2p_enabled else None,
            engine=self.engine.name,
        )

    @property
    def _metrics_on_proxy_port(self) -> bool:
        return self.config.exporter_enable and not self.config.exporter_standalone_port

    def _on_request(self, port: str) -> Callable[[int, int, float], None]:
        def observe(status: int, size: int, seconds: float) -> None:
            self.telemetry.request(port, status, size, seconds)

        return observe

    def status(self) -> dict[str, object]:
        """The JSON of ``/_pollen/status`` (and `pollen status`)."""
        return {
            "version": __version__,
            "mode": self.mode,
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
                    "sources": dict(p.sources),
                }
                for p in self.fetcher.in_flight()
            ],
            "auth_checks": dict(self.auth.results),
            "server": self.server.statistics(),
            "upstreams": [str(u) for u in self.config.upstreams],
            "swarm": self._swarm_status(),
            "telemetry": {
                "exporter": self._exporter_status(),
                **self.telemetry.statistics(),
            },
        }

    def _exporter_status(self) -> dict[str, object]:
        config = self.config
        if not config.exporter_enable:
            where = "off"
        elif self.exporter is not None:
            where = f"port {self.exporter_port or config.exporter_port}"
        else:
            where = "/metrics on the proxy port"
        return {"enabled": config.exporter_enable, "where": where}

    def _swarm_status(self) -> dict[str, object] | None:
        if not self.p2p_enabled:
            return None
        return {
            "node": self.node,
            "roots": self.roots.state() if self.roots else [],
            "origin_fallbacks": self.swarm.fallbacks if self.swarm else 0,
            "peer_bytes": self.swarm.peer_bytes if self.swarm else 0,
            "chunks_served": self.p2p.chunks_served,
            "refused": self.p2p.refused,
            "tracker": self.tracker.statistics() if self.tracker else None,
        }

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        config = self.config
        await trio.to_thread.run_sync(self.cache.load)
        tls = server_ssl_context(config.tls_cert, config.tls_key) if config.tls_cert else None
        listeners = await open_listeners(config.listen_address, config.proxy_port, tls)
        self.proxy_port = listener_port(listeners)
        p2p_listeners = []
        if self.p2p_enabled:
            p2p_tls = p2p_server_ssl_context(config) if config.p2p_tls_cert else None
            p2p_listeners = await open_listeners(config.listen_address, config.p2p_port, p2p_tls)
        exporter_listeners = []
        if self.exporter is not None:
            exporter_listeners = await open_listeners(
                config.listen_address, config.exporter_port, None
            )
            self.exporter_port = listener_port(exporter_listeners)
        # Signals are caught from here on: a SIGHUP sent once the agent is ready must not kill it.
        catching = contextlib.ExitStack()
        received = catching.enter_context(
            trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
        )
        try:
            async with self.engine, trio.open_nursery() as nursery:
                await nursery.start(self.audit.run)
                await nursery.start(self.fetcher.run)
                if self.roots is not None:
                    await nursery.start(self.roots.run)
                if self.tracker is not None:
                    await nursery.start(self.tracker.run)
                if p2p_listeners:
                    await nursery.start(self.p2p_server.serve, p2p_listeners)
                    log.info(
                        "P2P port %d as %s (%s), roots %s",
                        config.p2p_port,
                        self.node,
                        self.mode,
                        ", ".join(config.roots) or "(none)",
                    )
                if self.exporter is not None:
                    await nursery.start(self.exporter.serve, exporter_listeners)
                    log.info("metrics on port %d (/metrics)", self.exporter_port)
                await nursery.start(self.server.serve, listeners)
                self.proxy.ready = True
                log.info(
                    "pollen %s %s serving the registry API on %s port %d (%s), upstreams %s",
                    __version__,
                    self.mode,
                    config.listen_address or "*",
                    self.proxy_port,
                    "https" if tls else "http",
                    ", ".join(str(u) for u in config.upstreams),
                )
                task_status.started(self.proxy_port)
                async for signum in received:
                    if signum == signal.SIGHUP:
                        log.info("received SIGHUP: reopening the audit log")
                        await self.audit.reopen()
                        continue
                    log.info("received %s: draining", signal.Signals(signum).name)
                    break
                self.proxy.ready = False
                with trio.move_on_after(config.shutdown_grace):
                    async with trio.open_nursery() as drains:
                        drains.start_soon(self.server.drain, config.shutdown_grace)
                        if p2p_listeners:
                            drains.start_soon(self.p2p_server.drain, config.shutdown_grace)
                        if self.exporter is not None:
                            drains.start_soon(self.exporter.drain, config.shutdown_grace)
                nursery.cancel_scope.cancel()
        finally:
            catching.close()
            with trio.CancelScope(shield=True):
                await self.http.aclose()
                await self.engine.aclose()
        log.info("agent stopped")
