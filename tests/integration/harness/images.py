"""Test images made in Python, and skopeo to move them.

`build_image` writes an OCI image layout whose layers are real gzip'ed tars (containerd
unpacks what it pulls, so random bytes would not do), seeded so a test can rebuild the
same image. skopeo copies it into a registry and back out; `verify_dir_blobs` checks what
came back, byte for byte.

skopeo is always run with a private, empty registries.conf and auth file unless told
otherwise, so host configuration can neither redirect a test's traffic nor leak
credentials into it, and with `--insecure-policy` so no policy.json is needed.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import platform
import random
import subprocess
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .procs import HarnessError, run

SKOPEO_BIN = "skopeo"

MT_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MT_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def host_arch() -> str:
    """The OCI architecture name of this machine (containerd matches it on pull)."""
    m = platform.machine()
    return {
        "x86_64": "amd64",
        "aarch64": "arm64",
        "armv7l": "arm",
        "ppc64le": "ppc64le",
        "s390x": "s390x",
        "riscv64": "riscv64",
    }.get(m, m)


@dataclass(frozen=True)
class Layer:
    digest: str  # of the gzip'ed blob, as in the manifest
    size: int  # compressed (blob) size
    diff_id: str  # of the uncompressed tar
    content_size: int  # bytes of the one file inside


@dataclass(frozen=True)
class Image:
    """An OCI layout on disk and the digests a registry will know it by."""

    layout_dir: Path
    tag: str
    manifest_digest: str
    manifest_size: int
    config_digest: str
    config_size: int
    layers: tuple[Layer, ...]
    manifest: Mapping = field(repr=False, default_factory=dict)

    @property
    def layer_digests(self) -> list[str]:
        return [layer.digest for layer in self.layers]

    @property
    def blob_digests(self) -> set[str]:
        """Config and layers: the blobs a client GETs under /blobs/."""
        return {self.config_digest, *self.layer_digests}

    @property
    def oci_ref(self) -> str:
        return f"oci:{self.layout_dir}:{self.tag}"

    def blob_path(self, digest: str) -> Path:
        algo, hexd = digest.split(":", 1)
        return self.layout_dir / "blobs" / algo / hexd


def _layer_tar_gz(index: int, content: bytes) -> tuple[bytes, bytes]:
    """(tar, gzip(tar)) holding one file; fixed metadata so the same seed → same digest."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        info = tarfile.TarInfo(f"pollen-test/layer-{index}.bin")
        info.size = len(content)
        info.mode = 0o644
        info.mtime = 0
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        tf.addfile(info, io.BytesIO(content))
    tar = buf.getvalue()
    # Level 1 (random data does not compress anyway); mtime=0 keeps digests stable.
    return tar, gzip.compress(tar, compresslevel=1, mtime=0)


RANDOM_PIECE = 64 << 20


