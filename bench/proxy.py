"""Proxy benchmark: a direct skopeo pull vs. cold and warm pulls through the agent, on loopback.

    .venv/bin/python bench/proxy.py [--layers 3] [--layer-mib 64] [--rounds 3] [--profile DIR]

One run builds an image of `--layers` layers of `--layer-mib` MiB (incompressible), pushes
it to a real docker-registry, starts a real agent, and for each round times
  direct: skopeo registry -> dir
  cold:   skopeo agent -> dir, with an empty cache (the agent fetches from the registry)
  warm:   skopeo agent -> dir again (served from the cache)
Each round runs once per cache mode (the default page cache, and cache.aioEnable=1: O_DIRECT).
It prints per-round times, the median ratios cold/direct and warm/direct, MB/s, the agent's
CPU seconds per GiB (user and system), and its peak RSS; `--profile DIR` samples the agent with
py-spy during the last round's cold and warm pulls and prints their top frames. Everything
runs on 127.0.0.1 and is stopped by PID.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "integration"))

import profiling  # noqa: E402
from harness import (  # noqa: E402
    AgentProcess,
    Registry,
    build_image,
    push_image,
    skopeo_copy_to_dir,
)

MiB = 1 << 20
# The two cache modes (cache.aioEnable): through the page cache (the default), and O_DIRECT with
# the best kernel engine. In a VM, page-cache pages the guest touches for the first time cost
# the kernel several times what recycled ones do; O_DIRECT writes allocate none.
MODES: dict[str, dict[str, str]] = {
    "page-cache": {},
    "o_direct": {"POLLEN_CACHE_AIO_ENABLE": "1"},
}


def cpu_seconds(pid: int) -> tuple[float, float]:
    """The process's (user, system) CPU seconds so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / 100.0, int(fields[12]) / 100.0


def page_cache_writes(where: Path, mib: int = 128) -> tuple[float, float]:
    """CPU seconds per GiB written with pwrite(2) in 4 MiB pieces into `where`'s file system,
    as the page-cache mode's cache writes go: into new page-cache pages, then over the same
    pages again. The difference is the kernel allocating and first touching each page, which
    a cold pull pays for every byte it caches. In a VM that hands free memory back to its host
    (virtio-balloon free page reporting, as here) a page touched for the first time since then
    costs a host fault too, several times the copy."""
    piece = os.urandom(4 * MiB)
    path = where / "page-cache-probe"
    fd = os.open(path, os.O_CREAT | os.O_TRUNC | os.O_WRONLY, 0o600)
    costs = []
    try:
        for _ in range(2):
            before = sum(cpu_seconds_self())
            for i in range(mib // 4):
                os.pwrite(fd, piece, i * len(piece))
            costs.append((sum(cpu_seconds_self()) - before) / (mib / 1024))
    finally:
        os.close(fd)
        path.unlink()
    return costs[0], costs[1]


def cpu_seconds_self() -> tuple[float, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


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
    parser.add_argument(
        "--profile", type=Path, help="py-spy the agent in the last round (raw stacks here)"
    )
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="pollen-bench-proxy-"))
    rows: dict[str, list[tuple[float, ...]]] = {mode: [] for mode in MODES}
    try:
        image = build_image(work / "image", tuple([args.layer_mib * MiB] * args.layers), seed=1)
        total_bytes = sum(layer.size for layer in image.layers)
        new_pages, same_pages = page_cache_writes(work)
        with Registry(work / "registry") as registry:
            push_image(image, registry, "bench/image", "v1")
            for round_no in range(1, args.rounds + 1):
                for mode, env in MODES.items():
                    profile = (
                        args.profile / mode if args.profile and round_no == args.rounds else None
                    )
                    row = one_round(work / f"agent-{round_no}-{mode}", registry, env, profile)
                    rows[mode].append(row)
                    direct, cold, warm, cold_cpu, warm_cpu, rss = row
                    print(
                        f"round {round_no} {mode:>10}: direct {direct:.2f}s  cold {cold:.2f}s  "
                        f"warm {warm:.2f}s  agent CPU cold {sum(cold_cpu):.2f}s "
                        f"(user {cold_cpu[0]:.2f}) warm {sum(warm_cpu):.2f}s "
                        f"(user {warm_cpu[0]:.2f})  peak RSS {rss:.0f} MiB"
                    )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    mb = total_bytes / 1e6
    gib = total_bytes / (1 << 30)
    print()
    print(
        f"image: {args.layers} x {args.layer_mib} MiB ({mb:.0f} MB), "
        f"medians of {args.rounds} rounds"
    )
    for mode, mode_rows in rows.items():
        summarize(mode, mode_rows, mb, gib)
    print(
        f"this machine's page cache: writing a GiB into new pages costs {new_pages:.2f} CPU-s, "
        f"over the same pages {same_pages:.2f}; the page-cache mode's cold pull pays the first "
        "for every byte it caches (O_DIRECT allocates no pages)"
    )
    return 0


