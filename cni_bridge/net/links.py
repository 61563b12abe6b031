"""Bridge, veth, address and route operations over rtnetlink: the real `NetOps`.

The host is the namespace the process is in; container namespaces are reached through sockets
created inside them (`netns.Rtnl`), so the process itself never leaves the host namespace except
for the few microseconds `netns.entered` needs to open a socket or write a sysctl.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import struct
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from ipaddress import ip_address, ip_interface, ip_network
from socket import AF_INET, AF_INET6
from typing import Any

from cni_bridge.net import sysctl
from cni_bridge.net.netns import (
    NLM_F_CREATE,
    NLM_F_EXCL,
    NetlinkError,
    Rtnl,
    entered,
    ifinfmsg,
    open_netns,
    rtmsg,
)
from cni_bridge.net.ops import (
    AddressConflict,
    ContainerView,
    HostLink,
    IPAddress,
    IPInterface,
    IPNetwork,
    LinkExists,
    LinkInfo,
    LinkNotFound,
    LinkNotReady,
    NetError,
    NetnsUnavailable,
    NetOps,
    NotABridge,
    Route,
)

RTM_NEWLINK = 16
RTM_DELLINK = 17
RTM_GETLINK = 18
RTM_SETLINK = 19
RTM_NEWADDR = 20
RTM_DELADDR = 21
RTM_GETADDR = 22
RTM_NEWROUTE = 24
RTM_GETROUTE = 26

AF_BRIDGE = 7
IFF_UP = 0x1
IFF_PROMISC = 0x100
IFF_LOWER_UP = 0x10000
NLA_F_NESTED = 0x8000
RTEXT_FILTER_SKIP_STATS = 1 << 3
IFA_F_NODAD = 0x02
IFA_F_DADFAILED = 0x08
IFA_F_TENTATIVE = 0x40
RT_TABLE_MAIN = 254
RTPROT_BOOT = 3
RT_SCOPE_UNIVERSE = 0
RT_SCOPE_LINK = 253
RTN_UNICAST = 1
BR_STATE_DISABLED = 0
BRIDGE_VLAN_INFO_PVID = 0x2
BRIDGE_VLAN_INFO_UNTAGGED = 0x4
BRIDGE_VLAN_INFO_RANGE_BEGIN = 0x8
BRIDGE_VLAN_INFO_RANGE_END = 0x10
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_LINK, IFLA_MASTER = 1, 3, 4, 5, 10
IFLA_OPERSTATE, IFLA_LINKINFO, IFLA_EXT_MASK = 16, 18, 29
IFLA_INFO_KIND, IFLA_INFO_DATA, IFLA_INFO_SLAVE_KIND, IFLA_INFO_SLAVE_DATA = 1, 2, 4, 5
IFLA_BRPORT_STATE, IFLA_BRPORT_MODE, IFLA_BRPORT_ISOLATED = 1, 4, 33
IFLA_BR_VLAN_FILTERING = 7
IFLA_AF_SPEC, IFLA_INET_CONF = 26, 1
IFLA_INET6_FLAGS, IFLA_INET6_CONF, IFLA_INET6_ADDR_GEN_MODE = 1, 2, 8
IN6_ADDR_GEN_MODE_NONE = 1
IPV4_DEVCONF_ARP_NOTIFY, IPV4_DEVCONF_ROUTE_LOCALNET = 22, 26  # include/uapi/linux/ip.h
DEVCONF_ACCEPT_RA = 3  # include/uapi/linux/ipv6.h (index into IFLA_INET6_CONF)
RTM_GETNETCONF, NETCONFA_FORWARDING, NETCONFA_IFINDEX_ALL = 82, 2, -1
IF_OPER_UP = 6
NET_ADDR_SET = "3"  # /sys/class/net/<dev>/addr_assign_type once the address was set explicitly

_IFNAMSIZ = 16


# --- pure helpers ---------------------------------------------------------------------------


def check_ifname(name: str) -> None:
    """The kernel's rules for interface names (dev_valid_name)."""
    raw = name.encode()
    if (
        not raw
        or len(raw) >= _IFNAMSIZ
        or name in (".", "..")
        or any(c in name for c in "/:")
        or any(c.isspace() for c in name)
    ):
        raise NetError(f"invalid interface name {name!r}")


_MAC = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")


def check_mac(mac: str) -> str:
    """A unicast Ethernet address, normalised to lower case."""
    norm = mac.strip().lower().replace("-", ":")
    if not _MAC.fullmatch(norm) or int(norm[:2], 16) & 1:
        raise NetError(f"invalid MAC address {mac!r} (need a unicast xx:xx:xx:xx:xx:xx)")
    return norm


def plan_bridge_addrs(
    bridge: str, existing: Sequence[IPInterface], wanted: Sequence[IPInterface], force: bool
) -> tuple[list[IPInterface], list[IPInterface]]:
    """(to remove, to add) for the bridge's gateway addresses.

    Like the reference plugin: any other IPv4 address conflicts, an IPv6 one only when the
    subnets overlap; `force` replaces instead of failing. Unlike it, the addresses asked for in
    one call never conflict with each other (two IPv4 ranges on one network work).
    """
    keep = set(wanted)
    remove: list[IPInterface] = []
    for want in wanted:
        for have in existing:
            if have in keep or have in remove or have.version != want.version:
                continue
            if have.version == 6 and (
                have.is_link_local or not have.network.overlaps(want.network)
            ):
                continue
            if not force:
                raise AddressConflict(bridge, want, have)
            remove.append(have)
    add: list[IPInterface] = []
    for want in wanted:
        if want not in existing and want not in add:
            add.append(want)
    return remove, add


