"""bench/taskcpu (`bench/swarm.py --task-cpu`): a process started with it on PYTHONPATH counts
its CPU per trio task and writes the totals on SIGUSR2 (a real child process, a real signal)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import os, signal, time
import trio

async def busy() -> None:
    end = time.thread_time() + 0.2
    while time.thread_time() < end:
        pass

async def idle() -> None:
    await trio.sleep(0.3)

async def main() -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(busy)
        nursery.start_soon(idle)
    os.kill(os.getpid(), signal.SIGUSR2)  # (its handler runs before the next line)

trio.run(main)
"""


def test_a_process_counts_its_cpu_per_task_and_writes_it_on_sigusr2(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "bench" / "taskcpu"), str(ROOT)]),
        "POLLEN_BENCH_TASK_CPU": str(tmp_path),
    }
    subprocess.run([sys.executable, "-c", CHILD], env=env, timeout=60, check=True)
    (written,) = tmp_path.glob("*.json")  # one, named by the child's pid
    data = json.loads(written.read_text())
    busy = next(cpu for name, cpu in data["cpu"].items() if name.endswith("busy"))
    idle = next(cpu for name, cpu in data["cpu"].items() if name.endswith("idle"))
    assert busy >= 0.15, data  # its 0.2 s of CPU, counted
    assert idle < 0.05, data  # a sleeping task costs nothing
    assert data["main_thread"] >= busy


def test_without_the_variable_nothing_is_counted(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "bench" / "taskcpu")}
    env.pop("POLLEN_BENCH_TASK_CPU", None)
    code = "import trio, signal; assert signal.getsignal(signal.SIGUSR2) == signal.SIG_DFL"
    subprocess.run([sys.executable, "-c", code], env=env, timeout=60, check=True, cwd=tmp_path)
