"""The rtnetlink messages the plugin sends and the replies it reads: kernel constants, request
payloads, decoded links, addresses and routes. Pure (no socket; `rtnl` sends them).

Every request here is byte-identical to pyroute2's encoding of the same request (the unit
tests check each one against it); see `netlink` for why pyroute2 is not imported here.
"""

from __future__ import annotations

import struct
from _socket import AF_INET, AF_INET6
from collections.abc import Sequence
from ipaddress import ip_address, ip_interface, ip_network

from cni_bridge.net.netlink import (
    NLA_F_NESTED,
    as_s32,
    as_str,
    as_u32,
    attr,
    attr_s32,
    attr_str,
    attr_u8,
    attr_u32,
    attrs_of,
)
from cni_bridge.net.ops import IPAddress, IPInterface, IPNetwork, Route
from cni_bridge.tuples import NamedTuple

RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK, RTM_SETLINK = 16, 17, 18, 19
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
RTM_NEWROUTE, RTM_GETROUTE = 24, 26
RTM_GETNETCONF, NETCONFA_IFINDEX, NETCONFA_FORWARDING, NETCONFA_IFINDEX_ALL = 82, 1, 2, -1

AF_BRIDGE = 7
IFF_UP = 0x1
IFF_PROMISC = 0x100
IFF_LOWER_UP = 0x10000
IF_OPER_UP = 6
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
IFLA_PROTINFO, IFLA_OPERSTATE, IFLA_LINKINFO = 12, 16, 18
IFLA_AF_SPEC, IFLA_NET_NS_FD, IFLA_EXT_MASK, IFLA_LINK_NETNSID = 26, 28, 29, 37
IFLA_IFALIAS = 20
IFLA_INFO_KIND, IFLA_INFO_DATA, IFLA_INFO_SLAVE_KIND, IFLA_INFO_SLAVE_DATA = 1, 2, 4, 5
VETH_INFO_PEER = 1
IFLA_BRPORT_STATE, IFLA_BRPORT_MODE, IFLA_BRPORT_ISOLATED = 1, 4, 33
IFLA_BR_VLAN_FILTERING = 7
IFLA_BRIDGE_VLAN_INFO = 2
IFLA_INET_CONF = 1
IFLA_INET6_FLAGS, IFLA_INET6_CONF, IFLA_INET6_ADDR_GEN_MODE = 1, 2, 8
IN6_ADDR_GEN_MODE_NONE = 1
IPV4_DEVCONF_ARP_NOTIFY, IPV4_DEVCONF_ROUTE_LOCALNET = 22, 26  # include/uapi/linux/ip.h
DEVCONF_ACCEPT_RA = 3  # include/uapi/linux/ipv6.h (index into IFLA_INET6_CONF)
IFA_ADDRESS, IFA_LOCAL, IFA_BROADCAST, IFA_FLAGS = 1, 2, 4, 8
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_TABLE = 1, 4, 5, 15

IFINFO = struct.Struct("=BxHiII")  # struct ifinfomsg
IFADDR = struct.Struct("=BBBBI")  # struct ifaddrmsg
RTMSG = struct.Struct("=BBBBBBBBI")  # struct rtmsg
_NETCONF = struct.Struct("=B3x")  # struct netconfmsg, padded as the kernel reads it
_VLAN_INFO = struct.Struct("=HH")  # struct bridge_vlan_info (flags, vid)


def family_of(version: int) -> int:
    return AF_INET if version == 4 else AF_INET6


# --- links ----------------------------------------------------------------------------------


def _ifinfo(index: int = 0, *, family: int = 0, flags: int = 0, change: int = 0) -> bytes:
    return IFINFO.pack(family, 0, index, flags, change)


