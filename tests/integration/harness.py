"""Throwaway namespaces and the real plugin as a process, for integration tests.

Every test gets a fresh "host" network namespace; the plugin runs inside it (`ip netns exec`),
containers are further namespaces, "outside" is one more linked to the host by a veth. The
machine's own namespace is never touched. Everything is removed in teardown, even on failure.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
BINARY = ROOT / "dist" / "bin" / "cni-bridge"


def plugin_command() -> list[str]:
    """The plugin under test: `python -m cni_bridge`, or the built binary when
    CNI_BRIDGE_TEST_PLUGIN=binary (make test runs the suite both ways)."""
    if os.environ.get("CNI_BRIDGE_TEST_PLUGIN") == "binary":
        if not BINARY.exists():
            raise RuntimeError(f"{BINARY} missing: run `make build` first")
        return [str(BINARY)]
    return [sys.executable, "-m", "cni_bridge"]


def plugin_dir(tmp: Path) -> Path:
    """A CNI_PATH directory whose `cni-bridge` runs the plugin under test."""
    d = tmp / "cni-bin"
    d.mkdir(exist_ok=True)
    exe = d / "cni-bridge"
    if not exe.exists():
        if os.environ.get("CNI_BRIDGE_TEST_PLUGIN") == "binary":
            exe.symlink_to(BINARY)
        else:
            exe.write_text(
                f"#!/bin/sh\nPYTHONPATH={ROOT} exec {sys.executable} -m cni_bridge \"$@\"\n"
            )
            exe.chmod(0o755)
    for ref in ("host-local", "static", "tuning", "bandwidth", "firewall", "portmap", "bridge"):
        src = Path("/usr/lib/cni") / ref
        if src.exists() and not (d / ref).exists():
            (d / ref).symlink_to(src)
    return d


def run(cmd: Sequence[str], *, check: bool = True, input: bytes | None = None, timeout: float = 60,
        env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    proc = subprocess.run(list(cmd), input=input, capture_output=True, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.decode(errors='replace')}"
        )
    return proc


class Netns:
    def __init__(self, name: str) -> None:
        self.name = name
        self.path = f"/run/netns/{name}"

    def exec(self, *cmd: str, check: bool = True, timeout: float = 60,
             input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        return run(["ip", "netns", "exec", self.name, *cmd], check=check, timeout=timeout, input=input)

    def ip_json(self, *args: str) -> Any:
        out = run(["ip", "-n", self.name, "-j", *args]).stdout
        return json.loads(out or b"[]")

    def links(self) -> list[str]:
        return [link["ifname"] for link in self.ip_json("link", "show")]

    def addrs(self, dev: str) -> list[str]:
        data = self.ip_json("addr", "show", "dev", dev)
        return [f"{a['local']}/{a['prefixlen']}" for d in data for a in d.get("addr_info", [])
                if a.get("scope") != "link"]

    def ruleset(self) -> dict[str, Any]:
        out = self.exec("nft", "-j", "list", "ruleset").stdout
        data: dict[str, Any] = json.loads(out)
        return data

    def ruleset_text(self) -> str:
        return self.exec("nft", "list", "ruleset").stdout.decode()


class Lab:
    """One test's namespaces, data dir and plugin invocations."""

    def __init__(self, tmp: Path, prefix: str = "cbL") -> None:
        self.tmp = tmp
        self.tag = secrets.token_hex(3)
        self.prefix = prefix
        self.namespaces: list[Netns] = []
        self.data_dir = tmp / "ipam"
        self.cni_path = plugin_dir(tmp)
        self.host = self.netns("h")
        self.host.exec("ip", "link", "set", "lo", "up")
        self.resident = os.environ.get("CNI_BRIDGE_TEST_RESIDENT", "0")

    def netns(self, role: str) -> Netns:
        ns = Netns(f"{self.prefix}-{role}{len(self.namespaces)}-{self.tag}")
        run(["ip", "netns", "add", ns.name])
        self.namespaces.append(ns)
        return ns

    def container(self) -> Netns:
        ns = self.netns("c")
        ns.exec("ip", "link", "set", "lo", "up")
        return ns

    def outside(self, host_addr: str = "192.0.2.1/24", out_addr: str = "192.0.2.2/24") -> Netns:
        """A namespace linked to the host by a veth: the "outside world"."""
        out = self.netns("o")
        h_if, o_if = f"up{self.tag}", "eth0"
        run(["ip", "link", "add", h_if, "netns", self.host.name, "type", "veth", "peer", "name",
             o_if, "netns", out.name])
        self.host.exec("ip", "addr", "add", host_addr, "dev", h_if)
        self.host.exec("ip", "link", "set", h_if, "up")
        out.exec("ip", "addr", "add", out_addr, "dev", o_if)
        out.exec("ip", "link", "set", o_if, "up")
        out.exec("ip", "link", "set", "lo", "up")
        out.exec("ip", "route", "add", "default", "via", host_addr.split("/")[0])
        return out

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
        """Runs the plugin process inside the host namespace; returns (exit code, JSON or None)."""
        env = self.env(command, cid, netns, ifname, extra)
        # nsenter keeps our mount namespace (`ip netns exec` makes a new one per call), so the
        # warm resident, which serves only callers in its own namespaces, can serve these.
        cmd = ["nsenter", f"--net={self.host.path}", "env", "-i",
               *[f"{k}={v}" for k, v in env.items()], *plugin_command()]
        proc = subprocess.run(cmd, input=json.dumps(conf).encode(), capture_output=True,
                              timeout=timeout, cwd=ROOT)
        out = proc.stdout.strip()
        assert b"Traceback" not in proc.stdout, proc.stdout
        data = json.loads(out) if out else None
        return proc.returncode, data

    def add(self, conf: Mapping[str, Any], cid: str, ns: Netns, ifname: str = "eth0",
            extra: Mapping[str, str] | None = None) -> Any:
        code, out = self.plugin("ADD", conf, cid, ns.path, ifname, extra)
        assert code == 0, out
        return out

    def delete(self, conf: Mapping[str, Any], cid: str, netns: str = "", ifname: str = "eth0") -> None:
        code, out = self.plugin("DEL", conf, cid, netns, ifname)
        assert code == 0, out

    def reservations(self, network: str) -> list[str]:
        d = self.data_dir / network
        if not d.exists():
            return []
        out = []
        for p in d.iterdir():
            try:
                ipaddress.ip_address(p.name)
            except ValueError:
                continue
            out.append(p.name)
        return sorted(out)

    def close(self) -> None:
        for ns in reversed(self.namespaces):
            kill_netns_processes(ns.name)
            subprocess.run(["ip", "netns", "del", ns.name], capture_output=True)
        self.namespaces.clear()


def kill_netns_processes(name: str) -> None:
    """Processes left in a test namespace (a warm resident, a test server) keep it alive."""
    pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), 9)


def wait_for(predicate: Any, timeout: float = 5.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def ping(ns: Netns, addr: str, count: int = 1) -> bool:
    six = ["-6"] if ":" in addr else []
    return ns.exec("ping", *six, "-c", str(count), "-W", "2", addr, check=False).returncode == 0
