"""The ``pollen`` command: the top of the import graph.

``pollen agent`` runs the node agent and ``pollen root`` a root; ``pollen run`` takes the role
from ``DeployConfig.mode``. The role is set on the config itself (``dataclasses.replace``), so
``Config`` stays the one truth about it -- ``Config.p2p_enabled`` and the rule that a root needs
``clusterToken`` see the role the command chose, and a broken combination is reported as the
same ``ConfigError`` that ``load_config`` gives. ``pollen status`` reads a running agent's
``/_pollen/status``; ``pollen preheat`` warms the roots (`agent.preheat`). Logging is
configured here and nowhere else.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import types
import urllib.error
import urllib.request
from pathlib import Path

import trio

from agent import __version__
from agent.core.config import Config, help_text, load_config
from agent.core.errors import ConfigError
from agent.preheat import command as preheat_command
from agent.sim import cli as simulate_cli

log = logging.getLogger("agent.cli")
DOCTOR_CONFIG = "/etc/containerd/config.toml"
DOCTOR_SOCKET = "/run/containerd/containerd.sock"


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


def with_role(config: Config, command: str) -> Config:
    """The config as the command runs it: `pollen agent` and `pollen root` fix the mode (the
    config's cross-checks run again, so a root without a cluster token is refused), `pollen
    run` keeps the configured one."""
    if command == "run":
        return config
    sources = types.MappingProxyType({**config.sources, "mode": "command line"})
    return dataclasses.replace(config, mode=command, sources=sources)


def run_role(config: Config) -> int:
    """Run the daemon in the role `config.mode` names until it stops."""
    from agent.daemon import Agent

    try:
        agent = Agent(config)
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
    from agent.observe.statusview import render_status

    url = status_url(config, address)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy
    try:
        with opener.open(url, timeout=5) as reply:
            status = json.load(reply)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        print(f"pollen status: cannot read {url}: {exc}", file=sys.stderr)
        return 1
    if as_json:
        print(json.dumps(status, indent=2))
        return 0
    print(render_status(status), end="")
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
    add_webhook_and_doctor(sub)
    preheat_command.add_parser(sub)
    simulate_cli.add_parser(sub)
    return parser


def add_webhook_and_doctor(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    webhook = sub.add_parser("webhook", help="run the Kubernetes admission webhook (HTTPS)")
    webhook.add_argument("--print-config", action="store_true", help="show the config and exit")
    webhook.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    webhook.add_argument("--service-account-dir", type=Path, help=argparse.SUPPRESS)
    certs = webhook.add_subparsers(dest="webhook_command").add_parser(
        "certs", help="make the serving certificate, store it and fill the caBundle"
    )
    certs.add_argument("--namespace", help="the webhook's namespace (default: the pod's)")
    certs.add_argument("--service", default="pollen-webhook", help="the webhook's Service")
    certs.add_argument("--secret", default="pollen-webhook-tls", help="TLS Secret to keep")
    certs.add_argument(
        "--webhook-configuration", default="pollen-webhook", help="MutatingWebhookConfiguration"
    )
    certs.add_argument("--out-dir", type=Path, help="also write tls.crt, tls.key, ca.crt here")
    certs.add_argument("--cluster-token-secret", help="create this P2P token Secret if missing")
    certs.add_argument(
        "--wait-for-mount",
        type=Path,
        help="then wait until the TLS Secret mounted here holds tls.crt and tls.key",
    )

    doctor = sub.add_parser("doctor", help="check that containerd pulls through the agent")
    doctor.add_argument("--address", help="host:port of the agent's proxy port (default: local)")
    doctor.add_argument("--containerd-config", type=Path, default=Path(DOCTOR_CONFIG))
    doctor.add_argument("--hosts-dir", type=Path, help="hosts.toml directory (default: config's)")
    doctor.add_argument("--containerd-socket", type=Path, default=Path(DOCTOR_SOCKET))
    doctor.add_argument(
        "--via",
        choices=("auto", "cri", "ctr"),
        default="auto",
        help="canary pull with CRI (grpcio, as the kubelet) or ctr",
    )
    doctor.add_argument("--no-canary", action="store_true", help="skip the canary pull")
    hosts = doctor.add_subparsers(dest="doctor_command").add_parser(
        "hosts", help="write containerd hosts.toml files routing registries to the agent"
    )
    hosts.add_argument("--dir", type=Path, default=Path("/etc/containerd/certs.d"))
    hosts.add_argument("--mirror", action="store_true", help="also each upstream's own name")
    hosts.add_argument("--default", action="store_true", help="also _default (containerd>=1.7)")
    hosts.add_argument("--force", action="store_true", help="replace files pollen did not write")


def run_webhook_or_doctor(args: argparse.Namespace, config: Config) -> int:
    if args.command == "doctor":
        from agent.node import doctor

        if args.doctor_command == "hosts":
            for line in doctor.write_hosts(
                config, args.dir, mirror=args.mirror, default=args.default, force=args.force
            ):
                print(line)
            return 0
        options = doctor.DoctorOptions(
            address=args.address,
            containerd_config=args.containerd_config,
            hosts_dir=args.hosts_dir,
            socket=args.containerd_socket,
            via=args.via,
            canary=not args.no_canary,
        )
        findings = doctor.diagnose(config, options)
        print(doctor.report(findings))
        return 0 if all(f.ok for f in findings) else 1
    if args.webhook_command == "certs":
        from agent.kube import certs as webhookcerts

        configure_logging(False)
        job = webhookcerts.CertsJob(
            namespace=args.namespace,
            service=args.service,
            secret=args.secret,
            configuration=args.webhook_configuration,
            out_dir=args.out_dir,
            cluster_token_secret=args.cluster_token_secret,
            wait_for_mount=args.wait_for_mount,
        )
        return webhookcerts.main(job, args.service_account_dir)
    if args.print_config:
        print_config(config)
        return 0
    from agent.kube import webhook

    configure_logging(args.verbose)
    return webhook.run(config, account_dir=args.service_account_dir)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.help_config:
        print(help_text(), end="")
        return 0
    if args.command is None:
        parser.print_help()
        return 2
    if args.command == "simulate":  # needs no configuration: it runs no node
        return simulate_cli.main(args)
    try:
        config = load_config()
    except ConfigError as exc:
        print(f"pollen: {exc}", file=sys.stderr)
        return 2
    if args.command in ("webhook", "doctor"):
        return run_webhook_or_doctor(args, config)
    if args.command == "status":
        return show_status(config, args.address, args.json)
    if args.command == "preheat":
        return preheat_command.main(args, config)
    try:
        config = with_role(config, args.command)
    except ConfigError as exc:
        print(f"pollen: {exc}", file=sys.stderr)
        return 2
    if args.print_config:
        print_config(config)  # as the role will run it: `pollen root` shows mode root
        return 0
    configure_logging(args.verbose)
    try:
        return run_role(config)
    except KeyboardInterrupt:
        return 130
    except OSError as exc:
        log.error("cannot start: %s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
