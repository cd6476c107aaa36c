"""`pollen status` as text: the JSON of ``/_pollen/status`` in, lines for a terminal out; pure.

Every field is optional (an older agent, a root, an agent with no roots), so each part is
shown only when the status has it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

BAR_WIDTH = 30
UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def human_bytes(n: float) -> str:
    value = float(n)
    for unit in UNITS:
        if abs(value) < 1024 or unit == UNITS[-1]:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def progress_bar(done: float, total: float | None, width: int = BAR_WIDTH) -> str:
    """``[#######-------]``; an unknown total shows an empty bar."""
    fraction = min(max(done / total, 0.0), 1.0) if total else 0.0
    filled = int(fraction * width)
    return "[" + "#" * filled + "-" * (width - filled) + "]"


def _sources(sources: Mapping[str, int]) -> str:
    parts = [f"{name} {human_bytes(n)}" for name, n in sources.items() if n]
    return "from " + ", ".join(parts) if parts else "from (nothing yet)"


def layer_line(layer: Mapping[str, Any]) -> str:
    size = layer.get("size") or 0
    done = layer.get("received") or 0
    seconds = layer.get("seconds") or 0.0
    rate = done / seconds if seconds else 0.0
    percent = f"{done / size:6.1%}" if size else "     ?"
    readers = layer.get("readers", 0)
    return (
        f"  {str(layer.get('digest', '?'))[:19]}  {progress_bar(done, size)} {percent}  "
        f"{human_bytes(done)} / {human_bytes(size) if size else '?'}  "
        f"{human_bytes(rate)}/s  {seconds:.1f}s  {layer.get('mode', '?')}  "
        f"{_sources(layer.get('sources') or {})}  "
        f"({readers} reader{'' if readers == 1 else 's'}, {layer.get('upstream', '?')})"
    )


def _engine(engine: Mapping[str, Any]) -> list[str]:
    details = [str(engine.get("name", "?"))]
    if "queue_depth" in engine:
        details.append(f"queue depth {engine['queue_depth']}")
    if engine.get("direct"):
        details.append("O_DIRECT")
    if "errors" in engine:
        details.append(f"{engine['errors']} errors")
    lines = ["I/O engine: " + ", ".join(details)]
    lines += [f"  note: {note}" for note in engine.get("notes") or ()]
    return lines


def _peers(peers: Sequence[Mapping[str, Any]]) -> list[str]:
    lines = [f"peers ({len(peers)}):"]
    for p in peers:
        lines.append(
            f"  {p.get('node', '?'):<24} {p.get('role', 'peer'):<5} {p.get('state', '?'):<8} "
            f"{p.get('chunks', 0)} chunks  {human_bytes(p.get('bytes', 0))}  "
            f"{p.get('failures', 0)} failures  seen {p.get('seen_seconds_ago', 0):.1f}s ago"
        )
    return lines


def render_status(status: Mapping[str, Any]) -> str:
    """The whole view, ending with a newline."""
    lines = [
        f"pollen {status.get('version', '?')} {status.get('mode', '?')} "
        f"{status.get('node', '?')}  {'ready' if status.get('ready') else 'NOT READY'}  "
        f"(proxy port {status.get('proxy_port', '?')})"
    ]
    cache = status.get("cache")
    if cache:
        used, capacity = cache.get("used", 0), cache.get("capacity", 0)
        share = f" ({used / capacity:.0%})" if capacity else ""
        lines.append(
            f"cache: {human_bytes(used)} of {human_bytes(capacity)}{share} "
            f"{progress_bar(used, capacity, 20)}  {cache.get('layers', 0)} layers, "
            f"{cache.get('pinned', 0)} in use, {cache.get('evictions', 0)} evictions, "
            f"{cache.get('corrupt_chunks', 0)} corrupt chunks, "
            f"{cache.get('write_errors', 0)} write errors"
        )
    if status.get("io_engine"):
        lines += _engine(status["io_engine"])
    downloads = status.get("downloads")
    if downloads:
        total = downloads.get("download_slots_total", -1)
        lines.append(
            f"downloads: {downloads.get('download_slots_used', 0)} of "
            f"{'unlimited' if total < 0 else total} slots in use, "
            f"{downloads.get('downloads_waiting', 0)} waiting"
        )
    layers = status.get("layers_in_flight") or []
    lines.append(f"layers in flight: {len(layers)}")
    lines += [layer_line(layer) for layer in layers]
    telemetry = status.get("telemetry") or {}
    swarm = status.get("swarm")
    if swarm:
        roots = swarm.get("roots") or []
        lines.append(f"roots ({len(roots)}):")
        lines += [f"  {r.get('root', '?'):<24} {r.get('state', '?')}" for r in roots]
        lines += _peers(telemetry.get("peers") or [])
        lines.append(
            f"swarm: {human_bytes(swarm.get('peer_bytes', 0))} from peers, "
            f"{swarm.get('origin_fallbacks', 0)} origin fallbacks{_causes(swarm)}, "
            f"{swarm.get('chunks_served', 0)} chunks served, "
            f"{swarm.get('refused', 0)} requests refused"
        )
    parent = (swarm or {}).get("parent")
    if parent:
        parents = parent.get("roots") or []
        lines.append(
            f"parent roots ({len(parents)}), {human_bytes(parent.get('peer_bytes', 0))} "
            "fetched through them:"
        )
        lines += [f"  {r.get('root', '?'):<24} {r.get('state', '?')}" for r in parents]
    tracker = (swarm or {}).get("tracker")
    if tracker:
        tracked = tracker.get("layers") or {}
        refetched = sum(layer.get("refetched", 0) for layer in tracked.values())
        lines.append(
            f"tracker: {len(tracked)} layers, {tracker.get('plans_answered', 0)} plans "
            f"answered, {refetched} lost chunks fetched again from the origin, "
            f"{len(tracker.get('handoffs') or {})} handed to the next root"
        )
    if telemetry:
        exporter = telemetry.get("exporter") or {}
        audit = telemetry.get("audit") or {}
        audit_text = "off"
        if audit.get("enabled"):
            audit_text = (
                f"{audit.get('path') or 'stdout'}, {audit.get('written', 0)} written, "
                f"{audit.get('dropped', 0)} dropped"
            )
        lines.append(f"metrics: {exporter.get('where', '?')}; audit log: {audit_text}")
    return "\n".join(lines) + "\n"


def _causes(swarm: dict) -> str:  # type: ignore[type-arg]
    """` (root_error 2, size 1)`: why the node left the swarm, when it did."""
    causes = swarm.get("origin_fallback_causes") or {}
    shown = ", ".join(f"{k} {v}" for k, v in sorted(causes.items()) if v)
    return f" ({shown})" if shown else ""
