"""Bridge, veth, address and route operations over rtnetlink: the real `NetOps`.

The host is the namespace the process is in; container namespaces are reached through sockets
created inside them (`NetlinkSocket.open_in`), so the process itself never leaves the host
namespace except for the few microseconds `netns.entered` needs to open a socket or write a
sysctl. The requests are `rtnl`'s, the pure decisions `plans`'.
"""

from __future__ import annotations

import errno
import os
from _socket import AF_INET, AF_INET6
from collections.abc import Sequence

from cni_bridge.domain import InterfaceName, MacAddress, VlanId
from cni_bridge.net import rtnl, sysctl
from cni_bridge.net.container import ContainerSide
from cni_bridge.net.netlink import NetlinkError, NetlinkSocket
from cni_bridge.net.netns import open_netns
from cni_bridge.net.ops import (
    HostLink,
    IPInterface,
    LinkExists,
    LinkInfo,
    LinkNotFound,
    NetError,
    NetOps,
    NotABridge,
    SubnetInUse,
)
from cni_bridge.net.plans import plan_bridge_addrs, subnet_holder, vlan_entries
from cni_bridge.net.rtmsg import (
    DEVCONF_ACCEPT_RA,
    IFF_PROMISC,
    IPV4_DEVCONF_ROUTE_LOCALNET,
    Link,
    inet6_conf,
    inet_conf,
)
from cni_bridge.net.rtnl import dump_addrs, get_link

NET_ADDR_SET = "3"  # /sys/class/net/<dev>/addr_assign_type once the address was set explicitly


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


