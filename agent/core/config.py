"""Pollen's configuration: the one reader of the environment and of the YAML config file.

Theory of operation
-------------------
Every setting is one `Key` in the `KEYS` table below: its attribute name on `Config`, its
environment variable, its file key (a dotted path into the YAML file, nested as mappings),
any alias file keys, its default, the parser that turns text (or a YAML scalar) into a typed
value, a formatter that turns the value back into text, a unit and one line of help.  All
other views of the configuration -- `load_config`, `Config.describe()` for
`pollen agent --print-config`, `Config.as_dict()`, `help_text()` for `pollen --help-config`
and the systemd environment file, `ENV_VARS` -- are derived from that table, so a new key is
one new line there plus one typed attribute on `Config` (an import-time check keeps the two
in step).

`load_config(environ)` takes, for each key, the environment variable if it is present (even
if empty: a variable that is set wins), else the file's value, else the default: env beats
file beats default.  The file is named by `POLLEN_CONFIG`; a key in it that the table does
not know is an error, because a typo silently ignored is a setting silently lost.  Parsers
raise `ValueError("expected ..., got ...")`; `load_config` turns that into a `ConfigError`
whose message names both the file key and the environment variable.  Checks that involve
several keys (defaultUpstream among upstreams, roots need clusterToken, TLS pairs, port
clashes) run after every key is parsed.

This module is the bottom layer: it imports only the standard library, PyYAML and
`agent.core.errors`, and does no I/O beyond reading the file (the node address probe lives in
`agent.node.address`).
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import math
import os
import re
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import yaml

from agent.core.errors import ConfigError

__all__ = [
    "CONFIG_ENV",
    "ENV_VARS",
    "KEYS",
    "KEY_BY_ATTR",
    "Config",
    "Key",
    "Upstream",
    "format_duration",
    "format_size",
    "help_text",
    "load_config",
    "normalize_registry_host",
    "parse_bool",
    "parse_duration",
    "parse_size",
    "parse_upstream",
    "split_hostport",
]

CONFIG_ENV = "POLLEN_CONFIG"
"""The environment variable naming the optional YAML config file."""

SECRET_MASK = "***"

# --------------------------------------------------------------------------------------------
# Value types


_DEFAULT_PORTS = {"https": 443, "http": 80}


@dataclass(frozen=True)
class Upstream:
    """One registry the agent may contact, as written in `upstreams`.

    `host` is lower-case and bare (an IPv6 literal has no brackets); `port` is always
    explicit.  Requests name a registry by `host[:port]` (containerd's `ns=`), so `key` --
    the port only when it is not the scheme's default -- is what they are matched against.
    """

    scheme: str
    host: str
    port: int

    def __post_init__(self) -> None:
        if self.scheme not in _DEFAULT_PORTS:
            raise ValueError(f"scheme must be http or https, got {self.scheme!r}")
        if not self.host or self.host != self.host.lower():
            raise ValueError(f"host must be non-empty and lower-case, got {self.host!r}")
        if not 1 <= self.port <= 65535:
            raise ValueError(f"port must be 1..65535, got {self.port!r}")

    @property
    def host_for_url(self) -> str:
        """The host as it appears in a URL or Host header: IPv6 literals in brackets."""
        return f"[{self.host}]" if ":" in self.host else self.host

    @property
    def default_port(self) -> bool:
        """True when `port` is the scheme's default (443 for https, 80 for http)."""
        return self.port == _DEFAULT_PORTS[self.scheme]

    @property
    def key(self) -> str:
        """`host` or `host:port` (port only when not the scheme default), as clients name it."""
        return self.host_for_url if self.default_port else f"{self.host_for_url}:{self.port}"

    @property
    def base_url(self) -> str:
        """`scheme://host:port` with the port always present, for the HTTP client."""
        return f"{self.scheme}://{self.host_for_url}:{self.port}"

    def __str__(self) -> str:
        """The entry as a user would write it in `upstreams` (parses back to an equal value)."""
        return f"{self.scheme}://{self.key}"


# --------------------------------------------------------------------------------------------
# Parsers: each takes text (from the environment) or a YAML value and returns a typed value,
# or raises ValueError("expected ..., got ...").  They never mention key names; load_config
# adds those, so the same parser serves every key of its kind.


def _show(value: object) -> str:
    """repr() of a bad value for an error message, cut short so a pasted blob stays readable."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


_SIZE_UNITS: dict[str, int] = {
    "": 1,
    "B": 1,
    "KiB": 1 << 10,
    "MiB": 1 << 20,
    "GiB": 1 << 30,
    "TiB": 1 << 40,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
}
_SIZE_RE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*")
_SIZE_EXPECTED = "expected a size like 4GiB or 4294967296"


def parse_size(value: object) -> int:
    """Parse a byte count: an int, or a number with a unit (`KiB MiB GiB TiB`, `KB MB GB TB`, `B`).

    Units are case-sensitive and exact (`4gb`, `4G`, `4Gi` are rejected) so that binary and
    decimal units cannot be confused.  A fraction is fine if the result is whole bytes
    (`1.5KiB` is 1536); negative, fractional or unit-less garbage is rejected.
    """
    if isinstance(value, bool):
        raise ValueError(f"{_SIZE_EXPECTED}, got {_show(value)}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{_SIZE_EXPECTED}, got a negative size {value}")
        return value
    if isinstance(value, float):
        if math.isfinite(value) and value >= 0 and value.is_integer():
            return int(value)
        raise ValueError(f"{_SIZE_EXPECTED}, got {_show(value)}")
    if not isinstance(value, str):
        raise ValueError(f"{_SIZE_EXPECTED}, got {_show(value)}")
    m = _SIZE_RE.fullmatch(value)
    if m is None or m.group(2) not in _SIZE_UNITS:
        raise ValueError(
            f"{_SIZE_EXPECTED} (units: B, KiB, MiB, GiB, TiB, KB, MB, GB, TB), got {_show(value)}"
        )
    number, unit = m.groups()
    exact = Decimal(number) * _SIZE_UNITS[unit]
    if exact != exact.to_integral_value():
        raise ValueError(f"{_SIZE_EXPECTED}, got {_show(value)}, which is not whole bytes")
    return int(exact)


def format_size(n: int) -> str:
    """Write a byte count with the unit giving the smallest whole number (binary on a tie), so
    4294967296 is `4GiB` and 4000000000 is `4GB`; `parse_size` reads it back."""
    best = str(n)
    if n > 0:
        whole = [(n // m, i, u) for i, (u, m) in enumerate(_SIZE_UNITS.items()) if n % m == 0]
        # Units are listed B, KiB..TiB, KB..TB; rank ties by binary first.
        number, _, unit = min(whole, key=lambda t: (t[0], "i" not in t[2], t[1]))
        best = f"{number}{unit}" if unit else str(number)
    return best


_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def parse_bool(value: object) -> bool:
    """Parse 1/0, true/false, yes/no, on/off (any case); YAML booleans and 0/1 pass through.

    The original's files write `aioEnable: 0`, so integers 0 and 1 are booleans here.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
    raise ValueError(f"expected a boolean (1/0, true/false, yes/no, on/off), got {_show(value)}")


# Seconds per unit; "ms" divides instead (x / 1000 is exact where x * 0.001 is not).
_DURATION_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_RE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h)?\s*")
_DURATION_EXPECTED = "expected a duration like 30s, 500ms, 5m, 1h or a number of seconds"


