# cni-bridge. Every target installs what it needs on a fresh Debian machine: system packages
# that are missing (as root), then a virtual environment in .venv. `lint` and `unit` need only
# the venv (python3-venv aside) and run as a normal user.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
CNI_BIN_DIR ?= /opt/cni/bin
DESTDIR ?=
MAN_DIR ?= /usr/local/share/man
# nftables + libnftables1 + python3-nftables: the plugin's firewall (the binding is Debian's);
# iproute2, iputils-ping, conntrack: tests observe kernel state; podman, containerd, runc,
# busybox-static, containernetworking-plugins, iptables: real runtimes and the reference
# plugins the tests and the benchmark compare with; time, hyperfine: the benchmark; uidmap,
# slirp4netns: rootless podman in the benchmark (bench/rootless.py);
# gcc, libc6-dev, binutils: the bundle's native launcher (build/launcher.c);
# aardvark-dns: the name server of containerDNS networks (cni_bridge/dns/).
APT_PACKAGES := nftables libnftables1 python3-nftables iproute2 iputils-ping conntrack \
	containernetworking-plugins podman containerd runc busybox-static iptables util-linux \
	procps python3-venv time hyperfine gcc libc6-dev binutils aardvark-dns uidmap slirp4netns
PYTEST := $(PY) -m pytest -q -p no:cacheprovider
SOURCES := $(shell find cni_bridge -name '*.py') build/cni-bridge.spec build/build.sh \
	build/rthook_multiprocessing_lazy.py build/launcher.c

.PHONY: all deps sysdeps venv lint unit integration e2e smoke test test-modes build install uninstall \
	demo bench bench-quick bench-soak clean man

all: build

sysdeps:
	@missing=$$(for p in $(APT_PACKAGES); do \
		dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; \
	done); \
	if [ -n "$$missing" ]; then \
		echo "installing system packages:" $$missing; \
		if [ "$$(id -u)" != 0 ]; then echo "need root to install:" $$missing >&2; exit 1; fi; \
		apt-get -o DPkg::Lock::Timeout=300 update -qq && DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq $$missing >/dev/null; \
	fi

# The venv alone (pip packages): enough for lint and unit, as a normal user (only python3-venv
# from the system). Any other goal installs the system packages first (python3-venv among
# them), also under -j.
VENV_NEEDS := $(if $(filter-out lint unit venv clean,$(or $(MAKECMDGOALS),all)),sysdeps)
$(VENV)/.ok: pyproject.toml | $(VENV_NEEDS)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -c 'import pyroute2, pydantic'
	touch $@

# The nftables binding is Debian's (python3-nftables, not on PyPI): linked into the venv once
# sysdeps has installed it. Unit tests never import it (the firewall is faked there).
$(VENV)/.nft: $(VENV)/.ok | sysdeps
	ln -sfn /usr/lib/python3/dist-packages/nftables \
		"$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/nftables"
	$(PY) -c 'import nftables'
	touch $@

# What ruff and mypy --strict check: the package and every test, bench and demo module.
CHECKED := cni_bridge tests bench demo

venv: $(VENV)/.ok
deps: sysdeps venv $(VENV)/.nft

lint: venv
	$(VENV)/bin/ruff check $(CHECKED)
	$(VENV)/bin/mypy $(CHECKED)

unit: venv
	$(PYTEST) tests/unit

dist/bin/cni-bridge: $(SOURCES) | deps
	PYTHON=$(PY) build/build.sh

build: dist/bin/cni-bridge

install: build
	DESTDIR=$(DESTDIR) CNI_BIN_DIR=$(CNI_BIN_DIR) build/install.sh
	install -D -m 644 docs/cni-bridge.1 $(DESTDIR)$(MAN_DIR)/man1/cni-bridge.1

uninstall:
	DESTDIR=$(DESTDIR) CNI_BIN_DIR=$(CNI_BIN_DIR) build/install.sh --uninstall
	rm -f $(DESTDIR)$(MAN_DIR)/man1/cni-bridge.1

# The man page is generated from the commands' parsers (cni_bridge/manual.py) and committed;
# tests/unit/test_manual.py fails when it no longer matches them.
man: venv
	$(PY) -m cni_bridge.manual > docs/cni-bridge.1

integration: deps
	$(PYTEST) tests/integration

e2e: build
	CNI_BRIDGE_PLUGIN_DIR=$(CURDIR)/dist/bin $(PYTEST) tests/e2e

smoke: build
	$(PYTEST) tests/smoke

# Everything: lint; unit + integration (plugin in-process) + real runtimes + packaging smoke +
# the demo; the plugin-level integration suites again through the built binary's launcher and
# agent (what runtimes get), and the datapath suite through the built binary with no agent.
# About 15 minutes on 2 cores.
test: deps build
	$(VENV)/bin/ruff check $(CHECKED)
	$(VENV)/bin/mypy $(CHECKED)
	$(PYTEST) tests
	CNI_BRIDGE_TEST_PLUGIN=binary CNI_BRIDGE_TEST_RESIDENT=1 $(PYTEST) tests/integration -m plugin
	CNI_BRIDGE_TEST_PLUGIN=binary $(PYTEST) tests/integration/test_datapath.py -m plugin

# The two other ways to run the plugin-level suites, each about 4-5 minutes more: through the
# agent from source, and through the built binary in-process (no agent). `make test` covers
# both paths already (test_resident/test_launcher from source; the bundle with no agent on the
# datapath suite); these repeat every plugin suite on them.
test-modes: deps build
	CNI_BRIDGE_TEST_RESIDENT=1 $(PYTEST) tests/integration -m plugin
	CNI_BRIDGE_TEST_PLUGIN=binary $(PYTEST) tests/integration -m plugin

demo: build
	$(PY) -m demo

# bench: ratios to the reference chain, the soak, rootless podman (README "Speed"); ~25 min.
# Figures in bench/results/ (not kept in git).
OURS_BIN := --ours-bin $(CURDIR)/dist/bin/cni-bridge
bench: build
	$(PY) -m bench.run $(OURS_BIN)
	$(PY) -m bench.soak $(OURS_BIN)
	$(PY) -m bench.rootless $(OURS_BIN)
	$(PY) -m bench.heal $(OURS_BIN)

bench-quick: build
	$(PY) -m bench.run $(OURS_BIN) --n 10 --samples 3 --scale 1,50 --quiet 10
	$(PY) -m bench.soak $(OURS_BIN) --cycles 300
	$(PY) -m bench.rootless $(OURS_BIN) --runs 3
	$(PY) -m bench.heal $(OURS_BIN) --attachments 1 --rounds 2

bench-soak: build
	$(PY) -m bench.soak $(OURS_BIN)

clean:
	rm -rf dist build/pyinstaller-work $(VENV) .pytest_cache .mypy_cache .ruff_cache