def vlan_entries(vlan: int | None, trunk: Sequence[int] | None) -> list[tuple[int, int]]:
    """(flags, vid) bridge VLAN entries for a port: an access VLAN (pvid, egress untagged) and/or
    tagged trunk VLANs, consecutive ones sent as ranges to keep the message small."""
    requested = ([vlan] if vlan is not None else []) + list(trunk or ())
    for vid in requested:
        if not 1 <= vid <= 4094:
            raise NetError(f"invalid VLAN id {vid}")
    entries: list[tuple[int, int]] = []
    if vlan is not None:
        entries.append((BRIDGE_VLAN_INFO_PVID | BRIDGE_VLAN_INFO_UNTAGGED, vlan))
    vids = sorted(set(trunk or ()) - {vlan})
    i = 0
    while i < len(vids):
        j = i
        while j + 1 < len(vids) and vids[j + 1] == vids[j] + 1:
            j += 1
        if j == i:
            entries.append((0, vids[i]))
        else:
            entries.append((BRIDGE_VLAN_INFO_RANGE_BEGIN, vids[i]))
            entries.append((BRIDGE_VLAN_INFO_RANGE_END, vids[j]))
        i = j + 1
    return entries


def _family(version: int) -> int:
    return AF_INET if version == 4 else AF_INET6


# --- decoded kernel objects -----------------------------------------------------------------


@dataclass(frozen=True)
class _Link:
    name: str
    index: int
    flags: int
    mtu: int
    mac: str
    kind: str | None
    master: int | None
    operstate: int  # IF_OPER_*
    peer_index: int | None
    port_state: int | None
    hairpin: bool | None
    isolated: bool | None
    vlan_filtering: bool | None  # bridges only
    af_spec: bytes | None = None  # IFLA_AF_SPEC, parsed on demand (see _inet_conf)

    @property
    def up(self) -> bool:
        return bool(self.flags & IFF_UP)

    @property
    def oper_up(self) -> bool:
        return bool(self.flags & IFF_LOWER_UP) and self.operstate == IF_OPER_UP


# Link replies are parsed here rather than by pyroute2: its generic decoder costs ~0.5 ms per
# link (every statistic and per-family block), which made a 300-port bridge scan take 0.25 s.
_IFINFO = struct.Struct("=BxHiII")  # struct ifinfomsg
_NLA = struct.Struct("=HH")
_U32 = struct.Struct("=I")
_S32 = struct.Struct("=i")


def _nlattrs(data: bytes, pos: int = 0) -> dict[int, bytes]:
    """Netlink attributes by type (the first of each, flags masked off)."""
    attrs: dict[int, bytes] = {}
    end = len(data)
    while pos + _NLA.size <= end:
        length, kind = _NLA.unpack_from(data, pos)
        if length < _NLA.size:
            break
        attrs.setdefault(kind & 0x3FFF, data[pos + _NLA.size : pos + length])
        pos += (length + 3) & ~3
    return attrs


def _text(raw: bytes | None) -> str | None:
    return raw.split(b"\0", 1)[0].decode(errors="replace") if raw is not None else None


def _u32(raw: bytes | None) -> int | None:
    return _U32.unpack_from(raw)[0] if raw is not None and len(raw) >= 4 else None


def _flag(attrs: dict[int, bytes], kind: int) -> bool | None:
    raw = attrs.get(kind)
    return bool(raw[0]) if raw else None


def _link(payload: bytes) -> _Link:
    """An RTM_NEWLINK payload (ifinfomsg + attributes)."""
    _family, _type, index, flags, _change = _IFINFO.unpack_from(payload)
    attrs = _nlattrs(payload, _IFINFO.size)
    info = _nlattrs(attrs[IFLA_LINKINFO]) if IFLA_LINKINFO in attrs else {}
    kind = _text(info.get(IFLA_INFO_KIND))
    port: dict[int, bytes] | None = None
    if _text(info.get(IFLA_INFO_SLAVE_KIND)) == "bridge" and IFLA_INFO_SLAVE_DATA in info:
        port = _nlattrs(info[IFLA_INFO_SLAVE_DATA])
    bridge = _nlattrs(info[IFLA_INFO_DATA]) if kind == "bridge" and IFLA_INFO_DATA in info else None
    oper = attrs.get(IFLA_OPERSTATE)
    return _Link(
        name=_text(attrs.get(IFLA_IFNAME)) or "",
        index=index,
        flags=flags,
        mtu=_u32(attrs.get(IFLA_MTU)) or 0,
        mac=":".join(f"{b:02x}" for b in attrs.get(IFLA_ADDRESS, b"")),
        kind=kind,
        master=_u32(attrs.get(IFLA_MASTER)) or None,
        operstate=oper[0] if oper else 0,
        peer_index=_u32(attrs.get(IFLA_LINK)) if kind == "veth" else None,
        port_state=port[IFLA_BRPORT_STATE][0] if port and IFLA_BRPORT_STATE in port else None,
        hairpin=_flag(port, IFLA_BRPORT_MODE) if port is not None else None,
        isolated=_flag(port, IFLA_BRPORT_ISOLATED) if port is not None else None,
        vlan_filtering=bool(_flag(bridge, IFLA_BR_VLAN_FILTERING)) if bridge is not None else None,
        af_spec=attrs.get(IFLA_AF_SPEC),
    )