def parse_duration(value: object) -> float:
    """Parse a duration to float seconds: a number of seconds, or a number with `ms s m h`.

    One unit only (no `1m30s`): durations here are timeouts, and one unit is enough to say
    them without a second grammar to learn.
    """
    if isinstance(value, bool):
        raise ValueError(f"{_DURATION_EXPECTED}, got {_show(value)}")
    if isinstance(value, (int, float)):
        if math.isfinite(value) and value >= 0:
            return float(value)
        raise ValueError(f"{_DURATION_EXPECTED}, got {_show(value)}")
    if isinstance(value, str):
        m = _DURATION_RE.fullmatch(value)
        if m is not None:
            number, unit = float(m.group(1)), m.group(2) or ""
            return number / 1000 if unit == "ms" else number * _DURATION_UNITS[unit]
    raise ValueError(f"{_DURATION_EXPECTED}, got {_show(value)}")


def format_duration(seconds: float) -> str:
    """Write seconds as `60s`, `500ms` or `0.25s`; `parse_duration` reads each back exactly."""
    if float(seconds).is_integer():
        return f"{int(seconds)}s"
    ms = seconds * 1000
    if ms.is_integer() and ms / 1000 == seconds:
        return f"{int(ms)}ms"
    # The shortest repr, written without an exponent (the grammar has none).
    return f"{format(Decimal(repr(seconds)), 'f')}s"


