"""NetlinkOps against the real kernel, inside throw-away network namespaces (prefix cbB).

The operations work on "the current netns", so each scenario runs in a child Python process
started with `ip netns exec <host netns>`; the test process itself never changes namespace.
Assertions read kernel state with `ip -j` and real connections.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        os.geteuid() != 0 or shutil.which("ip") is None, reason="needs root and iproute2"
    ),
]

PRELUDE = """
import json, os, sys
from ipaddress import ip_address as A, ip_interface as I, ip_network as N
from cni_bridge.net.links import NetlinkOps
ops = NetlinkOps()
out = {}
def err(fn, *a, **k):
    try:
        fn(*a, **k)
    except Exception as exc:
        return [type(exc).__name__, str(exc)]
    return None
def info(li):
    return {"name": li.name, "index": li.ifindex, "mac": li.mac, "mtu": li.mtu}
NETNS_BEFORE = os.readlink("/proc/thread-self/ns/net")
"""

EPILOGUE = """
out["netns_unchanged"] = os.readlink("/proc/thread-self/ns/net") == NETNS_BEFORE
ops.close()
print(json.dumps(out))
"""


@dataclass
class Env:
    host: str
    ctrs: list[str]

    def path(self, i: int = 0) -> str:
        return f"/run/netns/{self.ctrs[i]}"

    def run(self, code: str, *args: str) -> dict[str, Any]:
        """Run `code` in a child inside the host netns; returns its `out` dict."""
        prog = PRELUDE + textwrap.dedent(code) + EPILOGUE
        proc = subprocess.run(
            ["ip", "netns", "exec", self.host, sys.executable, "-c", prog, *args],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
        out: dict[str, Any] = json.loads(proc.stdout.splitlines()[-1])
        assert out.pop("netns_unchanged") is True
        return out


def sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=check)


def ipj(ns: str, *args: str) -> Any:
    return json.loads(sh("ip", "-n", ns, "-j", *args).stdout or "[]")


def link(ns: str, name: str) -> dict[str, Any] | None:
    proc = sh("ip", "-n", ns, "-j", "-d", "link", "show", "dev", name, check=False)
    if proc.returncode != 0:
        return None
    found: list[dict[str, Any]] = json.loads(proc.stdout)
    return found[0]


def addrs(ns: str, name: str) -> dict[str, dict[str, Any]]:
    found = ipj(ns, "addr", "show", "dev", name)
    return {f"{a['local']}/{a['prefixlen']}": a for a in found[0]["addr_info"]}


def sysctl_in(ns: str, key: str) -> str:
    return sh("ip", "netns", "exec", ns, "sysctl", "-n", key).stdout.strip()


@pytest.fixture
def env() -> Iterator[Env]:
    tag = secrets.token_hex(3)
    e = Env(f"cbB-host-{tag}", [f"cbB-ctr-{tag}", f"cbB-ctr2-{tag}"])
    made: list[str] = []
    try:
        for ns in (e.host, *e.ctrs):
            sh("ip", "netns", "add", ns)
            made.append(ns)
        yield e
    finally:
        for ns in made:
            sh("ip", "netns", "del", ns, check=False)


def _add_container(e: Env, i: int, ip: str, mac: str, host: str) -> dict[str, Any]:
    return e.run(
        f"""
        br = ops.ensure_bridge("cbr0", 1450, False)
        ops.ensure_bridge_addrs("cbr0", [I("10.77.0.1/24"), I("fd77::1/64")], False)
        h, c = ops.create_veth({e.path(i)!r}, "eth0", {host!r}, "cbr0", mtu=1450,
                               container_mac={mac!r}, hairpin=True)
        ops.configure_container({e.path(i)!r}, "eth0", [I("{ip}/24"), I("fd77::{i + 5}/64")],
                                [(N("0.0.0.0/0"), A("10.77.0.1")), (N("::/0"), A("fd77::1"))])
        out["bridge"] = info(br)
        out["host"] = info(h)
        out["ctr"] = info(c)
        """
    )


def test_add_path_state_and_traffic(env: Env) -> None:
    first = _add_container(env, 0, "10.77.0.5", "02:00:00:77:00:05", "vethcbB0")
    second = _add_container(env, 1, "10.77.0.6", "02:00:00:77:00:06", "vethcbB1")

    br = link(env.host, "cbr0")
    assert br is not None
    assert br["linkinfo"]["info_kind"] == "bridge"
    assert "UP" in br["flags"] and br["mtu"] == 1450
    assert br["address"] == first["bridge"]["mac"] == second["bridge"]["mac"]
    assert set(addrs(env.host, "cbr0")) >= {"10.77.0.1/24", "fd77::1/64"}
    assert "tentative" not in addrs(env.host, "cbr0")["fd77::1/64"]
    assert sysctl_in(env.host, "net.ipv6.conf.cbr0.accept_ra") == "0"

    for i, res in enumerate((first, second)):
        host_end = link(env.host, res["host"]["name"])
        assert host_end is not None
        assert host_end["master"] == "cbr0"
        assert host_end["operstate"] == "UP"
        assert host_end["linkinfo"]["info_slave_data"]["hairpin"] is True
        assert host_end["ifindex"] == res["host"]["index"]
        # A bridge port gets no IPv6 link-local address (addrgenmode none before link up).
        assert addrs(env.host, res["host"]["name"]) == {}
        assert host_end.get("inet6_addr_gen_mode") == "none"
        ctr = env.ctrs[i]
        eth0 = link(ctr, "eth0")
        assert eth0 is not None
        assert eth0["linkinfo"]["info_kind"] == "veth"
        assert eth0["address"] == res["ctr"]["mac"] == f"02:00:00:77:00:0{5 + i}"
        assert eth0["mtu"] == 1450 and eth0["operstate"] == "UP"
        assert eth0["link_index"] == host_end["ifindex"]
        have = addrs(ctr, "eth0")
        assert f"10.77.0.{5 + i}/24" in have
        assert "tentative" not in have[f"fd77::{5 + i}/64"]
        assert sysctl_in(ctr, "net.ipv6.conf.eth0.accept_dad") == "0"
        v4 = ipj(ctr, "route", "show", "default")
        assert [(r["dst"], r["gateway"], r["dev"]) for r in v4] == [
            ("default", "10.77.0.1", "eth0")
        ]
        v6 = ipj(ctr, "-6", "route", "show", "default")
        assert [(r["gateway"], r["dev"]) for r in v6] == [("fd77::1", "eth0")]

    ports = env.run('out["ports"] = ops.bridge_ports("cbr0")')["ports"]
    assert ports == ["vethcbB0", "vethcbB1"]

    # Traffic: container to container and container to gateway, right after ADD returned.
    _assert_tcp(env.ctrs[0], env.ctrs[1], "10.77.0.5")
    _assert_tcp(env.ctrs[1], env.ctrs[0], "fd77::6")
    ping = (
        ["ping"] if shutil.which("ping") else ["busybox", "ping"] if shutil.which("busybox") else []
    )
    if ping:
        sh("ip", "netns", "exec", env.ctrs[0], *ping, "-c1", "-W1", "10.77.0.6")
        sh("ip", "netns", "exec", env.ctrs[0], *ping, "-c1", "-W1", "10.77.0.1")
        sh("ip", "netns", "exec", env.ctrs[1], *ping, "-c1", "-W1", "fd77::5")


SERVER = """
import socket, sys
address = sys.argv[1]
family = socket.AF_INET6 if ":" in address else socket.AF_INET
server = socket.create_server((address, 7777), family=family)
print("ready", flush=True)
server.settimeout(10)
conn, _ = server.accept()
conn.sendall(b"pong")
conn.close()
"""

CLIENT = """
import socket, sys
conn = socket.create_connection((sys.argv[1], 7777), timeout=5)
print(conn.recv(4).decode())
"""


def _in_netns(ns: str, code: str, *args: str) -> list[str]:
    return ["ip", "netns", "exec", ns, sys.executable, "-c", code, *args]


def _assert_tcp(server_ns: str, client_ns: str, address: str) -> None:
    """A real TCP exchange from one container to a listener in the other."""
    server = subprocess.Popen(
        _in_netns(server_ns, SERVER, address), stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        got = sh(*_in_netns(client_ns, CLIENT, address)).stdout.strip()
        assert got == "pong"
    finally:
        server.kill()
        server.wait()


def test_bridge_mac_is_pinned_and_reused(env: Env) -> None:
    out = env.run(
        f"""
        br = ops.ensure_bridge("cbr0", None, False)
        ops.create_veth({env.path()!r}, "eth0", "vethcbB0", "cbr0")
        again = ops.ensure_bridge("cbr0", None, False)
        out["br"], out["again"] = info(br), info(again)
        """
    )
    assert out["br"] == out["again"]
    # An unpinned bridge adopts the lowest port MAC; give the port a very low one.
    sh("ip", "-n", env.host, "link", "set", "vethcbB0", "address", "02:00:00:00:00:01")
    br = link(env.host, "cbr0")
    assert br is not None and br["address"] == out["br"]["mac"]
    pinned = sh("ip", "netns", "exec", env.host, "cat", "/sys/class/net/cbr0/addr_assign_type")
    assert pinned.stdout.strip() == "3"


def test_ensure_bridge_concurrent_creators(env: Env) -> None:
    code = """
    import time
    start = float(sys.argv[1])
    time.sleep(max(0.0, start - time.time()))
    out["idx"] = [ops.ensure_bridge(f"cbrace{i}", 1400, False).ifindex for i in range(15)]
    """
    prog = PRELUDE + textwrap.dedent(code) + EPILOGUE
    start = str(time.time() + 1.0)
    procs = [
        subprocess.Popen(
            ["ip", "netns", "exec", env.host, sys.executable, "-c", prog, start],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    results = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=60)
        assert p.returncode == 0, stderr
        results.append(json.loads(stdout.splitlines()[-1])["idx"])
    assert results[0] == results[1] == results[2]
    for i in range(15):
        br = link(env.host, f"cbrace{i}")
        assert br is not None and br["mtu"] == 1400 and "UP" in br["flags"]


def test_ensure_bridge_rejects_other_kind(env: Env) -> None:
    sh("ip", "-n", env.host, "link", "add", "cbr0", "type", "veth", "peer", "name", "cbr0p")
    out = env.run('out["e"] = err(ops.ensure_bridge, "cbr0", None, False)')
    assert out["e"][0] == "NotABridge"
    assert "not a bridge" in out["e"][1]


def test_bridge_addr_conflicts_and_force(env: Env) -> None:
    out = env.run(
        """
        ops.ensure_bridge("cbr0", None, False)
        ops.ensure_bridge_addrs("cbr0", [I("10.1.0.1/24"), I("fd01::1/64")], False)
        # present already: fine; two IPv4 gateways in one call: fine
        out["again"] = err(ops.ensure_bridge_addrs, "cbr0", [I("10.1.0.1/24"), I("10.2.0.1/24")], False)
        out["v4"] = err(ops.ensure_bridge_addrs, "cbr0", [I("10.9.0.1/24")], False)
        out["v6_overlap"] = err(ops.ensure_bridge_addrs, "cbr0", [I("fd01::2/64")], False)
        out["v6_other"] = err(ops.ensure_bridge_addrs, "cbr0", [I("fd02::1/64")], False)
        out["forced"] = err(ops.ensure_bridge_addrs, "cbr0", [I("10.9.0.1/24"), I("fd01::2/64")], True)
        """
    )
    assert out["again"] is None
    assert out["v4"][0] == "AddressConflict"
    assert out["v4"][1].startswith('"cbr0" already has an IP address different from 10.9.0.1/24')
    assert out["v6_overlap"][0] == "AddressConflict"
    assert out["v6_other"] is None
    assert out["forced"] is None
    have = {a for a in addrs(env.host, "cbr0") if not a.startswith("fe80")}
    assert have == {"10.9.0.1/24", "fd01::2/64", "fd02::1/64"}


def test_subnet_check_does_not_count_the_networks_own_bridge_made_meanwhile(env: Env) -> None:
    """The state a concurrent ADD of the same network leaves the check in: it looked the bridge
    up (absent, index 0), then that ADD made it with the gateway address and its route. Those
    are this network's own; another link's address or route in the subnet still is not."""
    out = env.run(
        """
        ops.ensure_bridge("cbr0", None, False)
        ops.ensure_bridge_addrs("cbr0", [I("10.66.0.1/24")], False)
        rt = ops._rt()
        out["own"] = err(ops._check_subnet_free, rt, 0, "cbr0", I("10.66.0.1/24"))
        out["other"] = err(ops._check_subnet_free, rt, 0, "cbr9", I("10.66.0.1/24"))
        """
    )
    assert out["own"] is None
    assert out["other"][0] == "SubnetInUse"
    assert "address 10.66.0.1/24 on cbr0" in out["other"][1]


def test_port_isolation_and_promisc(env: Env) -> None:
    env.run(
        f"""
        ops.ensure_bridge("cbr0", None, False)
        ops.create_veth({env.path()!r}, "eth0", "vethcbB0", "cbr0", port_isolation=True, promisc=True)
        """
    )
    port = link(env.host, "vethcbB0")
    assert port is not None
    assert port["linkinfo"]["info_slave_data"]["isolated"] is True
    assert port["linkinfo"]["info_slave_data"]["hairpin"] is False
    br = link(env.host, "cbr0")
    assert br is not None and "PROMISC" in br["flags"]


def _kernel_has_vlan_filtering(ns: str) -> bool:
    cmd = ("ip", "-n", ns, "link", "add", "cbvlt", "type", "bridge", "vlan_filtering", "1")
    ok = sh(*cmd, check=False).returncode == 0
    sh("ip", "-n", ns, "link", "del", "cbvlt", check=False)
    return ok


def test_vlans(env: Env) -> None:
    if not _kernel_has_vlan_filtering(env.host):
        out = env.run('out["e"] = err(ops.ensure_bridge, "cbr0", None, True)')
        assert out["e"][0] == "NetError" and "CONFIG_BRIDGE_VLAN_FILTERING" in out["e"][1]
        pytest.skip("kernel without CONFIG_BRIDGE_VLAN_FILTERING (error message checked)")
    env.run(
        f"""
        ops.ensure_bridge("cbr0", None, True)
        ops.create_veth({env.path(0)!r}, "eth0", "vethcbB0", "cbr0", vlan=10)
        ops.create_veth({env.path(1)!r}, "eth0", "vethcbB1", "cbr0", vlan_trunk=[20, 21, 22, 30])
        """
    )
    vlans = json.loads(sh("bridge", "-n", env.host, "-j", "vlan", "show").stdout)
    by_port = {v["ifname"]: v["vlans"] for v in vlans}
    access = {v["vlan"]: v.get("flags", []) for v in by_port["vethcbB0"]}
    assert set(access[10]) == {"PVID", "Egress Untagged"}
    trunk = by_port["vethcbB1"]
    ids = {v["vlan"] for v in trunk} | {v["vlanEnd"] for v in trunk if "vlanEnd" in v}
    assert {20, 22, 30} <= ids


def test_link_exists_both_sides(env: Env) -> None:
    out = env.run(
        f"""
        ops.ensure_bridge("cbr0", None, False)
        ops.create_veth({env.path(0)!r}, "eth0", "vethcbB0", "cbr0")
        out["ctr"] = err(ops.create_veth, {env.path(0)!r}, "eth0", "vethcbB1", "cbr0")
        out["host"] = err(ops.create_veth, {env.path(1)!r}, "eth0", "vethcbB0", "cbr0")
        out["links"] = ops.host_links_with_prefix("vethcbB")
        """
    )
    assert out["ctr"][0] == "LinkExists" and env.ctrs[0] in out["ctr"][1]
    assert out["host"][0] == "LinkExists" and "the host" in out["host"][1]
    assert out["links"] == ["vethcbB0"]
    assert link(env.host, "vethcbB1") is None
    assert link(env.ctrs[1], "eth0") is None


def test_missing_netns_changes_nothing(env: Env) -> None:
    before = sorted(lk["ifname"] for lk in ipj(env.host, "link"))
    gone = f"/run/netns/cbB-gone-{secrets.token_hex(3)}"
    out = env.run(
        f"""
        ops.ensure_bridge("cbr0", None, False)
        out["before"] = sorted(ops.host_links_with_prefix(""))
        for key, path in (("missing", {gone!r}), ("empty", ""), ("notns", "/etc/hostname")):
            out[key] = [
                err(ops.create_veth, path, "eth0", "vethcbB0", "cbr0"),
                err(ops.configure_container, path, "eth0", [I("10.0.0.2/24")], []),
                ops.container_view(path, "eth0"),
                ops.delete_container_link(path, "eth0"),
            ]
        out["after"] = sorted(ops.host_links_with_prefix(""))
        """
    )
    for key in ("missing", "empty", "notns"):
        create, configure, view, deleted = out[key]
        assert create[0] == configure[0] == "NetnsUnavailable"
        assert view is None and deleted is False
    assert out["missing"][0][1].endswith("does not exist")
    assert out["notns"][0][1].endswith("is not a network namespace")
    assert out["before"] == out["after"] == sorted([*before, "cbr0"])
    assert not os.path.exists(gone)


def test_container_view_and_delete(env: Env) -> None:
    out = env.run(
        f"""
        p = {env.path()!r}
        ops.ensure_bridge("cbr0", None, False)
        ops.ensure_bridge_addrs("cbr0", [I("10.3.0.1/24")], False)
        h, c = ops.create_veth(p, "eth0", "vethcbB0", "cbr0", container_mac="02:00:00:03:00:02")
        ops.configure_container(p, "eth0", [I("10.3.0.2/24")],
                                [(N("0.0.0.0/0"), A("10.3.0.1")), (N("10.50.0.0/16"), None)])
        v = ops.container_view(p, "eth0")
        out["view"] = [v.mac, v.mtu, v.kind, v.oper_up, v.peer_index == h.ifindex,
                       sorted(map(str, v.addresses)), sorted((str(d), str(g)) for d, g in v.routes)]
        hl = ops.host_link("vethcbB0")
        out["host"] = [hl.kind, hl.master == ops.host_link("cbr0").ifindex, hl.peer_index == c.ifindex]
        out["missing_if"] = ops.container_view(p, "eth9")
        out["exists"] = [ops.link_exists("vethcbB0"), ops.link_exists("vethcbB9")]
        out["del"] = [ops.delete_container_link(p, "eth0"), ops.delete_container_link(p, "eth0")]
        out["after"] = [ops.link_exists("vethcbB0"), ops.container_view(p, "eth0"),
                        ops.delete_link("vethcbB0"), ops.bridge_ports("cbr0"),
                        ops.bridge_ports("nobr0")]
        """
    )
    mac, mtu, kind, oper_up, peer_ok, view_addrs, routes = out["view"]
    assert (mac, mtu, kind, oper_up, peer_ok) == ("02:00:00:03:00:02", 1500, "veth", True, True)
    assert "10.3.0.2/24" in view_addrs
    assert ["0.0.0.0/0", "10.3.0.1"] in routes and ["10.50.0.0/16", "None"] in routes
    assert out["host"] == ["veth", True, True]
    assert out["missing_if"] is None
    assert out["exists"] == [True, False]
    assert out["del"] == [True, False]
    assert out["after"] == [False, None, False, [], []]
    assert link(env.host, "vethcbB0") is None
    assert link(env.ctrs[0], "eth0") is None


def test_delete_link_takes_the_pair(env: Env) -> None:
    out = env.run(
        f"""
        ops.ensure_bridge("cbr0", None, False)
        ops.create_veth({env.path()!r}, "eth0", "vethcbB0", "cbr0")
        out["del"] = [ops.delete_link("vethcbB0"), ops.delete_link("vethcbB0")]
        """
    )
    assert out["del"] == [True, False]
    assert link(env.ctrs[0], "eth0") is None


def test_dad_enabled_waits_for_tentative_to_clear(env: Env) -> None:
    env.run(
        f"""
        ops.ensure_bridge("cbr0", None, False)
        ops.create_veth({env.path()!r}, "eth0", "vethcbB0", "cbr0")
        ops.configure_container({env.path()!r}, "eth0", [I("fd05::2/64")], [], enable_dad=True)
        """
    )
    assert sysctl_in(env.ctrs[0], "net.ipv6.conf.eth0.accept_dad") == "1"
    have = addrs(env.ctrs[0], "eth0")["fd05::2/64"]
    assert not have.get("tentative") and not have.get("dadfailed")


def test_configure_missing_link_returns_to_host_netns(env: Env) -> None:
    # The netns_unchanged check in Env.run covers the failure inside the container netns.
    out = env.run(f'out["e"] = err(ops.configure_container, {env.path()!r}, "eth0", [], [])')
    assert out["e"][0] == "LinkNotFound"


def test_host_sysctls(env: Env) -> None:
    # A new netns may inherit ip_forward=1 from the root one: start from 0 so the test can fail.
    sh("ip", "netns", "exec", env.host, "sysctl", "-qw", "net.ipv4.ip_forward=0")
    env.run(
        """
        ops.ensure_bridge("cbr0", None, False)
        ops.set_forwarding(True, True)
        ops.set_route_localnet("cbr0")
        ops.set_sysctl("net/ipv4/conf/cbr0/arp_notify", "1")
        """
    )
    assert sysctl_in(env.host, "net.ipv4.ip_forward") == "1"
    assert sysctl_in(env.host, "net.ipv6.conf.all.forwarding") == "1"
    assert sysctl_in(env.host, "net.ipv4.conf.cbr0.route_localnet") == "1"
    assert sysctl_in(env.host, "net.ipv4.conf.cbr0.arp_notify") == "1"
