"""Containers run from an image by a private containerd (`ctr run`, runc), as a test needs them.

`Container` is `ctr run --rm` as a child process: the container's output lands in the child's
log file, and stopping the child by its PID makes ctr forward SIGTERM to the container and
remove it. Whatever happens on the way (ctr killed, a timeout), `stop()` then kills and deletes
the task and the container through containerd, so no runc shim or container process outlives
the test (containerd itself does not stop them when it exits).

`seccomp_profile_of` reads back the seccomp profile containerd applied to a running container
(its runtime spec in containerd's state directory): with `--seccomp` that is containerd's own
default, which a test can then change and apply with `--seccomp-profile`.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .containerd import Containerd
from .procs import HarnessError, ManagedProcess, wait_until


@dataclass(frozen=True)
class Mount:
    """A bind mount of a host path into the container."""

    source: Path
    target: str
    read_only: bool = False

    def flag(self) -> str:
        mode = "ro" if self.read_only else "rw"
        return f"type=bind,src={self.source},dst={self.target},options=rbind:{mode}"


class Container:
    """`ctr run --rm [--net-host] [--seccomp] [--read-only] IMAGE ID ARGV...`; a context manager.

    `seccomp`: True for containerd's default profile, a Path for a profile file, False for
    none. Host network and a read-only root filesystem by default, as the manifests run Pollen.
    """

    def __init__(
        self,
        daemon: Containerd,
        image: str,
        container_id: str,
        argv: Sequence[str],
        *,
        log_dir: Path,
        env: Mapping[str, str] | None = None,
        mounts: Sequence[Mount] = (),
        seccomp: bool | Path = True,
        net_host: bool = True,
        read_only: bool = True,
    ) -> None:
        self.daemon = daemon
        self.image = image
        self.id = container_id
        flags = ["--rm"]
        if net_host:
            flags.append("--net-host")
        if read_only:
            flags.append("--read-only")
        if seccomp is True:
            flags.append("--seccomp")
        elif isinstance(seccomp, Path):
            flags += ["--seccomp", "--seccomp-profile", str(seccomp)]
        for key, value in (env or {}).items():
            flags += ["--env", f"{key}={value}"]
        for mount in mounts:
            flags += ["--mount", mount.flag()]
        self.argv = [
            daemon.ctr_binary,
            "--address",
            str(daemon.socket),
            "--namespace",
            daemon.namespace,
            "run",
            *flags,
            image,
            container_id,
            *argv,
        ]
        self.proc = ManagedProcess(
            self.argv,
            name=f"container-{container_id}",
            log_dir=log_dir,
            env={"CONTAINERD_SNAPSHOTTER": daemon.snapshotter},
        )

    def start(self, *, timeout: float = 60.0) -> Container:
        """Start it and wait until its task runs (its first process has a PID)."""
        self.proc.start()
        wait_until(
            self._task_pid,
            timeout=timeout,
            what=f"container {self.id} to run",
            interval=0.1,
            on_timeout=self.proc.describe_failure,
        )
        return self

    def _task_pid(self) -> int | None:
        self.proc.check_alive()
        out = self.daemon.ctr("tasks", "ls", check=False, timeout=10).stdout
        for line in out.splitlines()[1:]:
            parts = line.split()
            if len(parts) >= 3 and parts[0] == self.id and parts[2] == "RUNNING":
                return int(parts[1])
        return None

    @property
    def pid(self) -> int:
        """The host PID of the container's first process."""
        pid = self._task_pid()
        if pid is None:
            raise HarnessError(f"container {self.id} is not running\n{self.proc.log_tail()}")
        return pid

    def process_status(self) -> dict[str, str]:
        """/proc/<pid>/status of the container's first process, as seen from the host."""
        text = Path(f"/proc/{self.pid}/status").read_text()
        return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)

    def wait(self, *, timeout: float) -> int:
        """Wait for the container to end by itself; its exit status."""
        assert self.proc.popen is not None, "not started"
        try:
            return self.proc.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise HarnessError(
                f"container {self.id} still running after {timeout}s\n{self.proc.log_tail()}"
            ) from exc

    def output(self) -> str:
        return self.proc.log_text()

    def stop(self) -> int | None:
        """SIGTERM through ctr (forwarded to the container), then make sure containerd holds
        neither task nor container: a ctr that died early leaves both behind."""
        status = self.proc.stop(term_timeout=20.0)
        self.daemon.ctr("tasks", "kill", "--signal", "SIGKILL", self.id, check=False, timeout=10)
        self.daemon.ctr("tasks", "delete", "--force", self.id, check=False, timeout=20)
        self.daemon.ctr("containers", "delete", self.id, check=False, timeout=20)
        return status

    def __enter__(self) -> Container:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run_container(
    daemon: Containerd,
    image: str,
    container_id: str,
    argv: Sequence[str],
    *,
    log_dir: Path,
    timeout: float = 60.0,
    **kwargs: Any,
) -> tuple[int, str]:
    """Run a container to its end (a one-shot command); its exit status and output."""
    container = Container(daemon, image, container_id, argv, log_dir=log_dir, **kwargs)
    container.proc.start()
    try:
        status = container.wait(timeout=timeout)
        return status, container.output()
    finally:
        container.stop()


def seccomp_profile_of(daemon: Containerd, container_id: str) -> dict[str, Any]:
    """The seccomp section of a running container's runtime spec (containerd's state dir)."""
    spec_path = (
        daemon.state
        / "io.containerd.runtime.v2.task"
        / daemon.namespace
        / container_id
        / "config.json"
    )
    spec = json.loads(spec_path.read_text())
    profile = spec.get("linux", {}).get("seccomp")
    if not profile:
        raise HarnessError(f"container {container_id} runs without a seccomp profile")
    return profile


def allows(profile: Mapping[str, Any], syscall: str) -> bool:
    """Whether a seccomp profile lets `syscall` through (unconditionally or by a rule)."""
    for rule in profile.get("syscalls", []):
        if syscall in rule.get("names", []):
            return rule.get("action") == "SCMP_ACT_ALLOW"
    return profile.get("defaultAction") == "SCMP_ACT_ALLOW"


def without_syscalls(profile: Mapping[str, Any], syscalls: Sequence[str]) -> dict[str, Any]:
    """`profile` with `syscalls` no longer allowed: dropped from every rule that names them,
    so they meet the default action (an error, in containerd's and Docker's profiles)."""
    if profile.get("defaultAction") == "SCMP_ACT_ALLOW":
        raise ValueError("the profile allows every syscall by default")
    rules = []
    for rule in profile.get("syscalls", []):
        names = [n for n in rule.get("names", []) if n not in syscalls]
        if names:
            rules.append({**rule, "names": names})
    return {**profile, "syscalls": rules}
