"""A real Distribution registry (`docker-registry` 2.8.2) on loopback, per test.

It is the origin that Pollen tests count against: `blob_get_count()` reads the
registry's *own* access log, so "the origin sent this layer once" is measured where it
matters, never by the agent.

Log facts (observed, 2.8.2): with `log.accesslog.disabled: false` the registry writes
one Apache "combined" line per finished request to **stdout**, e.g.

    127.0.0.1 - - [27/Nov/2026:04:35:45 +0000] "GET /v2/x/blobs/sha256:ab.. HTTP/1.1" 200 524288 ""
    "skopeo/1.9.3"            (one line)

including 401s and 404s, while logrus lines (`msg="response completed"
http.request.method=GET ...`) go to **stderr** and are written only for some outcomes.
So we keep stdout in its own file and parse that. The access line is written when the
handler returns, before Go flushes the response's last buffered bytes, so once a client
has a complete response its line is already in the file.
"""

from __future__ import annotations

import json
import re
import secrets
import sys
import warnings
from collections.abc import Container, Mapping
from pathlib import Path
from typing import Literal

from .procs import HarnessError, ManagedProcess, free_port, http_status, wait_until
from .tlsutil import TLSFiles, client_context
from .tokens import TokenIssuer

REGISTRY_BIN = "/usr/bin/docker-registry"

AuthMode = Literal["plain", "htpasswd", "token"]

_ACCESS_RE = re.compile(
    r"^(?P<remote>\S+) \S+ (?P<user>\S+) \[(?P<time>[^\]]+)\] "
    r'"(?P<method>\S+) (?P<uri>\S+) (?P<proto>[^"]+)" (?P<status>\d{3}) (?P<size>\d+|-)'
    r' "(?P<referer>(?:[^"\\]|\\.)*)" "(?P<user_agent>(?:[^"\\]|\\.)*)"$'
)
_BLOB_PATH_RE = re.compile(r"^/v2/(?P<name>.+)/blobs/(?P<digest>[a-z0-9]+:[a-f0-9]+)$")
_SYNC_PARAM = "pollen-harness-sync"
_HARNESS_QUERY = "pollen-harness-"  # our own probes; left out of requests_log()


def bcrypt_hash(password: str) -> str:
    """A bcrypt hash for htpasswd (Distribution accepts nothing else).

    Uses the `bcrypt` package if installed, else the stdlib `crypt` module, which on
    glibc/libxcrypt (Debian 12) does `$2b$` (and exists up to Python 3.12). Cost 4: the
    minimum, so tests stay fast.
    """
    try:
        import bcrypt  # type: ignore[import-not-found]

        return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
    except ImportError:
        pass
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            import crypt  # type: ignore[import-not-found]
    except ImportError as e:
        raise HarnessError("need the `bcrypt` package to write an htpasswd file") from e
    if crypt.METHOD_BLOWFISH not in crypt.methods:
        raise HarnessError("libcrypt here has no bcrypt; install the `bcrypt` package")
    return crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16))


def parse_access_line(line: str) -> dict | None:
    """One combined-log line → {method, uri, path, query, status, size, user_agent, remote}."""
    m = _ACCESS_RE.match(line.strip())
    if not m:
        return None
    uri = m["uri"]
    path, _, query = uri.partition("?")
    return {
        "method": m["method"],
        "uri": uri,
        "path": path,
        "query": query,
        "status": int(m["status"]),
        "size": 0 if m["size"] == "-" else int(m["size"]),
        "user_agent": m["user_agent"],
        "remote": m["remote"],
    }


