"""Request routing for the proxy port: a request target in, a route out, no I/O.

The distribution spec's grammar is applied here, once, so every later layer can trust the
names, references and digests it receives (they end up in upstream URLs and cache paths).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

from agent.core.errors import RegistryError

# distribution/reference: path components joined by "/", each lower-case alphanumerics
# separated by ".", "_", "__" or runs of "-". Matched with fullmatch: "$" would let a
# trailing newline through into upstream URLs and cache paths.
_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
_NAME_RE = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_DIGEST_RE = re.compile(r"([a-z0-9]+(?:[.+_-][a-z0-9]+)*):([a-zA-Z0-9=_-]+)")
NAME_MAX = 255
TARGET_MAX = 8192

# Algorithms whose hex length we know and can verify; anything else is refused, because a
# layer we cannot verify must never be served.
DIGEST_HEX_LENGTHS = {"sha256": 64, "sha512": 128}


@dataclass(frozen=True, kw_only=True)
class Digest:
    """A validated content digest such as ``sha256:<64 hex>``."""

    algorithm: str
    hex: str

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"


@dataclass(frozen=True, kw_only=True)
class V2Base:
    """``/v2/``: the API version check, forwarded so auth challenges reach the client."""


@dataclass(frozen=True, kw_only=True)
class Manifest:
    name: str
    reference: str
    digest: Digest | None  # set when the reference is a digest


@dataclass(frozen=True, kw_only=True)
class Blob:
    name: str
    digest: Digest


@dataclass(frozen=True, kw_only=True)
class Health:
    """``/healthz``: the process is alive."""


@dataclass(frozen=True, kw_only=True)
class Ready:
    """``/readyz``: the agent is serving (cache loaded, not draining)."""


@dataclass(frozen=True, kw_only=True)
class Status:
    """``/_pollen/status``: JSON state, loopback clients only."""


@dataclass(frozen=True, kw_only=True)
class Metrics:
    """``/metrics`` on the proxy port when the exporter is not standalone."""


Route = V2Base | Manifest | Blob | Health | Ready | Status | Metrics


@dataclass(frozen=True, kw_only=True)
class Target:
    """A parsed request target: the route and the ``ns=`` mirror parameter, if any."""

    route: Route
    ns: str | None


def parse_digest(text: str) -> Digest:
    """Validate a digest string; only algorithms we can verify are accepted."""
    match = _DIGEST_RE.fullmatch(text)
    if not match:
        raise RegistryError(400, "DIGEST_INVALID", f"invalid digest {text!r}")
    algorithm, hexpart = match.groups()
    want = DIGEST_HEX_LENGTHS.get(algorithm)
    if want is None:
        raise RegistryError(
            400, "DIGEST_INVALID", f"unsupported digest algorithm {algorithm!r} (sha256, sha512)"
        )
    if len(hexpart) != want or not re.fullmatch(r"[0-9a-f]+", hexpart):
        raise RegistryError(
            400, "DIGEST_INVALID", f"{algorithm} digest must be {want} lower-case hex digits"
        )
    return Digest(algorithm=algorithm, hex=hexpart)


def validate_name(name: str) -> str:
    """Check a repository name against the distribution grammar."""
    if len(name) > NAME_MAX or not _NAME_RE.fullmatch(name):
        raise RegistryError(400, "NAME_INVALID", f"invalid repository name {name!r}")
    return name


def _parse_reference(reference: str) -> Digest | None:
    if ":" in reference:
        return parse_digest(reference)
    if not _TAG_RE.fullmatch(reference):
        raise RegistryError(400, "TAG_INVALID", f"invalid tag {reference!r}")
    return None


def parse_target(method: str, target: str) -> Target:
    """Turn a request line's method and target into a route, or raise a RegistryError.

    Only GET and HEAD exist on the proxy: Pollen is a pull-only mirror.
    """
    if len(target) > TARGET_MAX:
        raise RegistryError(414, "UNSUPPORTED", f"request target longer than {TARGET_MAX} bytes")
    try:
        parts = urlsplit(target)
    except ValueError:  # "//x[", "//[x]": an authority with a bad IPv6 literal
        raise RegistryError(
            400, "UNSUPPORTED", f"malformed request target {target[:120]!r}"
        ) from None
    path = unquote(parts.path)
    query = parse_qs(parts.query, keep_blank_values=True)
    ns_values = query.get("ns")
    ns = ns_values[0] if ns_values else None
    if ns is not None and ns == "":
        raise RegistryError(400, "UNSUPPORTED", "empty ns= parameter")

    if method not in ("GET", "HEAD"):
        raise RegistryError(
            405, "UNSUPPORTED", f"method {method} not allowed: Pollen is a pull-only mirror"
        )
    simple: dict[str, Route] = {
        "/healthz": Health(),
        "/readyz": Ready(),
        "/_pollen/status": Status(),
        "/metrics": Metrics(),
        "/v2": V2Base(),
        "/v2/": V2Base(),
    }
    route: Route | None = simple.get(path)
    if route is None:
        route = _parse_v2_path(path)
    return Target(route=route, ns=ns)


def _parse_v2_path(path: str) -> Route:
    # /v2/<name>/<kind>/<reference>: the kind is the second-to-last component, so a name may
    # itself contain "manifests" or "blobs" (org/manifests is a valid repository).
    parts = path[len("/v2/") :].split("/") if path.startswith("/v2/") else []
    if len(parts) < 3 or parts[-2] not in ("manifests", "blobs") or not parts[-1]:
        raise RegistryError(
            404,
            "UNSUPPORTED",
            f"{path!r} is not served by this mirror (GET/HEAD /v2/, manifests and blobs)",
        )
    name = validate_name("/".join(parts[:-2]))
    kind, ref = parts[-2], parts[-1]
    if kind == "manifests":
        return Manifest(name=name, reference=ref, digest=_parse_reference(ref))
    return Blob(name=name, digest=parse_digest(ref))