def build_image(
    tmpdir: Path,
    layers: Sequence[int] = (256 * 1024, 384 * 1024, 512 * 1024),
    seed: int = 0,
    *,
    tag: str = "latest",
    architecture: str | None = None,
) -> Image:
    """Write an OCI image layout under `tmpdir/image-<seed>` with one layer per size.

    Each layer's file holds `size` seeded random bytes, so different seeds give distinct
    blobs and the same seed gives identical ones (useful for "already cached" tests).
    `architecture` goes into the config (default: this machine's).
    """
    root = Path(tmpdir) / f"image-{seed}-{tag}"
    blobs = root / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)

    def put(data: bytes) -> str:
        digest = sha256_digest(data)
        (blobs / digest.split(":", 1)[1]).write_bytes(data)
        return digest

    rng = random.Random(seed)
    built: list[Layer] = []
    for i, size in enumerate(layers):
        # (in pieces: randbytes takes at most 2**31 bits at once, a 256 MiB layer is more)
        content = b"".join(
            rng.randbytes(min(RANDOM_PIECE, size - at)) for at in range(0, size, RANDOM_PIECE)
        )
        tar, gz = _layer_tar_gz(i, content)
        built.append(Layer(put(gz), len(gz), sha256_digest(tar), size))

    config = {
        "architecture": architecture or host_arch(),
        "os": "linux",
        "created": "2024-01-01T00:00:00Z",
        "config": {"Labels": {"pollen.test.seed": str(seed)}},
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in built]},
        "history": [
            {"created": "2024-01-01T00:00:00Z", "created_by": f"layer {i}"}
            for i in range(len(built))
        ],
    }
    config_bytes = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    config_digest = put(config_bytes)

    manifest = {
        "schemaVersion": 2,
        "mediaType": MT_OCI_MANIFEST,
        "config": {"mediaType": MT_OCI_CONFIG, "digest": config_digest, "size": len(config_bytes)},
        "layers": [
            {"mediaType": MT_OCI_LAYER_GZIP, "digest": layer.digest, "size": layer.size}
            for layer in built
        ],
    }
    manifest_bytes = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    manifest_digest = put(manifest_bytes)

    index = {
        "schemaVersion": 2,
        "mediaType": MT_OCI_INDEX,
        "manifests": [
            {
                "mediaType": MT_OCI_MANIFEST,
                "digest": manifest_digest,
                "size": len(manifest_bytes),
                "annotations": {"org.opencontainers.image.ref.name": tag},
            }
        ],
    }
    (root / "index.json").write_text(json.dumps(index))
    (root / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    return Image(
        layout_dir=root,
        tag=tag,
        manifest_digest=manifest_digest,
        manifest_size=len(manifest_bytes),
        config_digest=config_digest,
        config_size=len(config_bytes),
        layers=tuple(built),
        manifest=manifest,
    )


@dataclass(frozen=True)
class IndexImage:
    """An OCI layout whose tag names an image index: one image per platform."""

    layout_dir: Path
    tag: str
    index_digest: str
    platforms: tuple[tuple[str, Image], ...]  # ("linux/amd64", its image)

    @property
    def oci_ref(self) -> str:
        return f"oci:{self.layout_dir}:{self.tag}"

    def image(self, platform: str) -> Image:
        return next(image for name, image in self.platforms if name == platform)


def build_index_image(
    tmpdir: Path, platforms: Sequence[tuple[str, Image]], *, tag: str = "latest"
) -> IndexImage:
    """An OCI layout under `tmpdir/index-<tag>` holding each image's blobs and an image
    index naming each image's manifest with its platform (``os/arch[/variant]``), as a
    multi-platform build pushes it."""
    root = Path(tmpdir) / f"index-{tag}"
    blobs = root / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    entries = []
    for platform_name, image in platforms:
        for path in (image.layout_dir / "blobs" / "sha256").iterdir():
            (blobs / path.name).write_bytes(path.read_bytes())
        os_name, arch, *variant = platform_name.split("/")
        platform: dict[str, str] = {"os": os_name, "architecture": arch}
        if variant:
            platform["variant"] = variant[0]
        entries.append(
            {
                "mediaType": MT_OCI_MANIFEST,
                "digest": image.manifest_digest,
                "size": image.manifest_size,
                "platform": platform,
            }
        )
    index = {"schemaVersion": 2, "mediaType": MT_OCI_INDEX, "manifests": entries}
    index_bytes = json.dumps(index, sort_keys=True, separators=(",", ":")).encode()
    index_digest = sha256_digest(index_bytes)
    (blobs / index_digest.split(":", 1)[1]).write_bytes(index_bytes)
    top = {
        "schemaVersion": 2,
        "mediaType": MT_OCI_INDEX,
        "manifests": [
            {
                "mediaType": MT_OCI_INDEX,
                "digest": index_digest,
                "size": len(index_bytes),
                "annotations": {"org.opencontainers.image.ref.name": tag},
            }
        ],
    }
    (root / "index.json").write_text(json.dumps(top))
    (root / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    return IndexImage(root, tag, index_digest, tuple(platforms))


# -- skopeo ------------------------------------------------------------------------------


def write_registries_conf(path: Path, mirrors: Mapping[str, Sequence[str]] | None = None) -> Path:
    """A registries.conf (v2) sending pulls of each prefix to its mirrors first.

    `mirrors` = {"registry.example.com": ["127.0.0.1:65001"]}; mirrors are `insecure`
    (skopeo then tries HTTPS, then plain HTTP). With no mirrors the file is empty, which
    is how the helpers keep the host's /etc/containers/registries.conf out of tests.
    """
    lines: list[str] = []
    for prefix, locations in (mirrors or {}).items():
        lines += ["[[registry]]", f'prefix = "{prefix}"', f'location = "{prefix}"', ""]
        for loc in locations:
            lines += ["[[registry.mirror]]", f'location = "{loc}"', "insecure = true", ""]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def write_authfile(path: Path, creds: Mapping[str, tuple[str, str]] | None = None) -> Path:
    """A containers auth.json: {"host:port": (user, password)}.

    This is the only way skopeo sends credentials to a *mirror* (`--src-creds` never goes
    there, by design).
    """
    auths = {
        host: {"auth": base64.b64encode(f"{u}:{p}".encode()).decode()}
        for host, (u, p) in (creds or {}).items()
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"auths": auths}))
    return path


