"""Which blobs a pull of an image will ask for, without I/O: names, manifests, platforms.

A pull resolves a tag to a manifest; when that is an index (an OCI image index or a Docker
manifest list) it picks the manifest of its own platform, then fetches that manifest's config
blob and its layers. Preheat makes the same choices for the platforms it is given (the node's
by default), so what it warms is what the pulls will read. Layers a manifest lists with
``urls`` (non-distributable, e.g. Windows base layers) come from elsewhere, never from the
registry, and are left out.

Platforms match as containerd matches them: the OS and architecture exactly, the variant
after normalizing (arm64 without a variant is v8, arm without one is v7, amd64 v1 is plain
amd64); asked without a variant, the plain (or normalized) entry wins over other variants.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from agent.core.errors import RegistryError
from agent.core.values import parse_json_object
from agent.kube.admission import parse_image
from agent.registry.routes import parse_digest

MT_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MT_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MT_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
INDEX_TYPES = frozenset({MT_OCI_INDEX, MT_DOCKER_LIST})
MANIFEST_TYPES = frozenset({MT_OCI_MANIFEST, MT_DOCKER_MANIFEST})
# Each its own Accept line, as containerd sends them (Distribution misreads folded ones).
ACCEPT = (MT_OCI_INDEX, MT_DOCKER_LIST, MT_OCI_MANIFEST, MT_DOCKER_MANIFEST)
MANIFEST_LIMIT = 4 << 20  # what registries and clients accept (the proxy's limit too)
MAX_BLOB_SIZE = 1 << 50
MAX_ENTRIES = 4096  # manifests in an index, layers in a manifest

# platform.machine() -> OCI architecture and variant (the GOARCH names containerd uses).
_MACHINES: dict[str, tuple[str, str | None]] = {
    "x86_64": ("amd64", None),
    "amd64": ("amd64", None),
    "aarch64": ("arm64", None),
    "arm64": ("arm64", None),
    "armv8l": ("arm", "v8"),
    "armv7l": ("arm", "v7"),
    "armv6l": ("arm", "v6"),
    "armv5tel": ("arm", "v5"),
    "i386": ("386", None),
    "i686": ("386", None),
    "ppc64le": ("ppc64le", None),
    "s390x": ("s390x", None),
    "riscv64": ("riscv64", None),
    "loongarch64": ("loong64", None),
    "mips64": ("mips64", None),
}


class PreheatError(Exception):
    """Why a preheat cannot go on, said to the user as it is; `exit_code` 2 for what the
    configuration or the command line must fix, 1 for the rest (the image, the roots)."""

    def __init__(self, message: str, *, exit_code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


class ManifestError(ValueError):
    """A manifest that cannot be used, or an image without the platform asked for."""


@dataclass(frozen=True)
class ImageName:
    """An image as given on the command line, split: ``host`` as the reference names the
    registry (``docker.io`` when implied), ``reference`` a tag or a digest."""

    text: str
    host: str
    repo: str
    reference: str


def parse_image_name(text: str) -> ImageName:
    """``[host[:port]/]path[:tag][@digest]``, Docker's rules (no host: Docker Hub, a single
    path component: ``library/``; no tag: ``latest``); ValueError names what is wrong."""
    ref = parse_image(text)
    reference = ref.digest or ref.tag or "latest"
    return ImageName(text=text, host=ref.host, repo=ref.path, reference=reference)


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str | None = None

    def __str__(self) -> str:
        parts = [self.os, self.architecture, *([self.variant] if self.variant else [])]
        return "/".join(parts)

    def normalized(self) -> Platform:
        """The variant a missing one stands for, and none where it says nothing."""
        arch, variant = self.architecture, self.variant
        if arch == "arm64" and variant in ("v8", "8"):
            variant = None
        elif arch == "arm" and variant is None:
            variant = "v7"
        elif arch == "amd64" and variant == "v1":
            variant = None
        return Platform(self.os, arch, variant)


def parse_platform(text: str) -> Platform:
    """``os/arch[/variant]``, as docker and skopeo take it."""
    parts = text.strip().lower().split("/")
    if not 2 <= len(parts) <= 3 or not all(parts):
        raise ValueError(f"platform must be os/arch[/variant], got {text!r}")
    return Platform(parts[0], parts[1], parts[2] if len(parts) == 3 else None)


def node_platform(machine: str, system: str = "Linux") -> Platform:
    """This machine's platform (from `platform.machine()` and `platform.system()`)."""
    arch, variant = _MACHINES.get(machine.lower(), (machine.lower(), None))
    return Platform(system.lower(), arch, variant)


@dataclass(frozen=True)
class Descriptor:
    """A blob or a manifest a document points at."""

    digest: str
    size: int
    media_type: str
    platform: Platform | None = None


@dataclass(frozen=True)
class Index:
    """An OCI image index or a Docker manifest list."""

    manifests: tuple[Descriptor, ...]


