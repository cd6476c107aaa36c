"""The webhook's routes (agent/kube/webhook.py `AdmissionWebhook.handle`), without a network.

Only answers that need no Kubernetes API call are made here (health, readiness, status, bad
requests, dry runs, pods left alone); secrets written through the API are
tests/integration/test_webhook.py's.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent.http.responses import JSON, Response
from agent.http.server import Request
from agent.kube.admission import AdmissionSettings
from agent.kube.webhook import AdmissionWebhook

ACR = "test-registry-vpc.cn-hangzhou.cr.aliyuncs.com"
SETTINGS = AdmissionSettings(registries=("*.cr.aliyuncs.com",), endpoint_port=65001)


class NoAPI:
    """A Kubernetes API that must not be called."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the API was called: {name}")


def webhook() -> AdmissionWebhook:
    return AdmissionWebhook(SETTINGS, NoAPI())  # type: ignore[arg-type]


def request(
    target: str, body: bytes = b"", *, method: str = "GET", client: str = "127.0.0.1"
) -> Request:
    return Request(
        method=method,
        target=target,
        headers=[],
        client=(client, 4000),
        conn_id=1,
        tls=True,
        body=body,
    )


def document(response: Response) -> Any:
    assert (b"content-type", JSON) in response.headers
    assert isinstance(response.body, bytes)
    assert (b"content-length", str(len(response.body)).encode()) in response.headers
    return json.loads(response.body)


def review(image: str, *, dry_run: bool) -> bytes:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web", "namespace": "team"},
        "spec": {"containers": [{"name": "c0", "image": image}]},
    }
    return json.dumps(
        {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "u-1",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": "team",
                "operation": "CREATE",
                "object": pod,
                "dryRun": dry_run,
            },
        }
    ).encode()


async def test_health_and_readiness() -> None:
    hook = webhook()
    alive = await hook.handle(request("/healthz"))
    assert (alive.status, document(alive)) == (200, {"status": "alive"})
    not_yet = await hook.handle(request("/readyz"))
    assert (not_yet.status, document(not_yet)) == (503, {"status": "not ready"})
    hook.ready = True
    ready = await hook.handle(request("/readyz"))
    assert (ready.status, document(ready)) == (200, {"status": "ready"})


async def test_status_is_for_loopback_clients_only() -> None:
    hook = webhook()
    hook.counts["rewritten"] = 3
    mine = await hook.handle(request("/_pollen/status"))
    assert document(mine) == {"role": "webhook", "ready": False, "counts": {"rewritten": 3}}
    theirs = await hook.handle(request("/_pollen/status", client="10.0.0.9"))
    assert theirs.status == 403
    assert "loopback" in document(theirs)["error"]


@pytest.mark.parametrize(
    ("method", "target", "body", "status"),
    [
        ("GET", "/nowhere", b"", 404),
        ("GET", "/mutate", b"", 405),
        ("POST", "/mutate", b"{not json", 400),
        ("POST", "/mutate", b'{"kind": "AdmissionReview"}', 400),
        ("POST", "/mutate", b"[" * 200_000 + b"]" * 200_000, 400),  # was a 500 (RecursionError)
    ],
)
async def test_bad_requests_get_a_json_error(
    method: str, target: str, body: bytes, status: int
) -> None:
    hook = webhook()
    response = await hook.handle(request(target, body, method=method))
    assert response.status == status
    assert isinstance(document(response)["error"], str)
    assert hook.counts["bad_requests"] == (1 if status == 400 else 0)


async def test_a_dry_run_gets_the_patch_and_writes_nothing() -> None:
    hook = webhook()
    response = await hook.handle(
        request("/mutate", review(f"{ACR}/a/b:1", dry_run=True), method="POST")
    )
    answer = document(response)["response"]
    assert (response.status, answer["uid"], answer["allowed"]) == (200, "u-1", True)
    patch = json.loads(base64.b64decode(answer["patch"]))
    assert (
        patch[0]["value"] == "test-registry-vpc.distributed.cn-hangzhou.cr.aliyuncs.com:65001/a/b:1"
    )
    assert hook.statistics() == {"dry_run": 1}


async def test_a_pod_from_another_registry_is_admitted_unchanged() -> None:
    hook = webhook()
    response = await hook.handle(
        request("/mutate", review("quay.io/a/b:1", dry_run=False), method="POST")
    )
    answer = document(response)["response"]
    assert "patch" not in answer and answer["allowed"] is True
    assert hook.statistics() == {"unchanged": 1}


def scrape(hook: AdmissionWebhook) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """The webhook's exposition, read with prometheus-client's parser (as Prometheus would)."""
    content_type, body = hook.metrics.exposition()
    assert content_type.startswith(b"text/plain; version=0.0.4")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


async def test_answers_are_counted_by_outcome_with_the_node_label() -> None:
    hook = webhook()
    hook.metrics.node = "10.0.0.7:8443"
    node = {"node": "10.0.0.7:8443"}
    before = scrape(hook)
    for outcome in ("rewritten", "unchanged", "dry_run", "secret_failure", "malformed"):
        assert (
            before[
                ("pollen_webhook_admissions_total", frozenset({**node, "outcome": outcome}.items()))
            ]
            == 0
        )
    for body in (
        review(f"{ACR}/a/b:1", dry_run=True),
        review("quay.io/a/b:1", dry_run=False),
        review("quay.io/a/b:2", dry_run=False),
        b"{not json",
    ):
        await hook.handle(request("/mutate", body, method="POST"))
    after = scrape(hook)

    def admissions(outcome: str) -> float:
        return after[
            ("pollen_webhook_admissions_total", frozenset({**node, "outcome": outcome}.items()))
        ]

    assert (admissions("dry_run"), admissions("unchanged"), admissions("malformed")) == (1, 2, 1)
    assert admissions("rewritten") == admissions("secret_failure") == 0
    assert after[("pollen_webhook_admission_seconds_count", frozenset(node.items()))] == 4
    # No secret was written for any of them: every action still at 0.
    secrets = {k: v for k, v in after.items() if k[0] == "pollen_webhook_secrets_total"}
    assert len(secrets) == 5 and set(secrets.values()) == {0}
    # Every series carries the node.
    assert all(dict(labels).get("node") == node["node"] for _, labels in after)
    # `statistics()` (GET /_pollen/status) keeps its historical names.
    assert hook.statistics() == {"dry_run": 1, "unchanged": 2, "bad_requests": 1}


async def test_metrics_on_the_webhook_port_only_when_the_exporter_has_none() -> None:
    hook = webhook()
    assert (await hook.handle(request("/metrics"))).status == 404
    hook.metrics_route = True
    response = await hook.handle(request("/metrics"))
    assert response.status == 200
    assert isinstance(response.body, bytes) and b"pollen_webhook_admissions_total{" in response.body
