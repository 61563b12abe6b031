"""Fixtures for the end-to-end tests: the chain under test, our namespaces, private runtimes.

Environment:
  CNI_E2E_REFERENCE=1          run the reference chain (/usr/lib/cni bridge + host-local +
                               portmap) instead of ours: proves the harness itself.
  CNI_BRIDGE_PLUGIN_DIR=DIR    directory holding our `cni-bridge` executable
                               (default: <repo>/dist/bin, the PyInstaller build).
  CNI_BRIDGE_ALLOW_NO_BINARY=1 skip, rather than fail, when that executable is missing.
  CNI_BRIDGE_*                 passed through the runtimes to our plugin (e.g. its log level).
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import shutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.images import busybox_rootfs
from tests.e2e.runtimes import (
    OUR_PLUGIN,
    PREFIX,
    REFERENCE_PLUGIN_DIR,
    REFERENCE_PLUGINS,
    Chain,
    Containerd,
    Podman,
    missing_tools,
)
from tests.e2e.sandbox import Sandbox, Topology
from tests.lab import Lab

REPO = Path(__file__).resolve().parents[2]
BASE_TOOLS = ("ip", "nsenter", "unshare", "nft", "busybox")


def _require(tools: Sequence[str]) -> None:
    if os.geteuid() != 0:
        pytest.skip("end-to-end tests need root")
    missing = missing_tools(tools)
    if missing:
        pytest.skip(f"missing tools: {' '.join(missing)} (see tests/e2e/)")


@pytest.fixture(scope="session")
def chain() -> Chain:
    if os.environ.get("CNI_E2E_REFERENCE") == "1":
        absent = [p for p in REFERENCE_PLUGINS if not (REFERENCE_PLUGIN_DIR / p).exists()]
        if absent:
            pytest.skip(f"reference plugins missing in {REFERENCE_PLUGIN_DIR}: {absent}")
        return Chain(reference=True, plugin_dir=REFERENCE_PLUGIN_DIR)
    plugin_dir = Path(os.environ.get("CNI_BRIDGE_PLUGIN_DIR") or REPO / "dist" / "bin")
    if not (plugin_dir / OUR_PLUGIN).exists():
        if os.environ.get("CNI_BRIDGE_ALLOW_NO_BINARY") == "1":
            pytest.skip(f"no {OUR_PLUGIN} in {plugin_dir} and CNI_BRIDGE_ALLOW_NO_BINARY=1")
        pytest.fail(f"no {OUR_PLUGIN} in {plugin_dir}: build it, or set CNI_BRIDGE_PLUGIN_DIR")
    return Chain(reference=False, plugin_dir=plugin_dir)


@pytest.fixture(scope="session")
def rootfs_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    _require(BASE_TOOLS)
    return busybox_rootfs(tmp_path_factory.mktemp(f"{PREFIX}-rootfs") / "rootfs")


@dataclass
class Scene:
    """One test's world: names, directories, namespaces and the sandbox around the runtime."""

    suffix: str
    chain: Chain
    topology: Topology
    sandbox: Sandbox
    workdir: Path
    network: str
    bridge: str
    subnet: str
    token: str
    data_dir: Path
    netconf_dir: Path
    bin_dir: Path
    cache_dir: Path

    @property
    def gateway(self) -> str:
        return str(next(ipaddress.ip_network(self.subnet).hosts()))

    def write_conflist(self, static_port_mappings: Sequence[Mapping[str, Any]] = ()) -> Path:
        conf = self.chain.conflist(
            self.network, self.bridge, self.subnet, self.data_dir, static_port_mappings
        )
        path = self.netconf_dir / f"{self.network}.conflist"
        path.write_text(json.dumps(conf, indent=2))
        return path


@pytest.fixture
def scene(chain: Chain, tmp_path: Path) -> Iterator[Scene]:
    _require(BASE_TOOLS + (("iptables-save",) if chain.reference else ()))
    lab = Lab(PREFIX, tag=secrets.token_hex(3))
    suffix = lab.tag
    dirs = {name: tmp_path / name for name in ("ipam", "net.d", "bin", "cni-cache")}
    for d in dirs.values():
        d.mkdir()
    chain.populate(dirs["bin"])
    # Any /24 will do: it exists only inside the host netns created below.
    subnet = f"10.{100 + secrets.randbelow(150)}.{secrets.randbelow(256)}.0/24"
    sandbox: Sandbox | None = None
    try:
        topology = Topology.create(lab)
        sandbox = Sandbox(
            topology.host,
            tmp_path,
            {
                # `ctr run --cni` has no flags for these: it reads the fixed paths.
                "/etc/cni/net.d": dirs["net.d"],
                "/opt/cni/bin": dirs["bin"],
                # libcni's result cache, a global path, kept private too.
                "/var/lib/cni": dirs["cni-cache"],
            },
        )
        sandbox.start()
        yield Scene(
            suffix=suffix,
            chain=chain,
            topology=topology,
            sandbox=sandbox,
            workdir=tmp_path,
            network=f"cbd-e2e-{suffix}",
            bridge=f"cbd{suffix}",
            subnet=subnet,
            token=f"served-by-container-{suffix}-{secrets.token_hex(8)}",
            data_dir=dirs["ipam"],
            netconf_dir=dirs["net.d"],
            bin_dir=dirs["bin"],
            cache_dir=dirs["cni-cache"],
        )
    finally:
        made = list(lab.namespaces)
        survivors = sandbox.stop() if sandbox is not None else []
        survivors += lab.close()
        leftover_ns = [ns for ns in made if ns.exists()]
        assert not survivors, f"processes of the sandbox would not die: {survivors}"
        assert not leftover_ns, f"namespaces left behind: {leftover_ns}"


@pytest.fixture
def podman(scene: Scene) -> Iterator[Podman]:
    _require(("podman", "conmon", "runc"))
    engine = Podman(scene.sandbox, scene.workdir / "podman", scene.bin_dir, scene.netconf_dir)
    try:
        yield engine
    finally:
        engine.remove_all()


@pytest.fixture
def containerd(scene: Scene) -> Iterator[Containerd]:
    _require(("containerd", "ctr", "runc", "containerd-shim-runc-v2"))
    daemon = Containerd(scene.sandbox, scene.workdir / "containerd")
    try:
        daemon.start()
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture
def rootfs(rootfs_template: Path, tmp_path: Path) -> Path:
    # A copy per test: runtimes create mount points and files inside a --rootfs directory.
    return Path(shutil.copytree(rootfs_template, tmp_path / "rootfs", symlinks=True))
