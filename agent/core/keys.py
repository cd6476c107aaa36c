"""Pollen's configuration keys: the table every other view of the configuration is made from.

One `Key` per setting: its attribute name on `Config`, its environment variable, its file key
(a dotted path into the YAML file), any alias file keys, its default, the parser that turns
text (or a YAML scalar) into a typed value, a formatter that turns the value back into text, a
unit and one line of help. `agent.core.config` builds `Config`, loading and help from it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agent.core.hostport import DOCKER_HUB, parse_host_patterns, parse_roots
from agent.core.upstream import Upstream, parse_default_upstream, parse_upstream_list
from agent.core.values import (
    choice,
    format_bool,
    format_duration,
    format_labels,
    format_list,
    format_number,
    format_optional,
    format_size,
    parse_bool,
    parse_duration,
    parse_labels,
    parse_nonnegative_int,
    parse_optional_ip,
    parse_path,
    parse_port,
    parse_positive_duration,
    parse_positive_int,
    parse_positive_number,
    parse_positive_size,
    parse_readable_file,
    parse_size,
    parse_string,
)

# --------------------------------------------------------------------------------------------
# The table


@dataclass(frozen=True, kw_only=True)
class Key:
    """One configuration key: everything about it, in one place."""

    attr: str
    env: str
    file: str
    default: Any
    parse: Callable[[object], Any]
    unit: str
    help: str
    aliases: tuple[str, ...] = ()
    fmt: Callable[[Any], str] = str
    secret: bool = False
    default_doc: str | None = None
    """How help text states the default when the value alone would mislead ('detected')."""

    @property
    def name(self) -> str:
        """`file.key (ENV_VAR)`, how every error message names the key."""
        return f"{self.file} ({self.env})"

    def default_text(self) -> str:
        """The default as help text shows it: `default_doc` if set, else the formatted value."""
        if self.default_doc is not None:
            return self.default_doc
        return self.fmt(self.default)


def _k(
    attr: str,
    env: str,
    file: str,
    default: Any,
    parse: Callable[[object], Any],
    unit: str,
    help: str,
    **more: Any,
) -> Key:
    """A `Key` from positional essentials, so each table entry stays a line or three."""
    return Key(
        attr=attr, env=env, file=file, default=default, parse=parse, unit=unit, help=help, **more
    )


_SIZE = {"fmt": format_size}
_BOOL = {"fmt": format_bool}
_DUR = {"fmt": format_duration}
_LIST = {"fmt": format_list}

# fmt: off
KEYS: tuple[Key, ...] = (
    _k("mode", "POLLEN_MODE", "DeployConfig.mode", "agent", choice("agent", "root"), "",
       "agent or root (for `pollen run`)"),
    _k("proxy_concurrency_limit", "POLLEN_PROXY_CONCURRENCY_LIMIT", "proxyConcurrencyLimit", 128,
       parse_positive_int, "layers", "layers downloading at once per node"),
    _k("p2p_port", "POLLEN_P2P_PORT", "p2pPort", 65002, parse_port, "port",
       "P2P port (0: the OS picks)"),
    _k("cache_capacity", "POLLEN_CACHE_CAPACITY", "cache.capacity", 4294967296, parse_size,
       "bytes", "disk cache bytes", **_SIZE),
    _k("cache_aio_enable", "POLLEN_CACHE_AIO_ENABLE", "cache.aioEnable", False, parse_bool, "",
       "1: io_uring/AIO with O_DIRECT; 0: plain pread/pwrite", **_BOOL),
    _k("cache_io_engine", "POLLEN_CACHE_IO_ENGINE", "cache.ioEngine", "auto",
       choice("auto", "pread", "io_uring", "aio"), "",
       "force a native I/O engine; auto: io_uring, then aio, then pread when aioEnable=1, "
       "pread when 0"),
    _k("exporter_enable", "POLLEN_EXPORTER_ENABLE", "exporter.enable", False, parse_bool, "",
       "serve metrics (agents, roots and the webhook)", aliases=("ExporterConfig.enable",),
       **_BOOL),
    _k("exporter_port", "POLLEN_EXPORTER_PORT", "exporter.port", 65003, parse_port, "port",
       "metrics port", aliases=("ExporterConfig.port",)),
    _k("exporter_standalone_port", "POLLEN_EXPORTER_STANDALONE_PORT",
       "ExporterConfig.standaloneExporterPort", True, parse_bool, "",
       "false: /metrics on the proxy port (the webhook: on its HTTPS port)",
       aliases=("exporter.standaloneExporterPort",), **_BOOL),
    _k("throttle_limit_mb", "POLLEN_THROTTLE_LIMIT_MB", "throttleLimitMB", 512.0,
       parse_positive_number, "MiB/s", "cap on bytes served per second (to clients and peers)",
       fmt=format_number),
    _k("log_dir", "POLLEN_LOG_DIR", "DeployConfig.logDir", "/var/log/pollen", parse_path, "path",
       "log directory"),
    _k("log_audit", "POLLEN_LOG_AUDIT", "DeployConfig.logAudit", False, parse_bool, "",
       "audit log on", **_BOOL),
    _k("log_audit_mode", "POLLEN_LOG_AUDIT_MODE", "DeployConfig.logAuditMode", "stdout",
       choice("stdout", "file"), "", "stdout, or file (logDir/audit.log)"),
    _k("proxy_port", "POLLEN_PROXY_PORT", "proxyPort", 65001, parse_port, "port",
       "registry API port (0: the OS picks)"),
    _k("listen_address", "POLLEN_LISTEN_ADDRESS", "listenAddress", "0.0.0.0", parse_optional_ip,
       "address", "address the ports bind to (IPv6 allowed; empty: all addresses)"),
    _k("node_ip", "POLLEN_NODE_IP", "nodeIP", "", parse_optional_ip, "address",
       "address peers use to reach this node (empty: detected at start)",
       default_doc="detected"),
    _k("cache_path", "POLLEN_CACHE_PATH", "cache.path", "/var/cache/pollen", parse_path, "path",
       "cache directory"),
    _k("cache_chunk_size", "POLLEN_CACHE_CHUNK_SIZE", "cache.chunkSize", 4 << 20,
       parse_positive_size, "bytes", "chunk size (a multiple of 4096 when aioEnable=1); a "
       "layer's first 8 chunks are half of it (a quarter in a layer of at most two chunks) when "
       "that is a multiple of 4 KiB and at least 1 MiB; the same on every agent and root (larger "
       "chunks: less CPU per GiB, a later P95 on slow links; docs/ARCHITECTURE.md)", **_SIZE),
    _k("cache_queue_depth", "POLLEN_CACHE_QUEUE_DEPTH", "cache.queueDepth", 32, parse_positive_int,
       "operations", "native I/O operations in flight"),
    _k("cache_write_retry", "POLLEN_CACHE_WRITE_RETRY", "cache.writeRetry", 30.0,
       parse_positive_duration, "seconds",
       "after a failed cache write (disk full), layers bypass the cache this long, then "
       "caching is tried again"),
    _k("upstreams", "POLLEN_UPSTREAMS", "upstreams", (Upstream("https", DOCKER_HUB, 443),),
       parse_upstream_list, "",
       "comma list host[:port] (https), https://host[:port], or http://host[:port] (plain)",
       **_LIST),
    _k("default_upstream", "POLLEN_DEFAULT_UPSTREAM", "defaultUpstream", None,
       parse_default_upstream, "",
       "upstream for requests that name none; written like an upstreams entry, must be one",
       fmt=format_optional, default_doc="first of upstreams"),
    _k("upstream_ca_file", "POLLEN_UPSTREAM_CA_FILE", "upstreamCAFile", "", parse_readable_file,
       "path", "extra CA bundle for https upstreams", default_doc="(system CAs)"),
    _k("auth_cache_ttl", "POLLEN_AUTH_CACHE_TTL", "authCacheTTL", 60.0, parse_duration,
       "seconds", 'how long an upstream "this credential may read this repository" is '
       "remembered (0: not at all)", **_DUR),
    _k("roots", "POLLEN_ROOTS", "roots", (), parse_roots, "",
       "the roots' P2P addresses host:port, comma list, or one DNS name (port = p2pPort) "
       "re-resolved every 30 s", default_doc="(none)", **_LIST),
    _k("parent_roots", "POLLEN_PARENT_ROOTS", "parentRoots", (), parse_roots, "",
       "on a root: the tier of roots it fetches its layers through (the owner there, by "
       "rendezvous, goes to the origin; the list may hold this root); host:port comma list "
       "or one DNS name", default_doc="(none: from the origin)", **_LIST),
    _k("cluster_token", "POLLEN_CLUSTER_TOKEN", "clusterToken", "", parse_string, "",
       "shared secret for the P2P port; required when roots are set", secret=True,
       default_doc="(none)"),
    _k("p2p_tls_ca", "POLLEN_P2P_TLS_CA", "p2p.tls.ca", "", parse_readable_file, "path",
       "cluster CA for encrypted P2P requests", default_doc="(none)"),
    _k("p2p_tls_cert", "POLLEN_P2P_TLS_CERT", "p2p.tls.cert", "", parse_readable_file, "path",
       "this node's certificate for encrypted P2P requests (with p2p.tls.key)",
       default_doc="(none)"),
    _k("p2p_tls_key", "POLLEN_P2P_TLS_KEY", "p2p.tls.key", "", parse_readable_file, "path",
       "this node's private key for encrypted P2P requests (with p2p.tls.cert)",
       default_doc="(none)"),
    _k("tls_cert", "POLLEN_TLS_CERT", "tls.cert", "", parse_readable_file, "path",
       "certificate for TLS on the proxy port and the webhook port (with tls.key)",
       default_doc="(none)"),
    _k("tls_key", "POLLEN_TLS_KEY", "tls.key", "", parse_readable_file, "path",
       "private key for TLS on the proxy port and the webhook port (with tls.cert)",
       default_doc="(none)"),
    _k("tls_reload_interval", "POLLEN_TLS_RELOAD_INTERVAL", "tls.reloadInterval", 5.0,
       parse_duration, "seconds",
       "how often the webhook reads tls.cert and tls.key again; a renewed pair is served to "
       "new connections without a restart (0: never)", **_DUR),
    _k("webhook_port", "POLLEN_WEBHOOK_PORT", "webhook.port", 8443, parse_port, "port",
       "admission webhook HTTPS port"),
    _k("webhook_registries", "POLLEN_WEBHOOK_REGISTRIES", "webhook.registries",
       ("*.cr.aliyuncs.com",), parse_host_patterns, "",
       "comma list of host patterns whose images are eligible", **_LIST),
    _k("webhook_endpoint_port", "POLLEN_WEBHOOK_ENDPOINT_PORT", "webhook.endpointPort", 65001,
       parse_port, "port", "port written into rewritten images"),
    _k("read_timeout", "POLLEN_READ_TIMEOUT", "readTimeout", 30.0, parse_positive_duration,
       "seconds", "a client must send a full request head within this", **_DUR),
    _k("idle_timeout", "POLLEN_IDLE_TIMEOUT", "idleTimeout", 60.0, parse_positive_duration,
       "seconds", "keep-alive connections idle longer are closed", **_DUR),
    _k("send_timeout", "POLLEN_SEND_TIMEOUT", "sendTimeout", 30.0, parse_positive_duration,
       "seconds", "a response whose client takes no bytes (1 MiB at most) in this long is cut",
       **_DUR),
    _k("proxy_max_connections", "POLLEN_PROXY_MAX_CONNECTIONS", "proxyMaxConnections", 512,
       parse_positive_int, "connections",
       "connections on the proxy port; at the limit idle ones are reclaimed"),
    _k("p2p_max_connections", "POLLEN_P2P_MAX_CONNECTIONS", "p2pMaxConnections", 512,
       parse_positive_int, "connections",
       "connections on the P2P port; at the limit idle ones are reclaimed"),
    _k("max_client_connections", "POLLEN_MAX_CLIENT_CONNECTIONS", "maxClientConnections", 128,
       parse_positive_int, "connections",
       "connections one client address may hold on the proxy port, and on the P2P port"),
    _k("proxy_max_responses", "POLLEN_PROXY_MAX_RESPONSES", "proxyMaxResponses", 64,
       parse_positive_int, "responses",
       "layer and manifest bodies the proxy port sends at once, half of them to one client "
       "address (each holds up to a chunk in memory until its client reads it)"),
    _k("manifest_fetch_limit", "POLLEN_MANIFEST_FETCH_LIMIT", "manifestFetchLimit", 16,
       parse_positive_int, "fetches", "manifest fetches from upstreams in flight per node"),
    _k("slow_reader_timeout", "POLLEN_SLOW_READER_TIMEOUT", "slowReaderTimeout", 10.0,
       parse_positive_duration, "seconds",
       "a reader of a layer bigger than the cache that holds its other readers back this long "
       "is dropped", **_DUR),
    _k("shutdown_grace", "POLLEN_SHUTDOWN_GRACE", "shutdownGrace", 10.0, parse_duration,
       "seconds", "how long SIGTERM waits for responses in flight", **_DUR),
    _k("upstream_timeout", "POLLEN_UPSTREAM_TIMEOUT", "upstreamTimeout", 30.0,
       parse_positive_duration, "seconds",
       "connect, each read, and each 64 KiB of a body, from an upstream", **_DUR),
    _k("upstream_retries", "POLLEN_UPSTREAM_RETRIES", "upstreamRetries", 3, parse_nonnegative_int,
       "retries", "retries of a failed upstream request (0: none)"),
    _k("labels", "POLLEN_LABELS", "labels", (), parse_labels, "",
       "comma list k=v, labels of the DADIP2P_Label metric", fmt=format_labels,
       default_doc="(none)"),
)
# fmt: on