class NetlinkOps(ContainerSide):
    """The real NetOps. One instance per thread: it keeps one host netlink socket."""

    def __init__(self, *, link_up_timeout: float = 5.0, dad_timeout: float = 10.0) -> None:
        self._host: NetlinkSocket | None = None
        # Bridges as ensure_bridge last saw them, for the same request's next steps (a bridge is
        # never deleted by an ADD or DEL; a stale index would only make the next step fail).
        self._bridges: dict[str, Link] = {}
        # The bridge's addresses as check_subnets_free read them, moments before this ADD's
        # ensure_bridge_addrs (keyed by name, with the ifindex they were read under).
        self._seen_addrs: dict[str, tuple[int, list[IPInterface]]] = {}
        self.link_up_timeout = link_up_timeout
        self.dad_timeout = dad_timeout

    def _rt(self) -> NetlinkSocket:
        if self._host is None:
            self._host = NetlinkSocket.open()
        return self._host

    def close(self) -> None:
        self._seen_addrs.clear()
        if self._host is not None:
            self._host.close()
            self._host = None

    def __enter__(self) -> NetlinkOps:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # bridge

    def ensure_bridge(
        self, name: InterfaceName, mtu: int | None, vlan_filtering: bool, mark: str = ""
    ) -> LinkInfo:
        rt = self._rt()
        link = get_link(rt, name=name)
        created = False
        if link is None:
            created = rtnl.new_bridge(rt, name, mtu, vlan_filtering)
            link = get_link(rt, name=name)
            if link is None:
                raise NetError(f"bridge {name} vanished while being set up")
        if link.kind != "bridge":
            raise NotABridge(name, link.kind)
        if created and mark:
            # The kernel takes no alias in the creating message: set right after. Only a
            # bridge carrying it is ever deleted by us (remove_bridge).
            rtnl.set_alias(rt, link.ifindex, name, mark)
        # A bridge takes the lowest MAC of its ports unless its own was set explicitly.
        mac = link.mac if created or not _mac_is_pinned(name) else None
        new_mtu = mtu if mtu and mtu != link.mtu else None
        filtering = vlan_filtering and not link.vlan_filtering
        if mac is not None or new_mtu or filtering or not link.up:
            rtnl.set_link(
                rt, link.ifindex, f"configuring bridge {name}", up=True, mac=mac, mtu=new_mtu,
                vlan_filtering=filtering, vlan=vlan_filtering,
            )  # fmt: skip
        # We own the bridge's routes: no router advertisements (as the reference plugin).
        if inet6_conf(link, DEVCONF_ACCEPT_RA) not in (0, None):
            sysctl.write(f"net/ipv6/conf/{name}/accept_ra", "0", missing_ok=True)
        self._bridges[name] = link
        return LinkInfo(name, link.ifindex, link.mac, mtu or link.mtu, created=created)

    def ensure_bridge_addrs(
        self, name: InterfaceName, addrs: Sequence[IPInterface], force: bool
    ) -> list[IPInterface]:
        rt = self._rt()
        link = self._bridges.get(name) or get_link(rt, name=name)
        if link is None:
            raise LinkNotFound(name, None)
        seen = self._seen_addrs.pop(name, None)
        # Read once per ADD: a bridge made again meanwhile has another index, and is read anew.
        if seen is not None and seen[0] == link.ifindex:
            existing = seen[1]
        else:
            existing = [a.iface for a in dump_addrs(rt, link.ifindex)]
        remove, add = plan_bridge_addrs(name, existing, addrs, force)
        for iface in remove:
            rtnl.del_addr(rt, link.ifindex, iface, name)
        for iface in add:
            # NODAD: the gateway address must answer at once, not after ~1 s of DAD.
            rtnl.add_addr(rt, link.ifindex, iface, name, nodad=True)
        return add

    def check_subnets_free(self, bridge: InterfaceName, addrs: Sequence[IPInterface]) -> None:
        rt = self._rt()
        link = get_link(rt, name=bridge)
        index = link.ifindex if link is not None else 0
        have = [a.iface for a in dump_addrs(rt, index)] if link is not None else []
        if link is not None:
            self._seen_addrs[bridge] = (index, have)
        # Only an address still to be added is checked (the first ADD of a network, or after
        # its last DEL): the host's whole address and route lists are not read on every ADD.
        for iface in addrs:
            if iface not in have:
                self._check_subnet_free(rt, index, bridge, iface)

    def _check_subnet_free(
        self, rt: NetlinkSocket, index: int, bridge: str, iface: IPInterface
    ) -> None:
        family = AF_INET if iface.version == 4 else AF_INET6
        host_addrs, host_routes = rtnl.host_addrs(rt, family), rtnl.host_routes(rt, family)
        # Links last, so every link the addresses and routes name is in it: a concurrent ADD of
        # this network may have made the bridge (and its address and route) since `index` was
        # read, and what is on the bridge by its name is this network's own, not a conflict.
        names = {link.ifindex: link.name for link in rtnl.dump_links(rt)}
        own = {index} | {i for i, name in names.items() if name == bridge}
        addrs = [(names.get(i, str(i)), a) for i, a in host_addrs if i not in own]
        routes = [
            (names.get(e.oif, "") if e.oif else "", *e.route)
            for e in host_routes
            if e.oif not in own
        ]
        holder = subnet_holder(iface, addrs, routes)
        if holder is not None:
            raise SubnetInUse(bridge, iface, holder)

    def del_bridge_addrs(self, name: InterfaceName, addrs: Sequence[IPInterface]) -> None:
        rt = self._rt()
        link = get_link(rt, name=name)
        if link is None:
            return
        for iface in addrs:
            rtnl.del_addr(rt, link.ifindex, iface, name)

    def remove_bridge(self, name: InterfaceName, mark: str) -> bool:
        rt = self._rt()
        link = get_link(rt, name=name)
        if link is None or link.kind != "bridge" or not mark or link.alias != mark:
            return False
        if rtnl.dump_links(rt, master=link.ifindex):
            return False  # a port of someone else's (or a concurrent ADD's) is on it
        self._bridges.pop(name, None)
        return rtnl.delete_link(rt, name)

    # veth

    def create_veth(
        self,
        netns_path: str,
        ifname: InterfaceName,
        host_name: InterfaceName,
        bridge: InterfaceName,
        *,
        mtu: int | None = None,
        container_mac: MacAddress | None = None,
        hairpin: bool = False,
        promisc: bool = False,
        port_isolation: bool = False,
        vlan: VlanId | None = None,
        vlan_trunk: Sequence[VlanId] | None = None,
    ) -> tuple[LinkInfo, LinkInfo]:
        vlans = vlan_entries(vlan, vlan_trunk)
        nsfd = open_netns(netns_path)
        try:
            rt = self._rt()
            br = self._bridges.get(bridge) or get_link(rt, name=bridge)
            if br is None:
                raise LinkNotFound(bridge, None)
            if br.kind != "bridge":
                raise NotABridge(bridge, br.kind)
            try:
                rtnl.new_veth(rt, host_name, ifname, nsfd, br.ifindex, mtu, container_mac)
            except NetlinkError:  # EEXIST: which of the two names?
                raise self._existing(rt, nsfd, netns_path, host_name, ifname) from None
            try:
                host = get_link(rt, name=host_name)
                if host is None:
                    raise LinkNotFound(host_name, None)
                rtnl.set_port_af(rt, host.ifindex, host_name)
                if hairpin or port_isolation or vlans:
                    rtnl.set_bridge_port(rt, host.ifindex, host_name, hairpin, port_isolation, vlans)
                rtnl.set_link(rt, host.ifindex, f"bringing up {host_name}", up=True)
                if promisc and not br.flags & IFF_PROMISC:
                    what = f"setting promiscuous mode on {bridge}"
                    rtnl.set_link(rt, br.ifindex, what, promisc=True)
                with NetlinkSocket.open_in(nsfd) as ct:
                    peer = get_link(ct, name=ifname)
                if peer is None:
                    raise LinkNotFound(ifname, netns_path)
            except BaseException:
                try:  # noqa: SIM105 - contextlib stays off the exec path
                    rtnl.delete_link(rt, host_name)  # the container end goes with it
                except NetError:
                    pass
                raise
        finally:
            os.close(nsfd)
        return (
            LinkInfo(host.name, host.ifindex, host.mac, host.mtu),
            LinkInfo(peer.name, peer.ifindex, peer.mac, peer.mtu),
        )

    def _existing(
        self, rt: NetlinkSocket, nsfd: int, netns_path: str, host_name: str, ifname: str
    ) -> NetError:
        """Which of the two names made the kernel answer EEXIST."""
        if get_link(rt, name=host_name) is not None:
            return LinkExists(host_name, None)
        with NetlinkSocket.open_in(nsfd) as ct:
            if get_link(ct, name=ifname) is not None:
                return LinkExists(ifname, netns_path)
        return NetError(f"creating veth {host_name} / {ifname}: File exists", errno=errno.EEXIST)

    # host side

    def host_link(self, name: InterfaceName) -> HostLink | None:
        link = get_link(self._rt(), name=name)
        if link is None:
            return None
        return HostLink(
            name=link.name,
            ifindex=link.ifindex,
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
            peer_netnsid=link.link_netnsid,
        )

    def delete_link(self, name: InterfaceName) -> bool:
        return rtnl.delete_link(self._rt(), name)

    def link_exists(self, name: InterfaceName) -> bool:
        return get_link(self._rt(), name=name) is not None

    def host_links_with_prefix(self, prefix: str) -> list[str]:
        return sorted(
            link.name for link in rtnl.dump_links(self._rt()) if link.name.startswith(prefix)
        )

    def bridge_ports(self, bridge: InterfaceName) -> list[InterfaceName]:
        rt = self._rt()
        br = get_link(rt, name=bridge)
        if br is None:
            return []
        # Names the kernel reports pass its own rule, which is the one InterfaceName checks.
        return sorted(InterfaceName(link.name) for link in rtnl.dump_links(rt, master=br.ifindex))

    # sysctls (host namespace)

    def set_forwarding(self, v4: bool, v6: bool) -> None:
        # Read through netlink (see inet_conf); /proc/sys only when it must change.
        if v4 and rtnl.forwarding(self._rt(), AF_INET) != 1:
            sysctl.write("net/ipv4/ip_forward", "1")
        if v6 and rtnl.forwarding(self._rt(), AF_INET6) != 1:
            sysctl.write("net/ipv6/conf/all/forwarding", "1")

    def set_route_localnet(self, bridge: InterfaceName) -> None:
        link = self._bridges.get(bridge) or get_link(self._rt(), name=bridge)
        if link is None or inet_conf(link, IPV4_DEVCONF_ROUTE_LOCALNET) != 1:
            sysctl.write(f"net/ipv4/conf/{bridge}/route_localnet", "1")

    def set_sysctl(self, path: str, value: str) -> None:
        sysctl.write(path, value)

    def get_sysctl(self, path: str) -> str | None:
        return sysctl.read(path)

    def link_addrs(self, name: InterfaceName) -> list[IPInterface]:
        link = get_link(self._rt(), name=name)
        return [] if link is None else [a.iface for a in dump_addrs(self._rt(), link.ifindex)]

    def attach_port(self, port: InterfaceName, bridge: InterfaceName, hairpin: bool) -> None:
        rt = self._rt()
        br, link = get_link(rt, name=bridge), get_link(rt, name=port)
        if br is None or link is None:
            raise LinkNotFound(bridge if br is None else port, None)
        rtnl.set_link(rt, link.ifindex, f"attaching {port} to {bridge}", up=True, master=br.ifindex)
        if hairpin:
            rtnl.set_bridge_port(rt, link.ifindex, port, hairpin, bool(link.isolated), [])


def _conforms(ops: NetlinkOps) -> NetOps:
    return ops  # mypy checks here that NetlinkOps implements the NetOps protocol
