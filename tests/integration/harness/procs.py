"""Processes and readiness polls for integration tests.

Every real part (registry, containerd, later the agent) runs as a child process with its
output in log files, is stopped by its own PID (SIGTERM, then SIGKILL after a bound), and
is waited for by polling a real readiness condition under a deadline — never a sleep.
All network helpers here refuse anything but loopback, so a test cannot reach out by
mistake.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

#: Environment variables that would send a child's traffic through a proxy (off loopback).
PROXY_VARS = (
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "no_proxy",
    "grpc_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
    "GRPC_PROXY",
)


class HarnessError(RuntimeError):
    """A real part failed to start or answer; the message carries its log tail."""


class ProcessDied(HarnessError):
    """The child exited while we waited for it to become ready."""


def clean_env(
    extra: Mapping[str, str] | None = None, *, drop_prefixes: Sequence[str] = ()
) -> dict[str, str]:
    """The current environment without proxy settings (and `drop_prefixes`), plus `extra`.

    Go and grpc clients honour *_proxy variables; a stray one would route a test's
    requests off the machine, so children never inherit them. The registry also reads
    REGISTRY_* overrides, which the Registry helper drops the same way.
    """
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in PROXY_VARS and not any(k.startswith(p) for p in drop_prefixes)
    }
    if extra:
        env.update(extra)
    return env


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on `host` a moment ago (the kernel picked it).

    Racy by nature: callers that bind in another process should retry on EADDRINUSE
    (`Registry` does).

    A port is never handed out twice in one test run, whatever the host: the kernel may give
    a port just closed again, and one process's config may name two drawn ports (an agent's
    proxy and exporter ports are then refused as the same).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(1000):
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port
    raise RuntimeError(f"no fresh free port on {host} in 1000 tries")


_HANDED_OUT: set[int] = set()  # free_port's ports so far


def memory_mib(pid: int, field: str = "VmRSS") -> float:
    """A process's memory as /proc/PID/status counts it, MiB: VmRSS (resident now) or VmHWM
    (its peak resident set)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise HarnessError(f"/proc/{pid}/status has no {field}")


def assert_loopback_url(url: str) -> None:
    """Raise unless `url` names a loopback IP or `localhost` (the network rule)."""
    host = urllib.parse.urlsplit(url).hostname or ""
    if host == "localhost":
        return
    try:
        if ipaddress.ip_address(host).is_loopback:
            return
    except ValueError:
        pass
    raise ValueError(f"refusing non-loopback URL {url!r}")


def wait_until(
    predicate: Callable[[], T | None],
    *,
    timeout: float,
    what: str,
    interval: float = 0.05,
    on_timeout: Callable[[], str] | None = None,
) -> T:
    """Poll `predicate` until it returns something truthy; bounded in time and count.

    Returns the truthy value. Raises HarnessError naming `what` (plus whatever
    `on_timeout()` says, e.g. a log tail) when the deadline passes. A predicate may raise
    HarnessError itself to stop early (a child that died will not get ready).
    """
    deadline = time.monotonic() + timeout
    max_tries = int(timeout / interval) + 2
    for _ in range(max_tries):
        value = predicate()
        if value:
            return value
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        time.sleep(min(interval, remaining))
    extra = on_timeout() if on_timeout else ""
    raise HarnessError(f"timed out after {timeout:.1f}s waiting for {what}\n{extra}")


_NO_PROXY_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_status(
    url: str,
    *,
    timeout: float = 2.0,
    ssl_context: ssl.SSLContext | None = None,
    headers: Mapping[str, str] | None = None,
    method: str = "GET",
) -> int | None:
    """Status of one request to a loopback `url`, or None if nothing answered HTTP."""
    assert_loopback_url(url)
    req = urllib.request.Request(url, headers=dict(headers or {}), method=method)
    handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
    if ssl_context is not None:
        handlers.append(urllib.request.HTTPSHandler(context=ssl_context))
    opener = urllib.request.build_opener(*handlers) if ssl_context else _NO_PROXY_OPENER
    try:
        with opener.open(req, timeout=timeout) as resp:
            resp.read()
            return resp.status
    except urllib.error.HTTPError as e:
        e.close()
        return e.code
    except (urllib.error.URLError, OSError, ssl.SSLError):
        return None


def wait_http_ok(
    url: str,
    *,
    timeout: float = 15.0,
    ok: Callable[[int], bool] = lambda status: 200 <= status < 300,
    ssl_context: ssl.SSLContext | None = None,
    proc: ManagedProcess | None = None,
) -> int:
    """Poll `url` until its status satisfies `ok`; fail early if `proc` died.

    Pass `ok=lambda s: True` to wait for "any HTTP answer" (a registry with auth answers
    /v2/ with 401 once it is up).
    """

    def probe() -> int | None:
        if proc is not None:
            proc.check_alive()
        status = http_status(url, timeout=1.0, ssl_context=ssl_context)
        return status if status is not None and ok(status) else None

    return wait_until(
        probe,
        timeout=timeout,
        what=f"HTTP readiness of {url}",
        on_timeout=(proc.describe_failure if proc else None),
    )