class Registry:
    """`docker-registry serve` with a generated config in `workdir`; a context manager.

    auth: "plain" (none), "htpasswd" (Basic; `users` = {name: password}), or "token"
    (needs a started `token_issuer`). `tls` (from `make_ca_and_cert`) turns on HTTPS.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        auth: AuthMode = "plain",
        users: Mapping[str, str] | None = None,
        token_issuer: TokenIssuer | None = None,
        tls: TLSFiles | None = None,
        binary: str = REGISTRY_BIN,
        name: str = "registry",
    ) -> None:
        if auth == "token" and token_issuer is None:
            raise ValueError("auth='token' needs a token_issuer")
        if auth == "htpasswd" and not users:
            raise ValueError("auth='htpasswd' needs users")
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.auth = auth
        self.users = dict(users or {})
        self.token_issuer = token_issuer
        self.tls = tls
        self.binary = binary
        self.name = name
        self.port = 0
        self.proc: ManagedProcess | None = None
        self._sync_seq = 0

    # -- addresses -------------------------------------------------------------------

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def host(self) -> str:
        """`127.0.0.1:<port>`, as it appears in image references."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}"

    # -- lifecycle -------------------------------------------------------------------

    def _config(self) -> dict:
        http: dict = {
            "addr": self.host,
            "secret": secrets.token_hex(16),
            "headers": {"X-Content-Type-Options": ["nosniff"]},
        }
        if self.tls:
            http["tls"] = {"certificate": str(self.tls.cert), "key": str(self.tls.key)}
        cfg: dict = {
            "version": "0.1",
            "log": {
                "level": "info",
                "formatter": "text",
                "accesslog": {"disabled": False},
                "fields": {"service": self.name},
            },
            "storage": {
                "filesystem": {"rootdirectory": str(self.workdir / "data")},
                "delete": {"enabled": True},
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            "http": http,
            "health": {"storagedriver": {"enabled": False}},
        }
        if self.auth == "htpasswd":
            htpasswd = self.workdir / "htpasswd"
            htpasswd.write_text("".join(f"{u}:{bcrypt_hash(p)}\n" for u, p in self.users.items()))
            cfg["auth"] = {"htpasswd": {"realm": "pollen-test", "path": str(htpasswd)}}
        elif self.auth == "token":
            ti = self.token_issuer
            assert ti is not None
            cfg["auth"] = {
                "token": {
                    "realm": ti.realm,
                    "service": ti.service,
                    "issuer": ti.issuer,
                    "rootcertbundle": str(ti.cert_bundle),
                }
            }
        return cfg

    def start(self, *, timeout: float = 20.0, attempts: int = 3) -> Registry:
        """Start and wait until /v2/ answers HTTP; retry on a port lost to a race."""
        for attempt in range(attempts):
            self.port = free_port()
            config = self.workdir / "config.yml"
            # JSON is YAML: no YAML library needed to write the registry's config.
            config.write_text(json.dumps(self._config(), indent=2))
            self.proc = ManagedProcess(
                [self.binary, "serve", str(config)],
                name=f"{self.name}-{attempt}",
                log_dir=self.workdir / "logs",
                separate_stderr=True,
                drop_env_prefixes=("REGISTRY_",),
            )
            self.proc.start()
            try:
                wait_until(
                    self._probe_ready,
                    timeout=timeout,
                    what=f"{self.name} at {self.url}",
                    on_timeout=self.proc.describe_failure,
                )
                return self
            except HarnessError:
                self.proc.stop()
                if (
                    "address already in use" in self.proc.log_text("stderr")
                    and attempt + 1 < attempts
                ):
                    continue
                raise
        raise AssertionError("unreachable")

    def _probe_ready(self) -> bool:
        assert self.proc is not None
        self.proc.check_alive()
        ctx = client_context(self.tls.ca) if self.tls else None
        return (
            http_status(f"{self.url}/v2/?{_HARNESS_QUERY}ready", timeout=1.0, ssl_context=ctx)
            is not None
        )

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()

    def __enter__(self) -> Registry:
        return self.start()

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is not None and self.proc is not None:
            print(f"\n=== {self.name} log tail ===\n{self.proc.log_tail()}", file=sys.stderr)
        self.stop()

    # -- the registry's own view of what it served -------------------------------------

    def sync_log(self, *, timeout: float = 10.0) -> None:
        """Make a marker request and wait until its access line is in the log.

        Not needed after a client finished normally (see module doc), but it also covers
        requests a client abandoned mid-body, whose line is written when the registry
        notices.
        """
        self._sync_seq += 1
        marker = f"{_SYNC_PARAM}={self._sync_seq}"
        ctx = client_context(self.tls.ca) if self.tls else None
        http_status(f"{self.url}/v2/?{marker}", timeout=timeout, ssl_context=ctx)
        wait_until(
            lambda: marker in self._raw_access_text(),
            timeout=timeout,
            what=f"{self.name} access log marker {marker}",
        )

    def _raw_access_text(self) -> str:
        return self.proc.log_text("stdout") if self.proc else ""

    def log_mark(self) -> int:
        """Number of access entries so far; pass as `since=` to look only after it."""
        return len(self.requests_log())

    def requests_log(self, *, since: int = 0) -> list[dict]:
        """Parsed access entries, oldest first (the harness's own probes left out).

        Keys: method, uri, path, query, status, size, user_agent, remote.
        """
        out = []
        for line in self._raw_access_text().splitlines():
            entry = parse_access_line(line)
            if entry is not None and _HARNESS_QUERY not in entry["query"]:
                out.append(entry)
        return out[since:]

    def blob_requests(self, digest: str | None = None, *, since: int = 0) -> list[dict]:
        """Access entries (any method, any status) for `/v2/<name>/blobs/<digest>`."""
        out = []
        for e in self.requests_log(since=since):
            m = _BLOB_PATH_RE.match(e["path"])
            if m and (digest is None or m["digest"] == digest):
                out.append(e)
        return out

    def blob_bytes_sent(self, digest: str, *, since: int = 0, sync: bool = True) -> int:
        """The body bytes the registry sent for GETs of blob `digest` (whole or ranged), as its
        access log says."""
        if sync:
            self.sync_log()
        return sum(
            e["size"]
            for e in self.blob_requests(digest, since=since)
            if e["method"] == "GET" and 200 <= e["status"] < 300
        )

    def blob_get_count(
        self,
        digest: str,
        *,
        statuses: Container[int] = range(200, 300),
        since: int = 0,
        sync: bool = True,
    ) -> int:
        """How many GETs of blob `digest` (any repository) the registry answered.

        "Answered" = the status is in `statuses` (by default 2xx: bytes were sent); a 401
        challenge or a 404 is not a download.
        """
        if sync:
            self.sync_log()
        return sum(
            1
            for e in self.blob_requests(digest, since=since)
            if e["method"] == "GET" and e["status"] in statuses
        )
