"""py-spy around a benchmark's measured step: sample a running process, then print its top frames.

Shared by the benchmarks' ``--profile DIR`` switches. Samples every thread, not only the one
holding the GIL (hashlib and the I/O engine's threads release it), and separates the frames that
only wait (the event loop's epoll, idle worker threads) from the ones that cost CPU.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WAIT_FRAMES = ("EpollIOManager.get_events", "WorkerThread._work", "Condition.wait")

Sampler = tuple[subprocess.Popen[bytes], Path, str]


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
