"""The Grafana dashboard in deploy/grafana only queries metrics Pollen exports: the agents'
and roots', and in its webhook row the admission webhook's."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from agent.kube.webhookmetrics import WebhookMetrics
from agent.observe.metrics import Telemetry

DASHBOARD = Path(__file__).resolve().parents[1] / "deploy" / "grafana" / "pollen-dashboard.json"

# PromQL words that look like identifiers but are not metric names.
PROMQL_WORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or"}
    | {"unless", "offset", "inf", "nan"}
)


def sample_names(body: bytes) -> set[str]:
    return {
        sample.name
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


def exported_names() -> set[str]:
    """Every sample name an agent's exposition holds (histogram _bucket/_sum/_count too)."""
    telemetry = Telemetry(node="n:1", mode="agent", labels=(("zone", "z"),))
    return sample_names(telemetry.exposition()[1])


def webhook_names() -> set[str]:
    """Every sample name the webhook's exposition holds."""
    return sample_names(WebhookMetrics(node="n:8443").exposition()[1])


def rows(dashboard: dict) -> dict[str, list[dict]]:
    """Panels by the row above them."""
    out: dict[str, list[dict]] = {}
    current = ""
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            current = panel["title"]
        out.setdefault(current, []).append(panel)
    return out


def queries(dashboard: dict) -> list[str]:
    out = []
    for panel in dashboard["panels"]:
        out += [target["expr"] for target in panel.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict):
            out.append(query["query"])
    return out


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression (Grafana's label_values(...) included)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range selectors
    expr = re.sub(r"\b(?:by|without|on|ignoring)\s*\([^)]*\)", "", expr)  # grouping labels
    expr = re.sub(r"label_values\(([^,()]+),[^)]*\)", r"\1", expr)  # (metric, label)
    expr = re.sub(r"\b\d+(?:\.\d+)?[a-z]*\b", "", expr)  # numbers and durations
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", expr):
        rest = expr[m.end() :].lstrip()
        if rest.startswith("("):
            continue  # a function or aggregation
        if m.group() in PROMQL_WORDS or m.group().startswith("$"):
            continue
        if expr[: m.start()].endswith("$"):
            continue  # a Grafana variable such as $__rate_interval
        names.add(m.group())
    return names


def test_the_name_extractor() -> None:
    expr = 'histogram_quantile(0.95, sum by (le) (rate(x_bucket{node=~"$n"}[$__rate_interval])))'
    assert metric_names(expr) == {"x_bucket"}
    assert metric_names('sum(a{type="used"}) / sum(b) and on (x) c offset 5m') == {"a", "b", "c"}
    assert metric_names('label_values(DADIP2P_Alive{mode=~"$mode"}, node)') == {"DADIP2P_Alive"}


def test_dashboard_queries_only_exported_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    exported = exported_names()
    used: set[str] = set()
    webhook_row = {"panels": rows(dashboard).pop(WEBHOOK_ROW), "templating": {"list": []}}
    webhook_queries = set(queries(webhook_row))
    for expr in (q for q in queries(dashboard) if q not in webhook_queries):
        names = metric_names(expr)
        assert names, f"no metric in {expr!r}"
        missing = names - exported
        assert not missing, f"{expr!r} uses {sorted(missing)}, which the agent does not export"
        used |= names
    # It is built on the original's gauges and on the idiomatic metrics alike.
    original = {n for n in exported if n.startswith("DADIP2P_")}
    assert original <= used, sorted(original - used)
    assert {
        "pollen_layer_bytes_total",
        "pollen_origin_fallbacks_total",
        "pollen_integrity_rejected_total",
        "pollen_auth_checks_total",
        "pollen_cache_evictions_total",
        "pollen_chunk_seconds_bucket",
    } <= used


def test_dashboard_is_importable_grafana_json() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 30
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, panel["title"]
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${DS_PROMETHEUS}"


WEBHOOK_ROW = "Admission webhook"


def test_the_webhook_row_queries_what_the_webhook_exports() -> None:
    """Issue 14, item 3: the dashboard showed nothing of the webhook. Its row queries only
    series `pollen webhook` exports -- every one of its own families -- and none of the
    agents'."""
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    panels = rows(dashboard)[WEBHOOK_ROW]
    assert panels[0]["type"] == "row" and len(panels) > 1
    exported = webhook_names()
    used: set[str] = set()
    for expr in queries({"panels": panels, "templating": {"list": []}}):
        names = metric_names(expr)
        assert names, f"no metric in {expr!r}"
        assert not names - exported, f"{expr!r} uses {sorted(names - exported)}"
        used |= names
    shown = {re.sub(r"_(total|bucket|sum|count)$", "", n) for n in used}
    families = {f.name for f in WebhookMetrics().registry.collect()}
    own = {name for name in families if name.startswith("pollen_webhook_")}
    assert len(own) == 5 and own <= shown, sorted(own - shown)
    assert not used & exported_names(), "an agents' series in the webhook row"
