"""The import direction of docs/ARCHITECTURE.md: a module imports only its own layer or lower.

Every module in agent/ is read with `ast` (nothing is imported), so a new module must be placed
in LAYERS below before the suite passes -- that keeps the table, and the picture in
ARCHITECTURE.md, complete.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

AGENT = Path(__file__).resolve().parents[1] / "agent"
PACKAGE = "agent"

# Package or module (dotted, relative to agent/; the package itself is "__init__") -> layer.
# A module takes the entry of its longest listed prefix: "registry" places every module of
# agent/registry/ that has no entry of its own. Packages are the roles; a role's pure core sits
# in layer 2 and its trio adapters higher up.
LAYERS: dict[str, int] = {
    "__init__": 1,  # only __version__
    # 1. core: errors, value parsers, host:port, the config table and loader
    "core": 1,
    # 2. pure protocol cores: no I/O, no trio
    "registry.routes": 2,  # the distribution API's paths
    "registry.ranges": 2,  # Range headers and 206/416 decisions
    "registry.upstreams": 2,  # which upstream serves a request
    "cache.chunks": 2,  # chunk geometry
    "cache.indexfile": 2,  # a cached layer's index lines, written and read back
    "swarm.protocol": 2,  # P2P limits, errors, targets, ranges
    "swarm.ownership": 2,  # which root schedules a layer: rendezvous, handoffs
    "swarm.signing": 2,  # P2P request signatures
    "swarm.plan": 2,  # P2P plan replies
    "swarm.schedule": 2,  # the root's per-layer schedule
    "swarm.ledger": 2,  # the schedule's facts: holdings, transfers, slots
    "swarm.pace": 2,  # the schedule's clock: usual durations, who is slow
    "swarm.rootwindow": 2,  # the root's window of a layer: what it keeps, what is lost
    "swarm.planner": 2,  # the agent's per-layer planner
    "swarm.decisions": 2,  # what the planner decides, for its driver
    "swarm.reports": 2,  # the reports a planner owes its root
    "swarm.intake": 2,  # a plan request into the schedule, for the tracker and the simulator
    "swarm.depth": 2,  # how many transfers a planner keeps in flight
    "http.throttle": 2,  # token bucket arithmetic
    "observe.events": 2,  # the data path's events, the 10 s windows, the per-layer summary
    "observe.auditline": 2,  # the audit log's exact line format
    "observe.statusview": 2,  # `pollen status` rendering
    "kube.admission": 2,  # AdmissionReview -> JSONPatch + secret plan
    "kube.pullsecrets": 2,  # a pull secret -> its P2P copy
    "node.mirrors": 2,  # containerd hosts.toml routes to the agent
    "sim": 2,  # `pollen simulate`: the swarm on the pure cores over modelled links
    "swarm.preheat": 2,  # the P2P preheat request and reply
    "preheat.images": 2,  # image names, manifests, platforms
    "preheat.auth": 2,  # registry challenges, tokens, credential files
    "preheat.progress": 2,  # preheat progress lines, frame, summary, JSON
    # 3. the native bindings and the chunk store
    "cache": 3,
    # 4. HTTP/1.1 over trio: server, client, responses, TLS contexts, shutdown, the upload cap
    "http": 4,
    "http.servingcert": 4,  # a TLS server certificate that follows its files
    # 5. adapters of the roles that do not fetch layers themselves
    "registry": 5,  # the upstream client, the credential check
    "swarm": 5,  # P2P client and server, the roots
    "observe": 5,  # the audit writer
    "observe.exposition": 5,  # the node label on every pollen_* series, the exporter app
    "kube": 5,  # API client, webhook server, certificates
    "kube.webhookmetrics": 5,  # the webhook's metrics, counted by its I/O layer
    "node": 5,  # the node's address, `pollen doctor`
    # 6. layer downloads: origin, swarm, readers, single flight
    "fetch": 6,
    # 7. what serves the layers: the registry front end, metrics and status
    "registry.proxy": 7,
    "observe.metrics": 7,
    "observe.status": 7,
    # 8. wiring
    "daemon": 8,
    "cli": 8,
    "sim.cli": 8,  # `pollen simulate`'s flags and report
    "preheat": 8,  # `pollen preheat`: manifests from the registry, roots warmed
    "reference": 8,  # docs/REFERENCE.md from the code
    "__main__": 8,
}
LAYER_NAMES = {
    1: "core",
    2: "pure protocol cores",
    3: "native bindings and the chunk store",
    4: "HTTP over trio",
    5: "role adapters",
    6: "layer downloads",
    7: "front ends",
    8: "daemon and CLI",
}
PURE_LAYERS = (1, 2)
# Libraries that mean I/O or an event loop; a pure module imports none of them.
NOT_PURE = frozenset({"trio", "h11", "socket"})
EXTENSION = "cache._pollen_io"
EXTENSION_IMPORTER = "cache.native"


@dataclass(frozen=True)
class Import:
    line: int
    module: str  # absolute dotted name, e.g. "agent.registry.routes" or "urllib.request"


def discover(root: Path = AGENT) -> list[str]:
    """Every module under agent/, as keys of LAYERS: sources and compiled extensions."""
    found: set[str] = set()
    for path in root.rglob("*"):
        if "__pycache__" in path.parts or not path.is_file():
            continue
        if path.suffix not in (".py", ".so", ".pyd"):
            continue
        rel = path.relative_to(root)
        parts = [*rel.parts[:-1], rel.name.split(".", 1)[0]]  # _x.abi3.so -> _x
        if len(parts) > 1 and parts[-1] == "__init__":
            parts = parts[:-1]
        found.add(".".join(parts))
    return sorted(found)


MODULES = discover()


def source_path(module: str) -> Path:
    if module == "__init__":
        return AGENT / "__init__.py"
    path = AGENT.joinpath(*module.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


SOURCES = [m for m in MODULES if source_path(m).exists()]


def _package_of(module: str) -> list[str]:
    """The dotted package a module's relative imports start from."""
    if module == "__init__":
        return [PACKAGE]
    parts = [PACKAGE, *module.split(".")]
    return parts if source_path(module).name == "__init__.py" else parts[:-1]


