"""A stand-in for the Kubernetes API server: the ONLY part of the webhook tests that is not
the real thing (there is no API server on these machines).

It speaks the same REST paths and JSON as kube-apiserver for what Pollen calls --
``/api/v1/namespaces/<ns>/secrets[/<name>]`` (GET, POST, PUT, and PATCH with an RFC 6902
JSON patch, ``application/json-patch+json``) and
``/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/<name>`` (GET, PUT) --
over HTTPS with a bearer token, with the API server's semantics that matter here:
``metav1.Status`` error bodies with ``reason`` (NotFound, AlreadyExists, Conflict,
Unauthorized, Invalid), ``resourceVersion`` optimistic concurrency on PUT, a JSON patch whose
``test`` operation fails refused with 422 and nothing written (as kube-apiserver does), an
immutable Secret ``type``, and server-set ``uid``/``creationTimestamp``. A thread serves it (stdlib
http.server), so it shares no code with the Pollen client under test.

Faults: `fail(method, path_prefix, status)` answers matching requests with an error;
`delay` holds every answer; `before(method, path)`, when set, runs ahead of each request --
another client's write landing between two of Pollen's calls. `requests` records (method,
path) of everything received.
"""

from __future__ import annotations

import copy
import datetime
import json
import re
import ssl
import threading
import time
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jsonpatch
import jsonpointer

SECRETS = re.compile(r"^/api/v1/namespaces/([a-z0-9-]+)/secrets(?:/([a-z0-9.-]+))?$")
MWC = re.compile(
    r"^/apis/admissionregistration\.k8s\.io/v1/mutatingwebhookconfigurations/([a-z0-9.-]+)$"
)


def status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