def _skopeo_base(workdir: Path, registries_conf: Path | None) -> list[str]:
    if registries_conf is None:
        registries_conf = workdir / "registries.conf"
        if not registries_conf.exists():
            write_registries_conf(registries_conf)
    return [SKOPEO_BIN, "--insecure-policy", "--registries-conf", str(registries_conf)]


def _skopeo_env(workdir: Path, authfile: Path | None) -> dict[str, str]:
    if authfile is None:
        authfile = workdir / "auth.json"
        if not authfile.exists():
            write_authfile(authfile)
    # REGISTRY_AUTH_FILE is read by containers/image when no --authfile is given;
    # pointing it at our own file keeps ~/.docker and $XDG_RUNTIME_DIR out of tests.
    return {"REGISTRY_AUTH_FILE": str(authfile), "TMPDIR": str(workdir)}


def _docker_ref(ref: str) -> str:
    return ref if ref.startswith("docker://") else f"docker://{ref}"


def push_image(
    image: Image | IndexImage,
    registry: object,
    repo: str,
    tag: str | None = None,
    *,
    creds: tuple[str, str] | None = None,
    tls_verify: bool = False,
    cert_dir: Path | None = None,
    timeout: float = 60.0,
) -> str:
    """`skopeo copy oci:<layout>:<tag> docker://<registry.host>/<repo>:<tag>`; returns the ref.

    `registry` is anything with a `.host` ("127.0.0.1:port"), normally a `Registry`. The
    OCI manifest is copied unchanged, so its digest at the registry is
    `image.manifest_digest`; an `IndexImage` is copied whole (``--all``), every platform.
    """
    tag = tag or image.tag
    host = registry.host
    dest = f"{host}/{repo}:{tag}"
    workdir = image.layout_dir.parent / ".skopeo"
    skopeo_copy_to_registry(
        image.oci_ref,
        dest,
        workdir=workdir,
        creds=creds,
        tls_verify=tls_verify,
        cert_dir=cert_dir,
        timeout=timeout,
        all_images=isinstance(image, IndexImage),
    )
    return dest


