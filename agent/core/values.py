"""The value grammars of Pollen's settings: sizes, booleans, durations, numbers, lists, labels.

Theory of operation
-------------------
Each parser takes text (from the environment) or a YAML value and returns a typed value, or
raises `ValueError("expected ..., got ...")`.  They never mention key names: `load_config`
in `agent.core.config` adds those, so one parser serves every key of its kind, and the same
grammar is usable outside the config (bench/ reads sizes with `parse_size`).  Each formatter
writes a value back as text its parser reads to an equal value, which is what lets
`--print-config` output be pasted back as input.

Bad values are echoed through `show_value`, cut short; parsers of values that may be secrets
(`parse_string`) do not echo them at all.  Standard library only.
"""

from __future__ import annotations

import ipaddress
import json
import math
import os
import re
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any

__all__ = [
    "choice",
    "format_bool",
    "format_duration",
    "format_labels",
    "format_list",
    "format_number",
    "format_optional",
    "format_size",
    "parse_bool",
    "parse_duration",
    "parse_labels",
    "parse_nonnegative_int",
    "parse_optional_ip",
    "parse_path",
    "parse_port",
    "parse_positive_duration",
    "parse_positive_int",
    "parse_positive_number",
    "parse_positive_size",
    "parse_readable_file",
    "parse_size",
    "parse_string",
    "parse_whole",
    "show_value",
    "split_list",
]


