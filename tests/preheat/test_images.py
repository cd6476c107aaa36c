"""Which blobs a pull of an image asks for (agent/preheat/images.py): names, manifests,
platform choice, as containerd makes it."""

from __future__ import annotations

import json

import pytest

from agent.preheat.images import (
    MT_DOCKER_LIST,
    MT_DOCKER_MANIFEST,
    MT_OCI_INDEX,
    MT_OCI_MANIFEST,
    ImageManifest,
    Index,
    ManifestError,
    Platform,
    best_match,
    node_platform,
    parse_image_name,
    parse_manifest,
    parse_platform,
    select_manifests,
)


def digest(n: int) -> str:
    return f"sha256:{n:064x}"


def descriptor(n: int, size: int = 10, **extra: object) -> dict[str, object]:
    return {"mediaType": "application/x", "digest": digest(n), "size": size, **extra}


def platform_entry(n: int, os_name: str, arch: str, variant: str | None = None) -> dict:
    platform = {"os": os_name, "architecture": arch}
    if variant:
        platform["variant"] = variant
    return descriptor(n, platform=platform)


def index(*entries: dict, media_type: str = MT_OCI_INDEX) -> Index:
    doc = {"schemaVersion": 2, "mediaType": media_type, "manifests": list(entries)}
    parsed = parse_manifest(json.dumps(doc).encode(), None)
    assert isinstance(parsed, Index)
    return parsed


@pytest.mark.parametrize(
    ("text", "host", "repo", "reference"),
    [
        ("ubuntu", "docker.io", "library/ubuntu", "latest"),
        ("team/app:v1", "docker.io", "team/app", "v1"),
        ("127.0.0.1:5000/team/app:v1", "127.0.0.1:5000", "team/app", "v1"),
        ("reg.example.com/a/b/c", "reg.example.com", "a/b/c", "latest"),
        (f"reg.example.com/app:v1@{digest(1)}", "reg.example.com", "app", digest(1)),
        ("localhost/app", "localhost", "app", "latest"),
    ],
)
def test_image_names_split_as_docker_splits_them(
    text: str, host: str, repo: str, reference: str
) -> None:
    name = parse_image_name(text)
    assert (name.host, name.repo, name.reference, name.text) == (host, repo, reference, text)


@pytest.mark.parametrize("text", ["", "UPPER/case", "reg.example.com/app:bad tag", "app@sha256:1"])
def test_a_bad_image_name_is_a_value_error(text: str) -> None:
    with pytest.raises(ValueError):
        parse_image_name(text)


def test_platforms_parse_and_the_node_s_comes_from_the_machine() -> None:
    assert parse_platform("linux/arm64/v8") == Platform("linux", "arm64", "v8")
    assert str(parse_platform("Linux/AMD64")) == "linux/amd64"
    for bad in ("linux", "linux/", "a/b/c/d", "/amd64"):
        with pytest.raises(ValueError, match="os/arch"):
            parse_platform(bad)
    assert node_platform("x86_64") == Platform("linux", "amd64")
    assert node_platform("aarch64") == Platform("linux", "arm64")
    assert node_platform("armv7l") == Platform("linux", "arm", "v7")
    assert node_platform("riscv64", "Linux") == Platform("linux", "riscv64")


def test_an_image_manifest_names_its_config_then_its_layers_once_each() -> None:
    doc = {
        "schemaVersion": 2,
        "mediaType": MT_DOCKER_MANIFEST,
        "config": descriptor(1, 500),
        "layers": [
            descriptor(2, 1000),
            descriptor(3, 2000),
            descriptor(2, 1000),  # the same layer twice in one image: fetched once
            descriptor(4, 3000, urls=["https://elsewhere.example/layer"]),  # not distributable
        ],
    }
    manifest = parse_manifest(json.dumps(doc).encode(), None)
    assert isinstance(manifest, ImageManifest)
    assert [(b.digest, b.size) for b in manifest.blobs()] == [
        (digest(1), 500),
        (digest(2), 1000),
        (digest(3), 2000),
    ]


