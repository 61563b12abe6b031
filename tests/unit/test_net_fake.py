"""The net layer without root: pure helpers, import discipline, netns path validation.

(The commands' fake NetOps lives in tests/unit/fakes.py; the kernel side is tested in
tests/integration/test_links.py.)
"""

from __future__ import annotations

import struct
import subprocess
import sys
from ipaddress import ip_interface

import pytest

from cni_bridge.domain import VlanId
from cni_bridge.net import sysctl
from cni_bridge.net.links import NetlinkOps
from cni_bridge.net.netns import open_netns
from cni_bridge.net.ops import AddressConflict, NetError, NetnsUnavailable, NetOps
from cni_bridge.net.plans import plan_bridge_addrs, vlan_entries
from cni_bridge.net.rtmsg import (
    BRIDGE_VLAN_INFO_PVID,
    BRIDGE_VLAN_INFO_RANGE_BEGIN,
    BRIDGE_VLAN_INFO_RANGE_END,
    BRIDGE_VLAN_INFO_UNTAGGED,
    bridge_port_msg,
)


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", code + "\nimport sys; print(' '.join(sys.modules))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return set(out.split())


def test_ops_module_is_stdlib_only() -> None:
    mods = _modules_after("import cni_bridge.net.ops, cni_bridge.net.sysctl")
    assert not any(m.startswith("pyroute2") for m in mods)


def test_plugin_netlink_path_loads_no_pyroute2() -> None:
    """The plugin's netlink (links, conntrack) costs an exec no pyroute2 import, and plants no
    placeholder module: a later `import pyroute2` (the node agent's) is the real package."""
    mods = _modules_after(
        "import cni_bridge.net.links, cni_bridge.firewall.conntrack, cni_bridge.commands.deps"
    )
    assert not any(m == "pyroute2" or m.startswith("pyroute2.") for m in mods)


def test_netlink_ops_has_every_operation() -> None:
    # NetOps is a plain class at run time (cni_bridge/hints.py), so isinstance against it
    # means nothing: mypy checks the signatures, this that every operation is there.
    members = [name for name in vars(NetOps) if not name.startswith("_")]
    assert len(members) > 10, members
    assert [m for m in members if not callable(getattr(NetlinkOps, m, None))] == []


iface = ip_interface


def test_bridge_addrs_add_missing_only() -> None:
    remove, add = plan_bridge_addrs("br", [iface("10.0.0.1/24")], [iface("10.0.0.1/24")], False)
    assert (remove, add) == ([], [])
    remove, add = plan_bridge_addrs("br", [], [iface("10.0.0.1/24"), iface("10.0.0.1/24")], False)
    assert (remove, add) == ([], [iface("10.0.0.1/24")])


def test_bridge_addrs_ipv4_any_other_address_conflicts() -> None:
    with pytest.raises(AddressConflict) as caught:
        plan_bridge_addrs("br", [iface("192.168.9.1/24")], [iface("10.0.0.1/24")], False)
    assert caught.value.msg.startswith('"br" already has an IP address different from 10.0.0.1/24')
    # same address, other prefix: also different
    with pytest.raises(AddressConflict):
        plan_bridge_addrs("br", [iface("10.0.0.1/16")], [iface("10.0.0.1/24")], False)


def test_bridge_addrs_force_replaces() -> None:
    remove, add = plan_bridge_addrs("br", [iface("10.0.0.1/16")], [iface("10.0.0.1/24")], True)
    assert (remove, add) == ([iface("10.0.0.1/16")], [iface("10.0.0.1/24")])


def test_bridge_addrs_wanted_together_do_not_conflict() -> None:
    wanted = [iface("10.0.0.1/24"), iface("10.1.0.1/24")]
    assert plan_bridge_addrs("br", [iface("10.0.0.1/24")], wanted, False) == (
        [],
        [iface("10.1.0.1/24")],
    )