def _int(value: object, *, minimum: int, maximum: int | None = None, what: str) -> int:
    """Parse a whole number in [minimum, maximum]; YAML ints pass, floats and bools do not."""
    expected = f"expected {what}"
    if isinstance(value, str) and re.fullmatch(r"\s*[0-9]+\s*", value):
        number = int(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        number = value
    else:
        raise ValueError(f"{expected}, got {_show(value)}")
    if number < minimum or (maximum is not None and number > maximum):
        raise ValueError(f"{expected}, got {number}")
    return number


def _port(value: object) -> int:
    """A TCP port 0..65535; 0 lets the OS pick (tests use it)."""
    if isinstance(value, str) and value.startswith("tcp://"):
        # Kubernetes injects <SERVICE>_PORT=tcp://ip:port for every Service in the namespace
        # (a Service named pollen-webhook gives POLLEN_WEBHOOK_PORT): say so, not just "bad".
        raise ValueError(
            f"expected a port 0..65535, got {_show(value)} -- this looks like a Kubernetes "
            "service link variable; set enableServiceLinks: false on the pod"
        )
    return _int(value, minimum=0, maximum=65535, what="a port 0..65535")


def _positive_int(value: object) -> int:
    return _int(value, minimum=1, what="a whole number >= 1")


def _nonnegative_int(value: object) -> int:
    return _int(value, minimum=0, what="a whole number >= 0")


def _positive_size(value: object) -> int:
    n = parse_size(value)
    if n <= 0:
        raise ValueError(f"{_SIZE_EXPECTED}, greater than 0, got {_show(value)}")
    return n


def _positive_duration(value: object) -> float:
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError(f"{_DURATION_EXPECTED}, greater than 0, got {_show(value)}")
    return seconds


def _positive_number(value: object) -> float:
    """A finite number > 0, int or float (throttleLimitMB may be 0.5)."""
    number: float | None = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str) and re.fullmatch(r"\s*[0-9]+(?:\.[0-9]+)?\s*", value):
        number = float(value)
    if number is None or not math.isfinite(number) or number <= 0:
        raise ValueError(f"expected a number greater than 0, got {_show(value)}")
    return number


def _format_number(x: float) -> str:
    """512.0 as `512`, 0.5 as `0.5`, never with an exponent (the parser reads none)."""
    return str(int(x)) if float(x).is_integer() else format(Decimal(repr(x)), "f")


def _choice(*allowed: str) -> Callable[[object], str]:
    """A parser accepting exactly one of `allowed` (after stripping; case matters not)."""

    def parse(value: object) -> str:
        if isinstance(value, str) and value.strip().lower() in allowed:
            return value.strip().lower()
        raise ValueError(f"expected one of {', '.join(allowed)}, got {_show(value)}")

    return parse


def _string(value: object) -> str:
    """Any string.  Other YAML types are rejected, and the value is not echoed (it may be a
    secret)."""
    if isinstance(value, str):
        return value
    raise ValueError(f"expected a string, got a {type(value).__name__}")


def _path(value: object) -> str:
    """A non-empty path."""
    text = _string(value).strip()
    if not text:
        raise ValueError("expected a path, got ''")
    return text


def _readable_file(value: object) -> str:
    """A path to a readable regular file, or empty for none.  Checked now so that a missing
    certificate stops start-up with the key's name rather than failing at the first handshake."""
    text = _string(value).strip()
    if text and not (os.path.isfile(text) and os.access(text, os.R_OK)):
        raise ValueError(f"expected a readable file, got {_show(text)}")
    return text


def _ip_literal(value: object, *, empty: bool) -> str:
    """An IPv4 or IPv6 literal (brackets allowed and dropped); '' when `empty` allows it."""
    text = _string(value).strip()
    if not text and empty:
        return ""
    bare = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    try:
        return str(ipaddress.ip_address(bare))
    except ValueError:
        raise ValueError(f"expected an IPv4 or IPv6 address, got {_show(text)}") from None


def _listen_address(value: object) -> str:
    return _ip_literal(value, empty=True)


def _node_ip(value: object) -> str:
    return _ip_literal(value, empty=True)


