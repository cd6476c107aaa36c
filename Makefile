# Pollen developer and CI entry points. Works on a fresh Debian 12 with only python3
# installed: missing venv support, C compiler, Python headers and test tools are installed
# with apt-get (as root, or through sudo when not root).

SHELL := /bin/bash
.DEFAULT_GOAL := build

PYTHON3 ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
RUFF := $(VENV)/bin/ruff
# Marks a finished `pip install -e`; rebuilt when the native sources or packaging change.
BUILD_STAMP := $(VENV)/.pollen-build

SUDO := $(shell if [ "$$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then echo sudo; fi)
APT_INSTALL := $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends

# `make run` defaults that suit a laptop: state under the work tree instead of /var, and the
# ports on loopback only. Any of them can be overridden from the environment.
POLLEN_CACHE_PATH ?= $(CURDIR)/.cache/pollen
POLLEN_LOG_DIR ?= $(CURDIR)/.cache/log
POLLEN_LISTEN_ADDRESS ?= 127.0.0.1
export POLLEN_CACHE_PATH POLLEN_LOG_DIR POLLEN_LISTEN_ADDRESS

.PHONY: venv build system-deps run test lint docs fuzz image clean distclean

venv: $(PY)

$(PY):
	@if ! $(PYTHON3) -m venv $(VENV) >/dev/null 2>&1; then \
	  rm -rf $(VENV); \
	  echo "python3 -m venv failed (no ensurepip?); installing python3-venv" >&2; \
	  $(SUDO) apt-get update -q && $(APT_INSTALL) python3-venv && \
	  $(PYTHON3) -m venv $(VENV); \
	fi

build: $(BUILD_STAMP)

$(BUILD_STAMP): $(PY) pyproject.toml setup.py build.py $(wildcard native/*.c native/*.h)
	@include=$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["include"])'); \
	if ! command -v cc >/dev/null 2>&1 || [ ! -f "$$include/Python.h" ]; then \
	  echo "C compiler or Python.h missing; installing gcc libc6-dev python3-dev" >&2; \
	  $(SUDO) apt-get update -q && $(APT_INSTALL) gcc libc6-dev python3-dev; \
	fi
	$(PIP) install -q -e '.[test]'
	@touch $@

system-deps:
	bash scripts/install-system-deps.sh

run: build
	mkdir -p "$(POLLEN_CACHE_PATH)" "$(POLLEN_LOG_DIR)"
	exec $(VENV)/bin/pollen agent

test: build system-deps
	$(RUFF) check .
	$(PY) -m pytest -q -p no:cacheprovider

lint: build
	$(RUFF) check .

# The container image (Containerfile), built with buildah, no Docker daemon: stored as
# $(IMAGE) in buildah's local storage and written to $(IMAGE_ARCHIVE), an OCI archive of
# $(IMAGE) (the name deploy/kubernetes runs; docker.io/library/$(IMAGE) inside the archive, as
# containerd names it). The Containerfile's base is made with mmdebstrap when missing (no
# public container registry is reachable here). Rebuilt when the Containerfile, the build
# scripts or what goes into the image changed (scripts/build-image.sh).
IMAGE_VERSION := $(shell sed -n 's/^version = "\(.*\)"$$/\1/p' pyproject.toml)
IMAGE ?= pollen:$(IMAGE_VERSION)
IMAGE_ARCHIVE ?= build/pollen-$(IMAGE_VERSION).oci.tar
IMAGE_INPUTS := Containerfile .containerignore pyproject.toml setup.py build.py \
  scripts/build-image.sh scripts/make-base-image.sh \
  $(shell find agent native -type f \( -name '*.py' -o -name '*.c' -o -name '*.h' \) \
    -not -path '*/__pycache__/*' -not -name '_pollen_io.c')

image: $(IMAGE_ARCHIVE)

$(IMAGE_ARCHIVE): $(IMAGE_INPUTS)
	bash scripts/build-image.sh "$(IMAGE)" "$@"

# docs/REFERENCE.md from config.KEYS, the metric definitions and the audit op codes.
docs: build
	$(PY) -m agent.reference > docs/REFERENCE.md

# Each fuzz/ target under atheris for FUZZ_SECONDS, one after the other (FUZZ_TARGETS picks
# some). Not part of `make test`: a crash is written into fuzz/corpus/<target>/, which the
# tests replay, so it fails `make test` until it is fixed.
FUZZ_SECONDS ?= 30
FUZZ_TARGETS ?= $(notdir $(wildcard fuzz/corpus/*))

fuzz: build
	@$(PY) -c 'import atheris' 2>/dev/null || $(PIP) install -q atheris
	@failed=""; \
	for target in $(FUZZ_TARGETS); do \
	  echo "== fuzz $$target for $(FUZZ_SECONDS)s"; \
	  $(PY) -m fuzz.run $$target --seconds $(FUZZ_SECONDS) || failed="$$failed $$target"; \
	done; \
	if [ -n "$$failed" ]; then echo "fuzz: crashes in$$failed (inputs in fuzz/corpus/)" >&2; exit 1; fi

clean:
	rm -rf build *.egg-info .pytest_cache .hypothesis $(BUILD_STAMP)
	rm -f agent/cache/_pollen_io.c agent/cache/_pollen_io*.so agent/cache/*.o native/*.o
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +

# clean, and the venv too (the next build re-creates it from scratch).
distclean: clean
	rm -rf $(VENV)
