"""`pollen webhook`: the mutating admission webhook's HTTPS server.

Routes (one function, `AdmissionWebhook.handle`): ``POST /mutate`` answers an
admission.k8s.io/v1 AdmissionReview; ``GET /healthz`` (alive), ``GET /readyz`` (serving) and
``GET /_pollen/status`` (the counters, to loopback clients).

What a review becomes is decided without I/O by `agent.kube.admission.review_decision`. When it
rewrites a pod, the P2P pull secrets it names (``acr-credential-S-p2p``, their content from
`agent.kube.pullsecrets`) are created or brought up to date through the Kubernetes API
*before* the answer goes out, so the kubelet never looks for a secret that is not there yet.
Each admission re-derives the copy from the current ``S`` (read from the API, never from the
review) and patches it when it differs: that is how the copy follows ``S`` (a changed
password reaches the copy with the next pod that uses it; running pods do not pull again).

A name already held by a secret Pollen did not make (without the ``app.kubernetes.io/
managed-by=pollen`` label and ``pollen.io/source-secret`` annotation every copy carries) is
never written: anyone who can reach the webhook can send it a review naming any namespace.
If a secret cannot be read or written in time, or is not ours, the pod is admitted unchanged
-- with its original images, which it can pull as before -- and the reason is logged and
counted in `statistics()`; the client gets one generic admission warning, which tells
nothing about the secrets it named. A ``dryRun`` review gets the same patch with no API call
at all (the webhook declares ``sideEffects: NoneOnDryRun``).
A malformed review gets HTTP 400 with the reason.

Each answer is counted by its outcome, each secret by what was done to it, in
`agent.kube.webhookmetrics` (served on the exporter port, or as ``/metrics`` here); the
pure cores only return what they decided. The serving certificate follows its files
(`agent.http.servingcert`): a renewed ``tls.cert``/``tls.key`` is served to the next connection
within ``tls.reloadInterval``, without a restart (docs/WEBHOOK.md).
"""

from __future__ import annotations

import logging
import ssl
from collections import Counter
from pathlib import Path
from typing import Any

import trio

from agent.core.config import Config
from agent.core.hostport import join_hostport
from agent.http.responses import Response, json_response
from agent.http.server import HttpServer, Request, ServerSettings, listener_port, open_listeners
from agent.http.servingcert import ServingCertificate, TLSListener, follow_files
from agent.http.shutdown import STOP_SIGNALS, drain, wait_for_stop
from agent.kube.admission import (
    AdmissionSettings,
    Decision,
    ReviewError,
    SecretPlan,
    allowed_response,
    decode_review,
    review_decision,
)
from agent.kube.api import SERVICE_ACCOUNT_DIR, KubeAPI, KubeError
from agent.kube.pullsecrets import DeriveError, copy_action, derive_secret
from agent.kube.webhookmetrics import WebhookMetrics
from agent.node.address import detect_node_ip

log = logging.getLogger(__name__)

# A real review is well under this: it carries one Pod (two for an ephemeral-container
# update), and a Pod is stored whole in one etcd value -- at most 1.5 MiB by etcd's default,
# typically a few KiB, its annotations at most 256 KiB together. Parsed, a review costs up to
# ~25 times its size (measured: 4 MiB of `[{},{},...]` raised the process's peak RSS by 105
# MiB; the Deployment's limit is 256 MiB). Over it: 413, and with failurePolicy Ignore the
# API server admits the pod unchanged -- it is never blocked.
MAX_REVIEW_BYTES = 1024 * 1024
SECRET_TIMEOUT = 5.0  # well inside the webhook's timeoutSeconds (10 in the manifests)
SECRET_FAILURE_WARNING = (
    "pollen: P2P not applied, the pod keeps its images: its P2P pull secrets could not be "
    "written (the webhook's log says why)"
)


# An outcome's name in `statistics()`, where it predates the metrics.
_STATUS_NAMES = {"malformed": "bad_requests", "secret_failure": "secret_failures"}


def _error(status: int, message: str) -> Response:
    return json_response(status, {"error": message})