def _split_list(value: object) -> list[str]:
    """A list from a comma string (env or YAML) or a YAML list of strings; blanks dropped."""
    if value is None:
        return []
    if isinstance(value, str):
        items = value.split(",")
    elif isinstance(value, (list, tuple)):
        items = []
        for item in value:
            if not isinstance(item, str):
                raise ValueError(f"expected a list of strings, got item {_show(item)}")
            items.append(item)
    else:
        raise ValueError(f"expected a comma list or a YAML list, got {_show(value)}")
    return [item.strip() for item in items if item.strip()]


_LABEL_RE = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")


def _check_hostname(host: str, original: str) -> None:
    """Raise ValueError unless `host` (lower-case, no brackets) is a DNS name or an IP literal."""
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(
                f"expected an IPv6 address in brackets, got {_show(original)}"
            ) from None
        return
    if re.fullmatch(r"[0-9.]+", host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ValueError(f"expected an IPv4 address, got {_show(original)}") from None
        return
    if len(host) > 253 or not all(_LABEL_RE.fullmatch(label) for label in host.split(".")):
        raise ValueError(f"expected a host name, got {_show(original)}")


def split_hostport(text: str) -> tuple[str, int | None]:
    """Split `host`, `host:port`, `[v6]` or `[v6]:port` into (lower-case bare host, port or None).

    An IPv6 literal must be in brackets: `fd00::5000` could be an address or an address and a
    port, and guessing would send traffic to the wrong place.
    """
    text = text.strip().lower()
    port_text: str | None = None
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"expected host[:port], got {_show(text)}")
        host, rest = text[1:end], text[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"expected host[:port], got {_show(text)}")
            port_text = rest[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"expected an IPv6 address in brackets, got {_show(text)}") from None
    elif text.count(":") > 1:
        raise ValueError(f"expected an IPv6 address in brackets like [::1]:5000, got {_show(text)}")
    else:
        host, sep, port_text_ = text.partition(":")
        port_text = port_text_ if sep else None
        _check_hostname(host, text)
    if port_text is None:
        return host, None
    if not re.fullmatch(r"[0-9]{1,5}", port_text) or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"expected a port 1..65535 in {_show(text)}")
    return host, int(port_text)


def _join_hostport(host: str, port: int | None) -> str:
    shown = f"[{host}]" if ":" in host else host
    return shown if port is None else f"{shown}:{port}"


_DOCKER_HUB_ALIASES = frozenset({"docker.io", "index.docker.io"})
_DOCKER_HUB = "registry-1.docker.io"


def normalize_registry_host(hostport: str) -> str:
    """Lower-case `host[:port]` and map Docker Hub's names (docker.io, index.docker.io) to the
    host that really serves its registry API, registry-1.docker.io.

    Image references and containerd's `ns=` say `docker.io`; the API lives elsewhere, so both
    `upstreams` and request matching go through here.  Text that is not `host[:port]` comes
    back stripped and lower-cased but otherwise unchanged: it is client input, and it will
    match no `Upstream.key` (those are always well-formed), which is the answer it deserves.
    """
    text = hostport.strip().lower()
    try:
        host, port = split_hostport(text)
    except ValueError:
        return text
    if host in _DOCKER_HUB_ALIASES:
        host = _DOCKER_HUB
    return _join_hostport(host, port)


def parse_upstream(text: str) -> Upstream:
    """Parse one `upstreams` entry: `host[:port]` (https), `https://host[:port]` or
    `http://host[:port]`; bracketed IPv6 allowed; Docker Hub names normalized."""
    original = text
    text = text.strip()
    scheme = "https"
    if "://" in text:
        scheme, _, text = text.partition("://")
        scheme = scheme.lower()
        if scheme not in _DEFAULT_PORTS:
            raise ValueError(f"expected an http:// or https:// registry, got {_show(original)}")
    if text.endswith("/"):
        text = text[:-1]
    if not text or any(c in text for c in "/?#@ \t"):
        raise ValueError(f"expected host[:port] with no path, got {_show(original)}")
    host, port = split_hostport(normalize_registry_host(text))
    return Upstream(scheme, host, port if port is not None else _DEFAULT_PORTS[scheme])


def _upstreams(value: object) -> tuple[Upstream, ...]:
    result: list[Upstream] = []
    seen: dict[str, str] = {}
    for item in _split_list(value):
        try:
            upstream = parse_upstream(item)
        except ValueError as e:
            raise ValueError(f"bad entry {item!r}: {e}") from None
        if upstream.key in seen:
            raise ValueError(f"entries {seen[upstream.key]!r} and {item!r} name the same registry")
        seen[upstream.key] = item
        result.append(upstream)
    if not result:
        raise ValueError("expected at least one registry, got none")
    return tuple(result)


