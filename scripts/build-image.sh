#!/usr/bin/env bash
# build-image.sh IMAGE ARCHIVE: build Containerfile with buildah (no Docker daemon) as IMAGE
# in buildah's local storage, and write it to ARCHIVE as an OCI archive (`make image`:
# pollen:0.1.0 into build/pollen-0.1.0.oci.tar). The archive's reference is IMAGE as container
# runtimes read it: a name without a registry is Docker Hub's (pollen:0.1.0 is
# docker.io/library/pollen:0.1.0, which is what the kubelet asks containerd for when a
# manifest says `image: pollen:0.1.0`), so `ctr -n k8s.io images import` of the archive on a
# node gives the manifests their image.
#
# The base named by the Containerfile's FROM is made with mmdebstrap when buildah's storage
# lacks it (scripts/make-base-image.sh), since no public container registry is reachable from
# these machines; nothing is pulled (--pull=never).
#
# Where buildah runs differs (a VM, a container): the choices that work everywhere are made
# here, and the environment overrides them.
# - Isolation of RUN steps: BUILDAH_ISOLATION, default `chroot`, which needs neither runc nor
#   cgroup access, so it works inside a container too (`oci` works on this VM as well).
# - Storage driver: STORAGE_DRIVER (e.g. vfs); unset, buildah's own choice (overlay where the
#   kernel and the backing filesystem allow it) when its storage opens with it, else `vfs`
#   (slower, works anywhere). A storage that already holds images keeps its driver.
# - Layers of earlier builds are reused (--layers): a warm build redoes only the steps whose
#   inputs changed (Pollen's code: a few seconds; its dependencies: pyproject.toml).
set -euo pipefail

image=${1:?usage: build-image.sh IMAGE ARCHIVE}
archive=${2:?usage: build-image.sh IMAGE ARCHIVE}
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/install-system-deps.sh buildah mmdebstrap

isolation=${BUILDAH_ISOLATION:-chroot}
storage=()
if [ -n "${STORAGE_DRIVER:-}" ]; then
  storage=(--storage-driver "$STORAGE_DRIVER")
elif ! buildah info >/dev/null 2>&1; then
  echo "build-image: buildah's storage does not open with its default driver here; using vfs" >&2
  storage=(--storage-driver vfs)
fi
bh=(buildah "${storage[@]}")
export BUILDAH_FLAGS="${storage[*]}"

# The base: the one image every FROM names that is not an earlier stage.
mapfile -t bases < <(awk '
  toupper($1) == "FROM" {
    name = $2
    for (i = 2; i <= NF; i++) if (toupper($i) == "AS" && i < NF) stages[tolower($(i + 1))] = 1
    if (!(tolower(name) in stages)) print name
  }' Containerfile | sort -u)
if [ "${#bases[@]}" -ne 1 ]; then
  echo "build-image: the Containerfile must build FROM one base image, found: ${bases[*]:-none}" >&2
  exit 1
fi
base=${bases[0]}
if ! "${bh[@]}" inspect --type image "$base" >/dev/null 2>&1; then
  bash scripts/make-base-image.sh "$base"
fi

# pip in the build stage trusts the host's CA bundle, which is what the host's own pip and
# apt trust (a network that inspects TLS has its CA there): the Containerfile's build secret
# pip-ca, mounted for one RUN step only.
ca_flags=()
host_ca=/etc/ssl/certs/ca-certificates.crt
if [ -s "$host_ca" ]; then
  ca_flags=(--secret "id=pip-ca,src=$host_ca")
fi

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml)
echo "build-image: building $image from $base (isolation $isolation, storage ${storage[*]:-default})" >&2
"${bh[@]}" bud --isolation "$isolation" --layers --force-rm --pull=never --file Containerfile --tag "$image" \
  --build-arg VERSION="$version" "${ca_flags[@]}" .

first=${image%%/*}
if [[ "$image" != */* ]]; then
  ref=docker.io/library/$image
elif [[ "$first" != *.* && "$first" != *:* && "$first" != localhost ]]; then
  ref=docker.io/$image
else
  ref=$image
fi

mkdir -p "$(dirname "$archive")"
rm -f "$archive.tmp"
"${bh[@]}" push --quiet "$image" "oci-archive:$archive.tmp:$ref"
mv "$archive.tmp" "$archive"
echo "build-image: $image written to $archive as $ref ($(du -m "$archive" | cut -f1) MiB)" >&2