# Per-device IP settings come with every link reply (IFLA_AF_SPEC). Reading them there instead of
# through /proc/sys matters at scale: a /proc/sys/net lookup compares its name against the entry
# of every network namespace that has one (every container has an `eth0`, and its own
# `ip_forward`), which cost ~0.6 ms per access with 1000 containers.
def _inet_conf(link: _Link, devconf: int) -> int | None:
    """An IPv4 setting of the link (IPV4_DEVCONF_*), None when the kernel did not report it."""
    block = _nlattrs(link.af_spec).get(AF_INET) if link.af_spec else None
    conf = _nlattrs(block).get(IFLA_INET_CONF) if block else None
    if conf is None or len(conf) < devconf * 4:
        return None
    return int(_U32.unpack_from(conf, (devconf - 1) * 4)[0])


def _inet6_conf(link: _Link, devconf: int) -> int | None:
    """An IPv6 setting of the link (DEVCONF_*), None when IPv6 is off on it."""
    block = _nlattrs(link.af_spec).get(AF_INET6) if link.af_spec else None
    conf = _nlattrs(block).get(IFLA_INET6_CONF) if block else None
    if conf is None or len(conf) < (devconf + 1) * 4:
        return None
    return int(_S32.unpack_from(conf, devconf * 4)[0])


@dataclass(frozen=True)
class _Addr:
    iface: IPInterface
    flags: int


def _route(msg: Any) -> Route:
    dst = msg.get_attr("RTA_DST")
    if dst is None:
        dst = "0.0.0.0" if msg["family"] == AF_INET else "::"
    gateway = msg.get_attr("RTA_GATEWAY")
    return (
        ip_network(f"{dst}/{msg['dst_len']}", strict=False),
        ip_address(gateway) if gateway else None,
    )


# --- requests -------------------------------------------------------------------------------


def _fail(what: str, exc: NetlinkError, *, vlan: bool = False) -> NetError:
    text = f"{what}: {exc.strerror}"
    if vlan and exc.errno == errno.EOPNOTSUPP:
        text += " (is the kernel built without CONFIG_BRIDGE_VLAN_FILTERING?)"
    return NetError(text, errno=exc.errno)


def _link_msg(index: int = 0, family: int = 0) -> Any:
    msg = ifinfmsg()
    msg["family"] = family
    msg["index"] = index
    msg["flags"] = 0
    msg["change"] = 0
    return msg


def _get_link(rt: Rtnl, *, name: str | None = None, index: int = 0) -> _Link | None:
    # The most frequent request of an ADD (~8 of them), encoded here: pyroute2 took ~50 us each.
    payload = _IFINFO.pack(0, 0, index, 0, 0) + _attr(
        IFLA_EXT_MASK, _U32.pack(RTEXT_FILTER_SKIP_STATS)
    )
    if name is not None:
        payload += _attr(IFLA_IFNAME, name.encode() + b"\0")
    try:
        replies = rt.request(_RawRequest(payload), RTM_GETLINK, decode=False)
    except NetlinkError as exc:
        if exc.errno == errno.ENODEV:
            return None
        raise _fail(f"looking up link {name or index}", exc) from None
    return _link(replies[0]) if replies else None


def _dump_links(rt: Rtnl, *, master: int | None = None) -> list[_Link]:
    msg = _link_msg()
    msg["attrs"] = [("IFLA_EXT_MASK", RTEXT_FILTER_SKIP_STATS)]
    if master is not None:
        msg["attrs"].append(("IFLA_MASTER", master))  # filtered by the kernel (strict dumps)
    try:
        links = [_link(m) for m in rt.dump(msg, RTM_GETLINK, decode=False)]
    except NetlinkError as exc:
        raise _fail("listing links", exc) from None
    if master is not None:
        links = [link for link in links if link.master == master]
    return links


class _RawRequest:
    """A request whose payload (after the netlink header) is built here, for what pyroute2 does
    not model (netconf) or models as a whole struct where the kernel wants sparse attributes
    (IFLA_INET_CONF, so that one setting changes and no other). Quacks like a pyroute2
    message for Rtnl."""

    _HEADER = struct.Struct("=IHHII")

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.header: dict[str, int] = {}
        self.data = b""

    def __getitem__(self, key: str) -> dict[str, int]:
        return self.header

    def reset(self) -> None:
        self.data = b""

    def encode(self) -> None:
        h = self.header
        length = self._HEADER.size + len(self.payload)
        head = self._HEADER.pack(length, h["type"], h["flags"], h["sequence_number"], h["pid"])
        self.data = head + self.payload


def _attr(kind: int, payload: bytes) -> bytes:
    length = _NLA.size + len(payload)
    return _NLA.pack(length, kind) + payload + b"\0" * (-length % 4)


def _forwarding(rt: Rtnl, family: int) -> int | None:
    """net.ipv4.ip_forward / net.ipv6.conf.all.forwarding as netconf reports it (None: no
    answer, e.g. IPv6 off), without a /proc/sys lookup."""
    payload = struct.pack("=B3x", family) + _attr(1, _S32.pack(NETCONFA_IFINDEX_ALL))
    try:
        replies = rt.request(_RawRequest(payload), RTM_GETNETCONF, decode=False)
    except NetlinkError:
        return None
    raw = _nlattrs(replies[0], 4).get(NETCONFA_FORWARDING) if replies else None
    return int(_S32.unpack_from(raw)[0]) if raw is not None and len(raw) >= 4 else None


