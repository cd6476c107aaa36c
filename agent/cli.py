"""The ``pollen`` command: the top of the import graph.

``pollen agent`` runs the node agent; ``pollen run`` takes the role from ``DeployConfig.mode``;
``pollen status`` reads a running agent's ``/_pollen/status``. Logging is configured here and
nowhere else.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import urllib.error
import urllib.request

import trio

from agent import __version__
from agent.config import Config, help_text, load_config
from agent.errors import ConfigError

log = logging.getLogger("agent.cli")


def configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def print_config(config: Config) -> None:
    rows = config.describe()
    width = max(len(r[0]) for r in rows)
    env_width = max(len(r[1]) for r in rows)
    for file_key, env, value, source in rows:
        print(f"{file_key:<{width}}  {env:<{env_width}}  {value}  ({source})")


def run_role(config: Config, role: str) -> int:
    from agent.daemon import Agent

    try:
        agent = Agent(config, mode=role)
    except ConfigError as exc:
        print(f"pollen: {exc}", file=sys.stderr)
        return 2
    trio.run(agent.run)
    return 0


def status_url(config: Config, address: str | None) -> str:
    if address:
        base = address if "://" in address else f"http://{address}"
    else:
        scheme = "https" if config.tls_cert else "http"
        base = f"{scheme}://127.0.0.1:{config.proxy_port}"
    return base.rstrip("/") + "/_pollen/status"


def show_status(config: Config, address: str | None, as_json: bool) -> int:
    url = status_url(config, address)
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:  # noqa: S310 - loopback admin URL
            status = json.load(reply)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        print(f"pollen status: cannot read {url}: {exc}", file=sys.stderr)
        return 1
    if as_json:
        print(json.dumps(status, indent=2))
        return 0
    cache = status["cache"]
    print(f"pollen {status['version']} {status['mode']} {status['node']} ready={status['ready']}")
    print(
        f"cache: {cache['used']} of {cache['capacity']} bytes, {cache['layers']} layers, "
        f"{cache['evictions']} evictions; I/O engine {status['io_engine']['name']}"
    )
    layers = status["layers_in_flight"]
    print(f"layers in flight: {len(layers)}")
    for layer in layers:
        size = layer["size"] or 0
        done = layer["received"]
        fraction = done / size if size else 0.0
        bar = "#" * int(fraction * 30)
        rate = done / layer["seconds"] if layer["seconds"] else 0.0
        print(
            f"  {layer['digest'][:19]}  [{bar:<30}] {fraction:6.1%}  {done}/{size} bytes  "
            f"{rate / 1e6:.1f} MB/s  from {layer['upstream']} ({layer['mode']})"
        )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pollen", description="P2P container image accelerator")
    parser.add_argument("--version", action="version", version=f"pollen {__version__}")
    parser.add_argument("--help-config", action="store_true", help="list every configuration key")
    sub = parser.add_subparsers(dest="command")
    for name, text in (
        ("agent", "run the node agent (registry proxy with a disk cache)"),
        ("root", "run a root: an agent that also tracks the layers it owns and fetches them"),
        ("run", "run the role named by DeployConfig.mode"),
    ):
        role = sub.add_parser(name, help=text)
        role.add_argument(
            "--print-config", action="store_true", help="show the effective config and exit"
        )
        role.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    status = sub.add_parser("status", help="show a running agent's cache and downloads")
    status.add_argument("--address", help="host:port of the agent's proxy port (default: local)")
    status.add_argument("--json", action="store_true", help="raw JSON for scripts")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.help_config:
        print(help_text(), end="")
        return 0
    if args.command is None:
        parser.print_help()
        return 2
    try:
        config = load_config()
    except ConfigError as exc:
        print(f"pollen: {exc}", file=sys.stderr)
        return 2
    if args.command == "status":
        return show_status(config, args.address, args.json)
    if args.print_config:
        print_config(config)
        return 0
    configure_logging(args.verbose)
    role = config.mode if args.command == "run" else args.command
    try:
        return run_role(config, role)
    except KeyboardInterrupt:
        return 130
    except OSError as exc:
        log.error("cannot start: %s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