def imports_of(source: str, module: str, known: set[str]) -> list[Import]:
    """Absolute names of everything `source` imports, at any depth (functions included).

    `from agent import x` names the submodule agent.x when x is one, else the package.
    importlib.import_module("...") and __import__("...") with a literal count as imports too.
    """
    found: list[Import] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [Import(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = _package_of(module)
                base = base[: len(base) - (node.level - 1)]
                if not base:
                    raise AssertionError(f"{module}:{node.lineno}: relative import beyond agent")
                prefix = ".".join(base)
                parent = f"{prefix}.{node.module}" if node.module else prefix
            else:
                parent = node.module or ""
            for alias in node.names:
                sub = f"{parent}.{alias.name}"
                inner = sub.removeprefix(PACKAGE + ".")
                is_submodule = sub.startswith(PACKAGE + ".") and inner in known
                found.append(Import(node.lineno, sub if is_submodule else parent))
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if name in ("import_module", "__import__") and node.args:
                arg = node.args[0]
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    found.append(Import(node.lineno, arg.value))
    return found


def internal(name: str, known: set[str]) -> str | None:
    """The LAYERS key an absolute module name refers to, or None when it is not ours."""
    if name == PACKAGE:
        return "__init__"
    if not name.startswith(PACKAGE + "."):
        return None
    parts = name.removeprefix(PACKAGE + ".").split(".")
    for n in range(len(parts), 0, -1):  # longest known prefix: agent.x.Thing -> x
        candidate = ".".join(parts[:n])
        if candidate in known:
            return candidate
    return ".".join(parts)


KNOWN = set(MODULES) | set(LAYERS)


def layer_of(module: str) -> int | None:
    """The layer of a module: its own entry, else its package's (longest listed prefix)."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        layer = LAYERS.get(".".join(parts[:n]))
        if layer is not None:
            return layer
    return None


def unplaced_message(modules: list[str]) -> str:
    return (
        f"agent module(s) {', '.join(modules)} not in LAYERS in tests/test_layering.py: place "
        "each in its layer (docs/ARCHITECTURE.md, 'Layers') so the import direction is checked"
    )


# --------------------------------------------------------------------------------------------
# The table is complete


def test_every_module_is_placed() -> None:
    unplaced = [m for m in MODULES if layer_of(m) is None]
    assert not unplaced, unplaced_message(unplaced)


def test_table_names_only_known_layers() -> None:
    assert set(LAYERS.values()) <= set(LAYER_NAMES)


def test_the_table_is_not_vacuous() -> None:
    # The source files the architecture relies on are where the table says.
    for module in ("core.errors", "core.config", "registry.routes", "cache.store", "cli"):
        assert module in SOURCES


# --------------------------------------------------------------------------------------------
# Direction


@pytest.mark.parametrize("module", SOURCES)
def test_imports_point_down(module: str) -> None:
    layer = layer_of(module)
    if layer is None:
        pytest.fail(unplaced_message([module]))
    source = source_path(module).read_text(encoding="utf-8")
    problems = []
    for imp in imports_of(source, module, KNOWN):
        target = internal(imp.module, KNOWN)
        if target is None or target == module:
            continue
        target_layer = layer_of(target)
        if target_layer is None:
            problems.append(f"line {imp.line}: imports {imp.module}, which is not in LAYERS")
        elif target_layer > layer:
            problems.append(
                f"line {imp.line}: imports {imp.module} (layer {target_layer}, "
                f"{LAYER_NAMES[target_layer]}) from layer {layer} ({LAYER_NAMES[layer]})"
            )
    assert not problems, f"agent/{source_path(module).relative_to(AGENT)}: " + "; ".join(problems)


@pytest.mark.parametrize("module", [m for m in SOURCES if layer_of(m) in PURE_LAYERS])
def test_pure_modules_do_no_io(module: str) -> None:
    source = source_path(module).read_text(encoding="utf-8")
    bad = [
        f"line {imp.line}: {imp.module}"
        for imp in imports_of(source, module, KNOWN)
        if imp.module.split(".")[0] in NOT_PURE
    ]
    assert not bad, f"agent/{module}.py is in a pure layer but imports " + ", ".join(bad)


@pytest.mark.parametrize("module", SOURCES)
def test_only_native_imports_the_extension(module: str) -> None:
    if module == EXTENSION_IMPORTER:
        return
    source = source_path(module).read_text(encoding="utf-8")
    bad = [
        imp.line
        for imp in imports_of(source, module, KNOWN)
        if internal(imp.module, KNOWN) == EXTENSION
    ]
    assert not bad, (
        f"agent/{module}.py imports agent.{EXTENSION} (lines {bad}); use agent.cache.native"
    )


# --------------------------------------------------------------------------------------------
# The checker itself: it must see the imports it is meant to catch.


def test_checker_sees_every_import_form() -> None:
    source = """
import trio
import agent.daemon
from agent import __version__
from agent.cache import native
from agent.registry.routes import parse_target
from . import ranges
from .proxy import RegistryProxy
from ..cache import store
import importlib

def late():
    from agent.cli import main
    importlib.import_module("agent.http.server")
"""
    got = sorted((i.line, i.module) for i in imports_of(source, "registry.routes", KNOWN))
    assert got == [
        (2, "trio"),
        (3, "agent.daemon"),
        (4, "agent"),
        (5, "agent.cache.native"),
        (6, "agent.registry.routes"),
        (7, "agent.registry.ranges"),
        (8, "agent.registry.proxy"),
        (9, "agent.cache.store"),
        (10, "importlib"),
        (13, "agent.cli"),
        (14, "agent.http.server"),
    ]
    targets = {internal(m, KNOWN) for _, m in got}
    assert targets == {
        None,
        "daemon",
        "__init__",
        "cache.native",
        "registry.routes",
        "registry.ranges",
        "registry.proxy",
        "cache.store",
        "cli",
        "http.server",
    }


def test_a_module_takes_its_package_layer_unless_listed() -> None:
    assert layer_of("registry.routes") == 2
    assert layer_of("registry.client") == LAYERS["registry"]
    assert layer_of("registry.proxy") == 7
    assert layer_of("nowhere.module") is None


def test_relative_imports_beyond_the_package_are_refused() -> None:
    with pytest.raises(AssertionError, match="beyond agent"):
        imports_of("from ... import x\n", "registry.routes", KNOWN)


def test_checker_sees_real_imports() -> None:
    module = "registry.proxy"
    proxy = imports_of(source_path(module).read_text(encoding="utf-8"), module, KNOWN)
    assert {internal(i.module, KNOWN) for i in proxy} >= {
        "registry.routes",
        "registry.ranges",
        "core.errors",
    }
    native = imports_of(source_path(EXTENSION_IMPORTER).read_text(encoding="utf-8"), "", KNOWN)
    assert EXTENSION in {internal(i.module, KNOWN) for i in native}


def test_discover_places_new_files(tmp_path: Path) -> None:
    (tmp_path / "errors.py").write_text("")
    (tmp_path / "__init__.py").write_text("")
    (tmp_path / "swarm").mkdir()
    (tmp_path / "swarm" / "__init__.py").write_text("")
    (tmp_path / "swarm" / "plan.py").write_text("")
    (tmp_path / "_fast.cpython-311-x86_64-linux-gnu.so").write_bytes(b"")
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "__pycache__" / "errors.cpython-311.pyc").write_bytes(b"")
    assert discover(tmp_path) == ["__init__", "_fast", "errors", "swarm", "swarm.plan"]
    assert "swarm.plan" in unplaced_message(["swarm.plan"])