# IFLA_AF_SPEC's AF_INET6 part for "no IPv6 link-local address" (addrgenmode none).
_NO_LINK_LOCAL = _attr(AF_INET6, _attr(IFLA_INET6_ADDR_GEN_MODE, bytes([IN6_ADDR_GEN_MODE_NONE])))


def _set_container_af(ct: Rtnl, index: int, ifname: str, *, link_local: bool) -> None:
    """arp_notify on (a gratuitous ARP when the link comes up, as the reference plugin sets
    it), and without `link_local` no IPv6 link-local address (addrgenmode none: no DAD, MLD
    or router solicitation ever leaves the interface). One netlink message, before link up."""
    inet = _attr(AF_INET, _attr(IFLA_INET_CONF, _attr(IPV4_DEVCONF_ARP_NOTIFY, _U32.pack(1))))
    head = _IFINFO.pack(0, 0, index, 0, 0)
    for families in ([inet] if link_local else [inet, _NO_LINK_LOCAL], [inet]):
        try:
            payload = head + _attr(IFLA_AF_SPEC, b"".join(families))
            ct.request(_RawRequest(payload), RTM_SETLINK)
            return
        except NetlinkError as exc:
            # No IPv6 on the interface at all (the namespace disabled it): no link-local either.
            if exc.errno != errno.EAFNOSUPPORT or len(families) == 1:
                raise _fail(f"setting arp_notify/addrgenmode on {ifname}", exc) from None


def _set_port_af(rt: Rtnl, index: int, name: str) -> None:
    """No IPv6 link-local address on a host-side veth (addrgenmode none), before it comes up.

    A bridge port's own IP stack never sees a frame (the bridge takes them first), yet each
    link-local address adds a route to the host's fe80::/64 node, which every later one walks,
    and a route-table sweep at each link up: O(ports) kernel work per ADD."""
    payload = _IFINFO.pack(0, 0, index, 0, 0) + _attr(IFLA_AF_SPEC, _NO_LINK_LOCAL)
    try:
        rt.request(_RawRequest(payload), RTM_SETLINK)
    except NetlinkError as exc:
        if exc.errno != errno.EAFNOSUPPORT:  # IPv6 disabled on the host: nothing to prevent
            raise _fail(f"setting addrgenmode on {name}", exc) from None


def _set_link(
    rt: Rtnl,
    index: int,
    what: str,
    *,
    attrs: list[Any],
    up: bool | None = None,
    promisc: bool | None = None,
    vlan: bool = False,
) -> None:
    msg = _link_msg(index)
    for flag, value in ((IFF_UP, up), (IFF_PROMISC, promisc)):
        if value is not None:
            msg["change"] |= flag
            msg["flags"] |= flag if value else 0
    msg["attrs"] = attrs
    try:
        rt.request(msg, RTM_NEWLINK)
    except NetlinkError as exc:
        raise _fail(what, exc, vlan=vlan) from None


def _delete_link(rt: Rtnl, name: str) -> bool:
    msg = _link_msg()
    msg["attrs"] = [("IFLA_IFNAME", name)]
    try:
        rt.request(msg, RTM_DELLINK)
    except NetlinkError as exc:
        if exc.errno == errno.ENODEV:
            return False
        raise _fail(f"deleting link {name}", exc) from None
    return True


# Address and route requests are encoded, and address replies parsed, here rather than by
# pyroute2 (~50-100 us a message there; an ADD sends and reads several): byte-identical to
# pyroute2's encoding, which the unit tests check.
_IFADDR = struct.Struct("=BBBBI")  # struct ifaddrmsg
_RTMSG = struct.Struct("=BBBBBBBBI")  # struct rtmsg
IFA_ADDRESS, IFA_LOCAL, IFA_BROADCAST, IFA_FLAGS = 1, 2, 4, 8
RTA_DST, RTA_OIF, RTA_GATEWAY = 1, 4, 5


def _raw_addr(payload: bytes) -> _Addr:
    family, prefixlen, flags8, _scope, _index = _IFADDR.unpack_from(payload)
    attrs = _nlattrs(payload, _IFADDR.size)
    raw = attrs.get(IFA_ADDRESS) or attrs.get(IFA_LOCAL)
    if family == AF_INET:
        raw = attrs.get(IFA_LOCAL) or raw  # IFA_ADDRESS is the peer on p2p links
    flags = _u32(attrs.get(IFA_FLAGS))
    address = ip_address(bytes(raw or b""))
    return _Addr(ip_interface(f"{address}/{prefixlen}"), flags8 if flags is None else flags)


def _dump_addrs(rt: Rtnl, index: int) -> list[_Addr]:
    payload = _IFADDR.pack(0, 0, 0, 0, index)  # filtered by the kernel (strict dumps)
    try:
        replies = rt.dump(_RawRequest(payload), RTM_GETADDR, decode=False)
    except NetlinkError as exc:
        raise _fail("listing addresses", exc) from None
    return [_raw_addr(r) for r in replies if _IFADDR.unpack_from(r)[4] == index]


