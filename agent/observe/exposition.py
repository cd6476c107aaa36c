"""What every Pollen process's ``/metrics`` shares: the ``node`` label on every ``pollen_*``
series, the text exposition and the small exporter application that serves it.

Why a wrapper rather than a ``node`` label on each metric: a series without ``node`` cannot be
joined with the original's ``DADIP2P_*`` gauges of the same process (``... * on (node)
group_left (mode) DADIP2P_Alive``), and Prometheus's ``instance`` is the scrape address, which
is not the node's name (a pod IP, a port-forward). `NodeLabelled` puts the label on at scrape
time on every sample of the collectors registered under it, so no metric can be defined
without it and the data path updates its counters without naming the node each time. A family
that already carries ``node`` (``pollen_info``) keeps its own.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric

from agent.http.responses import Response, bytes_response, plain_error
from agent.http.server import Request

# The exposition format every Prometheus understands (prometheus-client writes it).
CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"
NODE_LABEL = "node"


def with_label(family: Metric, name: str, value: str) -> Metric:
    """`family` with label `name`=`value` on each sample that does not have it yet."""
    out = Metric(family.name, family.documentation, family.type, family.unit)
    out.samples = [
        s if name in s.labels else s._replace(labels={**s.labels, name: value})
        for s in family.samples
    ]
    return out


class NodeLabelled:
    """A collector: everything registered in its `registry`, with ``node`` on every sample.

    `node` may be set after the metrics are made (the webhook learns its port once bound);
    it is read at each scrape."""

    def __init__(self, node: str = "") -> None:
        self.node = node
        self.registry = CollectorRegistry()

    def describe(self) -> list[Metric]:
        return []  # unchecked: the names are checked by the inner registry

    def collect(self) -> Iterator[Metric]:
        for family in self.registry.collect():
            yield with_label(family, NODE_LABEL, self.node)


def exposition(registry: CollectorRegistry) -> tuple[bytes, bytes]:
    """(content type, body) of the Prometheus text exposition."""
    return CONTENT_TYPE, generate_latest(registry)


def metrics_response(registry: CollectorRegistry) -> Response:
    content_type, body = exposition(registry)
    return bytes_response(200, body, content_type)


def exporter_answer(request: Request, registry: CollectorRegistry) -> Response:
    """The exporter port's application: ``/metrics`` (and ``/``), ``/healthz``, nothing else."""
    path = request.target.partition("?")[0]
    if request.method not in ("GET", "HEAD"):
        return plain_error(405, "GET /metrics")
    if path in ("/metrics", "/"):
        return metrics_response(registry)
    if path == "/healthz":
        return plain_error(200, "alive")
    return plain_error(404, "metrics are at /metrics")
