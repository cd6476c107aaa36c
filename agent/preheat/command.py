"""``pollen preheat IMAGE...``: the command line, and the run that ties the parts together.

Everything that can be checked without the network is checked first, each failure named for
what fixes it (exit status 2): the platforms, each image's name and registry (it must be in
``upstreams``: preheat contacts no other registry, as the agent contacts none), the roots and
the credentials. Then the images are resolved against their registries, the credentials
checked against the P2P port (a registry credential crosses to the roots only over P2P TLS,
as a pull's does), and every blob is warmed at its owning root (exit status 1 when any
image, root or blob fails).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from agent.core.config import Config
from agent.core.hostport import join_hostport
from agent.core.upstream import Upstream
from agent.core.values import parse_duration
from agent.http.client import HttpClient
from agent.http.tls import make_client_ssl_context
from agent.node.address import detect_node_ip
from agent.preheat.auth import (
    CredentialError,
    Credentials,
    authfile_candidates,
    find_credentials,
    parse_creds,
)
from agent.preheat.images import (
    ImageName,
    Platform,
    PreheatError,
    node_platform,
    parse_image_name,
    parse_platform,
)
from agent.preheat.manifests import BlobRef, CredentialSource, ManifestReader
from agent.preheat.progress import (
    BlobState,
    ImageReport,
    format_bytes,
    json_document,
    summary,
)
from agent.preheat.warm import Display, Warmer
from agent.registry.client import RegistryClient
from agent.registry.upstreams import match_upstream
from agent.swarm.client import P2PClient
from agent.swarm.protocol import parse_node
from agent.swarm.roots import RootSet

DEFAULT_TIMEOUT = "1h"


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    preheat = sub.add_parser(
        "preheat",
        help="have the roots fetch images into their caches before a rollout",
        description="Resolve each image (tag, index, the manifests of the platforms asked "
        "for) and have the owning root of every blob fetch it into its cache, then wait "
        "until each one is there. Uses the node's configuration (POLLEN_ROOTS, "
        "POLLEN_CLUSTER_TOKEN, POLLEN_UPSTREAMS, POLLEN_P2P_TLS_*). Exit status: 0 every "
        "blob is cached at its root; 1 an image, a root or a blob failed; 2 the command "
        "line or the configuration must change.",
    )
    preheat.add_argument(
        "images", nargs="+", metavar="IMAGE", help="[registry/]repository[:tag][@digest]"
    )
    preheat.add_argument(
        "--platform",
        action="append",
        metavar="OS/ARCH[/VARIANT]",
        help="the platform of an index to preheat; repeat for several (default: this "
        "machine's, e.g. linux/amd64)",
    )
    preheat.add_argument(
        "--creds",
        metavar="USER:PASSWORD",
        help="registry credentials, used when the registry asks for them (default: the auth file)",
    )
    preheat.add_argument(
        "--authfile",
        type=Path,
        metavar="PATH",
        help="auth file with registry credentials (default: $REGISTRY_AUTH_FILE, "
        "$XDG_RUNTIME_DIR/containers/auth.json, then ~/.docker/config.json)",
    )
    preheat.add_argument(
        "--json", action="store_true", help="one JSON document on stdout instead of progress"
    )
    preheat.add_argument(
        "--timeout",
        default=DEFAULT_TIMEOUT,
        metavar="DURATION",
        help=f"fail the blobs not cached by then (default {DEFAULT_TIMEOUT})",
    )


@dataclass(frozen=True)
class Job:
    """A preheat, checked: everything the run needs."""

    config: Config
    images: tuple[tuple[ImageName, Upstream], ...]
    platforms: tuple[Platform, ...]
    creds: Credentials | None
    authfile: Path | None
    timeout: float
    as_json: bool


def main(args: argparse.Namespace, config: Config) -> int:
    try:
        job = check(args, config)
    except PreheatError as exc:
        return fail(exc, args.json)
    try:
        return trio.run(run, job)
    except PreheatError as exc:
        return fail(exc, job.as_json)
    except KeyboardInterrupt:
        return 130


def fail(exc: PreheatError, as_json: bool) -> int:
    """The message on stderr (and, for --json, a document saying it); the exit status."""
    print(f"pollen preheat: {exc.message}", file=sys.stderr)
    if as_json:
        doc = json_document([], [], 0.0, now=0.0, error=exc.message)
        print(json.dumps(doc, indent=2))
    return exc.exit_code


def check(args: argparse.Namespace, config: Config) -> Job:
    """The command line and configuration, checked before anything is contacted."""
    if not config.roots:
        raise PreheatError(
            "roots (POLLEN_ROOTS) is not set: preheat asks the roots to fetch the blobs; "
            "run it with a node's configuration",
            exit_code=2,
        )
    try:
        platforms = tuple(parse_platform(p) for p in args.platform or ())
    except ValueError as exc:
        raise PreheatError(f"--platform: {exc}", exit_code=2) from None
    if not platforms:
        platforms = (node_platform(platform.machine(), platform.system()),)
    images = []
    for text in args.images:
        try:
            name = parse_image_name(text)
        except ValueError as exc:
            raise PreheatError(str(exc), exit_code=2) from None
        upstream = match_upstream(name.host, config.upstreams)
        if upstream is None:
            listed = ", ".join(str(u) for u in config.upstreams)
            raise PreheatError(
                f"registry {name.host!r} of image {text} is not in upstreams "
                f"(POLLEN_UPSTREAMS: {listed}): add it there to preheat from it",
                exit_code=2,
            )
        images.append((name, upstream))
    try:
        creds = parse_creds(args.creds) if args.creds else None
        timeout = parse_duration(args.timeout)
    except (CredentialError, ValueError) as exc:
        raise PreheatError(str(exc), exit_code=2) from None
    return Job(
        config=config,
        images=tuple(images),
        platforms=platforms,
        creds=creds,
        authfile=args.authfile,
        timeout=timeout,
        as_json=args.json,
    )


def credential_source(job: Job) -> CredentialSource:
    """(registry host, repo) → the credentials to answer its challenge with, or None."""
    docs: dict[Path, Any] = {}

    def lookup(host: str, repo: str) -> Credentials | None:
        if job.creds is not None:
            return job.creds
        paths = [job.authfile] if job.authfile else authfile_candidates(os.environ, Path.home())
        for path in paths:
            if path not in docs:
                docs[path] = _read_authfile(path, required=path == job.authfile)
            try:
                found = find_credentials(docs[path], host, repo)
            except CredentialError as exc:
                raise PreheatError(f"{path}: {exc}", exit_code=2) from None
            if found is not None:
                return found
        return None

    return lookup


def _read_authfile(path: Path, *, required: bool) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        if required:
            raise PreheatError(f"--authfile {path} does not exist", exit_code=2) from None
        return None
    except (OSError, ValueError) as exc:
        raise PreheatError(f"cannot read the auth file {path}: {exc}", exit_code=2) from None


def _p2p_http(config: Config) -> HttpClient:
    """Connections to the roots' P2P port, with this node's certificate if P2P TLS is on."""
    context = make_client_ssl_context(
        config.p2p_tls_ca or None, cert=config.p2p_tls_cert, key=config.p2p_tls_key
    )
    return HttpClient(context, timeout=config.upstream_timeout)


async def run(job: Job) -> int:
    config = job.config
    http = HttpClient(
        make_client_ssl_context(config.upstream_ca_file or None), timeout=config.upstream_timeout
    )
    p2p_http = _p2p_http(config)
    client = P2PClient(
        p2p_http,
        token=config.cluster_token.encode(),
        node=parse_node(join_hostport(config.node_ip or detect_node_ip(), config.p2p_port)),
        tls=bool(config.p2p_tls_cert),
    )
    try:
        roots = RootSet(config.roots, p2p_port=config.p2p_port)
        await roots.resolve()
        if not roots.addresses:
            raise PreheatError(f"roots (POLLEN_ROOTS) {','.join(config.roots)} name no address")
        reader = ManifestReader(
            RegistryClient(http, retries=config.upstream_retries), http, credential_source(job)
        )
        started = trio.current_time()
        reports, jobs = await resolve_all(reader, job)
        for access in reader.accesses:
            if access.authorization and not client.tls:
                raise PreheatError(
                    f"registry {access.upstream.key} serves {access.repo} only with "
                    f"{access.what}, which would cross to the roots in clear text: set "
                    "POLLEN_P2P_TLS_CA, POLLEN_P2P_TLS_CERT and POLLEN_P2P_TLS_KEY (a pull's "
                    "credentials reach the roots only over P2P TLS; without it the agents "
                    "fetch such layers from the registry themselves)",
                    exit_code=2,
                )
        return await warm_all(job, reports, jobs, roots.addresses, client, started)
    finally:
        await http.aclose()
        await p2p_http.aclose()


async def resolve_all(
    reader: ManifestReader, job: Job
) -> tuple[list[ImageReport], list[tuple[BlobState, BlobRef]]]:
    """Every image's blobs, each blob once (the first image naming it says where from)."""
    reports: list[ImageReport] = []
    jobs: dict[str, tuple[BlobState, BlobRef]] = {}
    for name, upstream in job.images:
        report, blobs = await reader.resolve(name, upstream, job.platforms)
        reports.append(report)
        for blob in blobs:
            digest = blob.descriptor.digest
            if digest not in jobs:
                state = BlobState(digest=digest, size=blob.descriptor.size, kind=blob.kind)
                jobs[digest] = (state, blob)
            if name.text not in jobs[digest][0].images:
                jobs[digest][0].images.append(name.text)
    return reports, list(jobs.values())