def _addr_msg(index: int, iface: IPInterface, flags: int = 0) -> _RawRequest:
    packed = iface.ip.packed
    payload = _IFADDR.pack(_family(iface.version), iface.network.prefixlen, flags, 0, index)
    payload += _attr(IFA_LOCAL, packed) + _attr(IFA_ADDRESS, packed)
    if iface.version == 4 and iface.network.prefixlen < 31:
        payload += _attr(IFA_BROADCAST, iface.network.broadcast_address.packed)
    return _RawRequest(payload)


def _add_addr(rt: Rtnl, index: int, iface: IPInterface, link: str, *, nodad: bool) -> None:
    flags = IFA_F_NODAD if nodad and iface.version == 6 else 0
    try:
        rt.request(_addr_msg(index, iface, flags), RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL)
    except NetlinkError as exc:
        if exc.errno != errno.EEXIST:
            raise _fail(f"adding address {iface} to {link}", exc) from None


def _del_addr(rt: Rtnl, index: int, iface: IPInterface, link: str) -> None:
    try:
        rt.request(_addr_msg(index, iface), RTM_DELADDR)
    except NetlinkError as exc:
        if exc.errno != errno.EADDRNOTAVAIL:
            raise _fail(f"removing address {iface} from {link}", exc) from None


def _route_msg(index: int, dst: IPNetwork, gateway: IPAddress | None) -> _RawRequest:
    scope = RT_SCOPE_UNIVERSE if gateway is not None else RT_SCOPE_LINK
    payload = _RTMSG.pack(
        _family(dst.version), dst.prefixlen, 0, 0, RT_TABLE_MAIN, RTPROT_BOOT, scope,
        RTN_UNICAST, 0,
    )  # fmt: skip
    payload += _attr(RTA_OIF, _U32.pack(index))
    if dst.prefixlen:
        payload += _attr(RTA_DST, dst.network_address.packed)
    if gateway is not None:
        payload += _attr(RTA_GATEWAY, gateway.packed)
    return _RawRequest(payload)


def _add_route(rt: Rtnl, index: int, dst: IPNetwork, gateway: IPAddress | None, link: str) -> None:
    if gateway is not None and gateway.version != dst.version:
        raise NetError(f"route {dst} via {gateway}: gateway of another address family")
    try:
        rt.request(_route_msg(index, dst, gateway), RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL)
    except NetlinkError as exc:
        if exc.errno != errno.EEXIST:  # e.g. the subnet route the kernel already added
            via = f" via {gateway}" if gateway is not None else ""
            raise _fail(f"adding route {dst}{via} dev {link}", exc) from None


def _dump_routes(rt: Rtnl, index: int) -> list[Route]:
    routes: list[Route] = []
    for family in (AF_INET, AF_INET6):
        msg = rtmsg()
        msg["family"] = family
        msg["table"] = RT_TABLE_MAIN  # filtered by the kernel (strict dumps)
        msg["attrs"] = [("RTA_OIF", index)]
        try:
            replies = rt.dump(msg, RTM_GETROUTE)
        except NetlinkError as exc:
            if exc.errno == errno.EAFNOSUPPORT:
                continue  # IPv6 disabled in the kernel
            raise _fail("listing routes", exc) from None
        routes += [
            _route(m)
            for m in replies
            if m.get_attr("RTA_OIF") == index
            and m["type"] == RTN_UNICAST
            and (m.get_attr("RTA_TABLE") or m["table"]) == RT_TABLE_MAIN
        ]
    return routes


def _veth_msg(
    host_name: str, ifname: str, netns_fd: int, master: int, mtu: int | None, mac: str | None
) -> Any:
    """A veth pair whose peer is born in the container with its final name (no rename, no
    move), and whose host end is created up and already attached to the bridge."""
    peer: list[Any] = [("IFLA_IFNAME", ifname), ("IFLA_NET_NS_FD", netns_fd)]
    if mtu:
        peer.append(("IFLA_MTU", mtu))
    if mac:
        peer.append(("IFLA_ADDRESS", mac))
    data = {"attrs": [("VETH_INFO_PEER", {"attrs": peer})]}
    info = {"attrs": [("IFLA_INFO_KIND", "veth"), ("IFLA_INFO_DATA", data)]}
    msg = _link_msg()
    msg["attrs"] = [("IFLA_IFNAME", host_name), ("IFLA_MASTER", master), ("IFLA_LINKINFO", info)]
    if mtu:
        msg["attrs"].append(("IFLA_MTU", mtu))
    return msg


def _bridge_port_msg(
    index: int, hairpin: bool, isolated: bool, vlans: list[tuple[int, int]]
) -> Any:
    """One AF_BRIDGE setlink carrying the port flags and VLANs (the kernel's br_setlink)."""
    msg = _link_msg(index, AF_BRIDGE)
    port_attrs: list[Any] = []
    if hairpin:
        port_attrs.append(("IFLA_BRPORT_MODE", 1))
    if isolated:
        port_attrs.append(("IFLA_BRPORT_ISOLATED", 1))
    if port_attrs:
        msg["attrs"].append(("IFLA_PROTINFO", {"attrs": port_attrs}, NLA_F_NESTED))
    if vlans:
        spec = [("IFLA_BRIDGE_VLAN_INFO", {"flags": flags, "vid": vid}) for flags, vid in vlans]
        msg["attrs"].append(("IFLA_AF_SPEC", {"attrs": spec}, NLA_F_NESTED))
    return msg


