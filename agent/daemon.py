"""Wiring: the one place that builds the components of a running agent and connects them.

Everything below this module is constructed here from `Config` and handed its collaborators;
nothing reads the environment or starts tasks on its own. The agent runs until SIGTERM or
SIGINT, then drains: `/readyz` turns 503, the listeners close, responses in flight get
``shutdownGrace`` to finish. SIGHUP reopens the audit log file (logrotate).

What is not wiring has a home of its own: the TLS contexts (`agent.http.tls`), the upload cap
(`agent.http.uploadcap`), the stop-and-drain steps (`agent.http.shutdown`) and the status
document (`agent.observe.status`).
"""

from __future__ import annotations

import functools
import logging
import signal
from dataclasses import dataclass
from pathlib import Path

import trio

from agent import __version__
from agent.cache import native
from agent.cache.engines import Engine, open_preferred_engine
from agent.cache.store import ChunkCache
from agent.core.config import Config
from agent.core.hostport import join_hostport
from agent.fetch.fetcher import LayerFetcher
from agent.fetch.model import FetchContext
from agent.http.client import HttpClient
from agent.http.limits import Limits
from agent.http.server import HttpServer, ServerSettings, listener_port, open_listeners
from agent.http.shutdown import STOP_SIGNALS, drain, wait_for_stop
from agent.http.throttle import TokenBucket
from agent.http.tls import make_client_ssl_context, server_ssl_context
from agent.http.uploadcap import UploadCap
from agent.node.address import detect_node_ip
from agent.observe.audit import AuditLog
from agent.observe.metrics import Telemetry
from agent.observe.status import AgentStatus, SwarmStatus
from agent.registry.authcheck import AuthChecker
from agent.registry.client import RegistryClient
from agent.registry.proxy import RegistryProxy, protocol_error_response
from agent.swarm.client import P2PClient
from agent.swarm.download import SwarmContext
from agent.swarm.handoffstore import HandoffStore
from agent.swarm.preheater import Preheater
from agent.swarm.protocol import parse_node
from agent.swarm.roots import RootSet
from agent.swarm.server import P2PService
from agent.swarm.tracker import Tracker

log = logging.getLogger(__name__)

Listeners = list[trio.abc.Listener[trio.abc.Stream]]


@dataclass(kw_only=True)
class _Ports:
    """What `Agent.run` bound; an empty list: that server does not run on this node."""

    proxy: Listeners
    p2p: Listeners
    exporter: Listeners
    tls: bool  # the proxy port speaks HTTPS


