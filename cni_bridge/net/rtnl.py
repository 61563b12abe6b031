"""Rtnetlink requests over one socket: look up, create, change and delete links, addresses and
routes. The messages are `rtmsg`'s; a kernel refusal becomes a `NetError` saying what was being
done (absence is an answer where the caller needs one: None, False)."""

from __future__ import annotations

import errno
from _socket import AF_INET, AF_INET6
from collections.abc import Sequence

from cni_bridge.net import rtmsg
from cni_bridge.net.netlink import NLM_F_CREATE, NLM_F_EXCL, NetlinkError, NetlinkSocket
from cni_bridge.net.ops import IPAddress, IPInterface, IPNetwork, NetError, Route
from cni_bridge.net.rtmsg import Addr, Link


def fail(what: str, exc: NetlinkError, *, vlan: bool = False) -> NetError:
    text = f"{what}: {exc.strerror}"
    if vlan and exc.errno == errno.EOPNOTSUPP:
        text += " (is the kernel built without CONFIG_BRIDGE_VLAN_FILTERING?)"
    return NetError(text, errno=exc.errno)


# --- links ----------------------------------------------------------------------------------


def get_link(rt: NetlinkSocket, *, name: str | None = None, index: int = 0) -> Link | None:
    try:
        replies = rt.request(rtmsg.RTM_GETLINK, rtmsg.get_link_msg(name=name, index=index))
    except NetlinkError as exc:
        if exc.errno == errno.ENODEV:
            return None
        raise fail(f"looking up link {name or index}", exc) from None
    return rtmsg.parse_link(replies[0]) if replies else None


def dump_links(rt: NetlinkSocket, *, master: int | None = None) -> list[Link]:
    try:
        replies = rt.dump(rtmsg.RTM_GETLINK, rtmsg.dump_links_msg(master))
    except NetlinkError as exc:
        raise fail("listing links", exc) from None
    links = [rtmsg.parse_link(r) for r in replies]
    if master is not None:  # a kernel without strict dumps ignores the filter
        links = [link for link in links if link.master == master]
    return links