def one_round(
    agent_dir: Path, registry: Registry, env: dict[str, str], profile: Path | None
) -> tuple:
    """direct, cold and warm pulls against a fresh agent; (times, CPU (user, sys), peak RSS)."""
    work = agent_dir.parent
    with AgentProcess(agent_dir, upstreams=f"http://{registry.host}", env=env) as agent:
        assert agent.proc is not None
        pid = agent.proc.pid
        direct = timed_pull(f"{registry.host}/bench/image:v1", work / "out-direct")
        cpu0 = cpu_seconds(pid)
        spies = profiling.start(profile, [(pid, "cold")])
        cold = timed_pull(f"{agent.host}/bench/image:v1", work / "out-cold")
        profiling.stop(spies)
        cpu1 = cpu_seconds(pid)
        spies = profiling.start(profile, [(pid, "warm")])
        warm = timed_pull(f"{agent.host}/bench/image:v1", work / "out-warm")
        profiling.stop(spies)
        cpu2 = cpu_seconds(pid)
        rss = profiling.proc_status(pid, "VmHWM")
    cold_cpu = tuple(b - a for a, b in zip(cpu0, cpu1, strict=True))
    warm_cpu = tuple(b - a for a, b in zip(cpu1, cpu2, strict=True))
    return direct, cold, warm, cold_cpu, warm_cpu, rss


def summarize(mode: str, rows: list[tuple], mb: float, gib: float) -> None:
    def med(i: int) -> float:
        return statistics.median(r[i] for r in rows)

    def med_cpu(i: int, part: int | None = None) -> float:
        return statistics.median(sum(r[i]) if part is None else r[i][part] for r in rows)

    direct, cold, warm = med(0), med(1), med(2)
    print(f"cache {mode}:")
    print(f"  direct  {direct:6.2f}s  {mb / direct:7.1f} MB/s  1.00x")
    print(
        f"  cold    {cold:6.2f}s  {mb / cold:7.1f} MB/s  {cold / direct:.2f}x direct (goal <= 1.10)"
    )
    print(
        f"  warm    {warm:6.2f}s  {mb / warm:7.1f} MB/s  {warm / direct:.2f}x direct (goal <= 1.00)"
    )
    print(
        f"  agent CPU per GiB delivered: cold {med_cpu(3) / gib:.2f}s "
        f"(user {med_cpu(3, 0) / gib:.2f}, system {med_cpu(3, 1) / gib:.2f}; goal <= 1.5), "
        f"warm {med_cpu(4) / gib:.2f}s (user {med_cpu(4, 0) / gib:.2f}, "
        f"system {med_cpu(4, 1) / gib:.2f}; goal <= 0.3); "
        f"peak RSS {max(r[5] for r in rows):.0f} MiB"
    )


if __name__ == "__main__":
    sys.exit(main())