class ManagedProcess:
    """A child process with log files, stopped by its own PID.

    Start with `start_process()` (a context manager). stdout and stderr go to files in
    `log_dir` (one file unless `separate_stderr`), so a failing test can show the tail.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        name: str,
        log_dir: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        separate_stderr: bool = False,
        drop_env_prefixes: Sequence[str] = (),
    ) -> None:
        self.argv = [str(a) for a in argv]
        self.name = name
        log_dir.mkdir(parents=True, exist_ok=True)
        self.stdout_path = log_dir / f"{name}.out.log"
        self.stderr_path = log_dir / f"{name}.err.log" if separate_stderr else self.stdout_path
        self._env = clean_env(env, drop_prefixes=drop_env_prefixes)
        self._cwd = cwd
        self.popen: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.popen is not None, "not started"
        return self.popen.pid

    def start(self) -> None:
        out = open(self.stdout_path, "ab")
        err = open(self.stderr_path, "ab") if self.stderr_path != self.stdout_path else out
        try:
            self.popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=self._env,
                cwd=self._cwd,
                # Own session: a Ctrl-C aimed at pytest does not hit the child first, and the
                # child cannot signal our process group.
                start_new_session=True,
            )
        finally:
            out.close()
            if err is not out:
                err.close()

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def check_alive(self) -> None:
        """Raise ProcessDied (with the log tail) if the child has exited."""
        if self.popen is not None and self.popen.poll() is not None:
            raise ProcessDied(
                f"{self.name} (pid {self.popen.pid}) exited with {self.popen.returncode}\n"
                + self.describe_failure()
            )

    def log_text(self, stream: str = "stdout") -> str:
        path = self.stdout_path if stream == "stdout" else self.stderr_path
        try:
            return path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        parts = []
        for path in dict.fromkeys([self.stdout_path, self.stderr_path]):
            try:
                text = path.read_text(errors="replace").splitlines()[-lines:]
            except FileNotFoundError:
                text = []
            parts.append(f"--- tail of {path} ---\n" + "\n".join(text))
        return "\n".join(parts)

    def describe_failure(self) -> str:
        return f"command: {' '.join(self.argv)}\n{self.log_tail()}"

    def stop(self, *, term_timeout: float = 10.0, kill_timeout: float = 5.0) -> int | None:
        """SIGTERM our child by PID, SIGKILL it if still there after `term_timeout`.

        Returns the exit status (None if it was never started).
        """
        p = self.popen
        if p is None:
            return None
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGTERM)
            try:
                p.wait(timeout=term_timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGKILL)
                p.wait(timeout=kill_timeout)
        return p.returncode


@contextlib.contextmanager
def start_process(
    argv: Sequence[str],
    *,
    name: str,
    log_dir: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    separate_stderr: bool = False,
    drop_env_prefixes: Sequence[str] = (),
) -> Iterator[ManagedProcess]:
    """Run a child for the duration of the block; stop it by PID on the way out.

    If the block raises, the child's log tail is printed to stderr (pytest shows it with
    the failure) before the child is stopped.
    """
    proc = ManagedProcess(
        argv,
        name=name,
        log_dir=log_dir,
        env=env,
        cwd=cwd,
        separate_stderr=separate_stderr,
        drop_env_prefixes=drop_env_prefixes,
    )
    proc.start()
    try:
        yield proc
    except BaseException:
        print(f"\n=== {name} (pid {proc.pid}) log tail ===\n{proc.log_tail()}", file=sys.stderr)
        raise
    finally:
        proc.stop()


def run(
    argv: Sequence[str],
    *,
    timeout: float = 60.0,
    check: bool = True,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a short-lived tool (skopeo, ctr) with a time bound and a proxy-free env.

    With `check`, a non-zero exit raises HarnessError showing the tool's stderr and
    stdout, which is what one needs to see when a pull fails.
    """
    argv = [str(a) for a in argv]
    try:
        cp = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=clean_env(env),
            cwd=cwd,
        )
    except subprocess.TimeoutExpired as e:
        # subprocess.run has already killed (by PID) and reaped the child.
        cmd = " ".join(argv)
        raise HarnessError(
            f"timed out after {timeout}s: {cmd}\nstdout: {e.stdout!r}\nstderr: {e.stderr!r}"
        ) from e
    if check and cp.returncode != 0:
        cmd = " ".join(argv)
        raise HarnessError(
            f"exit {cp.returncode}: {cmd}\n--- stderr ---\n{cp.stderr}\n--- stdout ---\n{cp.stdout}"
        )
    return cp