@dataclass(frozen=True)
class ImageManifest:
    """One platform's image: its config blob and its layers."""

    config: Descriptor
    layers: tuple[Descriptor, ...]

    def blobs(self) -> list[Descriptor]:
        """What a pull GETs under /blobs/: the config first, then each layer once."""
        out: list[Descriptor] = []
        for blob in (self.config, *self.layers):
            if all(b.digest != blob.digest for b in out):
                out.append(blob)
        return out


def parse_manifest(body: bytes, content_type: str | None) -> Index | ImageManifest:
    """A registry's manifest (or index) → what it points at; ManifestError otherwise."""
    if len(body) > MANIFEST_LIMIT:
        raise ManifestError(f"manifest larger than {MANIFEST_LIMIT >> 20} MiB")
    try:
        doc = parse_json_object(body, "manifest")
    except ValueError as exc:
        raise ManifestError(str(exc)) from None
    if doc.get("schemaVersion") == 1:
        raise ManifestError("schema 1 manifests (Docker before 1.10) are not supported")
    if doc.get("schemaVersion") != 2:
        raise ManifestError(f"unknown manifest schemaVersion {doc.get('schemaVersion')!r:.20}")
    media_type = doc.get("mediaType")
    if media_type is not None and not isinstance(media_type, str):
        raise ManifestError("manifest mediaType must be a string")
    if media_type is None and content_type:
        media_type = content_type.partition(";")[0].strip()
    if media_type in INDEX_TYPES or (media_type is None and "manifests" in doc):
        return Index(tuple(_descriptor(d, "manifests") for d in _entries(doc, "manifests")))
    if media_type in MANIFEST_TYPES or (media_type is None and "layers" in doc):
        layers = [d for d in _entries(doc, "layers") if not _foreign(d)]
        return ImageManifest(
            config=_descriptor(doc.get("config"), "config"),
            layers=tuple(_descriptor(d, "layers") for d in layers),
        )
    raise ManifestError(f"not an image manifest or index (media type {media_type!r:.80})")


def _entries(doc: dict[str, Any], key: str) -> list[Any]:
    entries = doc.get(key)
    if not isinstance(entries, list):
        raise ManifestError(f"manifest {key} must be a list")
    if len(entries) > MAX_ENTRIES:
        raise ManifestError(f"more than {MAX_ENTRIES} {key} in one manifest")
    return entries


def _foreign(entry: Any) -> bool:
    """A non-distributable layer: fetched from its ``urls``, never from the registry."""
    return isinstance(entry, dict) and bool(entry.get("urls"))


def _descriptor(entry: Any, where: str) -> Descriptor:
    if not isinstance(entry, dict):
        raise ManifestError(f"{where}: a descriptor must be a JSON object")
    digest, size, media_type = entry.get("digest"), entry.get("size"), entry.get("mediaType")
    if not isinstance(digest, str):
        raise ManifestError(f"{where}: descriptor without a digest")
    try:
        digest = str(parse_digest(digest))
    except RegistryError as e:
        raise ManifestError(f"{where}: {e.message}") from None
    if type(size) is not int or not 0 <= size < MAX_BLOB_SIZE:
        raise ManifestError(f"{where}: {digest} has no valid size")
    if not isinstance(media_type, str):
        media_type = ""
    return Descriptor(digest, size, media_type, _platform(entry.get("platform"), where))


def _platform(value: Any, where: str) -> Platform | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ManifestError(f"{where}: platform must be a JSON object")
    os_name, arch, variant = value.get("os"), value.get("architecture"), value.get("variant")
    if not isinstance(os_name, str) or not isinstance(arch, str):
        raise ManifestError(f"{where}: platform without os and architecture")
    if variant is not None and not isinstance(variant, str):
        raise ManifestError(f"{where}: platform variant must be a string")
    return Platform(os_name.lower(), arch.lower(), variant.lower() if variant else None)


def select_manifests(index: Index, wanted: Sequence[Platform]) -> list[tuple[Platform, Descriptor]]:
    """The index's manifest for each wanted platform; ManifestError names the platforms
    the image lacks and the ones it has."""
    chosen: list[tuple[Platform, Descriptor]] = []
    missing: list[str] = []
    for platform in wanted:
        found = best_match(platform, index.manifests)
        if found is None:
            missing.append(str(platform))
        elif all(d.digest != found.digest for _, d in chosen):
            chosen.append((platform, found))
    if missing:
        offered = sorted({str(d.platform) for d in index.manifests if d.platform is not None})
        raise ManifestError(
            f"no manifest for {', '.join(missing)}; the image has "
            f"{', '.join(offered) or 'no platform-tagged manifests'}"
        )
    return chosen


def best_match(wanted: Platform, offered: Sequence[Descriptor]) -> Descriptor | None:
    """The first descriptor for `wanted`, an exact (normalized) variant before another."""
    want = wanted.normalized()
    fallback: Descriptor | None = None
    for d in offered:
        if d.platform is None:
            continue
        have = d.platform.normalized()
        if (have.os, have.architecture) != (want.os, want.architecture):
            continue
        if have.variant == want.variant:
            return d
        if wanted.variant is None and fallback is None:
            fallback = d
    return fallback
