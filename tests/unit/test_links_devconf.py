"""The netlink codec and transport without root: every request `rtmsg` builds is byte for byte
what pyroute2 (the project's netlink library, the reference here) encodes for the same request;
replies pyroute2 encodes parse back; per-device settings are read from link replies; the socket
frames requests and turns the kernel's errors into NetlinkError."""

from __future__ import annotations

import errno
import os
import socket
import struct
from ipaddress import ip_address, ip_interface, ip_network
from socket import AF_INET, AF_INET6
from typing import Any

import pytest
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from cni_bridge.net import rtmsg as M
from cni_bridge.net.netlink import (
    NLM_F_ACK,
    NLM_F_ACK_TLVS,
    NLM_F_REQUEST,
    NLMSG_DONE,
    NLMSG_ERROR,
    NetlinkError,
    NetlinkSocket,
    attr,
)

BASE = M.Link(
    name="br0",
    ifindex=3,
    flags=0,
    mtu=1500,
    mac="",
    kind="bridge",
    master=None,
    operstate=0,
    peer_index=None,
    port_state=None,
    hairpin=None,
    isolated=None,
    vlan_filtering=False,
)


def _payload(msg: Any) -> bytes:
    """What pyroute2 puts after the netlink header (the transport writes that header)."""
    msg["header"].update(type=M.RTM_NEWLINK, flags=0, sequence_number=1, pid=0)
    msg.encode()
    return bytes(msg.data[16:])


def _link(index: int = 0, family: int = 0, flags: int = 0, *attrs: Any) -> Any:
    msg = ifinfmsg()
    msg.update(family=family, index=index, flags=flags, change=flags)
    msg["attrs"] = list(attrs)
    return msg


# --- requests, against pyroute2 -------------------------------------------------------------


def test_link_requests_are_encoded_as_pyroute2_would() -> None:
    skip = ("IFLA_EXT_MASK", M.RTEXT_FILTER_SKIP_STATS)
    cases: list[tuple[bytes, Any]] = [
        (M.get_link_msg(name="cbp0"), _link(0, 0, 0, skip, ("IFLA_IFNAME", "cbp0"))),
        (M.get_link_msg(index=7), _link(7, 0, 0, skip)),
        (M.dump_links_msg(), _link(0, 0, 0, skip)),
        (M.dump_links_msg(9), _link(0, 0, 0, skip, ("IFLA_MASTER", 9))),
        (M.del_link_msg("vcb1"), _link(0, 0, 0, ("IFLA_IFNAME", "vcb1"))),
    ]
    for mtu, filtering in ((None, False), (9000, True)):
        info: list[Any] = [("IFLA_INFO_KIND", "bridge")]
        if filtering:
            info.append(("IFLA_INFO_DATA", {"attrs": [("IFLA_BR_VLAN_FILTERING", 1)]}))
        ref: list[tuple[str, Any]] = [("IFLA_IFNAME", "cbr0"), ("IFLA_LINKINFO", {"attrs": info})]
        ref += [("IFLA_MTU", mtu)] if mtu else []
        cases.append((M.new_bridge_msg("cbr0", mtu, filtering), _link(0, 0, M.IFF_UP, *ref)))
    for mtu, mac in ((None, None), (1450, "02:00:00:03:00:02")):
        peer: list[Any] = [("IFLA_IFNAME", "eth0"), ("IFLA_NET_NS_FD", 5)]
        peer += [("IFLA_MTU", mtu)] if mtu else []
        peer += [("IFLA_ADDRESS", mac)] if mac else []
        data = {"attrs": [("VETH_INFO_PEER", {"attrs": peer})]}
        info = [("IFLA_INFO_KIND", "veth"), ("IFLA_INFO_DATA", data)]
        ref = [("IFLA_IFNAME", "vcb1"), ("IFLA_MASTER", 3), ("IFLA_LINKINFO", {"attrs": info})]
        ref += [("IFLA_MTU", mtu)] if mtu else []
        cases.append((M.new_veth_msg("vcb1", "eth0", 5, 3, mtu, mac), _link(0, 0, 0, *ref)))
    for sent, ref in cases:
        assert sent == _payload(ref)


