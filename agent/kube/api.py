"""A small Kubernetes REST client: the few calls the webhook and `pollen webhook certs` make.

It speaks JSON over our own HTTP client (agent/http/client.py) to the API server, as the pod's
service account: the token and CA from the standard mount, the address from
KUBERNETES_SERVICE_HOST / KUBERNETES_SERVICE_PORT (which Kubernetes always sets in a pod,
whatever `enableServiceLinks` says). The token is re-read for every call because bound
service account tokens are rotated on disk.

Calls: get / create / JSON-patch a Secret (no PUT: the webhook's role has no `update` on
Secrets), get / replace a MutatingWebhookConfiguration.
Failures raise `KubeError` with the HTTP status (0 when the API server could not be reached)
and the Status object's reason and message.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from agent.core.hostport import join_hostport
from agent.http.client import HttpClient, HttpClientError
from agent.http.tls import make_client_ssl_context

log = logging.getLogger(__name__)

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
MAX_RESPONSE = 4 * 1024 * 1024
WEBHOOK_CONFIGURATIONS = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"


class KubeError(Exception):
    """An API call failed: `status` is the HTTP status (0: no answer), `reason` the Status
    reason (NotFound, AlreadyExists, Conflict, Forbidden, ...)."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


def _segment(name: str) -> str:
    return quote(name, safe="")


class KubeAPI:
    """JSON calls to one API server with a bearer token."""

    def __init__(self, client: HttpClient, base_url: str, token: Callable[[], str]) -> None:
        self._client = client
        self._base = base_url.rstrip("/")
        self._token = token

    @classmethod
    def in_cluster(
        cls,
        *,
        environ: Mapping[str, str] | None = None,
        account_dir: Path = SERVICE_ACCOUNT_DIR,
        timeout: float = 10.0,
    ) -> KubeAPI:
        """The API server as seen from a pod; KubeError(0, ...) when not in a cluster."""
        env = os.environ if environ is None else environ
        host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT")
        token_file, ca_file = account_dir / "token", account_dir / "ca.crt"
        if not host or not port or not token_file.is_file():
            raise KubeError(
                0,
                "NotInCluster",
                "KUBERNETES_SERVICE_HOST/PORT or the service account token are missing "
                f"({token_file}); run inside a pod with a service account",
            )
        base_url = f"https://{join_hostport(host, port)}"
        context = make_client_ssl_context(str(ca_file) if ca_file.is_file() else None)
        client = HttpClient(context, timeout=timeout)
        return cls(client, base_url, lambda: token_file.read_text().strip())

    @staticmethod
    def in_cluster_namespace(account_dir: Path = SERVICE_ACCOUNT_DIR) -> str:
        """The pod's own namespace (the service account mount's `namespace` file), or ""."""
        try:
            return (account_dir / "namespace").read_text().strip()
        except OSError:
            return ""

    async def aclose(self) -> None:
        await self._client.aclose()

    async def call(
        self,
        method: str,
        path: str,
        body: object = None,
        *,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        """One JSON request; the decoded JSON answer, or KubeError."""
        headers = [
            (b"authorization", f"Bearer {self._token()}".encode()),
            (b"accept", b"application/json"),
        ]
        payload = b""
        if body is not None:
            payload = json.dumps(body).encode()
            headers.append((b"content-type", content_type.encode()))
        url = self._base + path
        try:
            async with self._client.request(method, url, headers, body=payload) as response:
                raw = await response.read_all(MAX_RESPONSE)
                status = response.status
        except HttpClientError as exc:
            raise KubeError(0, "Unreachable", str(exc)) from exc
        try:
            answer = json.loads(raw) if raw else {}
        except ValueError:
            answer = {}
        if not isinstance(answer, dict):
            answer = {}
        if not 200 <= status < 300:
            raise KubeError(
                status,
                str(answer.get("reason") or "Error"),
                str(answer.get("message") or raw[:200].decode("utf-8", "replace")),
            )
        log.debug("kube %s %s -> %d", method, path, status)
        return answer

    # Secrets ------------------------------------------------------------------------------

    def _secrets(self, namespace: str) -> str:
        return f"/api/v1/namespaces/{_segment(namespace)}/secrets"

    async def get_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The Secret, or None when it does not exist."""
        try:
            return await self.call("GET", f"{self._secrets(namespace)}/{_segment(name)}")
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise

    async def create_secret(self, namespace: str, secret: Mapping[str, Any]) -> dict[str, Any]:
        return await self.call("POST", self._secrets(namespace), secret)

    async def patch_secret(
        self, namespace: str, name: str, ops: Sequence[Mapping[str, Any]]
    ) -> dict[str, Any]:
        """A JSON patch (RFC 6902): its ``test`` operations are checked by the API server
        against the stored object, atomically with the write (422 when one fails)."""
        path = f"{self._secrets(namespace)}/{_segment(name)}"
        return await self.call("PATCH", path, list(ops), content_type="application/json-patch+json")

    # MutatingWebhookConfigurations ----------------------------------------------------------

    async def get_webhook_configuration(self, name: str) -> dict[str, Any]:
        return await self.call("GET", f"{WEBHOOK_CONFIGURATIONS}/{_segment(name)}")

    async def replace_webhook_configuration(
        self, name: str, body: Mapping[str, Any]
    ) -> dict[str, Any]:
        return await self.call("PUT", f"{WEBHOOK_CONFIGURATIONS}/{_segment(name)}", body)