def _mac_is_pinned(name: str) -> bool:
    """Whether the bridge MAC was set explicitly (so ports joining no longer change it).

    Netlink does not report it; sysfs does. Re-pinning on every ADD would flush the bridge's
    neighbour table each time (NETDEV_CHANGEADDR), so it is done only when needed.
    """
    try:
        with open(f"/sys/class/net/{name}/addr_assign_type", encoding="ascii") as f:
            return f.read().strip() == NET_ADDR_SET
    except OSError:
        return False


# --- the implementation ---------------------------------------------------------------------


class NetlinkOps:
    """The real NetOps. One instance per thread: it keeps one host netlink socket."""

    def __init__(self, *, link_up_timeout: float = 5.0, dad_timeout: float = 10.0) -> None:
        self._host: Rtnl | None = None
        # Bridges as ensure_bridge last saw them, for the same request's next steps (a bridge is
        # never deleted by an ADD or DEL; a stale index would only make the next step fail).
        self._bridges: dict[str, _Link] = {}
        self.link_up_timeout = link_up_timeout
        self.dad_timeout = dad_timeout

    def _rt(self) -> Rtnl:
        if self._host is None:
            self._host = Rtnl.open()
        return self._host

    def close(self) -> None:
        if self._host is not None:
            self._host.close()
            self._host = None

    def __enter__(self) -> NetlinkOps:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # bridge

    def ensure_bridge(self, name: str, mtu: int | None, vlan_filtering: bool) -> LinkInfo:
        check_ifname(name)
        rt = self._rt()
        link = _get_link(rt, name=name)
        created = False
        if link is None:
            msg = _link_msg()
            msg["flags"] = msg["change"] = IFF_UP
            info: list[Any] = [("IFLA_INFO_KIND", "bridge")]
            if vlan_filtering:
                info.append(("IFLA_INFO_DATA", {"attrs": [("IFLA_BR_VLAN_FILTERING", 1)]}))
            msg["attrs"] = [("IFLA_IFNAME", name), ("IFLA_LINKINFO", {"attrs": info})]
            if mtu:
                msg["attrs"].append(("IFLA_MTU", mtu))
            try:
                rt.request(msg, RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL)
                created = True
            except NetlinkError as exc:
                if exc.errno != errno.EEXIST:  # EEXIST: a concurrent ADD created it first
                    raise _fail(f"creating bridge {name}", exc, vlan=vlan_filtering) from None
            link = _get_link(rt, name=name)
            if link is None:
                raise NetError(f"bridge {name} vanished while being set up")
        if link.kind != "bridge":
            raise NotABridge(name, link.kind)
        attrs: list[Any] = []
        if created or not _mac_is_pinned(name):
            # A bridge takes the lowest MAC of its ports unless its own was set explicitly.
            attrs.append(("IFLA_ADDRESS", link.mac))
        if mtu and mtu != link.mtu:
            attrs.append(("IFLA_MTU", mtu))
        if vlan_filtering and not link.vlan_filtering:
            data = {"attrs": [("IFLA_BR_VLAN_FILTERING", 1)]}
            attrs.append(
                (
                    "IFLA_LINKINFO",
                    {"attrs": [("IFLA_INFO_KIND", "bridge"), ("IFLA_INFO_DATA", data)]},
                )
            )
        if attrs or not link.up:
            what = f"configuring bridge {name}"
            _set_link(rt, link.index, what, attrs=attrs, up=True, vlan=vlan_filtering)
        # We own the bridge's routes: no router advertisements (as the reference plugin).
        if _inet6_conf(link, DEVCONF_ACCEPT_RA) not in (0, None):
            sysctl.write(f"net/ipv6/conf/{name}/accept_ra", "0", missing_ok=True)
        self._bridges[name] = link
        return LinkInfo(name, link.index, link.mac, mtu or link.mtu)

    def ensure_bridge_addrs(self, name: str, addrs: Sequence[IPInterface], force: bool) -> None:
        check_ifname(name)
        rt = self._rt()
        link = self._bridges.get(name) or _get_link(rt, name=name)
        if link is None:
            raise LinkNotFound(name, None)
        existing = [a.iface for a in _dump_addrs(rt, link.index)]
        remove, add = plan_bridge_addrs(name, existing, addrs, force)
        for iface in remove:
            _del_addr(rt, link.index, iface, name)
        for iface in add:
            # NODAD: the gateway address must answer at once, not after ~1 s of DAD.
            _add_addr(rt, link.index, iface, name, nodad=True)

    # veth

    def create_veth(
        self,
        netns_path: str,
        ifname: str,
        host_name: str,
        bridge: str,
        *,
        mtu: int | None = None,
        container_mac: str | None = None,
        hairpin: bool = False,
        promisc: bool = False,
        port_isolation: bool = False,
        vlan: int | None = None,
        vlan_trunk: Sequence[int] | None = None,
    ) -> tuple[LinkInfo, LinkInfo]:
        check_ifname(ifname)
        check_ifname(host_name)
        mac = check_mac(container_mac) if container_mac else None
        vlans = vlan_entries(vlan, vlan_trunk)
        nsfd = open_netns(netns_path)
        try:
            rt = self._rt()
            br = self._bridges.get(bridge) or _get_link(rt, name=bridge)
            if br is None:
                raise LinkNotFound(bridge, None)
            if br.kind != "bridge":
                raise NotABridge(bridge, br.kind)
            try:
                msg = _veth_msg(host_name, ifname, nsfd, br.index, mtu, mac)
                rt.request(msg, RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL)
            except NetlinkError as exc:
                if exc.errno == errno.EEXIST:
                    raise self._existing(rt, nsfd, netns_path, host_name, ifname) from None
                raise _fail(f"creating veth {host_name} / {ifname}", exc) from None
            try:
                host = _get_link(rt, name=host_name)
                if host is None:
                    raise LinkNotFound(host_name, None)
                _set_port_af(rt, host.index, host_name)
                if hairpin or port_isolation or vlans:
                    try:
                        msg = _bridge_port_msg(host.index, hairpin, port_isolation, vlans)
                        rt.request(msg, RTM_SETLINK)
                    except NetlinkError as exc:
                        what = f"setting bridge port options on {host_name}"
                        raise _fail(what, exc, vlan=bool(vlans)) from None
                _set_link(rt, host.index, f"bringing up {host_name}", attrs=[], up=True)
                if promisc and not br.flags & IFF_PROMISC:
                    what = f"setting promiscuous mode on {bridge}"
                    _set_link(rt, br.index, what, attrs=[], promisc=True)
                with Rtnl.open_fd(nsfd) as ct:
                    peer = _get_link(ct, name=ifname)
                if peer is None:
                    raise LinkNotFound(ifname, netns_path)
            except BaseException:
                with contextlib.suppress(NetError):
                    _delete_link(rt, host_name)  # the container end goes with it
                raise
        finally:
            os.close(nsfd)
        return (
            LinkInfo(host.name, host.index, host.mac, host.mtu),
            LinkInfo(peer.name, peer.index, peer.mac, peer.mtu),
        )

    def _existing(
        self, rt: Rtnl, nsfd: int, netns_path: str, host_name: str, ifname: str
    ) -> NetError:
        """Which of the two names made the kernel answer EEXIST."""
        if _get_link(rt, name=host_name) is not None:
            return LinkExists(host_name, None)
        with Rtnl.open_fd(nsfd) as ct:
            if _get_link(ct, name=ifname) is not None:
                return LinkExists(ifname, netns_path)
        return NetError(f"creating veth {host_name} / {ifname}: File exists", errno=errno.EEXIST)

    # container side

    def configure_container(
        self,
        netns_path: str,
        ifname: str,
        addrs: Sequence[IPInterface],
        routes: Sequence[Route],
        *,
        enable_dad: bool = False,
        ipv6: bool = True,
    ) -> None:
        check_ifname(ifname)
        # Per-interface IPv6 sysctls of the container (netlink cannot set them), written from
        # inside its namespace before the addresses and the link-local one made at link up.
        # Only where IPv6 stays on: each /proc/sys lookup costs ~0.6 ms with 1000 namespaces
        # holding an `eth0` (see _inet_conf); the rest goes through netlink.
        sysctls: list[tuple[str, str]] = []
        if ipv6:
            sysctls.append((f"net/ipv6/conf/{ifname}/accept_dad", "1" if enable_dad else "0"))
            if enable_dad:
                sysctls.append((f"net/ipv6/conf/{ifname}/enhanced_dad", "1"))
        nsfd = open_netns(netns_path)
        try:
            ct = _open_inside(nsfd, sysctls)
        finally:
            os.close(nsfd)
        with ct:
            link = _get_link(ct, name=ifname)
            if link is None:
                raise LinkNotFound(ifname, netns_path)
            _set_container_af(ct, link.index, ifname, link_local=ipv6)
            for iface in addrs:
                _add_addr(ct, link.index, iface, ifname, nodad=not enable_dad)
            if not link.up:
                _set_link(ct, link.index, f"bringing up {ifname}", attrs=[], up=True)
            for dst, gateway in routes:
                _add_route(ct, link.index, dst, gateway, ifname)
            self._wait_ready(ct, link.index, ifname, netns_path)
            wanted6: set[IPInterface] = {a for a in addrs if a.version == 6}
            if enable_dad and wanted6:
                self._wait_dad(ct, link.index, ifname, wanted6)

    def _wait_ready(self, ct: Rtnl, index: int, ifname: str, netns_path: str) -> None:
        """Until the container end is operationally up and the host end forwards on the bridge
        (port state left 'disabled'); the reference plugin polls the host end the same way."""
        host = self._rt()
        for _ in _polls(self.link_up_timeout):
            link = _get_link(ct, index=index)
            if link is None:
                raise LinkNotFound(ifname, netns_path)
            if not link.oper_up:
                continue
            peer = _get_link(host, index=link.peer_index) if link.peer_index else None
            if peer is None or peer.peer_index != index or peer.kind != "veth":
                return  # the peer is not in our namespace: nothing more we can check
            if peer.oper_up and peer.port_state != BR_STATE_DISABLED:
                return
        raise LinkNotReady(f"{ifname} did not come up within {self.link_up_timeout:g}s")

    def _wait_dad(self, ct: Rtnl, index: int, ifname: str, wanted: set[IPInterface]) -> None:
        for _ in _polls(self.dad_timeout):
            pending = False
            for addr in _dump_addrs(ct, index):
                if addr.iface not in wanted:
                    continue
                if addr.flags & IFA_F_DADFAILED:
                    raise LinkNotReady(f"{addr.iface} on {ifname}: duplicate address detected")
                pending = pending or bool(addr.flags & IFA_F_TENTATIVE)
            if not pending:
                return
        raise LinkNotReady(f"IPv6 DAD on {ifname} did not finish within {self.dad_timeout:g}s")

    def container_view(self, netns_path: str, ifname: str) -> ContainerView | None:
        check_ifname(ifname)
        with _container_socket(netns_path) as ct:
            if ct is None:
                return None
            link = _get_link(ct, name=ifname)
            if link is None:
                return None
            return ContainerView(
                name=link.name,
                index=link.index,
                mac=link.mac,
                mtu=link.mtu,
                kind=link.kind,
                oper_up=link.oper_up,
                peer_index=link.peer_index,
                addresses=tuple(a.iface for a in _dump_addrs(ct, link.index)),
                routes=tuple(_dump_routes(ct, link.index)),
            )

    def delete_container_link(self, netns_path: str, ifname: str) -> bool:
        check_ifname(ifname)
        with _container_socket(netns_path) as ct:
            return ct is not None and _delete_link(ct, ifname)

    # host side

    def host_link(self, name: str) -> HostLink | None:
        check_ifname(name)
        link = _get_link(self._rt(), name=name)
        if link is None:
            return None
        return HostLink(
            name=link.name,
            index=link.index,
            mac=link.mac,
            mtu=link.mtu,
            kind=link.kind,
            master=link.master,
            up=link.up,
            oper_up=link.oper_up,
            promisc=bool(link.flags & IFF_PROMISC),
            peer_index=link.peer_index,
            hairpin=link.hairpin,
            isolated=link.isolated,
        )

    def delete_link(self, name: str) -> bool:
        check_ifname(name)
        return _delete_link(self._rt(), name)

    def link_exists(self, name: str) -> bool:
        check_ifname(name)
        return _get_link(self._rt(), name=name) is not None

    def host_links_with_prefix(self, prefix: str) -> list[str]:
        return sorted(link.name for link in _dump_links(self._rt()) if link.name.startswith(prefix))

    def bridge_ports(self, bridge: str) -> list[str]:
        check_ifname(bridge)
        rt = self._rt()
        br = _get_link(rt, name=bridge)
        if br is None:
            return []
        return sorted(link.name for link in _dump_links(rt, master=br.index))

    # sysctls (host namespace)

    def set_forwarding(self, v4: bool, v6: bool) -> None:
        # Read through netlink (see _inet_conf); /proc/sys only when it must change.
        if v4 and _forwarding(self._rt(), AF_INET) != 1:
            sysctl.write("net/ipv4/ip_forward", "1")
        if v6 and _forwarding(self._rt(), AF_INET6) != 1:
            sysctl.write("net/ipv6/conf/all/forwarding", "1")

    def set_route_localnet(self, bridge: str) -> None:
        check_ifname(bridge)
        link = self._bridges.get(bridge) or _get_link(self._rt(), name=bridge)
        if link is None or _inet_conf(link, IPV4_DEVCONF_ROUTE_LOCALNET) != 1:
            sysctl.write(f"net/ipv4/conf/{bridge}/route_localnet", "1")

    def set_sysctl(self, path: str, value: str) -> None:
        sysctl.write(path, value)


