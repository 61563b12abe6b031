"""Smoke test of the built PyInstaller bundle (dist/bin/cni-bridge).

Builds nothing: `make` builds the bundle first. A missing bundle is a failure, unless
CNI_BRIDGE_ALLOW_NO_BINARY=1 says that this run is not meant to have one.

The bundle is copied away from the repository and run with an empty environment, so it can
only pass if it needs neither the source tree nor the virtualenv.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
DIST = REPO / "dist"
BINARY = DIST / "bin" / "cni-bridge"
SPEC_VERSIONS = {"0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"}
# Shared libraries that must come from the host, never from the bundle.
HOST_ONLY_LIBS = ("libnftables", "libnftnl", "libmnl")


@pytest.fixture(scope="module")
def relocated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    if not BINARY.exists():
        if os.environ.get("CNI_BRIDGE_ALLOW_NO_BINARY") == "1":
            pytest.skip(f"{BINARY} not built and CNI_BRIDGE_ALLOW_NO_BINARY=1")
        pytest.fail(f"{BINARY} missing: run build/build.sh (or make) first")
    copy = tmp_path_factory.mktemp("cbD-smoke") / "x"
    shutil.copytree(DIST, copy, symlinks=True)
    yield copy / "bin" / "cni-bridge"


def run(binary: Path, env: dict[str, str], stdin: bytes) -> subprocess.CompletedProcess[bytes]:
    # cwd and env are both foreign to the repository: nothing may leak in from the build.
    return subprocess.run(
        [str(binary)],
        input=stdin,
        env=env,
        cwd=binary.parent,
        capture_output=True,
        timeout=60,
        check=False,
    )


def parse(stdout: bytes) -> dict[str, Any]:
    answer = json.loads(stdout)
    assert isinstance(answer, dict), answer
    return answer


def test_version_answers_from_a_relocated_copy(relocated: Path) -> None:
    proc = run(relocated, {"CNI_COMMAND": "VERSION"}, b"")
    assert proc.returncode == 0, proc.stderr.decode()
    answer = parse(proc.stdout)
    assert answer["cniVersion"] in SPEC_VERSIONS
    assert set(answer["supportedVersions"]) >= SPEC_VERSIONS


def test_add_with_malformed_stdin_is_a_decode_error(relocated: Path, tmp_path: Path) -> None:
    env = {
        "CNI_COMMAND": "ADD",
        "CNI_CONTAINERID": "cbd-smoke-0001",
        # A path that does not exist: even a faulty plugin cannot touch a real namespace.
        "CNI_NETNS": str(tmp_path / "no-such-netns"),
        "CNI_IFNAME": "eth0",
        "CNI_PATH": str(relocated.parent),
        # In-process: this test runs in the machine's own network namespace, where a first
        # ADD would otherwise start an agent (and leave it running for its idle timeout).
        "CNI_BRIDGE_RESIDENT": "0",
    }
    proc = run(relocated, env, b'{"cniVersion": "1.0.0", "name": ')
    assert proc.returncode != 0
    answer = parse(proc.stdout)
    assert answer["code"] == 6, answer  # the spec's "failed to decode content"
    assert isinstance(answer["msg"], str) and answer["msg"]


def test_host_libraries_are_not_bundled(relocated: Path) -> None:
    bundle = relocated.resolve().parent
    bundled = [p.name for p in bundle.rglob("*.so*") if p.name.startswith(HOST_ONLY_LIBS)]
    assert bundled == []
    assert (bundle / "_internal" / "nftables" / "schema.json").is_file()


def test_the_launcher_is_the_entry_and_finds_its_bundle(relocated: Path) -> None:
    # dist/bin/cni-bridge is the native launcher; the PyInstaller bootloader sits beside it.
    target = relocated.resolve()
    assert target.name == "cni-bridge-launch"
    assert (target.parent / "cni-bridge").is_file()
    assert (target.parent / "_internal").is_dir()
    assert target.read_bytes()[:4] == b"\x7fELF" and target.stat().st_size < 200_000


def test_install_links_the_launcher_and_uninstall_removes_everything(tmp_path: Path) -> None:
    if not BINARY.exists():
        pytest.fail(f"{BINARY} missing: run build/build.sh (or make) first")
    script = REPO / "build" / "install.sh"
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "DESTDIR": str(tmp_path),
           "CNI_BIN_DIR": "/opt/cni/bin", "BUNDLE": str(DIST / "cni-bridge")}
    subprocess.run(["sh", str(script)], env=env, check=True, capture_output=True, timeout=120)
    link = tmp_path / "opt" / "cni" / "bin" / "cni-bridge"
    assert link.is_symlink()
    assert os.readlink(link).startswith("cni-bridge.d/")
    assert os.readlink(link).endswith("/cni-bridge-launch")
    proc = run(link, {"CNI_COMMAND": "VERSION"}, b"")
    assert proc.returncode == 0, proc.stderr.decode()
    assert set(parse(proc.stdout)["supportedVersions"]) >= SPEC_VERSIONS
    # The agent's unit, for the plugin installed (under a DESTDIR: installed, not enabled).
    unit = tmp_path / "etc" / "systemd" / "system" / "cni-bridge.service"
    assert "\nExecStart=/opt/cni/bin/cni-bridge serve --idle 0\n" in unit.read_text()
    subprocess.run(["sh", str(script), "--uninstall"], env=env, check=True, capture_output=True,
                   timeout=120)
    assert list((tmp_path / "opt" / "cni" / "bin").iterdir()) == []
    assert not unit.exists()