def test_the_media_type_may_come_from_the_header_only() -> None:
    doc = {"schemaVersion": 2, "config": descriptor(1), "layers": []}
    parsed = parse_manifest(json.dumps(doc).encode(), f"{MT_OCI_MANIFEST}; charset=utf-8")
    assert isinstance(parsed, ImageManifest)
    listing = {"schemaVersion": 2, "manifests": [platform_entry(1, "linux", "amd64")]}
    assert isinstance(parse_manifest(json.dumps(listing).encode(), MT_DOCKER_LIST), Index)


@pytest.mark.parametrize(
    ("doc", "words"),
    [
        (b"not json", "not JSON"),
        (b"[]", "not a JSON object"),
        (json.dumps({"schemaVersion": 1, "fsLayers": []}).encode(), "schema 1"),
        (json.dumps({"schemaVersion": 3}).encode(), "schemaVersion"),
        (json.dumps({"schemaVersion": 2, "mediaType": "text/plain"}).encode(), "not an image"),
        (
            json.dumps({"schemaVersion": 2, "mediaType": MT_OCI_MANIFEST, "layers": []}).encode(),
            "config",
        ),
        (
            json.dumps(
                {"schemaVersion": 2, "config": descriptor(1), "layers": [{"digest": "x"}]}
            ).encode(),
            "layers",
        ),
        (
            json.dumps(
                {"schemaVersion": 2, "config": descriptor(1, size=-1), "layers": []}
            ).encode(),
            "size",
        ),
        (json.dumps({"schemaVersion": 2, "manifests": {}}).encode(), "list"),
        (
            json.dumps(
                {"schemaVersion": 2, "manifests": [descriptor(1, platform={"os": 1})]}
            ).encode(),
            "platform",
        ),
    ],
)
def test_an_unusable_manifest_says_why(doc: bytes, words: str) -> None:
    with pytest.raises(ManifestError, match=words):
        parse_manifest(doc, None)


def test_each_platform_asked_for_gets_its_manifest() -> None:
    listing = index(
        platform_entry(1, "linux", "amd64"),
        platform_entry(2, "linux", "arm64", "v8"),
        platform_entry(3, "linux", "arm", "v7"),
        platform_entry(4, "unknown", "unknown"),  # a build attestation
    )
    chosen = select_manifests(
        listing, [Platform("linux", "amd64"), Platform("linux", "arm64"), Platform("linux", "arm")]
    )
    assert [d.digest for _, d in chosen] == [digest(1), digest(2), digest(3)]
    # The same manifest asked twice (arm64 and arm64/v8) is preheated once.
    twice = select_manifests(
        listing, [Platform("linux", "arm64"), parse_platform("linux/arm64/v8")]
    )
    assert [d.digest for _, d in twice] == [digest(2)]


def test_a_missing_platform_names_what_the_image_has() -> None:
    listing = index(platform_entry(1, "linux", "amd64"), platform_entry(2, "linux", "arm64"))
    with pytest.raises(ManifestError) as missing:
        select_manifests(listing, [Platform("linux", "amd64"), Platform("linux", "s390x")])
    assert str(missing.value) == (
        "no manifest for linux/s390x; the image has linux/amd64, linux/arm64"
    )


def test_variants_match_as_containerd_normalizes_them() -> None:
    plain_and_v3 = [
        parse_entry(platform_entry(1, "linux", "amd64", "v3")),
        parse_entry(platform_entry(2, "linux", "amd64")),
    ]
    assert best_match(Platform("linux", "amd64"), plain_and_v3).digest == digest(2)  # type: ignore[union-attr]
    assert best_match(parse_platform("linux/amd64/v3"), plain_and_v3).digest == digest(1)  # type: ignore[union-attr]
    only_v3 = plain_and_v3[:1]
    assert best_match(Platform("linux", "amd64"), only_v3).digest == digest(1)  # type: ignore[union-attr]
    assert best_match(parse_platform("linux/amd64/v2"), only_v3) is None
    arm = [parse_entry(platform_entry(3, "linux", "arm"))]  # arm without a variant is v7
    assert best_match(parse_platform("linux/arm/v7"), arm) is not None
    assert best_match(parse_platform("linux/arm/v6"), arm) is None
    assert best_match(Platform("windows", "amd64"), plain_and_v3) is None


def parse_entry(entry: dict):  # type: ignore[no-untyped-def]
    return index(entry).manifests[0]
