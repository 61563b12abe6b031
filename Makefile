# cni-bridge: every target installs what it needs on a fresh Debian machine (as root).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
CNI_BIN_DIR ?= /opt/cni/bin
DESTDIR ?=
APT_PACKAGES := nftables libnftables1 python3-nftables iproute2 iputils-ping conntrack \
	containernetworking-plugins podman containerd runc busybox-static util-linux procps \
	python3-venv hyperfine
PYTEST_ARGS ?=

.PHONY: all deps sysdeps venv lint unit integration e2e smoke test build install demo bench clean

all: build

# System packages: only what is missing, so a prepared machine pays nothing.
sysdeps:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing: $$missing"; \
		if [ "$$(id -u)" != 0 ]; then echo "need root to install $$missing" >&2; exit 1; fi; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

# The nftables Python binding is Debian's (python3-nftables); link it into the venv.
$(VENV)/.ok: pyproject.toml | sysdeps
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip >/dev/null
	$(PIP) install -q -e '.[dev]'
	ln -sfn /usr/lib/python3/dist-packages/nftables "$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/nftables"
	$(PY) -c 'import nftables, pyroute2, pydantic'
	touch $@

venv: $(VENV)/.ok
deps: sysdeps venv

lint: deps
	$(VENV)/bin/ruff check cni_bridge tests bench
	$(VENV)/bin/mypy

unit: deps
	$(PY) -m pytest -q tests/unit $(PYTEST_ARGS)

build: deps
	bash build/build.sh

install: build
	bash build/install.sh "$(DESTDIR)" "$(CNI_BIN_DIR)"

# Everything: unit, integration in throwaway namespaces (in-process and resident modes, then
# against the built binary), real runtimes, and the packaging smoke test.
test: deps build
	$(VENV)/bin/ruff check cni_bridge tests bench
	$(VENV)/bin/mypy
	$(PY) -m pytest -q -p no:cacheprovider tests $(PYTEST_ARGS)
	CNI_BRIDGE_TEST_PLUGIN=binary $(PY) -m pytest -q -p no:cacheprovider tests/integration $(PYTEST_ARGS)

demo: deps build
	$(PY) -m demo

bench: deps build
	$(PY) -m bench.run

clean:
	rm -rf dist build/pyinstaller-work $(VENV) .pytest_cache .mypy_cache .ruff_cache
