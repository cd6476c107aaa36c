"""`pollen status` rendering: a status document in, terminal lines out."""

from __future__ import annotations

import re

from agent.observe.statusview import human_bytes, layer_line, progress_bar, render_status

MiB = 1 << 20

STATUS = {
    "version": "0.1.0",
    "mode": "agent",
    "node": "10.0.0.5:65002",
    "proxy_port": 65001,
    "ready": True,
    "io_engine": {
        "name": "pread",
        "queue_depth": 32,
        "direct": False,
        "errors": 0,
        "notes": ["io_uring: not permitted (seccomp); using pread"],
    },
    "cache": {
        "capacity": 4 << 30,
        "used": 1 << 30,
        "layers": 7,
        "pinned": 1,
        "evictions": 2,
        "corrupt_chunks": 0,
        "write_errors": 0,
    },
    "downloads": {"download_slots_used": 1, "download_slots_total": 128, "downloads_waiting": 0},
    "layers_in_flight": [
        {
            "digest": "sha256:" + "ab" * 32,
            "upstream": "registry.example.com",
            "size": 8 * MiB,
            "received": 4 * MiB,
            "mode": "swarm",
            "readers": 1,
            "seconds": 2.0,
            "sources": {"root": 3 * MiB, "peer": MiB},
        }
    ],
    "swarm": {
        "roots": [
            {"root": "10.0.0.2:65002", "state": "up"},
            {"root": "10.0.0.3:65002", "state": "benched"},
        ],
        "peer_bytes": 4 * MiB,
        "origin_fallbacks": 0,
        "chunks_served": 9,
        "refused": 0,
    },
    "telemetry": {
        "exporter": {"enabled": True, "where": "port 65003"},
        "peers": [
            {
                "node": "10.0.0.7:65002",
                "role": "peer",
                "state": "ok",
                "chunks": 4,
                "bytes": MiB,
                "failures": 0,
                "seen_seconds_ago": 0.4,
            }
        ],
        "audit": {
            "enabled": True,
            "path": "/var/log/pollen/audit.log",
            "written": 10,
            "dropped": 0,
        },
    },
}


def test_full_view() -> None:
    text = render_status(STATUS)
    assert text.endswith("\n")
    lines = text.splitlines()
    assert lines[0] == "pollen 0.1.0 agent 10.0.0.5:65002  ready  (proxy port 65001)"
    assert "cache: 1.0 GiB of 4.0 GiB (25%) [#####---------------]  7 layers" in text
    assert "I/O engine: pread, queue depth 32, 0 errors" in text
    assert "  note: io_uring: not permitted (seccomp); using pread" in text
    assert "downloads: 1 of 128 slots in use, 0 waiting" in text
    assert "layers in flight: 1" in text
    layer = next(ln for ln in lines if "sha256:abab" in ln)
    assert "[" + "#" * 15 + "-" * 15 + "]  50.0%" in layer
    assert "4.0 MiB / 8.0 MiB  2.0 MiB/s  2.0s  swarm  from root 3.0 MiB, peer 1.0 MiB" in layer
    assert "(1 reader, registry.example.com)" in layer
    assert re.search(r"10\.0\.0\.3:65002\s+benched", text)
    assert re.search(r"10\.0\.0\.7:65002\s+peer\s+ok\s+4 chunks  1\.0 MiB  0 failures", text)
    assert (
        "metrics: port 65003; audit log: /var/log/pollen/audit.log, 10 written, 0 dropped" in text
    )


def test_a_root_says_how_many_lost_chunks_it_fetched_again() -> None:
    tracker = {
        "layers": {"sha256:ab": {"refetched": 2}, "sha256:cd": {"state": "starting"}},
        "plans_answered": 40,
        "handoffs": {"sha256:" + "c" * 64: "10.0.0.2:65002"},
    }
    text = render_status({**STATUS, "swarm": {**STATUS["swarm"], "tracker": tracker}})
    assert "tracker: 2 layers, 40 plans answered, 2 lost chunks fetched again" in text
    assert "from the origin, 1 handed to the next root" in text


def test_minimal_status_still_renders() -> None:
    text = render_status({"version": "0.1.0"})
    assert "NOT READY" in text and "layers in flight: 0" in text


def test_layer_of_unknown_size() -> None:
    line = layer_line({"digest": "sha256:00", "size": None, "received": 0, "seconds": 0.0})
    assert "[" + "-" * 30 + "]      ?" in line and "from (nothing yet)" in line


def test_helpers() -> None:
    assert human_bytes(512) == "512 B"
    assert human_bytes(1536) == "1.5 KiB"
    assert human_bytes(3 << 40) == "3.0 TiB"
    assert progress_bar(5, 10, 4) == "[##--]"
    assert progress_bar(20, 10, 4) == "[####]"
