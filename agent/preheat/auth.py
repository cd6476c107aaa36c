"""Registry credentials for preheat, without I/O: challenges, tokens and credential files.

Preheat reads manifests from the registry itself and hands the roots the same
``Authorization`` a pull through an agent would hand them (a pull's passes from the client to
the root over P2P TLS): ``Basic`` for a registry that asks for it, else the bearer token its
token service gives for ``repository:<repo>:pull``, anonymously or with the user's
credentials. Credentials come from ``--creds`` or from the files skopeo and docker read, in
their order: ``--authfile``, ``$REGISTRY_AUTH_FILE``, ``$XDG_RUNTIME_DIR/containers/auth.json``,
``$DOCKER_CONFIG/config.json`` (``~/.docker/config.json``). They are used only when the
registry challenges, so a public image sends none.
"""

from __future__ import annotations

import base64
import binascii
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.core.hostport import normalize_registry_host
from agent.core.values import parse_json_object

DEFAULT_TOKEN_SECONDS = 60.0  # a token without expires_in lasts this long (the spec's rule)
MAX_TOKEN_REPLY = 1 << 20

_PARAM_RE = re.compile(r'\s*([A-Za-z0-9_-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]*))\s*,?')


class CredentialError(ValueError):
    """Credentials that cannot be used (a bad --creds, an unreadable auth file entry)."""


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str

    def basic(self) -> bytes:
        raw = f"{self.username}:{self.password}".encode()
        return b"Basic " + base64.b64encode(raw)


def parse_creds(text: str) -> Credentials:
    """``user:password`` (skopeo's ``--creds``)."""
    user, colon, password = text.partition(":")
    if not colon or not user:
        raise CredentialError("--creds must be USER:PASSWORD")
    return Credentials(user, password)


@dataclass(frozen=True)
class Challenge:
    """A ``WWW-Authenticate`` challenge: scheme (lower case) and parameters."""

    scheme: str
    params: Mapping[str, str]


def parse_challenge(header: str | None) -> Challenge | None:
    """The first challenge of a ``WWW-Authenticate`` value, None when there is none."""
    if not header or not header.strip():
        return None
    scheme, _, rest = header.strip().partition(" ")
    params: dict[str, str] = {}
    for match in _PARAM_RE.finditer(rest):
        quoted, plain = match.group(2), match.group(3)
        value = re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else plain
        params.setdefault(match.group(1).lower(), value or "")
    return Challenge(scheme.lower(), params)


def token_url(challenge: Challenge, repo: str) -> str:
    """Where to ask for a pull token for `repo` (the bearer challenge's realm); ValueError
    when the realm is no http(s) URL."""
    realm = challenge.params.get("realm", "")
    parts = urllib.parse.urlsplit(realm)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"the registry's token realm is not an http(s) URL: {realm[:100]!r}")
    query = [("scope", f"repository:{repo}:pull")]
    if challenge.params.get("service"):
        query.insert(0, ("service", challenge.params["service"]))
    joiner = "&" if parts.query else ""
    return urllib.parse.urlunsplit(
        parts._replace(query=parts.query + joiner + urllib.parse.urlencode(query))
    )


def parse_token_reply(body: bytes) -> tuple[str, float]:
    """A token service's JSON → (token, seconds it lasts); ValueError if there is none."""
    doc = parse_json_object(body, "token reply")
    token = doc.get("token") or doc.get("access_token")
    if not isinstance(token, str) or not token or not token.isprintable():
        raise ValueError("token reply carries no token")
    seconds = doc.get("expires_in")
    if type(seconds) not in (int, float) or not 0 < seconds < 1e9:
        seconds = DEFAULT_TOKEN_SECONDS
    return token, float(seconds)


def authfile_candidates(env: Mapping[str, str], home: Path) -> list[Path]:
    """The credential files skopeo and docker read, in their order (no --authfile)."""
    found: list[Path] = []
    if env.get("REGISTRY_AUTH_FILE"):
        found.append(Path(env["REGISTRY_AUTH_FILE"]))
    if env.get("XDG_RUNTIME_DIR"):
        found.append(Path(env["XDG_RUNTIME_DIR"]) / "containers" / "auth.json")
    docker = Path(env["DOCKER_CONFIG"]) if env.get("DOCKER_CONFIG") else home / ".docker"
    found.append(docker / "config.json")
    return found


def find_credentials(doc: Any, host: str, repo: str) -> Credentials | None:
    """The entry of an auth file (``{"auths": {key: {"auth": base64}}}``) for `host` and
    `repo`: keys name a registry (``host[:port]``, ``https://host/v1/``; docker.io's names are
    one registry) or, in containers' files, a repository or namespace in it (the longest
    wins). CredentialError for a matching entry that cannot be decoded."""
    auths = doc.get("auths") if isinstance(doc, dict) else None
    if not isinstance(auths, dict):
        return None
    wanted = normalize_registry_host(host)
    best: tuple[int, Any] | None = None
    for key, entry in auths.items():
        if not isinstance(key, str):
            continue
        bare = key.split("://", 1)[-1]
        key_host, _, path = bare.partition("/")
        path = path.strip("/")
        if normalize_registry_host(key_host) != wanted:
            continue
        if path in ("", "v1", "v2"):
            depth = 0
        elif repo == path or repo.startswith(path + "/"):
            depth = len(path)
        else:
            continue
        if best is None or depth > best[0]:
            best = (depth, entry)
    return None if best is None else _entry_credentials(best[1], host)


def _entry_credentials(entry: Any, host: str) -> Credentials | None:
    if not isinstance(entry, dict):
        return None
    if isinstance(entry.get("username"), str) and isinstance(entry.get("password"), str):
        return Credentials(entry["username"], entry["password"])
    encoded = entry.get("auth")
    if not isinstance(encoded, str) or not encoded:
        return None  # e.g. a credential helper's entry: nothing stored here
    try:
        decoded = base64.b64decode(encoded, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise CredentialError(
            f"the auth file entry for {host} is not base64 user:password"
        ) from None
    user, colon, password = decoded.partition(":")
    if not colon:
        raise CredentialError(f"the auth file entry for {host} is not base64 user:password")
    return Credentials(user, password)