class Agent:
    """A running agent's components, built from the configuration."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.mode = config.mode  # the CLI set it (dataclasses.replace); Config checked it
        self.node_ip = config.node_ip or detect_node_ip()
        self.node = parse_node(join_hostport(self.node_ip, config.p2p_port))
        # Metrics, the audit log and the per-layer summary: one observer for the data path.
        self.audit = AuditLog.from_config(config)
        self.telemetry = Telemetry(
            node=self.node, mode=self.mode, labels=config.labels, audit=self.audit
        )
        self.engine, self.cache = self._open_cache()
        self.http = HttpClient(
            make_client_ssl_context(config.upstream_ca_file or None),
            timeout=config.upstream_timeout,
        )
        self.registry = RegistryClient(self.http, retries=config.upstream_retries)
        self.auth = AuthChecker(self.registry, ttl=config.auth_cache_ttl)
        bucket = TokenBucket(config.throttle_bytes_per_second, burst=config.cache_chunk_size)
        self.throttle = UploadCap(bucket)
        self.p2p_enabled = config.p2p_enabled
        config.check_parent_roots()
        self.roots, self.swarm, self.parent_swarm = self._join_swarm()
        self.fetcher = LayerFetcher(
            FetchContext(
                cache=self.cache,
                registry=self.registry,
                retries=config.upstream_retries,
                observer=self.telemetry,
                slow_reader=config.slow_reader_timeout,
            ),
            concurrency_limit=config.proxy_concurrency_limit,
            swarm=self.swarm,
            parent_swarm=self.parent_swarm,
        )
        self.tracker: Tracker | None = None
        self.preheater: Preheater | None = None
        if self.mode == "root":
            self.tracker = Tracker(
                node=self.node,
                config=config,
                fetcher=self.fetcher,
                cache=self.cache,
                roots=self.roots,
                handoff_store=HandoffStore(Path(config.cache_path)),
            )
            if self.swarm is not None:  # this root's own client follows its handoffs
                self.swarm.handed_to = self.tracker.handed_to
            self.preheater = Preheater(
                upstreams=config.upstreams, fetcher=self.fetcher, cache=self.cache
            )
        self.p2p, self.p2p_server = self._p2p_port()
        self.proxy, self.server = self._proxy_port()
        self.exporter: HttpServer | None = None
        if config.exporter_enable and config.exporter_standalone_port:
            self.exporter = HttpServer(
                self.telemetry.handle,
                ServerSettings(read_timeout=config.read_timeout, idle_timeout=config.idle_timeout),
                name="exporter",
            )
        self.status_report = self._status_report()
        self.telemetry.bind(
            alive=lambda: self.proxy.ready,
            cache=self.cache,
            auth=self.auth,
            fetcher=self.fetcher,
            swarm=self.swarm or self.parent_swarm,
            p2p=self.p2p if self.p2p_enabled else None,
            engine=self.engine.name,
        )

    def _open_cache(self) -> tuple[Engine, ChunkCache]:
        """The I/O engine and the chunk cache on it; `run` loads the cache and enters the engine."""
        config = self.config
        # Logs which engine runs and why a preferred one was passed over (config.io_engines:
        # io_uring -> aio -> pread with aioEnable=1, or the one cache.ioEngine forces).
        engine = open_preferred_engine(
            config.io_engines, config.cache_queue_depth, direct=config.cache_aio_enable
        )
        cache = ChunkCache(
            Path(config.cache_path),
            capacity=config.cache_capacity,
            chunk_size=config.cache_chunk_size,
            engine=engine,
            files=native,
            direct=config.cache_aio_enable,
            write_retry=config.cache_write_retry,
            chunk_tables=self.mode == "root",
            observer=self.telemetry,
        )
        return engine, cache

    def _join_swarm(
        self,
    ) -> tuple[RootSet | None, SwarmContext | None, SwarmContext | None]:
        """The roots and a client of the P2P port, on a node configured with roots; on a root
        with parent roots, the swarm it fetches its layers through."""
        config = self.config
        if not config.roots and not config.parent_roots:
            return None, None, None
        p2p_tls = bool(config.p2p_tls_cert)
        context = (
            make_client_ssl_context(
                config.p2p_tls_ca or None, cert=config.p2p_tls_cert, key=config.p2p_tls_key
            )
            if p2p_tls
            else make_client_ssl_context(None)
        )
        client = P2PClient(
            HttpClient(context, timeout=config.upstream_timeout),
            token=config.cluster_token.encode(),
            node=self.node,
            tls=p2p_tls,
        )
        roots: RootSet | None = None
        swarm: SwarmContext | None = None
        parent: SwarmContext | None = None
        if config.roots:
            roots = RootSet(config.roots, p2p_port=config.p2p_port)
            swarm = SwarmContext(node=self.node, roots=roots, client=client)
        if config.parent_roots:
            parent_set = RootSet(config.parent_roots, p2p_port=config.p2p_port)
            # One count of origin fallbacks per node (the metric), whichever swarm fell back.
            fallbacks = swarm.fallbacks if swarm is not None else {}
            parent = SwarmContext(
                node=self.node, roots=parent_set, client=client, fallbacks=fallbacks
            )
        return roots, swarm, parent

    def _p2p_port(self) -> tuple[P2PService, HttpServer]:
        """Chunks for peers and, on a root, plans; built on every node, served when P2P is on."""
        p2p = P2PService(
            token=self.config.cluster_token.encode(),
            cache=self.cache,
            plan_handler=self.tracker.plan if self.tracker else None,
            preheat_handler=self.preheater.preheat if self.preheater else None,
            observer=self.telemetry,
            hot_chunk=self.fetcher.hot_chunk,
            wait_landed=self.fetcher.wait_landed,
            arriving=self.fetcher.arriving,
        )
        limits = Limits(
            max_connections=self.config.p2p_max_connections,
            max_client_connections=self.config.max_client_connections,
        )
        settings = self._data_port_settings("p2p", limits)
        return p2p, HttpServer(p2p.handle, settings, name="p2p")

    def _proxy_port(self) -> tuple[RegistryProxy, HttpServer]:
        """The registry API (and /metrics, unless the exporter has a port of its own)."""
        config = self.config
        metrics_here = config.exporter_enable and not config.exporter_standalone_port
        proxy = RegistryProxy(
            config=config,
            registry=self.registry,
            auth=self.auth,
            fetcher=self.fetcher,
            status=self.status,
            metrics=self.telemetry.metrics_response if metrics_here else None,
            observer=self.telemetry,
        )
        server = HttpServer(
            proxy.handle,
            self._data_port_settings(
                "proxy",
                Limits(
                    max_connections=config.proxy_max_connections,
                    max_client_connections=config.max_client_connections,
                    max_responses=config.proxy_max_responses,
                ),
            ),
            name="proxy",
            on_protocol_error=protocol_error_response,
        )
        return proxy, server

    def _data_port_settings(self, port: str, limits: Limits) -> ServerSettings:
        """A port that sends layer bytes: under the node's upload cap and `limits`, each
        request timed and each limit reached counted in the metrics as `port`'s."""
        return ServerSettings(
            read_timeout=self.config.read_timeout,
            idle_timeout=self.config.idle_timeout,
            throttle=self.throttle,
            limits=limits,
            send_timeout=self.config.send_timeout,
            on_request=functools.partial(self.telemetry.request, port),
            on_limit=functools.partial(self.telemetry.limit_hit, port),
        )

    def _status_report(self) -> AgentStatus:
        """What ``/_pollen/status`` reads; the P2P part only where the P2P port is served."""
        config = self.config
        swarm = None
        if self.p2p_enabled:
            swarm = SwarmStatus(
                node=self.node,
                p2p=self.p2p,
                roots=self.roots,
                swarm=self.swarm,
                parent=self.parent_swarm,
                tracker=self.tracker,
                server=self.p2p_server,
            )
        return AgentStatus(
            mode=self.mode,
            node_ip=self.node_ip,
            p2p_port=config.p2p_port,
            upstreams=config.upstreams,
            ready=lambda: self.proxy.ready,
            engine=self.engine,
            cache=self.cache,
            fetcher=self.fetcher,
            auth=self.auth,
            server=self.server,
            telemetry=self.telemetry,
            swarm=swarm,
            exporter_enabled=config.exporter_enable,
            exporter_port=config.exporter_port if self.exporter is not None else None,
        )

    def status(self) -> dict[str, object]:
        """The JSON of ``/_pollen/status``, read afresh for each request."""
        return self.status_report.document()

    async def _open_ports(self) -> _Ports:
        """Bind every port before anything starts: a port in use stops the agent at once."""
        config = self.config
        tls = server_ssl_context(config.tls_cert, config.tls_key) if config.tls_cert else None
        proxy = await open_listeners(config.listen_address, config.proxy_port, tls)
        self.status_report.proxy_port = listener_port(proxy)
        p2p: Listeners = []
        if self.p2p_enabled:
            p2p_tls = None
            if config.p2p_tls_cert:  # peers must show a certificate from the P2P CA, if set
                p2p_tls = server_ssl_context(
                    config.p2p_tls_cert, config.p2p_tls_key, client_ca=config.p2p_tls_ca
                )
            p2p = await open_listeners(config.listen_address, config.p2p_port, p2p_tls)
        exporter: Listeners = []
        if self.exporter is not None:
            exporter = await open_listeners(config.listen_address, config.exporter_port, None)
            self.status_report.exporter_port = listener_port(exporter)
        return _Ports(proxy=proxy, p2p=p2p, exporter=exporter, tls=tls is not None)

    async def _reopen_audit(self) -> None:
        log.info("received SIGHUP: reopening the audit log")  # logrotate moved the file
        await self.audit.reopen()

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        config = self.config
        await trio.to_thread.run_sync(self.cache.load)
        ports = await self._open_ports()
        proxy_port = self.status_report.proxy_port
        serving = [self.server]
        try:
            # Signals are caught from here on: a SIGHUP sent once the agent is ready must not
            # kill it.
            with trio.open_signal_receiver(*STOP_SIGNALS, signal.SIGHUP) as signals:
                async with self.engine, trio.open_nursery() as nursery:
                    await nursery.start(self.audit.run)
                    await nursery.start(self.fetcher.run)
                    if self.roots is not None:
                        await nursery.start(self.roots.run)
                    if self.parent_swarm is not None:
                        await nursery.start(self.parent_swarm.roots.run)
                    if self.tracker is not None:
                        await nursery.start(self.tracker.run)
                    if ports.p2p:
                        await nursery.start(self.p2p_server.serve, ports.p2p)
                        serving.append(self.p2p_server)
                        log.info(
                            "P2P port %d as %s (%s), roots %s",
                            config.p2p_port,
                            self.node,
                            self.mode,
                            ", ".join(config.roots) or "(none)",
                        )
                        if config.parent_roots:
                            log.info(
                                "layers this root owns come through parent roots %s",
                                ", ".join(config.parent_roots),
                            )
                    if self.exporter is not None:
                        await nursery.start(self.exporter.serve, ports.exporter)
                        serving.append(self.exporter)
                        log.info("metrics on port %d (/metrics)", self.status_report.exporter_port)
                    await nursery.start(self.server.serve, ports.proxy)
                    self.proxy.ready = True
                    log.info(
                        "pollen %s %s serving the registry API on %s port %d (%s), upstreams %s",
                        __version__,
                        self.mode,
                        config.listen_address or "*",
                        proxy_port,
                        "https" if ports.tls else "http",
                        ", ".join(str(u) for u in config.upstreams),
                    )
                    task_status.started(proxy_port)
                    await wait_for_stop(signals, on_hangup=self._reopen_audit)
                    self.proxy.ready = False
                    await drain(serving, config.shutdown_grace)
                    nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await self.http.aclose()
                await self.engine.aclose()
        log.info("agent stopped")
