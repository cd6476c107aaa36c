"""Proxy benchmark: a direct skopeo pull vs. cold and warm pulls through the agent, on loopback.

    .venv/bin/python bench/proxy.py [--layers 3] [--layer-mib 64] [--rounds 3]

One run builds an image of `--layers` layers of `--layer-mib` MiB (incompressible), pushes
it to a real docker-registry, starts a real agent, and for each round times
  direct: skopeo registry -> dir
  cold:   skopeo agent -> dir, with an empty cache (the agent fetches from the registry)
  warm:   skopeo agent -> dir again (served from the cache)
It prints per-round times, the median ratios cold/direct and warm/direct, MB/s, the agent's
CPU seconds per pull, and its peak RSS. Everything runs on 127.0.0.1 and is stopped by PID.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "integration"))

from harness import (  # noqa: E402
    AgentProcess,
    Registry,
    build_image,
    push_image,
    skopeo_copy_to_dir,
)

MiB = 1 << 20


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime + stime
    return ticks / 100.0


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def timed_pull(ref: str, dest: Path) -> float:
    shutil.rmtree(dest, ignore_errors=True)
    start = time.perf_counter()
    result = skopeo_copy_to_dir(ref, dest, check=True)
    elapsed = time.perf_counter() - start
    assert result.returncode == 0
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--layer-mib", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="pollen-bench-proxy-"))
    try:
        image = build_image(work / "image", tuple([args.layer_mib * MiB] * args.layers), seed=1)
        total_bytes = sum(layer.size for layer in image.layers)
        with Registry(work / "registry") as registry:
            push_image(image, registry, "bench/image", "v1")
            rows = []
            for round_no in range(1, args.rounds + 1):
                agent_dir = work / f"agent-{round_no}"
                with AgentProcess(agent_dir, upstreams=f"http://{registry.host}") as agent:
                    assert agent.proc is not None
                    pid = agent.proc.pid
                    direct = timed_pull(f"{registry.host}/bench/image:v1", work / "out-direct")
                    cpu0 = cpu_seconds(pid)
                    cold = timed_pull(f"{agent.host}/bench/image:v1", work / "out-cold")
                    cpu1 = cpu_seconds(pid)
                    warm = timed_pull(f"{agent.host}/bench/image:v1", work / "out-warm")
                    cpu2 = cpu_seconds(pid)
                    rss = peak_rss_mib(pid)
                rows.append((direct, cold, warm, cpu1 - cpu0, cpu2 - cpu1, rss))
                print(
                    f"round {round_no}: direct {direct:.2f}s  cold {cold:.2f}s  warm {warm:.2f}s  "
                    f"agent CPU cold {cpu1 - cpu0:.2f}s warm {cpu2 - cpu1:.2f}s  "
                    f"peak RSS {rss:.0f} MiB"
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def med(i: int) -> float:
        return statistics.median(r[i] for r in rows)

    direct, cold, warm = med(0), med(1), med(2)
    mb = total_bytes / 1e6
    print()
    print(
        f"image: {args.layers} x {args.layer_mib} MiB ({mb:.0f} MB), medians of {len(rows)} rounds"
    )
    print(f"direct  {direct:6.2f}s  {mb / direct:7.1f} MB/s  1.00x")
    print(
        f"cold    {cold:6.2f}s  {mb / cold:7.1f} MB/s  {cold / direct:.2f}x direct (goal <= 1.10)"
    )
    print(
        f"warm    {warm:6.2f}s  {mb / warm:7.1f} MB/s  {warm / direct:.2f}x direct (goal <= 1.00)"
    )
    gib = total_bytes / (1 << 30)
    print(
        f"agent CPU per pull: cold {med(3):.2f}s, warm {med(4):.2f}s; "
        f"peak RSS {max(r[5] for r in rows):.0f} MiB"
    )
    print(
        f"agent CPU per GiB delivered: cold {med(3) / gib:.2f}s (goal <= 1.5), "
        f"warm {med(4) / gib:.2f}s (goal <= 0.3)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
