#!/usr/bin/env bash
# Install the Debian packages the integration tests drive, only those whose command is
# missing: a registry (docker-registry), image and runtime clients (skopeo, containerd's
# ctr), a disk benchmark (fio), certificates (openssl), network namespaces (iproute2) and
# `kubectl kustomize` to render deploy/kubernetes (kubernetes-client), a Prometheus
# server that scrapes agents in the observability tests (prometheus), a clock set off for
# one process (faketime) and packet filters inside the benches' namespaces (iptables).
# Idempotent and silent when everything is present.
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
)

missing=()
for entry in "${wanted[@]}"; do
  read -r cmd pkg <<<"$entry"
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