def new_bridge(rt: NetlinkSocket, name: str, mtu: int | None, vlan_filtering: bool) -> bool:
    """Create the bridge, up; False when it exists already (e.g. a concurrent ADD made it)."""
    try:
        rt.request(
            rtmsg.RTM_NEWLINK,
            rtmsg.new_bridge_msg(name, mtu, vlan_filtering),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    except NetlinkError as exc:
        if exc.errno == errno.EEXIST:
            return False
        raise fail(f"creating bridge {name}", exc, vlan=vlan_filtering) from None
    return True


def new_veth(
    rt: NetlinkSocket,
    host_name: str,
    ifname: str,
    netns_fd: int,
    master: int,
    mtu: int | None,
    mac: str | None,
) -> None:
    """Raises NetlinkError itself for EEXIST, for the caller to say which name is taken."""
    msg = rtmsg.new_veth_msg(host_name, ifname, netns_fd, master, mtu, mac)
    try:
        rt.request(rtmsg.RTM_NEWLINK, msg, NLM_F_CREATE | NLM_F_EXCL)
    except NetlinkError as exc:
        if exc.errno == errno.EEXIST:
            raise
        raise fail(f"creating veth {host_name} / {ifname}", exc) from None


def set_link(
    rt: NetlinkSocket,
    index: int,
    what: str,
    *,
    up: bool | None = None,
    promisc: bool | None = None,
    mac: str | None = None,
    mtu: int | None = None,
    vlan_filtering: bool = False,
    vlan: bool = False,
    master: int | None = None,
) -> None:
    """`vlan`: the request is part of setting up VLANs (an EOPNOTSUPP then says why)."""
    msg = rtmsg.set_link_msg(
        index, up=up, promisc=promisc, mac=mac, mtu=mtu, vlan_filtering=vlan_filtering,
        master=master,
    )
    try:
        rt.request(rtmsg.RTM_NEWLINK, msg)
    except NetlinkError as exc:
        raise fail(what, exc, vlan=vlan or vlan_filtering) from None


def set_bridge_port(
    rt: NetlinkSocket,
    index: int,
    name: str,
    hairpin: bool,
    isolated: bool,
    vlans: Sequence[tuple[int, int]],
) -> None:
    try:
        rt.request(rtmsg.RTM_SETLINK, rtmsg.bridge_port_msg(index, hairpin, isolated, vlans))
    except NetlinkError as exc:
        what = f"setting bridge port options on {name}"
        raise fail(what, exc, vlan=bool(vlans)) from None


def delete_link(rt: NetlinkSocket, name: str) -> bool:
    try:
        rt.request(rtmsg.RTM_DELLINK, rtmsg.del_link_msg(name))
    except NetlinkError as exc:
        if exc.errno == errno.ENODEV:
            return False
        raise fail(f"deleting link {name}", exc) from None
    return True


def set_container_af(ct: NetlinkSocket, index: int, ifname: str, *, link_local: bool) -> None:
    """arp_notify on (a gratuitous ARP when the link comes up, as the reference plugin sets
    it), and without `link_local` no IPv6 link-local address (addrgenmode none: no DAD, MLD
    or router solicitation ever leaves the interface). One netlink message, before link up."""
    inet = rtmsg.ARP_NOTIFY
    for blocks in ([inet] if link_local else [inet, rtmsg.NO_LINK_LOCAL], [inet]):
        try:
            ct.request(rtmsg.RTM_SETLINK, rtmsg.af_spec_msg(index, *blocks))
            return
        except NetlinkError as exc:
            # No IPv6 on the interface at all (the namespace disabled it): no link-local either.
            if exc.errno != errno.EAFNOSUPPORT or len(blocks) == 1:
                raise fail(f"setting arp_notify/addrgenmode on {ifname}", exc) from None


def set_port_af(rt: NetlinkSocket, index: int, name: str) -> None:
    """No IPv6 link-local address on a host-side veth (addrgenmode none), before it comes up.

    A bridge port's own IP stack never sees a frame (the bridge takes them first), yet each
    link-local address adds a route to the host's fe80::/64 node, which every later one walks,
    and a route-table sweep at each link up: O(ports) kernel work per ADD."""
    try:
        rt.request(rtmsg.RTM_SETLINK, rtmsg.af_spec_msg(index, rtmsg.NO_LINK_LOCAL))
    except NetlinkError as exc:
        if exc.errno != errno.EAFNOSUPPORT:  # IPv6 disabled on the host: nothing to prevent
            raise fail(f"setting addrgenmode on {name}", exc) from None


def forwarding(rt: NetlinkSocket, family: int) -> int | None:
    """net.ipv4.ip_forward / net.ipv6.conf.all.forwarding as netconf reports it (None: no
    answer, e.g. IPv6 off), without a /proc/sys lookup."""
    try:
        replies = rt.request(rtmsg.RTM_GETNETCONF, rtmsg.netconf_msg(family))
    except NetlinkError:
        return None
    return rtmsg.parse_forwarding(replies[0]) if replies else None


# --- addresses and routes -------------------------------------------------------------------


def dump_addrs(rt: NetlinkSocket, index: int) -> list[Addr]:
    try:
        replies = rt.dump(rtmsg.RTM_GETADDR, rtmsg.dump_addrs_msg(index))
    except NetlinkError as exc:
        raise fail("listing addresses", exc) from None
    return [rtmsg.parse_addr(r) for r in replies if rtmsg.addr_index(r) == index]


def add_addr(
    rt: NetlinkSocket, index: int, iface: IPInterface, link: str, *, nodad: bool
) -> None:
    flags = rtmsg.IFA_F_NODAD if nodad and iface.version == 6 else 0
    msg = rtmsg.addr_msg(index, iface, flags)
    try:
        rt.request(rtmsg.RTM_NEWADDR, msg, NLM_F_CREATE | NLM_F_EXCL)
    except NetlinkError as exc:
        if exc.errno != errno.EEXIST:
            raise fail(f"adding address {iface} to {link}", exc) from None


def del_addr(rt: NetlinkSocket, index: int, iface: IPInterface, link: str) -> None:
    try:
        rt.request(rtmsg.RTM_DELADDR, rtmsg.addr_msg(index, iface))
    except NetlinkError as exc:
        if exc.errno != errno.EADDRNOTAVAIL:
            raise fail(f"removing address {iface} from {link}", exc) from None


def add_route(
    rt: NetlinkSocket, index: int, dst: IPNetwork, gateway: IPAddress | None, link: str
) -> None:
    if gateway is not None and gateway.version != dst.version:
        raise NetError(f"route {dst} via {gateway}: gateway of another address family")
    msg = rtmsg.route_msg(index, dst, gateway)
    try:
        rt.request(rtmsg.RTM_NEWROUTE, msg, NLM_F_CREATE | NLM_F_EXCL)
    except NetlinkError as exc:
        if exc.errno != errno.EEXIST:  # e.g. the subnet route the kernel already added
            via = f" via {gateway}" if gateway is not None else ""
            raise fail(f"adding route {dst}{via} dev {link}", exc) from None


def dump_routes(rt: NetlinkSocket, index: int) -> list[Route]:
    """The main table's unicast routes through the link, both families."""
    routes: list[Route] = []
    for family in (AF_INET, AF_INET6):
        try:
            replies = rt.dump(rtmsg.RTM_GETROUTE, rtmsg.dump_routes_msg(family, index))
        except NetlinkError as exc:
            if exc.errno == errno.EAFNOSUPPORT:
                continue  # IPv6 disabled in the kernel
            raise fail("listing routes", exc) from None
        for reply in replies:
            entry = rtmsg.parse_route(reply)
            if (
                entry.oif == index
                and entry.type == rtmsg.RTN_UNICAST
                and entry.table == rtmsg.RT_TABLE_MAIN
            ):
                routes.append(entry.route)
    return routes


def set_alias(rt: NetlinkSocket, index: int, name: str, alias: str) -> None:
    try:
        rt.request(rtmsg.RTM_SETLINK, rtmsg.alias_msg(index, alias))
    except NetlinkError as exc:
        raise fail(f"marking {name}", exc) from None


def host_addrs(rt: NetlinkSocket, family: int) -> list[tuple[int, IPInterface]]:
    """(link index, address) of every address of the family on the host."""
    try:
        replies = rt.dump(rtmsg.RTM_GETADDR, rtmsg.dump_family_addrs_msg(family))
    except NetlinkError as exc:
        if exc.errno == errno.EAFNOSUPPORT:
            return []
        raise fail("listing addresses", exc) from None
    return [(rtmsg.addr_index(r), rtmsg.parse_addr(r).iface) for r in replies]


def host_routes(rt: NetlinkSocket, family: int) -> list[rtmsg.RouteEntry]:
    """The main table's unicast routes of the family, every link."""
    try:
        replies = rt.dump(rtmsg.RTM_GETROUTE, rtmsg.dump_table_msg(family))
    except NetlinkError as exc:
        # ENOENT: a strict dump of a table the family does not have yet (no route at all).
        if exc.errno in (errno.EAFNOSUPPORT, errno.ENOENT):
            return []
        raise fail("listing routes", exc) from None
    entries = (rtmsg.parse_route(r) for r in replies)
    return [e for e in entries if e.type == rtmsg.RTN_UNICAST and e.table == rtmsg.RT_TABLE_MAIN]
