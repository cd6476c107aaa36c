"""Target: a manifest or index as `pollen preheat` reads it from a registry
(`agent.preheat.images.parse_manifest`), and the platform choice made on an index
(`select_manifests`).

The input's first byte picks the Content-Type the registry is said to have sent (none, or one
of the four manifest types); the rest is the body.

Contract: parse_manifest and select_manifests raise only ManifestError; what is accepted is
well-formed: every descriptor a canonical digest and a size in range, an image's blobs each
once with the config first, each chosen manifest one of the index's for a platform asked for.
"""

from __future__ import annotations

from agent.preheat.images import (
    ACCEPT,
    MAX_BLOB_SIZE,
    Descriptor,
    ImageManifest,
    ManifestError,
    Platform,
    parse_manifest,
    select_manifests,
)
from agent.registry.routes import parse_digest

WANTED = (Platform("linux", "amd64"), Platform("linux", "arm64"), Platform("linux", "arm"))


def _check(descriptor: Descriptor) -> None:
    assert str(parse_digest(descriptor.digest)) == descriptor.digest
    assert 0 <= descriptor.size < MAX_BLOB_SIZE


def fuzz_one(data: bytes) -> None:
    """One registry answer through the manifest parser and the platform choice."""
    if not data:
        return
    types = (None, *ACCEPT)
    content_type = types[data[0] % len(types)]
    try:
        parsed = parse_manifest(data[1:], content_type)
    except ManifestError:
        return
    if isinstance(parsed, ImageManifest):
        blobs = parsed.blobs()
        assert blobs[0] == parsed.config
        assert len({b.digest for b in blobs}) == len(blobs)
        for blob in blobs:
            _check(blob)
        return
    for entry in parsed.manifests:
        _check(entry)
    try:
        chosen = select_manifests(parsed, WANTED)
    except ManifestError:
        return
    assert len(chosen) <= len(WANTED)
    for platform, entry in chosen:
        assert platform in WANTED and entry in parsed.manifests
        assert entry.platform is not None and entry.platform.os == platform.os
