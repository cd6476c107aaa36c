"""A real `pollen agent` process on loopback, configured by environment variables."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Mapping
from pathlib import Path

from .procs import ManagedProcess, free_port, wait_http_ok


class AgentProcess:
    """`python -m agent agent` with its own cache directory and a free proxy port.

    `env` overrides the defaults (any POLLEN_* key); `upstreams` is required because an agent
    must never guess which registries it may contact.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        upstreams: str,
        env: Mapping[str, str] | None = None,
        name: str = "agent",
        tls: tuple[Path, Path] | None = None,
        port: int | None = None,
        address: str = "127.0.0.1",
        role: str = "agent",
        verbose: bool = True,
    ) -> None:
        self.workdir = workdir
        self.name = name
        self.address = address
        self.role = role
        self.verbose = verbose  # -v: debug logging (benches measuring CPU leave it off)
        # Not the P2P port the test gave it (every node of a cluster shares one: the kernel
        # may hand it out again for this address, and the agent refuses the pair).
        taken = (env or {}).get("POLLEN_P2P_PORT", "")
        self.port = port or next(
            p for p in (free_port(address) for _ in range(20)) if str(p) != taken
        )
        self.cache_path = workdir / "cache"
        self.scheme = "https" if tls else "http"
        self.env = {
            "POLLEN_PROXY_PORT": str(self.port),
            "POLLEN_LISTEN_ADDRESS": address,
            "POLLEN_NODE_IP": address,
            "POLLEN_CACHE_PATH": str(self.cache_path),
            "POLLEN_LOG_DIR": str(workdir / "log"),
            "POLLEN_UPSTREAMS": upstreams,
            "POLLEN_UPSTREAM_RETRIES": "2",
            "PYTHONUNBUFFERED": "1",
        }
        if tls:
            self.env["POLLEN_TLS_CERT"], self.env["POLLEN_TLS_KEY"] = str(tls[0]), str(tls[1])
        self.env.update(env or {})
        self._tls_ca: Path | None = None
        self.proc: ManagedProcess | None = None

    @property
    def host(self) -> str:
        return f"{self.address}:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}"

    def start(self, *, ca: Path | None = None, timeout: float = 30.0) -> AgentProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = ManagedProcess(
            [sys.executable, "-m", "agent", self.role, *(["-v"] if self.verbose else [])],
            name=self.name,
            log_dir=self.workdir,
            env=self.env,
            cwd=Path(__file__).resolve().parents[3],
            # The agent must see only what the test configured, not the caller's POLLEN_*.
            drop_env_prefixes=("POLLEN_",),
        )
        self.proc.start()
        context = None
        if ca is not None:
            from .tlsutil import client_context

            context = client_context(ca)
        wait_http_ok(f"{self.url}/readyz", timeout=timeout, proc=self.proc, ssl_context=context)
        return self

    def stop(self) -> int | None:
        return self.proc.stop() if self.proc else None

    def kill(self) -> None:
        """SIGKILL, as a crash: no draining, no cleanup."""
        assert self.proc is not None and self.proc.popen is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.popen.wait(timeout=10)

    def log_text(self) -> str:
        return self.proc.log_text() if self.proc else ""

    def __enter__(self) -> AgentProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
