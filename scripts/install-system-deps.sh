#!/usr/bin/env bash
# Install the Debian packages the integration tests drive, only those whose command is
# missing: a registry (docker-registry), image and runtime clients (skopeo, containerd's
# ctr), a disk benchmark (fio), certificates (openssl), network namespaces (iproute2) and
# `kubectl kustomize` to render deploy/kubernetes (kubernetes-client), a Prometheus
# server that scrapes agents in the observability tests (prometheus), a clock set off for
# one process (faketime), packet filters inside the benches' namespaces (iptables), and what
# `make image` builds the container image with (buildah, and mmdebstrap for its base).
# Idempotent and silent when everything is present. With arguments, only the entries whose
# command is named: `install-system-deps.sh buildah mmdebstrap`.
set -euo pipefail

# ip and friends live in /sbin, which a non-root PATH may lack.
PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

# command  package
wanted=(
  "docker-registry docker-registry"
  "skopeo skopeo"
  "ctr containerd"
  "fio fio"
  "openssl openssl"
  "ip iproute2"
  "kubectl kubernetes-client"
  "prometheus prometheus"
  "faketime faketime"
  "iptables iptables"
  "buildah buildah"
  "mmdebstrap mmdebstrap"
)

known=" "
for entry in "${wanted[@]}"; do known+="${entry%% *} "; done
for cmd in "$@"; do
  if [[ "$known" != *" $cmd "* ]]; then
    echo "install-system-deps: no package known for command '$cmd' (known:$known)" >&2
    exit 2
  fi
done
only=" $* "
missing=()
for entry in "${wanted[@]}"; do
  read -r cmd pkg <<<"$entry"
  if [ "$#" -gt 0 ] && [[ "$only" != *" $cmd "* ]]; then
    continue
  fi
  if ! command -v "$cmd" >/dev/null 2>&1; then
    missing+=("$pkg")
  fi
done

if [ "${#missing[@]}" -eq 0 ]; then
  exit 0
fi

sudo=()
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    sudo=(sudo)
  else
    echo "install-system-deps: need root or sudo to install: ${missing[*]}" >&2
    exit 1
  fi
fi

echo "install-system-deps: installing ${missing[*]}" >&2
"${sudo[@]}" apt-get update -q
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
  apt-get install -y -q --no-install-recommends "${missing[@]}"
