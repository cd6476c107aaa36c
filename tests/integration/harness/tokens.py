"""A tiny Docker token server that a real Distribution registry trusts.

Distribution's `auth.token` mode redirects clients (401 + `Bearer realm=...`) to this
issuer, which hands out JWTs signed with a key whose certificate is in the registry's
`rootcertbundle`. The registry finds the verifying key by the JWT header `kid`, which
must be the *libtrust* key ID of the public key (see `libtrust_key_id`).

Both client styles are answered, because they differ (see CLIENTS.md):
- skopeo: `GET /token?account=&scope=&service=` with Basic credentials;
- containerd: `POST /token` form (grant_type=password, username, password, scope, ...).

Access is granted per a small user table, so tests can check that a wrong password or a
user without rights fails at the registry. Every token request is recorded.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import fnmatch
import hashlib
import json
import secrets
import threading
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

Action = str  # "pull" | "push" | "*"


@dataclass(frozen=True)
class Account:
    """A user of the token issuer: password and grants `{repo glob: actions}`."""

    password: str
    grants: Mapping[str, Sequence[Action]] = field(default_factory=dict)


@dataclass(frozen=True)
class TokenRequest:
    """One request the issuer answered (for asserting which client style was used)."""

    method: str  # "GET" or "POST"
    account: str | None  # None for anonymous
    scopes: tuple[str, ...]
    status: int
    granted: tuple[dict, ...]


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def libtrust_key_id(public_key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey) -> str:
    """docker/libtrust's KeyID: what Distribution expects in the JWT `kid`.

    base32 of the first 240 bits (30 bytes) of sha256(DER SubjectPublicKeyInfo), which is
    exactly 48 characters (no padding), in groups of four joined by ':'.
    """
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    b32 = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode().rstrip("=")
    return ":".join(b32[i : i + 4] for i in range(0, len(b32), 4))


def parse_scope(scope: str) -> tuple[str, str, list[str]] | None:
    """`repository:name:pull,push` → ("repository", "name", ["pull", "push"]).

    The name may itself contain ':' only in a host:port prefix, which registries never
    send, so split from the right.
    """
    try:
        rtype, rest = scope.split(":", 1)
        name, actions = rest.rsplit(":", 1)
    except ValueError:
        return None
    return rtype, name, [a for a in actions.split(",") if a]


class TokenIssuer:
    """Threaded HTTP token server on 127.0.0.1; a context manager.

    `users` maps user name → Account. `anonymous` holds grants for requests without
    credentials. Wrong credentials get 401; a known user asking for something not
    granted gets a token without that access (like Docker Hub), so the registry refuses.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        users: Mapping[str, Account] | None = None,
        anonymous: Mapping[str, Sequence[Action]] | None = None,
        service: str = "pollen-test-registry",
        issuer: str = "pollen-test-issuer",
        key_type: Literal["rsa", "ec"] = "rsa",
        ttl: int = 300,
        post_supported: bool = True,
    ) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.users = dict(users or {})
        self.anonymous = dict(anonymous or {})
        self.service = service
        self.issuer = issuer
        self.key_type = key_type
        self.ttl = ttl
        #: False makes POST /token answer 404, so containerd falls back to GET.
        self.post_supported = post_supported
        self.requests: list[TokenRequest] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

        if key_type == "rsa":
            self._key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey = rsa.generate_private_key(
                public_exponent=65537, key_size=2048
            )
            self.alg = "RS256"
        else:
            self._key = ec.generate_private_key(ec.SECP256R1())
            self.alg = "ES256"
        self.kid = libtrust_key_id(self._key.public_key())
        self.cert_bundle = self.workdir / "token-signer.pem"
        self._write_cert_bundle()

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> TokenIssuer:
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 (http.server naming)
                issuer._handle(self, "GET")

            def do_POST(self) -> None:  # noqa: N802
                issuer._handle(self, "POST")

            def log_message(self, format: str, *args: object) -> None:
                pass  # requests are recorded in issuer.requests instead

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="token-issuer",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> TokenIssuer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, "not started"
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def realm(self) -> str:
        return f"{self.url}/token"

    def requests_by(self, method: str) -> list[TokenRequest]:
        with self._lock:
            return [r for r in self.requests if r.method == method]

    # -- tokens ----------------------------------------------------------------------

    def _write_cert_bundle(self) -> None:
        """Self-signed cert of the signing key: what `rootcertbundle` must contain."""
        now = datetime.datetime.now(datetime.UTC)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, self.issuer)])
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .sign(self._key, hashes.SHA256())
        )
        self.cert_bundle.write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    def _sign(self, signing_input: bytes) -> bytes:
        if isinstance(self._key, rsa.RSAPrivateKey):
            return self._key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
        der = self._key.sign(signing_input, ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)  # JWS wants raw r||s, not DER
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")

    def make_token(self, subject: str, access: Sequence[dict], *, ttl: int | None = None) -> str:
        """A JWT the registry accepts for `access` (list of {type, name, actions})."""
        now = int(time.time())
        header = {"typ": "JWT", "alg": self.alg, "kid": self.kid}
        claims = {
            "iss": self.issuer,
            "sub": subject,
            "aud": self.service,
            "exp": now + (self.ttl if ttl is None else ttl),
            "nbf": now - 10,
            "iat": now,
            "jti": secrets.token_hex(16),
            "access": list(access),
        }
        signing_input = (
            b64url(json.dumps(header, separators=(",", ":")).encode())
            + "."
            + b64url(json.dumps(claims, separators=(",", ":")).encode())
        ).encode()
        return signing_input.decode() + "." + b64url(self._sign(signing_input))

    def grant(self, account: str | None, scopes: Sequence[str]) -> list[dict]:
        """What `account` (None = anonymous) gets for `scopes`: requested ∩ allowed."""
        table = self.anonymous if account is None else self.users[account].grants
        out: list[dict] = []
        for scope in scopes:
            parsed = parse_scope(scope)
            if parsed is None or parsed[0] != "repository":
                continue
            rtype, name, wanted = parsed
            allowed: set[str] = set()
            for pattern, actions in table.items():
                if fnmatch.fnmatchcase(name, pattern):
                    allowed.update(actions)
            if "*" in allowed:
                allowed.update({"pull", "push", "delete"})
            actions = [a for a in wanted if a in allowed]
            if actions:
                out.append({"type": rtype, "name": name, "actions": actions})
        return out

    # -- HTTP ------------------------------------------------------------------------

    def _handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        split = urllib.parse.urlsplit(h.path)
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else b""
        if split.path != "/token" or (method == "POST" and not self.post_supported):
            self._reply(h, 404, {"error": "not found"}, method, None, (), ())
            return
        if method == "GET":
            params = urllib.parse.parse_qs(split.query)
            user, password = self._basic(h.headers.get("Authorization"))
        else:
            params = urllib.parse.parse_qs(body.decode())
            user = (params.get("username") or [None])[0]
            password = (params.get("password") or [None])[0]
            if params.get("grant_type", [""])[0] not in ("password", ""):
                # refresh_token grants are not needed by the tests; say so plainly.
                self._reply(h, 400, {"error": "unsupported_grant_type"}, method, user, (), ())
                return
        scopes = tuple(s for v in params.get("scope", []) for s in v.split(" ") if s)
        service = (params.get("service") or [self.service])[0]
        if service != self.service:
            self._reply(h, 400, {"error": "unknown service"}, method, user, scopes, ())
            return
        if user is not None:
            acct = self.users.get(user)
            if acct is None or acct.password != password:
                self._reply(h, 401, {"error": "invalid credentials"}, method, user, scopes, ())
                return
        granted = self.grant(user, scopes)
        token = self.make_token(user or "", granted)
        issued = datetime.datetime.now(datetime.UTC).isoformat()
        self._reply(
            h,
            200,
            {"token": token, "access_token": token, "expires_in": self.ttl, "issued_at": issued},
            method,
            user,
            scopes,
            tuple(granted),
        )

    @staticmethod
    def _basic(header: str | None) -> tuple[str | None, str | None]:
        if not header or not header.lower().startswith("basic "):
            return None, None
        try:
            user, _, password = base64.b64decode(header[6:].strip()).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return "", None  # malformed credentials count as wrong credentials
        return user, password

    def _reply(
        self,
        h: BaseHTTPRequestHandler,
        status: int,
        obj: dict,
        method: str,
        user: str | None,
        scopes: tuple[str, ...],
        granted: tuple[dict, ...],
    ) -> None:
        with self._lock:
            self.requests.append(TokenRequest(method, user, scopes, status, granted))
        data = json.dumps(obj).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        if status == 401:
            h.send_header("WWW-Authenticate", 'Basic realm="pollen-test-issuer"')
        h.end_headers()
        h.wfile.write(data)
