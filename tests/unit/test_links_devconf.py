"""Per-device settings read from link replies and the hand-built netlink requests (no root)."""

from __future__ import annotations

import struct
from dataclasses import replace
from ipaddress import ip_address, ip_interface, ip_network
from socket import AF_INET, AF_INET6
from typing import Any

from cni_bridge.net import links as L
from cni_bridge.net.netns import ifaddrmsg, rtmsg

BASE = L._Link(
    name="br0",
    index=3,
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


def _af_spec(inet: list[int] | None, inet6: list[int] | None) -> bytes:
    blocks = b""
    if inet is not None:
        conf = struct.pack(f"={len(inet)}I", *inet)
        blocks += L._attr(AF_INET, L._attr(L.IFLA_INET_CONF, conf))
    if inet6 is not None:
        conf6 = struct.pack(f"={len(inet6)}i", *inet6)
        blocks += L._attr(
            AF_INET6, L._attr(L.IFLA_INET6_FLAGS, b"\0\0\0\0") + L._attr(L.IFLA_INET6_CONF, conf6)
        )
    return blocks


def test_ipv4_settings_are_indexed_by_devconf_id() -> None:
    values = [0] * 33
    values[L.IPV4_DEVCONF_ROUTE_LOCALNET - 1] = 1
    link = replace(BASE, af_spec=_af_spec(values, None))
    assert L._inet_conf(link, L.IPV4_DEVCONF_ROUTE_LOCALNET) == 1
    assert L._inet_conf(link, L.IPV4_DEVCONF_ARP_NOTIFY) == 0
    assert L._inet6_conf(link, L.DEVCONF_ACCEPT_RA) is None  # IPv6 off on the link


def test_ipv6_settings_are_indexed_from_zero() -> None:
    values = [0] * 60
    values[L.DEVCONF_ACCEPT_RA] = 2
    link = replace(BASE, af_spec=_af_spec([0] * 33, values))
    assert L._inet6_conf(link, L.DEVCONF_ACCEPT_RA) == 2


def test_missing_or_short_blocks_read_as_unknown() -> None:
    assert L._inet_conf(BASE, L.IPV4_DEVCONF_ROUTE_LOCALNET) is None
    short = replace(BASE, af_spec=_af_spec([1] * 10, None))
    assert L._inet_conf(short, L.IPV4_DEVCONF_ROUTE_LOCALNET) is None


def test_attributes_are_padded_and_requests_carry_their_header() -> None:
    assert L._attr(8, b"\x01") == struct.pack("=HH", 5, 8) + b"\x01\0\0\0"
    req = L._RawRequest(b"\x02\0\0\0")
    req["header"].update(type=L.RTM_GETNETCONF, flags=5, sequence_number=7, pid=0)
    req.encode()
    assert req.data == struct.pack("=IHHII", 20, L.RTM_GETNETCONF, 5, 7, 0) + b"\x02\0\0\0"


def test_link_lookup_is_encoded_as_pyroute2_would() -> None:
    sent: list[bytes] = []

    class Capture:
        def request(
            self, msg: object, msg_type: int, flags: int = 0, *, decode: bool = True
        ) -> list[bytes]:
            header = msg["header"]  # type: ignore[index]
            header.update(type=msg_type, flags=5, sequence_number=1, pid=0)
            msg.reset()  # type: ignore[attr-defined]
            msg.encode()  # type: ignore[attr-defined]
            sent.append(bytes(msg.data))  # type: ignore[attr-defined]
            return []

    for kwargs, attrs in (
        ({"name": "cbp0"}, [("IFLA_IFNAME", "cbp0")]),
        ({"index": 7}, []),
    ):
        sent.clear()
        assert L._get_link(Capture(), **kwargs) is None  # type: ignore[arg-type]
        ref = L._link_msg(kwargs.get("index", 0))
        ref["attrs"] = [("IFLA_EXT_MASK", L.RTEXT_FILTER_SKIP_STATS), *attrs]
        ref["header"].update(type=L.RTM_GETLINK, flags=5, sequence_number=1, pid=0)
        ref.encode()
        assert sent == [bytes(ref.data)]


def _pyroute2_bytes(msg: Any) -> bytes:
    msg["header"].update(type=20, flags=5, sequence_number=1, pid=0)
    msg.encode()
    return bytes(msg.data)


def test_address_requests_are_encoded_as_pyroute2_would() -> None:
    for text, flags in (("10.0.0.2/24", 0), ("10.0.0.2/31", 0), ("fd00::2/64", L.IFA_F_NODAD)):
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
        assert _pyroute2_bytes(L._addr_msg(7, iface, flags)) == _pyroute2_bytes(ref)


def test_route_requests_are_encoded_as_pyroute2_would() -> None:
    for dst, gw in (("0.0.0.0/0", "10.0.0.1"), ("10.9.0.0/16", None), ("::/0", "fd00::1")):
        net, gateway = ip_network(dst), ip_address(gw) if gw else None
        ref = rtmsg()
        ref["family"] = AF_INET if net.version == 4 else AF_INET6
        ref["dst_len"] = net.prefixlen
        ref["table"] = L.RT_TABLE_MAIN
        ref["proto"] = L.RTPROT_BOOT
        ref["scope"] = L.RT_SCOPE_UNIVERSE if gateway else L.RT_SCOPE_LINK
        ref["type"] = L.RTN_UNICAST
        ref["attrs"] = [("RTA_OIF", 7)]
        if net.prefixlen:
            ref["attrs"].append(("RTA_DST", str(net.network_address)))
        if gateway:
            ref["attrs"].append(("RTA_GATEWAY", str(gateway)))
        assert _pyroute2_bytes(L._route_msg(7, net, gateway)) == _pyroute2_bytes(ref)


def test_address_replies_are_parsed() -> None:
    v4 = L._IFADDR.pack(AF_INET, 24, 0, 0, 3)
    v4 += L._attr(L.IFA_ADDRESS, bytes([10, 0, 0, 9])) + L._attr(L.IFA_LOCAL, bytes([10, 0, 0, 1]))
    assert L._raw_addr(v4) == L._Addr(ip_interface("10.0.0.1/24"), 0)  # the local end wins
    v6 = L._IFADDR.pack(AF_INET6, 64, 0, 0, 3) + L._attr(
        L.IFA_ADDRESS, ip_address("fd00::2").packed
    )
    v6 += L._attr(L.IFA_FLAGS, struct.pack("=I", L.IFA_F_TENTATIVE | 0x100))
    assert L._raw_addr(v6) == L._Addr(ip_interface("fd00::2/64"), L.IFA_F_TENTATIVE | 0x100)
