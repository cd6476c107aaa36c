"""`bench/swarm.py --task-cpu`: the CPU each pollen process spends per trio task.

Python imports this module at start-up when its directory is on PYTHONPATH (the bench puts it
there for its nodes only). With POLLEN_BENCH_TASK_CPU naming a directory, every `trio.run`
gets an Instrument that adds the thread's CPU time (`time.thread_time`, exact, unlike
getrusage's tick-sampled split) of each task step to the task's name; on SIGUSR2 the process
writes its totals to <dir>/<pid>.json: per task name the CPU seconds and steps, and the main
thread's CPU outside any task step (trio's own loop: epoll, scheduling). The bench signals
before and after the pull and prints the difference. py-spy samples (and counts a thread
waiting for a core as busy); this counts, at ~1 us per task step.
"""

from __future__ import annotations

import json
import os
import signal
import time

WHERE = os.environ.get("POLLEN_BENCH_TASK_CPU")

if WHERE:
    import trio
    import trio.abc

    cpu: dict[str, float] = {}
    steps: dict[str, int] = {}
    started = [0.0]

    class TaskCPU(trio.abc.Instrument):
        def before_task_step(self, task: trio.lowlevel.Task) -> None:
            started[0] = time.thread_time()

        def after_task_step(self, task: trio.lowlevel.Task) -> None:
            cpu[task.name] = cpu.get(task.name, 0.0) + time.thread_time() - started[0]
            steps[task.name] = steps.get(task.name, 0) + 1

    def snapshot(signum: int, frame: object) -> None:
        data = {"cpu": cpu, "steps": steps, "main_thread": time.thread_time()}
        path = os.path.join(WHERE, f"{os.getpid()}.json")
        with open(path + ".tmp", "w") as out:
            json.dump(data, out)
        os.replace(path + ".tmp", path)

    signal.signal(signal.SIGUSR2, snapshot)
    run = trio.run

    def instrumented_run(*args, **kwargs):  # type: ignore[no-untyped-def]
        kwargs["instruments"] = [*kwargs.get("instruments", ()), TaskCPU()]
        return run(*args, **kwargs)

    trio.run = instrumented_run