def skopeo_copy_to_registry(
    src_ref: str,
    dest: str,
    *,
    workdir: Path,
    creds: tuple[str, str] | None = None,
    tls_verify: bool = False,
    cert_dir: Path | None = None,
    timeout: float = 60.0,
    all_images: bool = False,
) -> None:
    """`skopeo copy <src_ref> docker://<dest>` (`src_ref` in any transport skopeo reads:
    `oci:`, `oci-archive:`, ...; `all_images`: an index with every platform's manifest);
    raises HarnessError when it fails."""
    workdir.mkdir(parents=True, exist_ok=True)
    argv = _skopeo_base(workdir, None) + [
        "copy",
        "--retry-times",
        "0",
        f"--dest-tls-verify={'true' if tls_verify else 'false'}",
    ]
    if all_images:
        argv += ["--all"]
    if creds:
        argv += ["--dest-creds", f"{creds[0]}:{creds[1]}"]
    else:
        argv += ["--dest-no-creds"]
    if cert_dir:
        argv += ["--dest-cert-dir", str(cert_dir)]
    argv += [src_ref, _docker_ref(dest)]
    run(argv, timeout=timeout, env=_skopeo_env(workdir, None))


def skopeo_copy_to_dir(
    src_ref: str,
    dest_dir: Path,
    *,
    registries_conf: Path | None = None,
    creds: tuple[str, str] | None = None,
    authfile: Path | None = None,
    tls_verify: bool = False,
    cert_dir: Path | None = None,
    check: bool = False,
    timeout: float = 60.0,
    platform: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """`skopeo copy docker://<src_ref> dir:<dest_dir>`; returns the completed process.

    Does not raise on failure unless `check` (tests assert on failures too). `src_ref`
    may carry `docker://` or not. `creds` become `--src-creds`; `authfile` is the only way
    to give credentials to a mirror. `platform` (``os/arch[/variant]``) picks another
    platform's manifest of an index than this machine's.
    """
    dest_dir = Path(dest_dir)
    dest_dir.parent.mkdir(parents=True, exist_ok=True)
    workdir = dest_dir.parent / f".skopeo-{dest_dir.name}"
    workdir.mkdir(exist_ok=True)
    argv = _skopeo_base(workdir, registries_conf)
    if platform:
        os_name, arch, *variant = platform.split("/")
        argv += ["--override-os", os_name, "--override-arch", arch]
        argv += ["--override-variant", variant[0]] if variant else []
    argv += [
        "copy",
        "--retry-times",
        "0",
        f"--src-tls-verify={'true' if tls_verify else 'false'}",
    ]
    if creds:
        argv += ["--src-creds", f"{creds[0]}:{creds[1]}"]
    if cert_dir:
        argv += ["--src-cert-dir", str(cert_dir)]
    argv += [_docker_ref(src_ref), f"dir:{dest_dir}"]
    return run(argv, timeout=timeout, check=check, env=_skopeo_env(workdir, authfile))


def verify_dir_blobs(dest_dir: Path) -> set[str]:
    """Check a skopeo `dir:` copy and return the digests of the blobs it holds.

    skopeo names each blob file by its hex digest; every such file must hash to its name,
    and every blob the manifest names must be there. Raises HarnessError otherwise.
    """
    dest_dir = Path(dest_dir)
    found: set[str] = set()
    for f in dest_dir.iterdir():
        if len(f.name) == 64 and all(c in "0123456789abcdef" for c in f.name):
            h = hashlib.sha256()
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
            if h.hexdigest() != f.name:
                raise HarnessError(f"blob {f} has sha256 {h.hexdigest()}")
            found.add("sha256:" + f.name)
    manifest = json.loads((dest_dir / "manifest.json").read_text())
    wanted = {manifest["config"]["digest"], *(layer["digest"] for layer in manifest["layers"])}
    if missing := wanted - found:
        raise HarnessError(f"blobs named by the manifest but not received: {sorted(missing)}")
    return found


def dir_manifest_digest(dest_dir: Path) -> str:
    """Digest of the manifest skopeo stored (unchanged bytes from the registry)."""
    return sha256_digest((Path(dest_dir) / "manifest.json").read_bytes())
