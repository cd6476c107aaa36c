"""The admission webhook's Prometheus metrics: what it decided, what it wrote, how long it took,
and which certificate it serves.

The webhook (agent/kube/webhook.py) counts where its I/O happens -- a review answered, a
secret written or not, a certificate reloaded -- and never inside the pure cores
(`agent.kube.admission`, `agent.kube.pullsecrets`), which only return what they decided.
Every series is made up front, at 0, so a rate over a quiet webhook is 0 rather than absent,
and carries ``node="<nodeIP>:<webhook port>"`` (the agents' ``node`` is ``<nodeIP>:<p2pPort>``;
the webhook opens no P2P port, so its own serving port tells replicas on one address apart).
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric

from agent import __version__
from agent.http.responses import Response
from agent.http.server import Request
from agent.http.servingcert import CertificateInfo
from agent.observe.exposition import NodeLabelled, exporter_answer, exposition, metrics_response

# What became of a review (the `outcome` label): `rewritten` (patched; its secrets written),
# `unchanged` (nothing to do: not eligible, opted out, already rewritten, ...), `dry_run`
# (patched, nothing written), `secret_failure` (eligible, but a secret could not be written:
# admitted unchanged, with a warning), `malformed` (HTTP 400).
ADMISSION_OUTCOMES = ("rewritten", "unchanged", "dry_run", "secret_failure", "malformed")
# What became of one P2P pull secret copy (the `action` label): `created`, `updated`,
# `unchanged` (already up to date), `foreign` (a secret Pollen did not make holds the name:
# left alone), `failed` (the API refused, did not answer in time, or the source is unusable).
SECRET_ACTIONS = ("created", "updated", "unchanged", "foreign", "failed")
RELOAD_RESULTS = ("reloaded", "failed")
# Well inside the webhook's timeoutSeconds (10 in the manifests); a review that writes no
# secret takes about a millisecond.
ADMISSION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class WebhookMetrics:
    """The webhook's registry; `node` is set once the serving port is bound."""

    def __init__(self, node: str = "") -> None:
        self._labelled = NodeLabelled(node)
        self.registry = CollectorRegistry()
        self.registry.register(self._labelled)
        r = self._labelled.registry
        admissions = Counter(
            "pollen_webhook_admissions",
            "AdmissionReviews answered, by outcome: rewritten, unchanged, dry_run, "
            "secret_failure (admitted unchanged: a P2P pull secret could not be written), "
            "malformed (HTTP 400)",
            ["outcome"],
            registry=r,
        )
        self._admissions = {o: admissions.labels(o) for o in ADMISSION_OUTCOMES}
        secrets = Counter(
            "pollen_webhook_secrets",
            "P2P pull secret copies the webhook brought up to date, by action: created, "
            "updated, unchanged, foreign (the name is held by a secret Pollen did not make: "
            "left alone), failed",
            ["action"],
            registry=r,
        )
        self._secrets = {a: secrets.labels(a) for a in SECRET_ACTIONS}
        self._seconds = Histogram(
            "pollen_webhook_admission_seconds",
            "Time from a review's body received to its answer ready, secrets written included",
            buckets=ADMISSION_BUCKETS,
            registry=r,
        )
        reloads = Counter(
            "pollen_webhook_certificate_reloads",
            "Renewed serving certificates taken from tls.cert/tls.key without a restart "
            "(reloaded), or refused (failed: unreadable, or a key that does not match; the "
            "previous one goes on serving)",
            ["result"],
            registry=r,
        )
        self._reloads = {result: reloads.labels(result) for result in RELOAD_RESULTS}
        self._expiry = Gauge(
            "pollen_webhook_certificate_expiry_timestamp_seconds",
            "When the certificate the webhook serves expires (Unix time)",
            registry=r,
        )
        r.register(_Info(self._labelled))

    @property
    def node(self) -> str:
        return self._labelled.node

    @node.setter
    def node(self, value: str) -> None:
        self._labelled.node = value

    def admitted(self, outcome: str, seconds: float) -> None:
        self._admissions[outcome].inc()
        self._seconds.observe(seconds)

    def secret(self, action: str) -> None:
        self._secrets[action].inc()

    def serving(self, info: CertificateInfo) -> None:
        """The certificate now served (at start, and after each reload)."""
        self._expiry.set(info.not_after.astimezone(datetime.UTC).timestamp())

    def certificate_checked(self, result: str, info: CertificateInfo) -> None:
        self._reloads[result].inc()
        self.serving(info)

    def exposition(self) -> tuple[bytes, bytes]:
        return exposition(self.registry)

    def response(self) -> Response:
        """``/metrics`` (on the webhook port when the exporter has no port of its own)."""
        return metrics_response(self.registry)

    async def handle(self, request: Request) -> Response:
        """The exporter port's application."""
        return exporter_answer(request, self.registry)


class _Info:
    """``pollen_info`` as the agents export it, with mode ``webhook`` and no I/O engine."""

    def __init__(self, labelled: NodeLabelled) -> None:
        self._labelled = labelled

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        info = GaugeMetricFamily(
            "pollen_info",
            "version, role and I/O engine",
            labels=["version", "mode", "node", "io_engine"],
        )
        info.add_metric([__version__, "webhook", self._labelled.node, ""], 1.0)
        yield info