def show_value(value: object) -> str:
    """repr() of a bad value for an error message, cut short so a pasted blob stays readable."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# --------------------------------------------------------------------------------------------
# Sizes

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
        raise ValueError(f"{_SIZE_EXPECTED}, got {show_value(value)}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{_SIZE_EXPECTED}, got a negative size {value}")
        return value
    if isinstance(value, float):
        if math.isfinite(value) and value >= 0 and value.is_integer():
            return int(value)
        raise ValueError(f"{_SIZE_EXPECTED}, got {show_value(value)}")
    if not isinstance(value, str):
        raise ValueError(f"{_SIZE_EXPECTED}, got {show_value(value)}")
    m = _SIZE_RE.fullmatch(value)
    if m is None or m.group(2) not in _SIZE_UNITS:
        raise ValueError(
            f"{_SIZE_EXPECTED} (units: B, KiB, MiB, GiB, TiB, KB, MB, GB, TB), "
            f"got {show_value(value)}"
        )
    number, unit = m.groups()
    exact = Decimal(number) * _SIZE_UNITS[unit]
    if exact != exact.to_integral_value():
        raise ValueError(f"{_SIZE_EXPECTED}, got {show_value(value)}, which is not whole bytes")
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


def parse_positive_size(value: object) -> int:
    """A size greater than 0 (a chunk of 0 bytes would never finish a layer)."""
    n = parse_size(value)
    if n <= 0:
        raise ValueError(f"{_SIZE_EXPECTED}, greater than 0, got {show_value(value)}")
    return n


# --------------------------------------------------------------------------------------------
# Booleans

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
    raise ValueError(
        f"expected a boolean (1/0, true/false, yes/no, on/off), got {show_value(value)}"
    )


def format_bool(x: bool) -> str:
    """`true` or `false`: the spelling YAML and `parse_bool` both read."""
    return "true" if x else "false"


# --------------------------------------------------------------------------------------------
# Durations

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
        raise ValueError(f"{_DURATION_EXPECTED}, got {show_value(value)}")
    if isinstance(value, (int, float)):
        if math.isfinite(value) and value >= 0:
            return float(value)
        raise ValueError(f"{_DURATION_EXPECTED}, got {show_value(value)}")
    if isinstance(value, str):
        m = _DURATION_RE.fullmatch(value)
        if m is not None:
            number, unit = float(m.group(1)), m.group(2) or ""
            return number / 1000 if unit == "ms" else number * _DURATION_UNITS[unit]
    raise ValueError(f"{_DURATION_EXPECTED}, got {show_value(value)}")


def format_duration(seconds: float) -> str:
    """Write seconds as `60s`, `500ms` or `0.25s`; `parse_duration` reads each back exactly."""
    if float(seconds).is_integer():
        return f"{int(seconds)}s"
    ms = seconds * 1000
    if ms.is_integer() and ms / 1000 == seconds:
        return f"{int(ms)}ms"
    # The shortest repr, written without an exponent (the grammar has none).
    return f"{format(Decimal(repr(seconds)), 'f')}s"


def parse_positive_duration(value: object) -> float:
    """A duration greater than 0: a timeout of 0 would fail every request at once."""
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError(f"{_DURATION_EXPECTED}, greater than 0, got {show_value(value)}")
    return seconds


# --------------------------------------------------------------------------------------------
# Numbers


def parse_whole(value: object, *, minimum: int, maximum: int | None = None, what: str) -> int:
    """Parse a whole number in [minimum, maximum]; YAML ints pass, floats and bools do not."""
    expected = f"expected {what}"
    if isinstance(value, str) and re.fullmatch(r"\s*[0-9]+\s*", value):
        number = int(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        number = value
    else:
        raise ValueError(f"{expected}, got {show_value(value)}")
    if number < minimum or (maximum is not None and number > maximum):
        raise ValueError(f"{expected}, got {number}")
    return number


def parse_port(value: object) -> int:
    """A TCP port 0..65535; 0 lets the OS pick (tests use it)."""
    if isinstance(value, str) and value.startswith("tcp://"):
        # Kubernetes injects <SERVICE>_PORT=tcp://ip:port for every Service in the namespace
        # (a Service named pollen-webhook gives POLLEN_WEBHOOK_PORT): say so, not just "bad".
        raise ValueError(
            f"expected a port 0..65535, got {show_value(value)} -- this looks like a Kubernetes "
            "service link variable; set enableServiceLinks: false on the pod"
        )
    return parse_whole(value, minimum=0, maximum=65535, what="a port 0..65535")


def parse_positive_int(value: object) -> int:
    """A whole number >= 1, for counts where 0 would mean "never do anything"."""
    return parse_whole(value, minimum=1, what="a whole number >= 1")


def parse_nonnegative_int(value: object) -> int:
    """A whole number >= 0, for counts where 0 means "none" (retries)."""
    return parse_whole(value, minimum=0, what="a whole number >= 0")


def parse_positive_number(value: object) -> float:
    """A finite number > 0, int or float (throttleLimitMB may be 0.5)."""
    number: float | None = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str) and re.fullmatch(r"\s*[0-9]+(?:\.[0-9]+)?\s*", value):
        number = float(value)
    if number is None or not math.isfinite(number) or number <= 0:
        raise ValueError(f"expected a number greater than 0, got {show_value(value)}")
    return number


def format_number(x: float) -> str:
    """512.0 as `512`, 0.5 as `0.5`, never with an exponent (the parser reads none)."""
    return str(int(x)) if float(x).is_integer() else format(Decimal(repr(x)), "f")


# --------------------------------------------------------------------------------------------
# Words, strings, paths, addresses


def choice(*allowed: str) -> Callable[[object], str]:
    """A parser accepting exactly one of `allowed` (after stripping; case matters not)."""

    def parse(value: object) -> str:
        if isinstance(value, str) and value.strip().lower() in allowed:
            return value.strip().lower()
        raise ValueError(f"expected one of {', '.join(allowed)}, got {show_value(value)}")

    return parse


def parse_string(value: object) -> str:
    """Any string.  Other YAML types are rejected, and the value is not echoed (it may be a
    secret)."""
    if isinstance(value, str):
        return value
    raise ValueError(f"expected a string, got a {type(value).__name__}")


def parse_path(value: object) -> str:
    """A non-empty path."""
    text = parse_string(value).strip()
    if not text:
        raise ValueError("expected a path, got ''")
    return text


def parse_readable_file(value: object) -> str:
    """A path to a readable regular file, or empty for none.  Checked now so that a missing
    certificate stops start-up with the key's name rather than failing at the first handshake."""
    text = parse_string(value).strip()
    if text and not (os.path.isfile(text) and os.access(text, os.R_OK)):
        raise ValueError(f"expected a readable file, got {show_value(text)}")
    return text