def _default_upstream(value: object) -> Upstream | None:
    """One upstreams-style entry, or None (empty) for "the first of upstreams"."""
    text = _string(value).strip()
    if not text:
        return None
    try:
        return parse_upstream(text)
    except ValueError as e:
        raise ValueError(f"bad entry {text!r}: {e}") from None


def _roots(value: object) -> tuple[str, ...]:
    """`host:port` entries, or one name without a port (the port is filled in from p2pPort
    after all keys are parsed).  Several entries must all carry ports: a list of names without
    ports is more likely a mistake than a wish for one port everywhere."""
    items = _split_list(value)
    result: list[str] = []
    for item in items:
        try:
            host, port = split_hostport(item)
        except ValueError as e:
            raise ValueError(f"bad entry {item!r}: {e}") from None
        if port is None and len(items) > 1:
            raise ValueError(
                f"bad entry {item!r}: a list of roots needs host:port entries; "
                "only a single DNS name may leave the port out"
            )
        result.append(_join_hostport(host, port))
    if len(set(result)) != len(result):
        raise ValueError(f"duplicate entries in {_show(value)}")
    return tuple(result)


_PATTERN_RE = re.compile(r"(\*\.)?([a-z0-9.-]+)(:[0-9]{1,5})?")


def _host_patterns(value: object) -> tuple[str, ...]:
    """Host patterns like `*.cr.aliyuncs.com`, `registry.example.com` or `host:5000`; a `*`
    may only stand for whole leading labels, which is all the webhook needs and is easy to
    reason about."""
    result: list[str] = []
    for item in _split_list(value):
        pattern = item.lower()
        m = _PATTERN_RE.fullmatch(pattern)
        port_ok = m is not None and (m.group(3) is None or 1 <= int(m.group(3)[1:]) <= 65535)
        if (
            m is None
            or not port_ok
            or not all(_LABEL_RE.fullmatch(x) for x in m.group(2).split("."))
        ):
            raise ValueError(f"expected host patterns like *.cr.aliyuncs.com, got {_show(item)}")
        result.append(pattern)
    return tuple(result)


_PROM_LABEL_RE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_RESERVED_LABELS = frozenset({"node", "mode", "type"})


def _labels(value: object) -> tuple[tuple[str, str], ...]:
    """`k=v` pairs for DADIP2P_Label: a comma list, a YAML list, or a YAML mapping.

    Names must be Prometheus label names and must not be the metrics' own labels (node, mode,
    type), which they would silently overwrite.
    """
    pairs: list[tuple[str, str]] = []
    if isinstance(value, Mapping):
        for k, v in value.items():
            scalar = isinstance(v, (str, int, float)) and not isinstance(v, bool)
            if not isinstance(k, str) or not scalar:
                raise ValueError(f"expected label: value strings, got {_show({k: v})}")
            pairs.append((k, str(v)))
    else:
        for item in _split_list(value):
            k, sep, v = item.partition("=")
            if not sep:
                raise ValueError(f"expected k=v, got {_show(item)}")
            pairs.append((k.strip(), v.strip()))
    for k, _ in pairs:
        if not _PROM_LABEL_RE.fullmatch(k) or k.startswith("__") or k in _RESERVED_LABELS:
            raise ValueError(
                f"expected a label name like zone (not node, mode or type), got {_show(k)}"
            )
    names = [k for k, _ in pairs]
    if len(set(names)) != len(names):
        raise ValueError(f"a label is set twice in {_show(value)}")
    return tuple(pairs)


def _format_bool(x: bool) -> str:
    return "true" if x else "false"


def _format_list(xs: tuple[Any, ...]) -> str:
    return ",".join(str(x) for x in xs)


def _format_labels(pairs: tuple[tuple[str, str], ...]) -> str:
    return ",".join(f"{k}={v}" for k, v in pairs)


def _format_optional(x: object) -> str:
    return "" if x is None else str(x)


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
    return Key(
        attr=attr, env=env, file=file, default=default, parse=parse, unit=unit, help=help, **more
    )


_SIZE = {"fmt": format_size}
_BOOL = {"fmt": _format_bool}
_DUR = {"fmt": format_duration}
_LIST = {"fmt": _format_list}

