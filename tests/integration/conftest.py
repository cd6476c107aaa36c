"""Fixtures that start REAL parts on loopback (see `harness/`).

Everything here is function-scoped: a registry starts in ~0.1 s and a private
containerd in ~0.3 s, so isolation costs little and no test sees another's requests.
Factories (`make_registry`, `make_token_issuer`, `make_containerd`) stop what they
started at teardown, in reverse order.

Tests here are marked `integration` (the marker is declared in pyproject.toml). They
are skipped, with the reason, only when a Debian binary they need is missing (`make
test` installs them, so CI has them) or, for containerd, when not running as root.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

# `harness` sits beside this file. pytest's default import mode already puts this
# directory on sys.path; with --import-mode=importlib it does not, hence this.
_HERE = Path(__file__).resolve().parent
if str(_HERE) not in sys.path:
    sys.path.insert(0, str(_HERE))

from harness import (  # noqa: E402
    Account,
    AgentProcess,
    Containerd,
    Image,
    Registry,
    RegistryFront,
    TLSFiles,
    TokenIssuer,
    build_image,
    make_ca_and_cert,
)
from harness.containerd import CONTAINERD_BIN, CTR_BIN  # noqa: E402
from harness.images import SKOPEO_BIN  # noqa: E402
from harness.registry import REGISTRY_BIN  # noqa: E402

#: Small layers: the self-tests prove plumbing, not throughput.
SMALL_LAYERS = (192 * 1024, 256 * 1024, 320 * 1024)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.integration)


_PARTS = pytest.StashKey[list]()


def _track(request: pytest.FixtureRequest, part: object) -> None:
    """Remember a started part so a failing test's report shows its log tail."""
    request.node.stash.setdefault(_PARTS, []).append(part)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    report = yield
    if report.failed:
        for part in item.stash.get(_PARTS, []):
            proc = getattr(part, "proc", None)
            if proc is not None:
                report.sections.append((f"harness log: {proc.name}", proc.log_tail()))
            if isinstance(part, TokenIssuer):
                report.sections.append(
                    ("harness token requests", "\n".join(map(repr, part.requests)))
                )
    return report


def require_binaries(*names: str) -> None:
    """Skip the test, naming what is missing, if any binary is not installed."""
    missing = [n for n in names if shutil.which(n) is None]
    if missing:
        pytest.skip(
            f"missing {', '.join(missing)} (Debian packages docker-registry, skopeo, "
            "containerd; `make test` installs them)"
        )


@pytest.fixture
def require_registry_tools() -> None:
    require_binaries(REGISTRY_BIN, SKOPEO_BIN)


@pytest.fixture
def tls_files(tmp_path: Path) -> TLSFiles:
    """A CA and a server cert for 127.0.0.1, localhost and ::1."""
    return make_ca_and_cert(tmp_path / "tls")


@pytest.fixture
def make_image(tmp_path: Path) -> Callable[..., Image]:
    """`make_image(layers=SMALL_LAYERS, seed=0, tag="latest")` → an OCI layout."""

    def make(layers: tuple[int, ...] = SMALL_LAYERS, seed: int = 0, tag: str = "latest") -> Image:
        return build_image(tmp_path / "images", layers, seed, tag=tag)

    return make


@pytest.fixture
def small_image(make_image: Callable[..., Image]) -> Image:
    """Three layers of a few hundred KiB."""
    return make_image()


@pytest.fixture
def make_token_issuer(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[..., TokenIssuer]]:
    """`make_token_issuer(users=..., anonymous=..., key_type="rsa")` → a started issuer."""
    with contextlib.ExitStack() as stack:
        count = 0

        def make(**kwargs: object) -> TokenIssuer:
            nonlocal count
            count += 1
            issuer = stack.enter_context(TokenIssuer(tmp_path / f"token-issuer-{count}", **kwargs))  # type: ignore[arg-type]
            _track(request, issuer)
            return issuer

        yield make


@pytest.fixture
def token_issuer(make_token_issuer: Callable[..., TokenIssuer]) -> TokenIssuer:
    """alice may pull+push `private/*` and `public/*`; bob may pull `public/*` only;
    anonymous may pull `public/*`."""
    return make_token_issuer(
        users={
            "alice": Account(
                "alice-pw", {"private/*": ["pull", "push"], "public/*": ["pull", "push"]}
            ),
            "bob": Account("bob-pw", {"public/*": ["pull"]}),
        },
        anonymous={"public/*": ["pull"]},
    )


@pytest.fixture
def make_registry(
    request: pytest.FixtureRequest, tmp_path: Path, require_registry_tools: None
) -> Iterator[Callable[..., Registry]]:
    """`make_registry(auth="plain"|"htpasswd"|"token", users=, token_issuer=, tls=)`."""
    with contextlib.ExitStack() as stack:
        count = 0

        def make(**kwargs: object) -> Registry:
            nonlocal count
            count += 1
            kwargs.setdefault("name", f"registry-{count}")
            reg = Registry(tmp_path / f"registry-{count}", **kwargs)  # type: ignore[arg-type]
            _track(request, reg)  # before start: a failed start shows its log too
            return stack.enter_context(reg)

        yield make


@pytest.fixture
def registry(make_registry: Callable[..., Registry]) -> Registry:
    """A plain-HTTP registry, no auth."""
    return make_registry()


@pytest.fixture
def make_front() -> Iterator[Callable[..., RegistryFront]]:
    """`make_front(registry.url, **kwargs)` → a started RegistryFront, stopped at teardown."""
    with contextlib.ExitStack() as stack:

        def make(target_url: str, **kwargs: object) -> RegistryFront:
            front = RegistryFront(target_url, **kwargs)  # type: ignore[arg-type]
            stack.enter_context(front)
            return front

        yield make


@pytest.fixture
def make_containerd(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[..., Containerd]]:
    """`make_containerd(snapshotter="auto", namespace="pollen-test")` → a started daemon."""
    require_binaries(CONTAINERD_BIN, CTR_BIN)
    if os.geteuid() != 0:
        pytest.skip("a private containerd needs root (mounts for unpacking)")
    with contextlib.ExitStack() as stack:
        count = 0

        def make(**kwargs: object) -> Containerd:
            nonlocal count
            count += 1
            daemon = Containerd(tmp_path / f"containerd-{count}", **kwargs)  # type: ignore[arg-type]
            _track(request, daemon)
            return stack.enter_context(daemon)

        yield make


@pytest.fixture
def containerd(make_containerd: Callable[..., Containerd]) -> Containerd:
    return make_containerd()


@pytest.fixture
def make_agent(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[..., AgentProcess]]:
    """`make_agent(upstreams=..., env={...}, tls=(cert, key), ca=...)` → a started agent."""
    with contextlib.ExitStack() as stack:
        count = 0

        def make(*, ca: Path | None = None, start: bool = True, **kwargs: object) -> AgentProcess:
            nonlocal count
            count += 1
            kwargs.setdefault("name", f"agent-{count}")
            agent = AgentProcess(tmp_path / f"agent-{count}", **kwargs)  # type: ignore[arg-type]
            _track(request, agent)
            stack.callback(agent.stop)
            if start:
                agent.start(ca=ca)
            return agent

        yield make
