#!/usr/bin/env bash
# make-base-image.sh NAME: make a minimal Debian bookworm image from Debian's package
# repository and store it in buildah's local storage as NAME (the Containerfile's FROM).
#
# Why: these machines reach Debian's and PyPI's package repositories but no public container
# registry, so `FROM docker.io/library/debian:bookworm-slim` cannot be pulled. mmdebstrap
# builds the same kind of root filesystem the official image is made of: the `minbase`
# variant (Essential and Priority: required packages, apt), merged /usr through
# usr-is-merged as Debian does, bookworm + bookworm-updates + bookworm-security, and the
# slim images' dpkg filters (no man pages, docs other than copyright files, or translations),
# which stay in /etc/dpkg/dpkg.cfg.d so later `apt-get install`s are slim too.
#
# Run by scripts/build-image.sh (`make image`) only when NAME is missing; BUILDAH_FLAGS
# carries its storage choice. Needs root (mmdebstrap's root mode) and a Debian host.
set -euo pipefail

name=${1:?usage: make-base-image.sh NAME}
suite=bookworm
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
security=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
read -r -a buildah_flags <<<"${BUILDAH_FLAGS:-}"

work=$(mktemp -d "${TMPDIR:-/tmp}/pollen-base.XXXXXX")
container=""
cleanup() {
  if [ -n "$container" ]; then buildah "${buildah_flags[@]}" rm "$container" >/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

slim=(
  'path-exclude=/usr/share/man/*'
  'path-exclude=/usr/share/doc/*'
  'path-include=/usr/share/doc/*/copyright'
  'path-exclude=/usr/share/info/*'
  'path-exclude=/usr/share/groff/*'
  'path-exclude=/usr/share/lintian/*'
  'path-exclude=/usr/share/linda/*'
  'path-exclude=/usr/share/locale/*'
  'path-include=/usr/share/locale/locale.alias'
)
dpkgopts=()
for opt in "${slim[@]}"; do dpkgopts+=(--dpkgopt="$opt"); done

echo "make-base-image: mmdebstrap $suite (minbase) for $name" >&2
mmdebstrap --quiet --variant=minbase --format=tar \
  --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
  --aptopt='Acquire::Languages "none"' \
  "${dpkgopts[@]}" \
  "$suite" "$work/rootfs.tar" \
  "deb $mirror $suite main" \
  "deb $mirror $suite-updates main" \
  "deb $security $suite-security main"

container=$(buildah "${buildah_flags[@]}" from scratch)
buildah "${buildah_flags[@]}" add "$container" "$work/rootfs.tar" /
buildah "${buildah_flags[@]}" config \
  --os linux --arch "$(dpkg --print-architecture)" \
  --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  --cmd bash \
  --label org.opencontainers.image.description="Debian $suite minbase, made by mmdebstrap (pollen scripts/make-base-image.sh)" \
  "$container"
buildah "${buildah_flags[@]}" commit --quiet --rm "$container" "$name" >/dev/null
container=""
echo "make-base-image: $name made" >&2