def test_link_changes_are_encoded_as_pyroute2_would() -> None:
    data = {"attrs": [("IFLA_BR_VLAN_FILTERING", 1)]}
    full = [
        ("IFLA_ADDRESS", "0a:58:0a:00:00:01"),
        ("IFLA_MTU", 1400),
        ("IFLA_LINKINFO", {"attrs": [("IFLA_INFO_KIND", "bridge"), ("IFLA_INFO_DATA", data)]}),
    ]
    sent = M.set_link_msg(4, up=True, mac="0a:58:0a:00:00:01", mtu=1400, vlan_filtering=True)
    assert sent == _payload(_link(4, 0, M.IFF_UP, *full))
    promisc = _link(4)
    promisc.update(flags=M.IFF_PROMISC, change=M.IFF_PROMISC)
    assert M.set_link_msg(4, promisc=True) == _payload(promisc)
    down = _link(4)
    down.update(flags=0, change=M.IFF_UP)
    assert M.set_link_msg(4, up=False) == _payload(down)


def test_bridge_port_requests_are_encoded_as_pyroute2_would() -> None:
    vlans = [(M.BRIDGE_VLAN_INFO_PVID | M.BRIDGE_VLAN_INFO_UNTAGGED, 10), (0, 30)]
    for hairpin, isolated, port_vlans in (
        (True, True, vlans),
        (True, False, []),
        (False, False, vlans),
    ):
        ref = _link(42, M.AF_BRIDGE)
        flags = [("IFLA_BRPORT_MODE", 1)] if hairpin else []
        flags += [("IFLA_BRPORT_ISOLATED", 1)] if isolated else []
        if flags:
            ref["attrs"].append(("IFLA_PROTINFO", {"attrs": flags}, 0x8000))
        if port_vlans:
            spec = [("IFLA_BRIDGE_VLAN_INFO", {"flags": f, "vid": v}) for f, v in port_vlans]
            ref["attrs"].append(("IFLA_AF_SPEC", {"attrs": spec}, 0x8000))
        assert M.bridge_port_msg(42, hairpin, isolated, port_vlans) == _payload(ref)


def test_address_requests_are_encoded_as_pyroute2_would() -> None:
    for text, flags in (("10.0.0.2/24", 0), ("10.0.0.2/31", 0), ("fd00::2/64", M.IFA_F_NODAD)):
        iface = ip_interface(text)
        ref = ifaddrmsg()
        ref["family"] = AF_INET if iface.version == 4 else AF_INET6
        ref["prefixlen"] = iface.network.prefixlen
        ref["flags"] = flags
        ref["scope"] = 0
        ref["index"] = 7
        ref["attrs"] = [("IFA_LOCAL", str(iface.ip)), ("IFA_ADDRESS", str(iface.ip))]
        if iface.version == 4 and iface.network.prefixlen < 31:
            ref["attrs"].append(("IFA_BROADCAST", str(iface.network.broadcast_address)))
        assert M.addr_msg(7, iface, flags) == _payload(ref)
    dump = ifaddrmsg()
    dump.update(family=0, prefixlen=0, flags=0, scope=0, index=7)
    assert M.dump_addrs_msg(7) == _payload(dump)


def test_route_requests_are_encoded_as_pyroute2_would() -> None:
    for dst, gw in (("0.0.0.0/0", "10.0.0.1"), ("10.9.0.0/16", None), ("::/0", "fd00::1")):
        net, gateway = ip_network(dst), ip_address(gw) if gw else None
        ref = rtmsg()
        ref["family"] = AF_INET if net.version == 4 else AF_INET6
        ref["dst_len"] = net.prefixlen
        ref["table"] = M.RT_TABLE_MAIN
        ref["proto"] = M.RTPROT_BOOT
        ref["scope"] = M.RT_SCOPE_UNIVERSE if gateway else M.RT_SCOPE_LINK
        ref["type"] = M.RTN_UNICAST
        ref["attrs"] = [("RTA_OIF", 7)]
        if net.prefixlen:
            ref["attrs"].append(("RTA_DST", str(net.network_address)))
        if gateway:
            ref["attrs"].append(("RTA_GATEWAY", str(gateway)))
        assert M.route_msg(7, net, gateway) == _payload(ref)
    for family in (AF_INET, AF_INET6):
        dump = rtmsg()
        dump.update(family=family, table=M.RT_TABLE_MAIN)
        dump["attrs"] = [("RTA_OIF", 7)]
        assert M.dump_routes_msg(family, 7) == _payload(dump)


