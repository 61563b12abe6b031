"""Pure decisions of the net layer: the bridge's gateway addresses, a port's VLAN entries. No
kernel access. Names and MACs arrive as domain.py's checked types and are not checked again."""

from __future__ import annotations

from collections.abc import Sequence

from cni_bridge.domain import VlanId
from cni_bridge.net.ops import AddressConflict, IPAddress, IPInterface, IPNetwork
from cni_bridge.net.rtmsg import (
    BRIDGE_VLAN_INFO_PVID,
    BRIDGE_VLAN_INFO_RANGE_BEGIN,
    BRIDGE_VLAN_INFO_RANGE_END,
    BRIDGE_VLAN_INFO_UNTAGGED,
)


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


def subnet_holder(
    wanted: IPInterface,
    addrs: Sequence[tuple[str, IPInterface]],
    routes: Sequence[tuple[str, IPNetwork, IPAddress | None]],
) -> str | None:
    """What else on the host holds `wanted`'s subnet, in words, or None.

    `addrs` are (link, address) and `routes` (link, destination, gateway) of the main table,
    both without the bridge's own. As Docker checks a new network: any address whose subnet
    overlaps, any route whose destination does, except the default route and IPv6 link-local
    ones (every link has fe80::/64)."""
    net = wanted.network
    for link, iface in addrs:
        if iface.version == net.version and not iface.is_link_local and (
            iface.network.overlaps(net)
        ):
            return f"address {iface} on {link}"
    for link, dst, gw in routes:
        if dst.version != net.version or dst.prefixlen == 0 or dst.is_link_local:
            continue
        if dst.overlaps(net):
            via = f" via {gw}" if gw is not None else ""
            return f"route {dst}{via} dev {link or '?'}"
    return None


def vlan_entries(vlan: VlanId | None, trunk: Sequence[VlanId] | None) -> list[tuple[int, int]]:
    """(flags, vid) bridge VLAN entries for a port: an access VLAN (pvid, egress untagged) and/or
    tagged trunk VLANs, consecutive ones sent as ranges to keep the message small."""
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