# fmt: off
KEYS: tuple[Key, ...] = (
    _k("mode", "POLLEN_MODE", "DeployConfig.mode", "agent", _choice("agent", "root"), "",
       "agent or root (for `pollen run`)"),
    _k("proxy_concurrency_limit", "POLLEN_PROXY_CONCURRENCY_LIMIT", "proxyConcurrencyLimit", 128,
       _positive_int, "layers", "layers downloading at once per node"),
    _k("p2p_port", "POLLEN_P2P_PORT", "p2pPort", 65002, _port, "port",
       "P2P port (0: the OS picks)"),
    _k("cache_capacity", "POLLEN_CACHE_CAPACITY", "cache.capacity", 4294967296, parse_size,
       "bytes", "disk cache bytes", **_SIZE),
    _k("cache_aio_enable", "POLLEN_CACHE_AIO_ENABLE", "cache.aioEnable", False, parse_bool, "",
       "1: io_uring/AIO with O_DIRECT; 0: plain pread/pwrite", **_BOOL),
    _k("cache_io_engine", "POLLEN_CACHE_IO_ENGINE", "cache.ioEngine", "auto",
       _choice("auto", "pread", "io_uring", "aio"), "",
       "force a native I/O engine; auto: io_uring, then aio, then pread when aioEnable=1, "
       "pread when 0"),
    _k("exporter_enable", "POLLEN_EXPORTER_ENABLE", "exporter.enable", False, parse_bool, "",
       "serve metrics", aliases=("ExporterConfig.enable",), **_BOOL),
    _k("exporter_port", "POLLEN_EXPORTER_PORT", "exporter.port", 65003, _port, "port",
       "metrics port", aliases=("ExporterConfig.port",)),
    _k("exporter_standalone_port", "POLLEN_EXPORTER_STANDALONE_PORT",
       "ExporterConfig.standaloneExporterPort", True, parse_bool, "",
       "false: /metrics on the proxy port", aliases=("exporter.standaloneExporterPort",),
       **_BOOL),
    _k("throttle_limit_mb", "POLLEN_THROTTLE_LIMIT_MB", "throttleLimitMB", 512.0,
       _positive_number, "MiB/s", "cap on bytes served per second (to clients and peers)",
       fmt=_format_number),
    _k("log_dir", "POLLEN_LOG_DIR", "DeployConfig.logDir", "/var/log/pollen", _path, "path",
       "log directory"),
    _k("log_audit", "POLLEN_LOG_AUDIT", "DeployConfig.logAudit", False, parse_bool, "",
       "audit log on", **_BOOL),
    _k("log_audit_mode", "POLLEN_LOG_AUDIT_MODE", "DeployConfig.logAuditMode", "stdout",
       _choice("stdout", "file"), "", "stdout, or file (logDir/audit.log)"),
    _k("proxy_port", "POLLEN_PROXY_PORT", "proxyPort", 65001, _port, "port",
       "registry API port (0: the OS picks)"),
    _k("listen_address", "POLLEN_LISTEN_ADDRESS", "listenAddress", "0.0.0.0", _listen_address,
       "address", "address the ports bind to (IPv6 allowed; empty: all addresses)"),
    _k("node_ip", "POLLEN_NODE_IP", "nodeIP", "", _node_ip, "address",
       "address peers use to reach this node (empty: detected at start)",
       default_doc="detected"),
    _k("cache_path", "POLLEN_CACHE_PATH", "cache.path", "/var/cache/pollen", _path, "path",
       "cache directory"),
    _k("cache_chunk_size", "POLLEN_CACHE_CHUNK_SIZE", "cache.chunkSize", 4 << 20,
       _positive_size, "bytes", "chunk size (a multiple of 4096 when aioEnable=1)", **_SIZE),
    _k("cache_queue_depth", "POLLEN_CACHE_QUEUE_DEPTH", "cache.queueDepth", 32, _positive_int,
       "operations", "native I/O operations in flight"),
    _k("cache_write_retry", "POLLEN_CACHE_WRITE_RETRY", "cache.writeRetry", 30.0,
       _positive_duration, "seconds",
       "after a failed cache write (disk full), layers bypass the cache this long, then "
       "caching is tried again"),
    _k("upstreams", "POLLEN_UPSTREAMS", "upstreams", (Upstream("https", _DOCKER_HUB, 443),),
       _upstreams, "",
       "comma list host[:port] (https), https://host[:port], or http://host[:port] (plain)",
       **_LIST),
    _k("default_upstream", "POLLEN_DEFAULT_UPSTREAM", "defaultUpstream", None,
       _default_upstream, "",
       "upstream for requests that name none; written like an upstreams entry, must be one",
       fmt=_format_optional, default_doc="first of upstreams"),
    _k("upstream_ca_file", "POLLEN_UPSTREAM_CA_FILE", "upstreamCAFile", "", _readable_file,
       "path", "extra CA bundle for https upstreams", default_doc="(system CAs)"),
    _k("auth_cache_ttl", "POLLEN_AUTH_CACHE_TTL", "authCacheTTL", 60.0, parse_duration,
       "seconds", 'how long an upstream "this credential may read this repository" is '
       "remembered (0: not at all)", **_DUR),
    _k("roots", "POLLEN_ROOTS", "roots", (), _roots, "",
       "the roots' P2P addresses host:port, comma list, or one DNS name (port = p2pPort) "
       "re-resolved every 30 s", default_doc="(none)", **_LIST),
    _k("cluster_token", "POLLEN_CLUSTER_TOKEN", "clusterToken", "", _string, "",
       "shared secret for the P2P port; required when roots are set", secret=True,
       default_doc="(none)"),
    _k("p2p_tls_ca", "POLLEN_P2P_TLS_CA", "p2p.tls.ca", "", _readable_file, "path",
       "cluster CA for encrypted P2P requests", default_doc="(none)"),
    _k("p2p_tls_cert", "POLLEN_P2P_TLS_CERT", "p2p.tls.cert", "", _readable_file, "path",
       "this node's certificate for encrypted P2P requests (with p2p.tls.key)",
       default_doc="(none)"),
    _k("p2p_tls_key", "POLLEN_P2P_TLS_KEY", "p2p.tls.key", "", _readable_file, "path",
       "this node's private key for encrypted P2P requests (with p2p.tls.cert)",
       default_doc="(none)"),
    _k("tls_cert", "POLLEN_TLS_CERT", "tls.cert", "", _readable_file, "path",
       "certificate for TLS on the proxy port and the webhook port (with tls.key)",
       default_doc="(none)"),
    _k("tls_key", "POLLEN_TLS_KEY", "tls.key", "", _readable_file, "path",
       "private key for TLS on the proxy port and the webhook port (with tls.cert)",
       default_doc="(none)"),
    _k("webhook_port", "POLLEN_WEBHOOK_PORT", "webhook.port", 8443, _port, "port",
       "admission webhook HTTPS port"),
    _k("webhook_registries", "POLLEN_WEBHOOK_REGISTRIES", "webhook.registries",
       ("*.cr.aliyuncs.com",), _host_patterns, "",
       "comma list of host patterns whose images are eligible", **_LIST),
    _k("webhook_endpoint_port", "POLLEN_WEBHOOK_ENDPOINT_PORT", "webhook.endpointPort", 65001,
       _port, "port", "port written into rewritten images"),
    _k("read_timeout", "POLLEN_READ_TIMEOUT", "readTimeout", 30.0, _positive_duration,
       "seconds", "a client must send a full request head within this", **_DUR),
    _k("idle_timeout", "POLLEN_IDLE_TIMEOUT", "idleTimeout", 60.0, _positive_duration,
       "seconds", "keep-alive connections idle longer are closed", **_DUR),
    _k("shutdown_grace", "POLLEN_SHUTDOWN_GRACE", "shutdownGrace", 10.0, parse_duration,
       "seconds", "how long SIGTERM waits for responses in flight", **_DUR),
    _k("upstream_timeout", "POLLEN_UPSTREAM_TIMEOUT", "upstreamTimeout", 30.0,
       _positive_duration, "seconds", "connect, and each read, from an upstream", **_DUR),
    _k("upstream_retries", "POLLEN_UPSTREAM_RETRIES", "upstreamRetries", 3, _nonnegative_int,
       "retries", "retries of a failed upstream request (0: none)"),
    _k("labels", "POLLEN_LABELS", "labels", (), _labels, "",
       "comma list k=v, labels of the DADIP2P_Label metric", fmt=_format_labels,
       default_doc="(none)"),
)
# fmt: on