def test_sparse_requests_pyroute2_does_not_model() -> None:
    """IFLA_INET_CONF with one setting (pyroute2 sends the whole array) and netconf."""
    head = struct.pack("=BxHiII", 0, 0, 5, 0, 0)
    arp = struct.pack("=HH", 8, M.IPV4_DEVCONF_ARP_NOTIFY) + struct.pack("=I", 1)
    inet = struct.pack("=HH", 4 + 4 + len(arp), AF_INET) + struct.pack("=HH", 4 + len(arp), 1)
    nolink = struct.pack("=HH", 12, AF_INET6) + struct.pack("=HHB3x", 5, 8, 1)
    spec = inet + arp + nolink
    expected = head + struct.pack("=HH", 4 + len(spec), M.IFLA_AF_SPEC) + spec
    assert M.af_spec_msg(5, M.ARP_NOTIFY, M.NO_LINK_LOCAL) == expected
    assert M.netconf_msg(AF_INET6) == bytes([AF_INET6, 0, 0, 0]) + struct.pack("=HHi", 8, 1, -1)
    reply = bytes([AF_INET, 0, 0, 0]) + struct.pack("=HHi", 8, M.NETCONFA_FORWARDING, 1)
    assert M.parse_forwarding(reply) == 1
    assert M.parse_forwarding(bytes(4)) is None


def test_attributes_are_padded() -> None:
    assert attr(8, b"\x01") == struct.pack("=HH", 5, 8) + b"\x01\0\0\0"
    assert attr(8, b"") == struct.pack("=HH", 4, 8)


# --- replies --------------------------------------------------------------------------------


def test_link_replies_encoded_by_pyroute2_parse() -> None:
    slave = {"attrs": [("IFLA_BRPORT_STATE", 3), ("IFLA_BRPORT_MODE", 1)]}
    info = {
        "attrs": [
            ("IFLA_INFO_KIND", "veth"),
            ("IFLA_INFO_SLAVE_KIND", "bridge"),
            ("IFLA_INFO_SLAVE_DATA", slave),
        ]
    }
    msg = _link(
        12, 0, M.IFF_UP | M.IFF_LOWER_UP,
        ("IFLA_IFNAME", "vcb1"), ("IFLA_MTU", 1450), ("IFLA_ADDRESS", "02:00:00:00:00:01"),
        ("IFLA_LINK", 2), ("IFLA_MASTER", 3), ("IFLA_OPERSTATE", "UP"), ("IFLA_LINKINFO", info),
    )  # fmt: skip
    link = M.parse_link(_payload(msg))
    assert (link.name, link.ifindex, link.mtu, link.mac) == ("vcb1", 12, 1450, "02:00:00:00:00:01")
    assert (link.kind, link.master, link.peer_index) == ("veth", 3, 2)
    assert link.up and link.oper_up
    assert (link.port_state, link.hairpin, link.isolated) == (3, True, None)
    assert link.vlan_filtering is None
    data = {"attrs": [("IFLA_BR_VLAN_FILTERING", 1)]}
    bridge = M.parse_link(
        _payload(
            _link(
                3, 0, 0, ("IFLA_IFNAME", "cbr0"),
                ("IFLA_LINKINFO", {"attrs": [("IFLA_INFO_KIND", "bridge"), ("IFLA_INFO_DATA", data)]}),
            )
        )
    )  # fmt: skip
    assert (bridge.kind, bridge.vlan_filtering, bridge.up, bridge.peer_index) == (
        "bridge", True, False, None,
    )  # fmt: skip


def test_route_replies_encoded_by_pyroute2_parse() -> None:
    msg = rtmsg()
    msg.update(family=AF_INET6, dst_len=64, table=252, type=M.RTN_UNICAST)
    msg["attrs"] = [("RTA_DST", "fd00:1::"), ("RTA_GATEWAY", "fd00::1"), ("RTA_OIF", 7),
                    ("RTA_TABLE", M.RT_TABLE_MAIN)]  # fmt: skip
    entry = M.parse_route(_payload(msg))
    assert entry.route == (ip_network("fd00:1::/64"), ip_address("fd00::1"))
    assert (entry.oif, entry.table, entry.type) == (7, M.RT_TABLE_MAIN, M.RTN_UNICAST)
    default = rtmsg()
    default.update(family=AF_INET, table=M.RT_TABLE_MAIN, type=2)
    entry = M.parse_route(_payload(default))
    assert entry.route == (ip_network("0.0.0.0/0"), None)
    assert (entry.oif, entry.table, entry.type) == (None, M.RT_TABLE_MAIN, 2)


def test_address_replies_are_parsed() -> None:
    v4 = M.IFADDR.pack(AF_INET, 24, 0, 0, 3)
    v4 += attr(M.IFA_ADDRESS, bytes([10, 0, 0, 9])) + attr(M.IFA_LOCAL, bytes([10, 0, 0, 1]))
    assert M.parse_addr(v4) == M.Addr(ip_interface("10.0.0.1/24"), 0)  # the local end wins
    assert M.addr_index(v4) == 3
    v6 = M.IFADDR.pack(AF_INET6, 64, 0, 0, 3) + attr(M.IFA_ADDRESS, ip_address("fd00::2").packed)
    v6 += attr(M.IFA_FLAGS, struct.pack("=I", M.IFA_F_TENTATIVE | 0x100))
    assert M.parse_addr(v6) == M.Addr(ip_interface("fd00::2/64"), M.IFA_F_TENTATIVE | 0x100)


