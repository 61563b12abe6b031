"""The plugin under test, run inside a lab's "host" namespace as a runtime runs it.

`python -m cni_bridge` from this checkout, or the built binary when CNI_BRIDGE_TEST_PLUGIN=binary
(`make test` runs the plugin suites both ways); through the warm resident when
CNI_BRIDGE_TEST_RESIDENT=1.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tests.lab.lab import Lab
from tests.lab.netns import Netns

ROOT = Path(__file__).resolve().parents[2]
BINARY = ROOT / "dist" / "bin" / "cni-bridge"
REFERENCE_DIR = Path("/usr/lib/cni")  # Debian's containernetworking-plugins
REFERENCE_PLUGINS = ("host-local", "static", "tuning", "bandwidth", "firewall", "portmap", "bridge")


def binary_under_test() -> bool:
    return os.environ.get("CNI_BRIDGE_TEST_PLUGIN") == "binary"


def plugin_command() -> list[str]:
    if binary_under_test():
        if not BINARY.exists():
            raise RuntimeError(f"{BINARY} missing: run `make build` first")
        return [str(BINARY)]
    return [sys.executable, "-m", "cni_bridge"]


def plugin_dir(tmp: Path) -> Path:
    """A CNI_PATH directory whose `cni-bridge` runs the plugin under test, beside the reference
    plugins (for chains and delegated IPAM)."""
    d = tmp / "cni-bin"
    d.mkdir(exist_ok=True)
    exe = d / "cni-bridge"
    if not exe.exists():
        if binary_under_test():
            exe.symlink_to(BINARY)
        else:
            exe.write_text(
                f"#!/bin/sh\nPYTHONPATH={ROOT} exec {sys.executable} -m cni_bridge \"$@\"\n"
            )
            exe.chmod(0o755)
    for ref in REFERENCE_PLUGINS:
        src = REFERENCE_DIR / ref
        if src.exists() and not (d / ref).exists():
            (d / ref).symlink_to(src)
    return d


def in_host(host: Netns, env: Mapping[str, str], argv: list[str]) -> list[str]:
    """`argv` in `host` with exactly `env`, nothing inherited (as a runtime execs a plugin)."""
    return host.command("env", "-i", *[f"{k}={v}" for k, v in env.items()], *argv)


class PluginLab(Lab):
    """A Lab with a "host" namespace (loopback up, nothing else: the plugin configures it), a
    data dir and a CNI_PATH, and the plugin under test run there."""

    def __init__(self, tmp: Path, prefix: str = "cbL") -> None:
        super().__init__(prefix)
        self.tmp = tmp
        self.data_dir = tmp / "ipam"
        self.cni_path = plugin_dir(tmp)
        self.resident = os.environ.get("CNI_BRIDGE_TEST_RESIDENT", "0")
        try:
            self.host = self.netns("h")
        except BaseException:
            self.close()
            raise

    def conf(self, name: str | None = None, **over: Any) -> dict[str, Any]:
        c: dict[str, Any] = {
            "cniVersion": "1.0.0",
            "name": name or f"net{self.tag}",
            "type": "cni-bridge",
            "bridge": f"cb{self.tag}",
            "isGateway": True,
            "isDefaultGateway": True,
            "ipMasq": True,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": "10.66.0.0/24"}]],
                "dataDir": str(self.data_dir),
            },
        }
        c.update(over)
        return c

    def env(self, command: str, cid: str, netns: str, ifname: str = "eth0",
            extra: Mapping[str, str] | None = None) -> dict[str, str]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": cid,
            "CNI_NETNS": netns,
            "CNI_IFNAME": ifname,
            "CNI_PATH": str(self.cni_path),
            "CNI_BRIDGE_RESIDENT": self.resident,
            "PYTHONPATH": str(ROOT),
        }
        env.update(extra or {})
        return env

    def plugin(self, command: str, conf: Mapping[str, Any], cid: str = "", netns: str = "",
               ifname: str = "eth0", extra: Mapping[str, str] | None = None,
               timeout: float = 60) -> tuple[int, Any]:
        """One CNI call in the host namespace; (exit code, the JSON it printed or None)."""
        argv = in_host(self.host, self.env(command, cid, netns, ifname, extra), plugin_command())
        proc = subprocess.run(argv, input=json.dumps(conf), capture_output=True, text=True,
                              timeout=timeout, cwd=ROOT)
        out = proc.stdout.strip()
        assert "Traceback" not in proc.stdout, proc.stdout
        return proc.returncode, json.loads(out) if out else None

    def add(self, conf: Mapping[str, Any], cid: str, ns: Netns, ifname: str = "eth0",
            extra: Mapping[str, str] | None = None) -> Any:
        code, out = self.plugin("ADD", conf, cid, ns.path, ifname, extra)
        assert code == 0, out
        return out

    def delete(self, conf: Mapping[str, Any], cid: str, netns: str = "", ifname: str = "eth0") -> None:
        code, out = self.plugin("DEL", conf, cid, netns, ifname)
        assert code == 0, out

    def cli(self, *args: str, env: Mapping[str, str] | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """An operator command (`cni-bridge ls`, `gc`, `routes`...) in the host namespace."""
        full = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
                "PYTHONPATH": str(ROOT), **(env or {})}
        return subprocess.run(in_host(self.host, full, [*plugin_command(), *args]),
                              stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=timeout, cwd=ROOT)

    def reservations(self, network: str) -> list[str]:
        """host-local's reservation files of `network`: one per allocated IP, named after it."""
        return reservations(self.data_dir, network)


def reservations(data_dir: Path, network: str) -> list[str]:
    d = data_dir / network
    if not d.is_dir():
        return []
    out = []
    for p in d.iterdir():
        try:
            ipaddress.ip_address(p.name)
        except ValueError:
            continue
        out.append(p.name)
    return sorted(out)