class AdmissionWebhook:
    """The application behind the webhook port."""

    def __init__(
        self, settings: AdmissionSettings, api: KubeAPI, *, secret_timeout: float = SECRET_TIMEOUT
    ) -> None:
        self.settings = settings
        self.api = api
        self.secret_timeout = secret_timeout
        self.ready = False
        self.counts: Counter[str] = Counter()
        self.metrics = WebhookMetrics()
        self.metrics_route = False  # /metrics here too (the exporter has no port of its own)
        self._locks: dict[tuple[str, str], trio.Lock] = {}

    def statistics(self) -> dict[str, int]:
        return dict(self.counts)

    def status(self) -> dict[str, object]:
        """What `GET /_pollen/status` shows (loopback only, e.g. through kubectl port-forward):
        the counters -- rewritten, unchanged, dry_run, bad_requests, secret_failures,
        secrets_created, secrets_updated, secrets_foreign (a secret Pollen did not make holds
        a copy's name: left untouched, the pod admitted unchanged), secrets_failed."""
        return {"counts": self.statistics()}

    async def handle(self, request: Request) -> Response:
        path = request.target.split("?", 1)[0]
        if path == "/healthz":
            return json_response(200, {"status": "alive"})
        if path == "/readyz":
            if self.ready:
                return json_response(200, {"status": "ready"})
            return json_response(503, {"status": "not ready"})
        if path == "/_pollen/status":
            if not request.client_is_loopback:
                return _error(403, "status is answered to loopback clients only")
            return json_response(200, {"role": "webhook", "ready": self.ready, **self.status()})
        if path == "/metrics" and self.metrics_route:
            return self.metrics.response()
        if path != "/mutate":
            return _error(404, f"no route {path}")
        if request.method != "POST":
            return _error(405, "POST an AdmissionReview to /mutate")
        started = trio.current_time()
        try:
            decision = self.decide(request.body)
        except ReviewError as exc:
            self._admitted("malformed", started)
            log.info("conn %d: malformed AdmissionReview: %s", request.conn_id, exc)
            return _error(400, str(exc))
        outcome, answer = await self.admit(decision)
        self._admitted(outcome, started)
        return json_response(200, answer)

    def _admitted(self, outcome: str, started: float) -> None:
        """Count an answered review: in `statistics()` (by its historical name) and in the
        metrics."""
        self.counts[_STATUS_NAMES.get(outcome, outcome)] += 1
        self.metrics.admitted(outcome, trio.current_time() - started)

    def _secret_done(self, action: str) -> None:
        if action != "unchanged":
            self.counts[f"secrets_{action}"] += 1
        self.metrics.secret(action)

    def decide(self, body: bytes) -> Decision:
        """Parse and decide in one synchronous step; ReviewError when malformed.

        The parsed document is garbage as soon as this returns, before any await: a review
        can be a tree many times its size in memory (a 4 MiB array of empty objects is some
        100 MiB), and only one is ever alive at a time, since parsing never yields to another
        request. MAX_REVIEW_BYTES bounds that one.
        """
        review = decode_review(body)
        try:
            return review_decision(review, self.settings)
        except ReviewError as exc:
            raise ReviewError(f"malformed AdmissionReview: {exc}") from None

    async def admit(self, decision: Decision) -> tuple[str, dict[str, Any]]:
        """Write the secrets `decision` needs; the outcome (`webhookmetrics.
        ADMISSION_OUTCOMES`) and the AdmissionReview to answer with."""
        where = f"{decision.namespace}/{decision.pod}"
        if not decision.patch:
            log.info("review %s %s: unchanged: %s", decision.uid, where, decision.reason)
            return "unchanged", decision.response()
        if decision.dry_run:
            log.info("review %s %s: dry run: %s", decision.uid, where, decision.reason)
            return "dry_run", decision.response()
        failure = await self._write_secrets(decision)
        if failure is not None:
            log.warning(
                "review %s %s: admitted unchanged, pull secret not written: %s",
                decision.uid,
                where,
                failure,
            )
            # Whoever sent the review reads the warning: it must not tell whether a secret
            # exists or what type it has (a forged review could probe any namespace), so the
            # reason stays in the log above.
            return "secret_failure", allowed_response(decision.uid, SECRET_FAILURE_WARNING)
        log.info(
            "review %s %s: %s: %s",
            decision.uid,
            where,
            decision.reason,
            ", ".join(f"{a} -> {b}" for a, b in decision.rewritten),
        )
        return "rewritten", decision.response()

    async def _write_secrets(self, decision: Decision) -> str | None:
        """Create or update every planned secret, each counted by what was done to it; a
        reason on failure (the first secret that failed; the rest are not tried), None on
        success."""
        with trio.move_on_after(self.secret_timeout):
            for plan in decision.secrets:
                try:
                    action = await self.sync_secret(plan)
                except (KubeError, DeriveError) as exc:
                    self._secret_done("failed")
                    return f"{plan.namespace}/{plan.target}: {exc}"
                self._secret_done(action)
                if action == "foreign":
                    return f"{plan.namespace}/{plan.target} exists and is not Pollen's copy"
            return None
        self._secret_done("failed")  # the one in flight when the time ran out
        return f"the Kubernetes API did not answer within {self.secret_timeout:g}s"

    async def sync_secret(self, plan: SecretPlan) -> str:
        """Make `plan.target` the P2P copy of `plan.source`: 'created', 'updated', 'unchanged'
        or 'foreign' (a secret Pollen did not make holds the name; it is left untouched).
        The copy's content is always derived from the source as the API returns it, never
        from the review. Serialised per secret in this process; across replicas the API's
        AlreadyExists / Conflict answers and a failed patch test are retried once."""
        lock = self._locks.setdefault((plan.namespace, plan.target), trio.Lock())
        async with lock:
            for attempt in (1, 2):
                source = await self.api.get_secret(plan.namespace, plan.source)
                if source is None:
                    raise KubeError(404, "NotFound", f"pull secret {plan.source} does not exist")
                desired = derive_secret(source, plan, self.settings)
                existing = await self.api.get_secret(plan.namespace, plan.target)
                action = copy_action(existing, desired, plan.source)
                if action.kind == "foreign":
                    log.warning(
                        "secret %s/%s left untouched: %s",
                        plan.namespace,
                        plan.target,
                        action.reason,
                    )
                    return "foreign"
                if action.kind == "unchanged":
                    return "unchanged"
                try:
                    if action.kind == "create":
                        await self.api.create_secret(plan.namespace, desired)
                        outcome = "created"
                    else:
                        await self.api.patch_secret(plan.namespace, plan.target, action.ops)
                        outcome = "updated"
                except KubeError as exc:
                    # 409: another replica created it first; 422: a patch test failed (it
                    # changed since we read it). Read again and decide again.
                    if exc.status in (409, 422) and attempt == 1:
                        continue
                    raise
                log.info(
                    "secret %s/%s %s from %s", plan.namespace, plan.target, outcome, plan.source
                )
                return outcome
        raise AssertionError("unreachable")