def _mac(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


def _link_kind(kind: str, data: bytes = b"") -> bytes:
    return attr(
        IFLA_LINKINFO, attr_str(IFLA_INFO_KIND, kind) + (data and attr(IFLA_INFO_DATA, data))
    )


_SKIP_STATS = attr_u32(IFLA_EXT_MASK, RTEXT_FILTER_SKIP_STATS)


def get_link_msg(*, name: str | None = None, index: int = 0) -> bytes:
    """RTM_GETLINK of one link, by name or index, without its statistics."""
    return _ifinfo(index) + _SKIP_STATS + (attr_str(IFLA_IFNAME, name) if name is not None else b"")


def dump_links_msg(master: int | None = None) -> bytes:
    """RTM_GETLINK dump; with `master`, of that bridge's ports (filtered by the kernel)."""
    return _ifinfo() + _SKIP_STATS + (attr_u32(IFLA_MASTER, master) if master is not None else b"")


def new_bridge_msg(name: str, mtu: int | None, vlan_filtering: bool) -> bytes:
    """RTM_NEWLINK of a bridge, created up."""
    data = attr_u8(IFLA_BR_VLAN_FILTERING, 1) if vlan_filtering else b""
    payload = _ifinfo(flags=IFF_UP, change=IFF_UP) + attr_str(IFLA_IFNAME, name)
    payload += _link_kind("bridge", data)
    return payload + (attr_u32(IFLA_MTU, mtu) if mtu else b"")


def set_link_msg(
    index: int,
    *,
    up: bool | None = None,
    promisc: bool | None = None,
    mac: str | None = None,
    mtu: int | None = None,
    vlan_filtering: bool = False,
    master: int | None = None,
) -> bytes:
    """RTM_NEWLINK changing an existing link: the flags given (others untouched), its MAC, its
    MTU, its master (a bridge's ifindex), and for a bridge VLAN filtering on."""
    flags = change = 0
    for bit, value in ((IFF_UP, up), (IFF_PROMISC, promisc)):
        if value is not None:
            change |= bit
            flags |= bit if value else 0
    payload = _ifinfo(index, flags=flags, change=change)
    if mac is not None:
        payload += attr(IFLA_ADDRESS, _mac(mac))
    if mtu:
        payload += attr_u32(IFLA_MTU, mtu)
    if master is not None:
        payload += attr_u32(IFLA_MASTER, master)
    if vlan_filtering:
        payload += _link_kind("bridge", attr_u8(IFLA_BR_VLAN_FILTERING, 1))
    return payload


def del_link_msg(name: str) -> bytes:
    return _ifinfo() + attr_str(IFLA_IFNAME, name)


def new_veth_msg(
    host_name: str, ifname: str, netns_fd: int, master: int, mtu: int | None, mac: str | None
) -> bytes:
    """A veth pair whose peer is born in the container with its final name (no rename, no
    move), and whose host end is created already attached to the bridge."""
    peer = _ifinfo() + attr_str(IFLA_IFNAME, ifname) + attr_u32(IFLA_NET_NS_FD, netns_fd)
    if mtu:
        peer += attr_u32(IFLA_MTU, mtu)
    if mac:
        peer += attr(IFLA_ADDRESS, _mac(mac))
    payload = _ifinfo() + attr_str(IFLA_IFNAME, host_name) + attr_u32(IFLA_MASTER, master)
    payload += _link_kind("veth", attr(VETH_INFO_PEER, peer))
    return payload + (attr_u32(IFLA_MTU, mtu) if mtu else b"")


def bridge_port_msg(
    index: int, hairpin: bool, isolated: bool, vlans: Sequence[tuple[int, int]]
) -> bytes:
    """One AF_BRIDGE RTM_SETLINK carrying the port flags and VLANs (the kernel's br_setlink)."""
    payload = _ifinfo(index, family=AF_BRIDGE)
    port = (attr_u8(IFLA_BRPORT_MODE, 1) if hairpin else b"") + (
        attr_u8(IFLA_BRPORT_ISOLATED, 1) if isolated else b""
    )
    if port:
        payload += attr(IFLA_PROTINFO | NLA_F_NESTED, port)
    if vlans:
        spec = b"".join(attr(IFLA_BRIDGE_VLAN_INFO, _VLAN_INFO.pack(f, vid)) for f, vid in vlans)
        payload += attr(IFLA_AF_SPEC | NLA_F_NESTED, spec)
    return payload


# IFLA_AF_SPEC blocks, sent sparse (pyroute2 models IFLA_INET_CONF as the whole array, where the
# kernel takes single settings, so that one changes and no other).
ARP_NOTIFY = attr(AF_INET, attr(IFLA_INET_CONF, attr_u32(IPV4_DEVCONF_ARP_NOTIFY, 1)))
NO_LINK_LOCAL = attr(AF_INET6, attr(IFLA_INET6_ADDR_GEN_MODE, bytes([IN6_ADDR_GEN_MODE_NONE])))


def alias_msg(index: int, alias: str) -> bytes:
    """RTM_SETLINK of the link's alias (`ip link set X alias Y`)."""
    return _ifinfo(index) + attr_str(IFLA_IFALIAS, alias)


def af_spec_msg(index: int, *blocks: bytes) -> bytes:
    """RTM_SETLINK of per-family settings (ARP_NOTIFY, NO_LINK_LOCAL)."""
    return _ifinfo(index) + attr(IFLA_AF_SPEC, b"".join(blocks))


# NamedTuples (Link, Addr, RouteEntry), not frozen dataclasses: the same immutable, hashable
# records without the methods a dataclass compiles at import (no `dataclasses`, nor the `inspect`
# it imports, on the exec'd path). `ifindex`: a NamedTuple's field cannot be called `index`.
class Link(NamedTuple):
    name: str
    ifindex: int
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
    af_spec: bytes | None = None  # IFLA_AF_SPEC, parsed on demand (see inet_conf)
    # Present when the link's peer (a veth's other end) is in another namespace.
    link_netnsid: int | None = None
    alias: str = ""

    @property
    def up(self) -> bool:
        return bool(self.flags & IFF_UP)

    @property
    def oper_up(self) -> bool:
        return bool(self.flags & IFF_LOWER_UP) and self.operstate == IF_OPER_UP


def _flag(attrs: dict[int, bytes] | None, kind: int) -> bool | None:
    raw = attrs.get(kind) if attrs is not None else None
    return bool(raw[0]) if raw else None


def parse_link(payload: bytes) -> Link:
    """An RTM_NEWLINK payload (ifinfomsg + attributes)."""
    _family, _type, index, flags, _change = IFINFO.unpack_from(payload)
    attrs = attrs_of(payload, IFINFO.size)
    info = attrs_of(attrs[IFLA_LINKINFO]) if IFLA_LINKINFO in attrs else {}
    kind = as_str(info.get(IFLA_INFO_KIND))
    port: dict[int, bytes] | None = None
    if as_str(info.get(IFLA_INFO_SLAVE_KIND)) == "bridge" and IFLA_INFO_SLAVE_DATA in info:
        port = attrs_of(info[IFLA_INFO_SLAVE_DATA])
    bridge = attrs_of(info[IFLA_INFO_DATA]) if kind == "bridge" and IFLA_INFO_DATA in info else None
    oper = attrs.get(IFLA_OPERSTATE)
    return Link(
        name=as_str(attrs.get(IFLA_IFNAME)) or "",
        ifindex=index,
        flags=flags,
        mtu=as_u32(attrs.get(IFLA_MTU)) or 0,
        mac=":".join(f"{b:02x}" for b in attrs.get(IFLA_ADDRESS, b"")),
        kind=kind,
        master=as_u32(attrs.get(IFLA_MASTER)) or None,
        operstate=oper[0] if oper else 0,
        peer_index=as_u32(attrs.get(IFLA_LINK)) if kind == "veth" else None,
        port_state=port[IFLA_BRPORT_STATE][0] if port and IFLA_BRPORT_STATE in port else None,
        hairpin=_flag(port, IFLA_BRPORT_MODE) if port is not None else None,
        isolated=_flag(port, IFLA_BRPORT_ISOLATED) if port is not None else None,
        vlan_filtering=bool(_flag(bridge, IFLA_BR_VLAN_FILTERING)) if bridge is not None else None,
        af_spec=attrs.get(IFLA_AF_SPEC),
        link_netnsid=as_s32(attrs.get(IFLA_LINK_NETNSID)),
        alias=as_str(attrs.get(IFLA_IFALIAS)) or "",
    )


# Per-device IP settings come with every link reply (IFLA_AF_SPEC). Reading them there instead of
# through /proc/sys matters at scale: a /proc/sys/net lookup compares its name against the entry
# of every network namespace that has one (every container has an `eth0`, and its own
# `ip_forward`), which cost ~0.6 ms per access with 1000 containers.
def inet_conf(link: Link, devconf: int) -> int | None:
    """An IPv4 setting of the link (IPV4_DEVCONF_*), None when the kernel did not report it."""
    block = attrs_of(link.af_spec).get(AF_INET) if link.af_spec else None
    conf = attrs_of(block).get(IFLA_INET_CONF) if block else None
    if conf is None or len(conf) < devconf * 4:
        return None
    return as_u32(conf[(devconf - 1) * 4 :])


def inet6_conf(link: Link, devconf: int) -> int | None:
    """An IPv6 setting of the link (DEVCONF_*), None when IPv6 is off on it."""
    block = attrs_of(link.af_spec).get(AF_INET6) if link.af_spec else None
    conf = attrs_of(block).get(IFLA_INET6_CONF) if block else None
    if conf is None or len(conf) < (devconf + 1) * 4:
        return None
    return as_s32(conf[devconf * 4 :])


def netconf_msg(family: int) -> bytes:
    """RTM_GETNETCONF of the family's "all" settings (forwarding)."""
    return _NETCONF.pack(family) + attr_s32(NETCONFA_IFINDEX, NETCONFA_IFINDEX_ALL)


def parse_forwarding(payload: bytes) -> int | None:
    return as_s32(attrs_of(payload, _NETCONF.size).get(NETCONFA_FORWARDING))


# --- addresses ------------------------------------------------------------------------------


class Addr(NamedTuple):  # a NamedTuple: see Link
    iface: IPInterface
    flags: int


def addr_msg(index: int, iface: IPInterface, flags: int = 0) -> bytes:
    """RTM_NEWADDR / RTM_DELADDR of one address (with its broadcast on IPv4 subnets)."""
    packed = iface.ip.packed
    payload = IFADDR.pack(family_of(iface.version), iface.network.prefixlen, flags, 0, index)
    payload += attr(IFA_LOCAL, packed) + attr(IFA_ADDRESS, packed)
    if iface.version == 4 and iface.network.prefixlen < 31:
        payload += attr(IFA_BROADCAST, iface.network.broadcast_address.packed)
    return payload


def dump_addrs_msg(index: int) -> bytes:
    """RTM_GETADDR dump of one link's addresses, both families (filtered by the kernel)."""
    return IFADDR.pack(0, 0, 0, 0, index)


def dump_family_addrs_msg(family: int) -> bytes:
    """RTM_GETADDR dump of every link's addresses of one family."""
    return IFADDR.pack(family, 0, 0, 0, 0)


def addr_index(payload: bytes) -> int:
    return int(IFADDR.unpack_from(payload)[4])


def parse_addr(payload: bytes) -> Addr:
    family, prefixlen, flags8, _scope, _index = IFADDR.unpack_from(payload)
    attrs = attrs_of(payload, IFADDR.size)
    raw = attrs.get(IFA_ADDRESS) or attrs.get(IFA_LOCAL)
    if family == AF_INET:
        raw = attrs.get(IFA_LOCAL) or raw  # IFA_ADDRESS is the peer on p2p links
    flags = as_u32(attrs.get(IFA_FLAGS))
    address = ip_address(bytes(raw or b""))
    return Addr(ip_interface(f"{address}/{prefixlen}"), flags8 if flags is None else flags)


# --- routes ---------------------------------------------------------------------------------


def route_msg(index: int, dst: IPNetwork, gateway: IPAddress | None) -> bytes:
    """RTM_NEWROUTE of a main-table route through the link (on-link without a gateway)."""
    scope = RT_SCOPE_UNIVERSE if gateway is not None else RT_SCOPE_LINK
    payload = RTMSG.pack(
        family_of(dst.version), dst.prefixlen, 0, 0, RT_TABLE_MAIN, RTPROT_BOOT, scope,
        RTN_UNICAST, 0,
    )  # fmt: skip
    payload += attr_u32(RTA_OIF, index)
    if dst.prefixlen:
        payload += attr(RTA_DST, dst.network_address.packed)
    if gateway is not None:
        payload += attr(RTA_GATEWAY, gateway.packed)
    return payload


def dump_routes_msg(family: int, index: int) -> bytes:
    """RTM_GETROUTE dump of the main table's routes through the link (filtered by the kernel)."""
    return RTMSG.pack(family, 0, 0, 0, RT_TABLE_MAIN, 0, 0, 0, 0) + attr_u32(RTA_OIF, index)


def dump_table_msg(family: int) -> bytes:
    """RTM_GETROUTE dump of the main table, every link (filtered here if the kernel does not)."""
    return RTMSG.pack(family, 0, 0, 0, RT_TABLE_MAIN, 0, 0, 0, 0)


class RouteEntry(NamedTuple):  # a NamedTuple: see Link
    route: Route
    oif: int | None
    table: int
    type: int  # RTN_*


def parse_route(payload: bytes) -> RouteEntry:
    family, dst_len, _src, _tos, table, _proto, _scope, rtype, _flags = RTMSG.unpack_from(payload)
    attrs = attrs_of(payload, RTMSG.size)
    raw_dst = attrs.get(RTA_DST)
    dst = ip_address(raw_dst) if raw_dst else ("0.0.0.0" if family == AF_INET else "::")
    raw_gw = attrs.get(RTA_GATEWAY)
    return RouteEntry(
        route=(
            ip_network(f"{dst}/{dst_len}", strict=False),
            ip_address(raw_gw) if raw_gw else None,
        ),
        oif=as_u32(attrs.get(RTA_OIF)),
        table=as_u32(attrs.get(RTA_TABLE)) or table,
        type=rtype,
    )
