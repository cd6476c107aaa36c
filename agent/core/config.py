"""Pollen's configuration: the one reader of the environment and of the YAML config file.

Theory of operation
-------------------
Every setting is one `Key` in the `KEYS` table (`agent.core.keys`): its attribute name on
`Config`, its environment variable, its file key (a dotted path into the YAML file, nested as
mappings), any alias file keys, its default, the parser that turns text (or a YAML scalar)
into a typed value, a formatter that turns the value back into text, a unit and one line of
help.  All other views of the configuration -- `load_config`, `Config.describe()` for
`pollen agent --print-config`, `Config.as_dict()`, `help_text()` for `pollen --help-config`
and the systemd environment file, `ENV_VARS` -- are derived from that table, so a new key is
one new line there plus one typed attribute on `Config` (an import-time check keeps the two
in step).  The grammars the parsers read live beside this module -- `agent.core.values`
(sizes, durations, booleans, lists...), `agent.core.hostport` (`host[:port]`, roots, host
patterns) and `agent.core.upstream` (`Upstream` entries) -- so this one holds only what is
about Pollen's settings themselves: `Config`, loading and the rules across keys.

`load_config(environ)` takes, for each key, the environment variable if it is present (even
if empty: a variable that is set wins), else the file's value, else the default: env beats
file beats default.  The file is named by `POLLEN_CONFIG`; a key in it that the table does
not know is an error, because a typo silently ignored is a setting silently lost.  Parsers
raise `ValueError("expected ..., got ...")`; `load_config` turns that into a `ConfigError`
whose message names both the file key and the environment variable.

Then two steps span keys.  `load_config` fills in the values one key takes from another
(defaultUpstream from upstreams, a portless root's port from p2pPort).  `Config` itself checks
the rules that span keys (defaultUpstream among upstreams, a root or an agent with roots needs
clusterToken, TLS pairs, O_DIRECT chunk sizes, port clashes) in `__post_init__`, so a config
changed with `dataclasses.replace` -- as the CLI sets the role for `pollen agent` and
`pollen root` -- is checked by the same rules and fails with the same `ConfigError`.

This module is the bottom layer: it imports only the standard library, PyYAML and
`agent.core`, and does no I/O beyond reading the file (the node address probe lives in
`agent.node.address`).
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from agent.core.errors import ConfigError
from agent.core.hostport import (
    join_hostport,
    split_hostport,
)
from agent.core.keys import KEYS, Key
from agent.core.upstream import Upstream

__all__ = [
    "CONFIG_ENV",
    "ENV_VARS",
    "KEYS",
    "KEY_BY_ATTR",
    "Config",
    "Key",
    "help_text",
    "load_config",
]

CONFIG_ENV = "POLLEN_CONFIG"
"""The environment variable naming the optional YAML config file."""

SECRET_MASK = "***"


KEY_BY_ATTR: Mapping[str, Key] = types.MappingProxyType({k.attr: k for k in KEYS})
_KEY_BY_FILE: dict[str, Key] = {name: k for k in KEYS for name in (k.file, *k.aliases)}

ENV_VARS: frozenset[str] = frozenset({CONFIG_ENV, *(k.env for k in KEYS)})
"""Every environment variable Pollen reads, POLLEN_CONFIG included."""


def _key_error(attr: str, message: str) -> ConfigError:
    """A ConfigError whose message names the file key and the env var and whose `.key` is the
    file key."""
    key = KEY_BY_ATTR[attr]
    err = ConfigError(key.name, message)
    err.key = key.file
    return err


# --------------------------------------------------------------------------------------------
# The object


@dataclass(frozen=True, kw_only=True)
class Config:
    """The whole configuration, typed and validated; build it with `load_config`.

    The attributes are declared here (not generated from `KEYS`) so that type checkers and
    editors see them; a check at import time fails if they and `KEYS` ever disagree.
    `load_config({})` gives the defaults; tests vary them with `dataclasses.replace`, which
    runs the checks that span keys again (a single value's parser runs only in `load_config`).
    """

    mode: str
    proxy_concurrency_limit: int
    p2p_port: int
    cache_capacity: int
    cache_aio_enable: bool
    cache_io_engine: str
    exporter_enable: bool
    exporter_port: int
    exporter_standalone_port: bool
    throttle_limit_mb: float
    log_dir: str
    log_audit: bool
    log_audit_mode: str
    proxy_port: int
    listen_address: str
    node_ip: str
    cache_path: str
    cache_chunk_size: int
    cache_queue_depth: int
    cache_write_retry: float
    upstreams: tuple[Upstream, ...]
    default_upstream: Upstream
    upstream_ca_file: str
    auth_cache_ttl: float
    roots: tuple[str, ...]
    parent_roots: tuple[str, ...]
    cluster_token: str = field(repr=False)  # a secret: never in logs
    p2p_tls_ca: str
    p2p_tls_cert: str
    p2p_tls_key: str
    tls_cert: str
    tls_key: str
    tls_reload_interval: float
    webhook_port: int
    webhook_registries: tuple[str, ...]
    webhook_endpoint_port: int
    read_timeout: float
    idle_timeout: float
    send_timeout: float
    proxy_max_connections: int
    p2p_max_connections: int
    max_client_connections: int
    proxy_max_responses: int
    manifest_fetch_limit: int
    slow_reader_timeout: float
    shutdown_grace: float
    upstream_timeout: float
    upstream_retries: int
    labels: tuple[tuple[str, str], ...]

    # Not keys: where each value came from, and which file was read.
    sources: Mapping[str, str] = field(
        default_factory=lambda: types.MappingProxyType({}), compare=False, repr=False
    )
    config_file: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        """The checks that involve more than one key, run on every construction (so on
        `dataclasses.replace` too); each raises a `ConfigError` naming the key to fix."""
        self._check_default_upstream()
        self._check_cluster_token()
        self._check_tls_pairs()
        self._check_chunk_size()
        self._check_ports()

    def _check_default_upstream(self) -> None:
        if self.default_upstream not in self.upstreams:
            listed = ", ".join(str(u) for u in self.upstreams)
            raise _key_error(
                "default_upstream",
                f"{str(self.default_upstream)!r} is not one of upstreams ({listed})",
            )

    def _check_cluster_token(self) -> None:
        """The P2P port refuses unsigned requests, so a node that opens it or talks to roots
        cannot run without the shared secret."""
        if self.cluster_token:
            return
        if self.roots:
            raise _key_error("cluster_token", "required when roots are set")
        if self.mode == "root":
            raise _key_error(
                "cluster_token", "required on a root (`pollen root` or DeployConfig.mode root)"
            )

    def check_parent_roots(self) -> None:
        """Parent roots belong to the root role; checked when the role is final (`pollen root`
        sets it after the configuration is read)."""
        if self.parent_roots and self.mode != "root":
            raise _key_error(
                "parent_roots", "only a root fetches through parent roots (agents list roots)"
            )

    def _check_tls_pairs(self) -> None:
        for cert, key in (("tls_cert", "tls_key"), ("p2p_tls_cert", "p2p_tls_key")):
            cert_set, key_set = bool(getattr(self, cert)), bool(getattr(self, key))
            if cert_set != key_set:
                missing, other = (key, cert) if cert_set else (cert, key)
                raise _key_error(missing, f"must be set together with {KEY_BY_ATTR[other].file}")

    def _check_chunk_size(self) -> None:
        chunk = self.cache_chunk_size
        if self.cache_aio_enable and chunk % 4096:
            raise _key_error(
                "cache_chunk_size",
                f"must be a multiple of 4096 when cache.aioEnable is on (O_DIRECT), got {chunk}",
            )

    def _check_ports(self) -> None:
        ports = [("proxy_port", self.proxy_port), ("p2p_port", self.p2p_port)]
        if self.exporter_enable and self.exporter_standalone_port:
            ports.append(("exporter_port", self.exporter_port))
        seen: dict[int, str] = {}
        for attr, port in ports:
            if port and port in seen:
                raise _key_error(attr, f"port {port} is also {KEY_BY_ATTR[seen[port]].file}")
            seen[port] = attr

    @property
    def throttle_bytes_per_second(self) -> int:
        """`throttleLimitMB` in bytes per second (MiB, as the original)."""
        return int(self.throttle_limit_mb * (1 << 20))

    @property
    def p2p_enabled(self) -> bool:
        """Whether the P2P port opens: always on a root; on an agent only when roots are set
        (an agent with no roots is a standalone caching proxy)."""
        return self.mode == "root" or bool(self.roots)

    @property
    def io_engines(self) -> tuple[str, ...]:
        """The native I/O engines to try, in order, the first that works wins."""
        if self.cache_io_engine != "auto":
            return (self.cache_io_engine,)
        return ("io_uring", "aio", "pread") if self.cache_aio_enable else ("pread",)

    def source(self, attr: str) -> str:
        """'env', 'file' or 'default': where the value of `attr` came from."""
        return self.sources.get(attr, "default")

    def describe(self) -> list[tuple[str, str, str, str]]:
        """Rows (file key, env var, effective value, source) for `--print-config`; secrets
        that are set show as ***."""
        rows = []
        for key in KEYS:
            value = getattr(self, key.attr)
            text = SECRET_MASK if key.secret and value else key.fmt(value)
            rows.append((key.file, key.env, text, self.source(key.attr)))
        return rows

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly {file key: value} (secrets masked), e.g. for the status endpoint."""
        out: dict[str, Any] = {}
        for key in KEYS:
            value = getattr(self, key.attr)
            if key.secret:
                out[key.file] = SECRET_MASK if value else ""
            elif key.attr == "labels":
                out[key.file] = dict(value)
            elif isinstance(value, tuple):
                out[key.file] = [str(x) for x in value]
            elif isinstance(value, Upstream):
                out[key.file] = str(value)
            else:
                out[key.file] = value
        return out


def _check_table() -> None:
    """Fail at import if `Config`'s attributes and `KEYS` disagree (name, order or count)."""
    attrs = [f.name for f in dataclasses.fields(Config) if f.name not in ("sources", "config_file")]
    if attrs != [k.attr for k in KEYS]:
        raise RuntimeError(f"Config attributes {attrs} do not match KEYS")
    for k in KEYS:
        if not (k.env.startswith("POLLEN_") and k.help):
            raise RuntimeError(f"key {k.attr} needs a POLLEN_ env var and help")
    reprs = {f.name: f.repr for f in dataclasses.fields(Config)}
    if any(reprs[k.attr] for k in KEYS if k.secret):
        raise RuntimeError("a secret key must be a field(repr=False) on Config")
    if len(_KEY_BY_FILE) != sum(1 + len(k.aliases) for k in KEYS):
        raise RuntimeError("two keys share a file key")


_check_table()


# --------------------------------------------------------------------------------------------
# Loading


def _read_file(path: str) -> dict[str, object]:
    """Read the YAML file into {attr: raw value}, rejecting keys the table does not know."""
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except OSError as e:
        raise ConfigError(CONFIG_ENV, f"cannot read {path!r}: {e.strerror or e}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(CONFIG_ENV, f"{path!r} is not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(CONFIG_ENV, f"{path!r} must hold a YAML mapping of keys")

    prefixes = {
        ".".join(parts[:i])
        for parts in (name.split(".") for name in _KEY_BY_FILE)
        for i in range(1, len(parts))
    }
    found: dict[str, tuple[str, object]] = {}  # attr -> (file key as written, value)

    def walk(mapping: dict[object, object], prefix: str) -> None:
        for raw_name, value in mapping.items():
            name = f"{prefix}{raw_name}"
            key = _KEY_BY_FILE.get(name)
            if key is not None:
                if value is None:  # `nodeIP:` with nothing after it: as if absent
                    continue
                if key.attr in found:
                    raise _key_error(
                        key.attr, f"set twice in {path!r}, as {found[key.attr][0]} and as {name}"
                    )
                found[key.attr] = (name, value)
            elif name in prefixes and isinstance(value, dict):
                walk(value, f"{name}.")
            elif name in prefixes and value is None:
                continue
            else:
                close = difflib.get_close_matches(name, list(_KEY_BY_FILE), n=1)
                hint = f"; did you mean {close[0]}?" if close else ""
                raise ConfigError(name, f"unknown key in {path!r} ({CONFIG_ENV}){hint}")

    walk(data, "")
    return {attr: value for attr, (_, value) in found.items()}


def load_config(environ: Mapping[str, str] | None = None) -> Config:
    """Build the `Config`: env beats the POLLEN_CONFIG file beats the default, then the values
    taken from other keys, then `Config`'s checks that span keys.  Raises `ConfigError` naming
    the key; the daemon stops on it.

    An environment variable that is set counts even when empty (so `POLLEN_ROOTS=` turns roots
    off over a file that sets them); empty is then valid only where the key allows it.
    """
    env = os.environ if environ is None else environ
    path = env.get(CONFIG_ENV, "")
    file_values = _read_file(path) if path else {}

    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for key in KEYS:
        if key.env in env:
            raw: object = env[key.env]
            sources[key.attr] = "env"
        elif key.attr in file_values:
            raw = file_values[key.attr]
            sources[key.attr] = "file"
        else:
            values[key.attr] = key.default
            sources[key.attr] = "default"
            continue
        try:
            values[key.attr] = key.parse(raw)
        except ValueError as e:
            raise _key_error(key.attr, str(e)) from None

    _derive(values)
    return Config(**values, sources=types.MappingProxyType(sources), config_file=path)


def _derive(values: dict[str, Any]) -> None:
    """Fill in, in place, the values one key takes from another; `Config` checks the rest."""
    upstreams: tuple[Upstream, ...] = values["upstreams"]
    wanted: Upstream | None = values["default_upstream"]
    if wanted is None:
        values["default_upstream"] = upstreams[0]
    else:
        # Matched by key and replaced by the entry: `127.0.0.1:5000` picks `http://127.0.0.1:5000`.
        # No match is left for Config to report, with the value as written.
        values["default_upstream"] = next((u for u in upstreams if u.key == wanted.key), wanted)

    for attr in ("roots", "parent_roots"):
        roots: tuple[str, ...] = values[attr]
        if len(roots) == 1:
            host, port = split_hostport(roots[0])
            if port is None:
                if values["p2p_port"] == 0:
                    raise _key_error(attr, f"{roots[0]!r} has no port and p2pPort is 0")
                values[attr] = (join_hostport(host, values["p2p_port"]),)


# --------------------------------------------------------------------------------------------
# Help


def help_text() -> str:
    """Every key with its env var, file key, default, unit and help, for `pollen --help-config`
    (and the source of the systemd environment file)."""
    lines = [
        "Pollen configuration. Each key is read from its environment variable, else from the",
        f"YAML file named by {CONFIG_ENV} (file keys nested as mappings), else its default.",
        "Sizes: bytes, or a number with KiB MiB GiB TiB (binary) or KB MB GB TB (decimal).",
        "Durations: seconds, or a number with ms s m h. Booleans: 1/0, true/false, yes/no, on/off.",
        "Lists: comma-separated (env) or a YAML list.",
        "",
    ]
    for key in KEYS:
        names = " = ".join((key.file, *key.aliases))
        unit = f" ({key.unit})" if key.unit else ""
        lines.append(f"{key.env}  [{names}]")
        lines.append(f"    default: {key.default_text() or '(empty)'}{unit}")
        lines.append(f"    {key.help}")
    return "\n".join(lines) + "\n"
