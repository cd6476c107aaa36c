"""py-spy around a benchmark's measured step: sample a running process, then print its top frames.

Shared by the benchmarks' ``--profile DIR`` switches (and, below, bench/swarm.py's
``--task-cpu``: the CPU of every task, counted, not sampled; and `proc_status`, a process's
memory as the kernel counts it). Samples every thread, not only the one
holding the GIL (hashlib and the I/O engine's threads release it), and separates the frames that
only wait (the event loop's epoll, idle worker threads) from the ones that cost CPU.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from harness import HarnessError, memory_mib  # the benches put tests/integration on sys.path

ROOT = Path(__file__).resolve().parents[1]
WAIT_FRAMES = ("EpollIOManager.get_events", "WorkerThread._work", "Condition.wait")

Sampler = tuple[subprocess.Popen[bytes], Path, str]


def proc_status(pid: int, field: str) -> float:
    """A /proc/PID/status field in MiB (VmRSS, VmHWM: the peak resident set); NaN where the
    process has none (a zombie), so a bench that polls it prints a gap, not a traceback."""
    try:
        return memory_mib(pid, field)
    except HarnessError:
        return float("nan")


def start(where: Path | None, targets: list[tuple[int, str]]) -> list[Sampler]:
    """One py-spy per (pid, name); raw stacks go to ``where/<name>.txt``. None: no profiling."""
    if where is None:
        return []
    spy = ROOT / ".venv" / "bin" / "py-spy"
    if not spy.exists():
        raise SystemExit("--profile needs py-spy: .venv/bin/pip install py-spy")
    where.mkdir(parents=True, exist_ok=True)
    samplers = []
    for pid, name in targets:
        out = where / f"{name}.txt"
        args = [str(spy), "record", "-p", str(pid), "-r", "200", "--format", "raw", "-o", str(out)]
        proc = subprocess.Popen([*args, "--nonblocking"], stderr=subprocess.DEVNULL)
        samplers.append((proc, out, name))
    time.sleep(0.5)  # attached before the measured step starts
    return samplers


def stop(samplers: list[Sampler], top: int = 12) -> None:
    """Stop the samplers and print each process's top leaf frames, waits counted apart."""
    for proc, out, name in samplers:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
        leaf: dict[str, int] = {}
        total = 0
        for line in out.read_text().splitlines():
            stack, _, n = line.rpartition(" ")
            frame = stack.split(";")[-1].split(" (")[0]
            leaf[frame] = leaf.get(frame, 0) + int(n)
            total += int(n)
        waiting = sum(leaf.pop(f, 0) for f in WAIT_FRAMES)  # py-spy counts some waits as busy
        print(
            f"profile of {name} ({total} samples, {out}); waiting for events or work "
            f"{100 * waiting / max(total, 1):.1f}%, then:"
        )
        for frame, n in sorted(leaf.items(), key=lambda kv: -kv[1])[:top]:
            print(f"  {100 * n / max(total, 1):5.1f}%  {frame}")


# --task-cpu: each pollen process counts its CPU per trio task (bench/taskcpu/sitecustomize.py,
# put on the nodes' PYTHONPATH); a snapshot is taken on SIGUSR2, before and after the step.
TASK_CPU_PATH = ROOT / "bench" / "taskcpu"
TaskTotals = dict[str, tuple[float, int]]  # task name -> (CPU seconds, steps)


def task_cpu_env(where: Path) -> dict[str, str]:
    """What a node's environment needs for --task-cpu (snapshots go to `where`)."""
    where.mkdir(parents=True, exist_ok=True)
    return {"PYTHONPATH": str(TASK_CPU_PATH), "POLLEN_BENCH_TASK_CPU": str(where)}


def task_cpu_snapshot(where: Path, pids: list[int]) -> dict[int, TaskTotals]:
    """Ask each process for its totals and read them (each answers within a second)."""
    for pid in pids:
        (where / f"{pid}.json").unlink(missing_ok=True)
        os.kill(pid, signal.SIGUSR2)
    deadline = time.monotonic() + 5.0
    totals: dict[int, TaskTotals] = {}
    for pid in pids:
        path = where / f"{pid}.json"
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        data = json.loads(path.read_text())
        totals[pid] = {name: (cpu, data["steps"][name]) for name, cpu in data["cpu"].items()}
        totals[pid]["(trio's loop, outside task steps)"] = (
            data["main_thread"] - sum(data["cpu"].values()),
            0,
        )
    return totals


def print_task_cpu(
    label: str,
    before: dict[int, TaskTotals],
    after: dict[int, TaskTotals],
    pids: list[int],
    chunks: int,
    top: int = 8,
) -> None:
    """The CPU `pids` spent per task name between the snapshots, per chunk the agents
    received (`chunks`)."""
    spent: dict[str, tuple[float, int]] = {}
    for pid in pids:
        for name, (cpu, steps) in after[pid].items():
            cpu0, steps0 = before[pid].get(name, (0.0, 0))
            total, count = spent.get(name, (0.0, 0))
            spent[name] = (total + cpu - cpu0, count + steps - steps0)
    whole = sum(cpu for cpu, _ in spent.values())
    print(
        f"task CPU of the {label} ({whole:.2f} s in their main threads, "
        f"{1000 * whole / max(chunks, 1):.1f} ms per chunk the agents received):"
    )
    for name, (cpu, steps) in sorted(spent.items(), key=lambda kv: -kv[1][0])[:top]:
        print(
            f"  {cpu:6.2f} s {100 * cpu / max(whole, 1e-9):5.1f}%  "
            f"{1000 * cpu / max(chunks, 1):5.2f} ms/chunk  {steps / max(chunks, 1):5.1f} "
            f"steps/chunk  {name.removeprefix('agent.')}"
        )