def test_bridge_addrs_ipv6_only_overlapping_conflicts() -> None:
    existing = [iface("fd00::1/64"), iface("fe80::1/64")]
    assert plan_bridge_addrs("br", existing, [iface("fd01::1/64")], False) == (
        [],
        [iface("fd01::1/64")],
    )
    with pytest.raises(AddressConflict):
        plan_bridge_addrs("br", existing, [iface("fd00::2/64")], False)
    # other families never conflict
    assert plan_bridge_addrs("br", [iface("10.0.0.1/24")], [iface("fd00::1/64")], False)[0] == []


def test_vlan_entries() -> None:
    assert vlan_entries(None, None) == []
    assert vlan_entries(VlanId(10), None) == [
        (BRIDGE_VLAN_INFO_PVID | BRIDGE_VLAN_INFO_UNTAGGED, 10)
    ]
    assert vlan_entries(None, [VlanId(v) for v in (30, 20, 21, 22, 22)]) == [
        (BRIDGE_VLAN_INFO_RANGE_BEGIN, 20),
        (BRIDGE_VLAN_INFO_RANGE_END, 22),
        (0, 30),
    ]


def _tlvs(data: bytes) -> list[tuple[int, bytes]]:
    out, pos = [], 0
    while pos + 4 <= len(data):
        length, kind = struct.unpack_from("=HH", data, pos)
        out.append((kind, data[pos + 4 : pos + length]))
        pos += (length + 3) & ~3
    return out


def test_bridge_port_message_wire_format() -> None:
    """Pins the AF_BRIDGE setlink layout to the kernel uapi numbers (VLANs cannot be exercised
    on kernels without CONFIG_BRIDGE_VLAN_FILTERING)."""
    vlans = vlan_entries(VlanId(10), [VlanId(20), VlanId(21)])
    data = bridge_port_msg(42, True, True, vlans)
    family, index = struct.unpack_from("=B3xi", data)
    assert (family, index) == (7, 42)  # AF_BRIDGE, the port's ifindex
    attrs = _tlvs(data[16:])
    assert [kind for kind, _ in attrs] == [12 | 0x8000, 26 | 0x8000]  # PROTINFO, AF_SPEC
    port = {kind: value[0] for kind, value in _tlvs(attrs[0][1])}
    assert port == {4: 1, 33: 1}  # IFLA_BRPORT_MODE (hairpin), IFLA_BRPORT_ISOLATED
    infos = [struct.unpack("=HH", value) for kind, value in _tlvs(attrs[1][1]) if kind == 2]
    assert infos == [(0x2 | 0x4, 10), (0x8, 20), (0x10, 21)]  # (flags, vid)


def test_sysctl_paths() -> None:
    assert sysctl.sysctl_path("net.ipv4.ip_forward") == "/proc/sys/net/ipv4/ip_forward"
    assert (
        sysctl.sysctl_path("net/ipv4/conf/br.100/route_localnet")
        == "/proc/sys/net/ipv4/conf/br.100/route_localnet"
    )
    for bad in ("net/../../etc/passwd", "net//x", ""):
        with pytest.raises(NetError):
            sysctl.sysctl_path(bad)


def test_sysctl_read_missing() -> None:
    assert sysctl.read("net/ipv4/conf/no-such-link0/forwarding") is None


def test_open_netns_rejects_bad_paths(tmp_path: object) -> None:
    for path, reason in (
        ("", "no network namespace path given"),
        ("/run/netns/cbB-surely-missing", "does not exist"),
        ("/proc/self/status", "is not a network namespace"),
        ("/proc/self/ns/uts", "is not a network namespace"),
    ):
        with pytest.raises(NetnsUnavailable) as caught:
            open_netns(path)
        assert caught.value.reason == reason
        assert caught.value.path == path


def test_open_netns_accepts_a_netns() -> None:
    import os

    fd = open_netns("/proc/self/ns/net")
    os.close(fd)