KEY_BY_ATTR: Mapping[str, Key] = types.MappingProxyType({k.attr: k for k in KEYS})
_KEY_BY_FILE: dict[str, Key] = {name: k for k in KEYS for name in (k.file, *k.aliases)}

ENV_VARS: frozenset[str] = frozenset({CONFIG_ENV, *(k.env for k in KEYS)})
"""Every environment variable Pollen reads, POLLEN_CONFIG included."""


# --------------------------------------------------------------------------------------------
# The object


@dataclass(frozen=True, kw_only=True)
class Config:
    """The whole configuration, typed and validated; build it with `load_config`.

    The attributes are declared here (not generated from `KEYS`) so that type checkers and
    editors see them; a check at import time fails if they and `KEYS` ever disagree.
    `load_config({})` gives the defaults; tests vary them with `dataclasses.replace` or, to
    get validation too, `load_config({"POLLEN_PROXY_PORT": "0"})`.
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
    cluster_token: str = field(repr=False)  # a secret: never in logs
    p2p_tls_ca: str
    p2p_tls_cert: str
    p2p_tls_key: str
    tls_cert: str
    tls_key: str
    webhook_port: int
    webhook_registries: tuple[str, ...]
    webhook_endpoint_port: int
    read_timeout: float
    idle_timeout: float
    shutdown_grace: float
    upstream_timeout: float
    upstream_retries: int
    labels: tuple[tuple[str, str], ...]

    # Not keys: where each value came from, and which file was read.
    sources: Mapping[str, str] = field(
        default_factory=lambda: types.MappingProxyType({}), compare=False, repr=False
    )
    config_file: str = field(default="", compare=False)

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


def _key_error(key: Key, message: str) -> ConfigError:
    """A ConfigError whose message names the file key and the env var and whose `.key` is the
    file key."""
    err = ConfigError(key.name, message)
    err.key = key.file
    return err


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
                        key, f"set twice in {path!r}, as {found[key.attr][0]} and as {name}"
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
    """Build the `Config`: env beats the POLLEN_CONFIG file beats the default, then the checks
    that span keys.  Raises `ConfigError` naming the key; the daemon stops on it.

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
            raise _key_error(key, str(e)) from None

    _cross_check(values)
    return Config(**values, sources=types.MappingProxyType(sources), config_file=path)