async def warm_all(
    job: Job,
    reports: list[ImageReport],
    jobs: list[tuple[BlobState, BlobRef]],
    roots: list[str],
    client: P2PClient,
    started: float,
) -> int:
    """Warm every blob with progress on stdout; the summary (or document) and exit status."""
    blobs = [state for state, _ in jobs]
    warmer = Warmer(client, roots)
    display = Display(blobs, tty=sys.stdout.isatty())
    if not job.as_json:
        total = format_bytes(sum(b.size for b in blobs))
        platforms = ", ".join(str(p) for p in job.platforms)
        print(f"preheating {len(blobs)} blobs ({total}) for {platforms} at {len(roots)} root(s)")
    async with trio.open_nursery() as nursery:
        if not job.as_json:
            nursery.start_soon(display.run, warmer.warnings)
        await warmer.warm(jobs, job.timeout)
        nursery.cancel_scope.cancel()
    seconds = trio.current_time() - started
    error = None
    if warmer.all_down:
        reasons = "; ".join(f"{r}: {why}" for r, why in warmer.down.items())
        error = f"no root answers ({reasons}): check POLLEN_ROOTS and that the roots run"
    failed = any(b.state == "failed" for b in blobs)
    if job.as_json:
        doc = json_document(
            reports, blobs, seconds, now=trio.current_time(), warnings=warmer.warnings, error=error
        )
        print(json.dumps(doc, indent=2))
    else:
        display.show(warmer.warnings)
        print(summary(blobs, len(reports), seconds))
    if error:
        print(f"pollen preheat: {error}", file=sys.stderr)
    return 1 if failed or error else 0