def parse_optional_ip(value: object) -> str:
    """An IPv4 or IPv6 literal (brackets allowed and dropped), or '' for "none given" (the
    listen address then binds every address; the node address is then detected)."""
    text = parse_string(value).strip()
    if not text:
        return ""
    bare = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    try:
        return str(ipaddress.ip_address(bare))
    except ValueError:
        raise ValueError(f"expected an IPv4 or IPv6 address, got {show_value(text)}") from None


# --------------------------------------------------------------------------------------------
# Lists and labels


def split_list(value: object) -> list[str]:
    """A list from a comma string (env or YAML) or a YAML list of strings; blanks dropped."""
    if value is None:
        return []
    if isinstance(value, str):
        items = value.split(",")
    elif isinstance(value, (list, tuple)):
        items = []
        for item in value:
            if not isinstance(item, str):
                raise ValueError(f"expected a list of strings, got item {show_value(item)}")
            items.append(item)
    else:
        raise ValueError(f"expected a comma list or a YAML list, got {show_value(value)}")
    return [item.strip() for item in items if item.strip()]


def format_list(xs: tuple[Any, ...]) -> str:
    """The comma list `split_list` reads back."""
    return ",".join(str(x) for x in xs)


_PROM_LABEL_RE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_RESERVED_LABELS = frozenset({"node", "mode", "type"})


def parse_labels(value: object) -> tuple[tuple[str, str], ...]:
    """`k=v` pairs for DADIP2P_Label: a comma list, a YAML list, or a YAML mapping.

    Names must be Prometheus label names and must not be the metrics' own labels (node, mode,
    type), which they would silently overwrite.
    """
    pairs: list[tuple[str, str]] = []
    if isinstance(value, Mapping):
        for k, v in value.items():
            scalar = isinstance(v, (str, int, float)) and not isinstance(v, bool)
            if not isinstance(k, str) or not scalar:
                raise ValueError(f"expected label: value strings, got {show_value({k: v})}")
            pairs.append((k, str(v)))
    else:
        for item in split_list(value):
            k, sep, v = item.partition("=")
            if not sep:
                raise ValueError(f"expected k=v, got {show_value(item)}")
            pairs.append((k.strip(), v.strip()))
    for k, _ in pairs:
        if not _PROM_LABEL_RE.fullmatch(k) or k.startswith("__") or k in _RESERVED_LABELS:
            raise ValueError(
                f"expected a label name like zone (not node, mode or type), got {show_value(k)}"
            )
    names = [k for k, _ in pairs]
    if len(set(names)) != len(names):
        raise ValueError(f"a label is set twice in {show_value(value)}")
    return tuple(pairs)


def format_labels(pairs: tuple[tuple[str, str], ...]) -> str:
    """The `k=v,k=v` list `parse_labels` reads back."""
    return ",".join(f"{k}={v}" for k, v in pairs)


def format_optional(x: object) -> str:
    """'' for None (how an unset optional key is written), else str(x)."""
    return "" if x is None else str(x)


def parse_json_object(data: bytes | str, what: str) -> dict[str, Any]:
    """`data` as a JSON object, or ValueError saying `what` is not one (a reply, a manifest, a
    file: every JSON document this program reads is an object at the top)."""
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, ...
        raise ValueError(f"{what} is not JSON: {str(exc)[:120]}") from None
    if not isinstance(doc, dict):
        raise ValueError(f"{what} is not a JSON object")
    return doc