def _cross_check(values: dict[str, Any]) -> None:
    """Checks that involve more than one key; fills in derived values in place."""
    k = KEY_BY_ATTR
    upstreams: tuple[Upstream, ...] = values["upstreams"]
    wanted: Upstream | None = values["default_upstream"]
    if wanted is None:
        values["default_upstream"] = upstreams[0]
    else:
        match = [u for u in upstreams if u.key == wanted.key]
        if not match:
            raise _key_error(
                k["default_upstream"],
                f"{str(wanted)!r} is not one of upstreams ({', '.join(str(u) for u in upstreams)})",
            )
        values["default_upstream"] = match[0]

    roots: tuple[str, ...] = values["roots"]
    if len(roots) == 1 and split_hostport(roots[0])[1] is None:
        if values["p2p_port"] == 0:
            raise _key_error(k["roots"], f"{roots[0]!r} has no port and p2pPort is 0")
        values["roots"] = (f"{roots[0]}:{values['p2p_port']}",)
    if roots and not values["cluster_token"]:
        raise _key_error(k["cluster_token"], "required when roots are set")

    for cert, key in (("tls_cert", "tls_key"), ("p2p_tls_cert", "p2p_tls_key")):
        if bool(values[cert]) != bool(values[key]):
            missing, other = (key, cert) if values[cert] else (cert, key)
            raise _key_error(k[missing], f"must be set together with {k[other].file}")

    chunk = values["cache_chunk_size"]
    if values["cache_aio_enable"] and chunk % 4096:
        raise _key_error(
            k["cache_chunk_size"],
            f"must be a multiple of 4096 when cache.aioEnable is on (O_DIRECT), got {chunk}",
        )

    ports = [("proxy_port", values["proxy_port"]), ("p2p_port", values["p2p_port"])]
    if values["exporter_enable"] and values["exporter_standalone_port"]:
        ports.append(("exporter_port", values["exporter_port"]))
    seen: dict[int, str] = {}
    for attr, port in ports:
        if port and port in seen:
            raise _key_error(k[attr], f"port {port} is also {k[seen[port]].file}")
        seen[port] = attr


# --------------------------------------------------------------------------------------------
# Help and node address


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