def _af_spec(inet: list[int] | None, inet6: list[int] | None) -> bytes:
    blocks = b""
    if inet is not None:
        conf = struct.pack(f"={len(inet)}I", *inet)
        blocks += attr(AF_INET, attr(M.IFLA_INET_CONF, conf))
    if inet6 is not None:
        conf6 = struct.pack(f"={len(inet6)}i", *inet6)
        blocks += attr(
            AF_INET6, attr(M.IFLA_INET6_FLAGS, b"\0\0\0\0") + attr(M.IFLA_INET6_CONF, conf6)
        )
    return blocks


def test_ipv4_settings_are_indexed_by_devconf_id() -> None:
    values = [0] * 33
    values[M.IPV4_DEVCONF_ROUTE_LOCALNET - 1] = 1
    link = BASE._replace(af_spec=_af_spec(values, None))
    assert M.inet_conf(link, M.IPV4_DEVCONF_ROUTE_LOCALNET) == 1
    assert M.inet_conf(link, M.IPV4_DEVCONF_ARP_NOTIFY) == 0
    assert M.inet6_conf(link, M.DEVCONF_ACCEPT_RA) is None  # IPv6 off on the link


def test_ipv6_settings_are_indexed_from_zero() -> None:
    values = [0] * 60
    values[M.DEVCONF_ACCEPT_RA] = 2
    link = BASE._replace(af_spec=_af_spec([0] * 33, values))
    assert M.inet6_conf(link, M.DEVCONF_ACCEPT_RA) == 2


def test_missing_or_short_blocks_read_as_unknown() -> None:
    assert M.inet_conf(BASE, M.IPV4_DEVCONF_ROUTE_LOCALNET) is None
    short = BASE._replace(af_spec=_af_spec([1] * 10, None))
    assert M.inet_conf(short, M.IPV4_DEVCONF_ROUTE_LOCALNET) is None


# --- the socket, against a datagram socketpair standing in for the kernel ---------------------

_HDR = struct.Struct("=IHHII")


def _reply(msg_type: int, seq: int, body: bytes, flags: int = 0) -> bytes:
    """One message as the kernel sends it: padded to 4 bytes after its length."""
    length = _HDR.size + len(body)
    return _HDR.pack(length, msg_type, flags, seq, 0) + body + bytes(-length % 4)


def test_requests_are_framed_and_replies_collected() -> None:
    ours, kernel = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    ours.settimeout(5)  # a reply the parser misses fails the test instead of hanging it
    with NetlinkSocket(ours) as nl, kernel:
        kernel.send(_reply(M.RTM_NEWLINK, 1, b"link") + _reply(NLMSG_ERROR, 1, bytes(4)))
        assert nl.request(M.RTM_GETLINK, b"\x02\0\0\0") == [b"link"]
        sent = kernel.recv(4096)
        assert sent == _HDR.pack(20, M.RTM_GETLINK, NLM_F_REQUEST | NLM_F_ACK, 1, 0) + b"\x02\0\0\0"
        # Replies to another sequence number (a late answer) are skipped; DONE ends a dump.
        kernel.send(_reply(M.RTM_NEWADDR, 1, b"old!") + _reply(M.RTM_NEWADDR, 2, b"a1"))
        kernel.send(_reply(M.RTM_NEWADDR, 2, b"a2") + _reply(NLMSG_DONE, 2, bytes(4)))
        assert nl.dump(M.RTM_GETADDR, bytes(8)) == [b"a1", b"a2"]  # each up to its length


def test_kernel_errors_carry_the_extended_ack_message() -> None:
    ours, kernel = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    ours.settimeout(5)  # a reply the parser misses fails the test instead of hanging it
    with NetlinkSocket(ours) as nl, kernel:
        echoed = _HDR.pack(16, M.RTM_NEWLINK, 0, 1, 0)
        ext = attr(1, b"Unknown device type\0")
        body = struct.pack("=i", -errno.EOPNOTSUPP) + echoed + ext
        kernel.send(_reply(NLMSG_ERROR, 1, body, NLM_F_ACK_TLVS))
        with pytest.raises(NetlinkError) as caught:
            nl.request(M.RTM_NEWLINK, b"")
        assert caught.value.errno == errno.EOPNOTSUPP
        assert caught.value.strerror == f"{os.strerror(errno.EOPNOTSUPP)} (Unknown device type)"