def settings_from(config: Config, own_namespace: str) -> AdmissionSettings:
    return AdmissionSettings(
        registries=config.webhook_registries,
        endpoint_port=config.webhook_endpoint_port,
        own_namespace=own_namespace,
    )


async def serve(
    config: Config,
    webhook: AdmissionWebhook,
    *,
    certificate: ServingCertificate | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `webhook` over TLS on webhook.port until SIGTERM/SIGINT, then drain. With
    exporter.enable, its metrics on exporter.port (or on the webhook port, as /metrics, when
    ExporterConfig.standaloneExporterPort is false). `certificate`: tls.cert and tls.key,
    loaded here when not given."""
    if certificate is None:
        certificate = ServingCertificate(config.tls_cert, config.tls_key)
    tcp = await open_listeners(config.listen_address, config.webhook_port, None)
    listeners: list[trio.abc.Listener[Any]] = [TLSListener(t, certificate) for t in tcp]
    settings = ServerSettings(
        read_timeout=config.read_timeout,
        idle_timeout=config.idle_timeout,
        max_request_body=MAX_REVIEW_BYTES,
    )
    servers = [(HttpServer(webhook.handle, settings, name="webhook"), listeners)]
    port = listener_port(listeners)
    webhook.metrics.node = join_hostport(config.node_ip or detect_node_ip(), port)
    webhook.metrics.serving(certificate.info)
    webhook.metrics_route = config.exporter_enable and not config.exporter_standalone_port
    exporter: list[trio.abc.Listener[Any]] = []
    if config.exporter_enable and config.exporter_standalone_port:
        exporter = await open_listeners(config.listen_address, config.exporter_port, None)
        servers.append(
            (HttpServer(webhook.metrics.handle, ServerSettings(), name="exporter"), exporter)
        )
    # The receiver opens before the webhook says it is ready: from then on a SIGTERM drains
    # instead of killing the process mid-admission.
    with trio.open_signal_receiver(*STOP_SIGNALS) as signals:
        async with trio.open_nursery() as nursery:
            for server, bound in servers:
                await nursery.start(server.serve, bound)
            if config.tls_reload_interval > 0:
                nursery.start_soon(
                    follow_files,
                    certificate,
                    config.tls_reload_interval,
                    lambda result, cert: webhook.metrics.certificate_checked(result, cert.info),
                )
            webhook.ready = True
            log.info(
                "webhook serving on port %d (https, %s), registries %s, endpoint port %d%s",
                port,
                certificate.info.describe(),
                ", ".join(config.webhook_registries),
                config.webhook_endpoint_port,
                f", metrics on port {listener_port(exporter)}" if exporter else "",
            )
            task_status.started(port)
            await wait_for_stop(signals)
            webhook.ready = False
            await drain([server for server, _ in servers], config.shutdown_grace)
            nursery.cancel_scope.cancel()


def run(config: Config, *, account_dir: Path | None = None) -> int:
    """`pollen webhook`: needs tls.cert/tls.key and a service account (in a pod);
    `account_dir` replaces the service account mount (tests)."""
    if not config.tls_cert:
        log.error(
            "the webhook needs TLS: set POLLEN_TLS_CERT and POLLEN_TLS_KEY "
            "(`pollen webhook certs` makes them)"
        )
        return 2
    try:
        certificate = ServingCertificate(config.tls_cert, config.tls_key)
    except (OSError, ValueError, ssl.SSLError) as exc:
        log.error("cannot serve %s with key %s: %s", config.tls_cert, config.tls_key, exc)
        return 2
    account = account_dir or SERVICE_ACCOUNT_DIR
    try:
        api = KubeAPI.in_cluster(account_dir=account, timeout=SECRET_TIMEOUT)
    except KubeError as exc:
        log.error("cannot reach the Kubernetes API: %s", exc.message)
        return 2
    webhook = AdmissionWebhook(settings_from(config, KubeAPI.in_cluster_namespace(account)), api)

    async def main() -> None:
        try:
            await serve(config, webhook, certificate=certificate)
        finally:
            with trio.CancelScope(shield=True):
                await api.aclose()

    trio.run(main)
    return 0