class KubeStandIn:
    """Start with `with KubeStandIn(tls=..., token=...) as api:`; `api.url` is its base."""

    def __init__(self, *, cert: Path, key: Path, token: str = "test-token") -> None:
        self.token = token
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.requests: list[tuple[str, str]] = []
        self.faults: list[tuple[str, str, int]] = []
        self.delay = 0.0
        self.before: Callable[[str, str], None] | None = None
        self._version = 100
        self._lock = threading.Lock()
        self._context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._context.load_cert_chain(str(cert), str(key))
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> KubeStandIn:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _answer(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                code, payload = standin.handle(
                    self.command,
                    self.path,
                    self.headers.get("authorization"),
                    body,
                    self.headers.get("content-type") or "",
                )
                data = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _answer

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        server.socket = self._context.wrap_socket(server.socket, server_side=True)
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None and self._thread is not None
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    # -- test helpers --------------------------------------------------------------------------

    def fail(self, method: str, path_prefix: str, code: int) -> None:
        self.faults.append((method, path_prefix, code))

    def put_object(self, kind: str, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            return self._store(kind, namespace, copy.deepcopy(body))

    def secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        found = self.objects.get(("secrets", namespace, name))
        return copy.deepcopy(found) if found else None

    def calls(self, method: str | None = None, prefix: str = "") -> list[tuple[str, str]]:
        return [
            (m, p)
            for m, p in self.requests
            if (method is None or m == method) and p.startswith(prefix)
        ]

    # -- the API ---------------------------------------------------------------------------------

    def _store(self, kind: str, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        self._version += 1
        meta = body.setdefault("metadata", {})
        old = self.objects.get((kind, namespace, meta["name"]))
        meta["resourceVersion"] = str(self._version)
        meta.setdefault("uid", old["metadata"]["uid"] if old else str(uuid.uuid4()))
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        meta.setdefault("creationTimestamp", old["metadata"]["creationTimestamp"] if old else now)
        if namespace:
            meta["namespace"] = namespace
        self.objects[(kind, namespace, meta["name"])] = body
        return copy.deepcopy(body)

    def handle(
        self, method: str, path: str, auth: str | None, raw: bytes, content_type: str = ""
    ) -> tuple[int, dict[str, Any]]:
        if self.delay:
            time.sleep(self.delay)
        if self.before is not None:
            self.before(method, path)
        with self._lock:
            self.requests.append((method, path))
            if auth != f"Bearer {self.token}":
                return 401, status(401, "Unauthorized", "Unauthorized")
            for m, prefix, code in self.faults:
                if m == method and path.startswith(prefix):
                    return code, status(code, "InternalError", "injected fault")
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                return 400, status(400, "BadRequest", "body is not JSON")
            if m := SECRETS.match(path):
                if method == "PATCH":
                    return self._patch_secret(m.group(1), m.group(2), body, content_type)
                return self._secrets(method, m.group(1), m.group(2), body)
            if m := MWC.match(path):
                return self._mwc(method, m.group(1), body)
            return 404, status(404, "NotFound", f"the server could not find {path}")

    def _check_body(
        self, body: object, kind: str, name: str | None, namespace: str
    ) -> tuple[int, dict[str, Any]] | None:
        if not isinstance(body, dict) or body.get("kind") != kind:
            return 400, status(400, "BadRequest", f"expected a {kind}")
        meta = body.get("metadata") or {}
        if not meta.get("name") or (name is not None and meta["name"] != name):
            return 400, status(400, "BadRequest", "the name of the object does not match")
        if meta.get("namespace", namespace) != namespace:
            return 400, status(400, "BadRequest", "the namespace of the object does not match")
        return None

    def _secrets(
        self, method: str, namespace: str, name: str | None, body: Any
    ) -> tuple[int, dict[str, Any]]:
        key = ("secrets", namespace, name or "")
        if method == "GET" and name:
            found = self.objects.get(key)
            if found is None:
                return 404, status(404, "NotFound", f'secrets "{name}" not found')
            return 200, copy.deepcopy(found)
        if method == "POST" and not name:
            if bad := self._check_body(body, "Secret", None, namespace):
                return bad
            new_name = body["metadata"]["name"]
            if ("secrets", namespace, new_name) in self.objects:
                return 409, status(409, "AlreadyExists", f'secrets "{new_name}" already exists')
            body["metadata"].pop("resourceVersion", None)
            return 201, self._store("secrets", namespace, body)
        if method == "PUT" and name:
            if bad := self._check_body(body, "Secret", name, namespace):
                return bad
            found = self.objects.get(key)
            if found is None:
                return 404, status(404, "NotFound", f'secrets "{name}" not found')
            version = body["metadata"].get("resourceVersion")
            if version and version != found["metadata"]["resourceVersion"]:
                return 409, status(
                    409,
                    "Conflict",
                    f'Operation cannot be fulfilled on secrets "{name}": the object has been '
                    "modified; please apply your changes to the latest version and try again",
                )
            if body.get("type", "Opaque") != found.get("type", "Opaque"):
                return 422, status(422, "Invalid", "type: Invalid value: field is immutable")
            return 200, self._store("secrets", namespace, body)
        return 405, status(405, "MethodNotAllowed", f"{method} not allowed")

    def _patch_secret(
        self, namespace: str, name: str | None, ops: Any, content_type: str
    ) -> tuple[int, dict[str, Any]]:
        if not name:
            return 405, status(405, "MethodNotAllowed", "PATCH needs a name")
        if content_type != "application/json-patch+json":
            return 415, status(415, "UnsupportedMediaType", f"unsupported {content_type!r}")
        found = self.objects.get(("secrets", namespace, name))
        if found is None:
            return 404, status(404, "NotFound", f'secrets "{name}" not found')
        try:
            patched = jsonpatch.apply_patch(found, ops)
        except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as exc:
            # kube-apiserver answers a failed `test` (or any patch error) 422 and writes nothing.
            return 422, status(422, "Invalid", f"the server rejected our request: {exc}")
        if patched.get("type", "Opaque") != found.get("type", "Opaque"):
            return 422, status(422, "Invalid", "type: Invalid value: field is immutable")
        if bad := self._check_body(patched, "Secret", name, namespace):
            return bad
        return 200, self._store("secrets", namespace, patched)

    def _mwc(self, method: str, name: str, body: Any) -> tuple[int, dict[str, Any]]:
        key = ("mutatingwebhookconfigurations", "", name)
        found = self.objects.get(key)
        if found is None:
            return 404, status(404, "NotFound", f'mutatingwebhookconfigurations "{name}" not found')
        if method == "GET":
            return 200, copy.deepcopy(found)
        if method == "PUT":
            if bad := self._check_body(body, "MutatingWebhookConfiguration", name, ""):
                return bad
            version = body["metadata"].get("resourceVersion")
            if version != found["metadata"]["resourceVersion"]:
                return 409, status(409, "Conflict", "the object has been modified")
            return 200, self._store("mutatingwebhookconfigurations", "", body)
        return 405, status(405, "MethodNotAllowed", f"{method} not allowed")