def _open_inside(netns_fd: int, sysctls: Sequence[tuple[str, str]] = ()) -> Rtnl:
    """A socket in the namespace; the sysctls (missing ones skipped) are written while inside."""
    with entered(netns_fd):
        for key, value in sysctls:
            sysctl.write(key, value, missing_ok=True)
        return Rtnl.open()


@contextmanager
def _container_socket(netns_path: str) -> Iterator[Rtnl | None]:
    """A socket in the container namespace, or None when the namespace is gone."""
    try:
        nsfd = open_netns(netns_path)
    except NetnsUnavailable:
        yield None
        return
    try:
        ct = Rtnl.open_fd(nsfd)
    finally:
        os.close(nsfd)
    with ct:
        yield ct


def _polls(timeout: float) -> Iterator[None]:
    """Yields at once, then with growing sleeps (0.2 ms to 50 ms) until `timeout` has passed.

    Fine steps first: carrier usually comes within a few ms, later with many links on the
    host (the kernel's linkwatch), and every oversleep is ADD latency."""
    deadline = time.monotonic() + timeout
    delay = 0.0002
    yield
    while time.monotonic() < deadline:
        time.sleep(delay)
        delay = min(delay * 2, 0.05)
        yield


def _conforms(ops: NetlinkOps) -> NetOps:
    return ops  # mypy checks here that NetlinkOps implements the NetOps protocol


def warm() -> None:
    """Encode one of each pyroute2 message an ADD, DEL or CHECK sends, with no socket: pyroute2
    compiles each message class's attribute tables on first use, which every forked resident
    worker would otherwise pay again (≈ 2 ms per request). Called by the resident before it
    forks. (Link lookups, addresses and routes of an ADD are encoded by hand.)"""
    msgs = [
        _veth_msg("vcbwarm", "eth0", 0, 1, 1500, "0a:00:00:00:00:01"),
        _bridge_port_msg(1, True, True, [(0, 1)]),
        _link_msg(1),
    ]
    route = rtmsg()
    route["family"] = AF_INET
    route["attrs"] = [("RTA_OIF", 1), ("RTA_DST", "10.0.0.0"), ("RTA_GATEWAY", "10.0.0.1")]
    msgs.append(route)
    route6 = rtmsg()
    route6["family"] = AF_INET6
    route6["attrs"] = [("RTA_OIF", 1), ("RTA_DST", "fd00::"), ("RTA_GATEWAY", "fd00::1")]
    msgs.append(route6)
    for msg in msgs:
        msg.encode()
