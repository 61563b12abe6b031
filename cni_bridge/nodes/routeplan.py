"""Routes to the other nodes' pod CIDRs, planned without side effects: desired (the peers)
against actual (this node's addresses and main-table routes) gives the changes.

Every route we install carries the route protocol PROTO, and only routes with that protocol
are ever replaced or withdrawn: a later run withdraws the routes of peers no longer listed,
and routes of anybody else (kernel, static, DHCP, BGP daemons, other CNIs) are left alone,
even where they clash with a wanted one (reported instead).

PROTO is 203 (0xcb, "cni-bridge"): unassigned in the kernel's RTPROT_* list (the highest is
RTPROT_EIGRP 192) and in iproute2's rt_protos, and not a number another node network agent
is known to tag its routes with (Calico 80, Bird 12, zebra/FRR 11 and 186-192).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from cni_bridge.domain import IPAddress, IPInterface, IPNetwork
from cni_bridge.nodes.peers import Peer

PROTO = 203
PROTO_NAME = "cni-bridge"


@dataclass(frozen=True)
class LocalAddr:
    index: int
    ifname: str
    iface: IPInterface


@dataclass(frozen=True)
class KernelRoute:
    dst: IPNetwork
    gateway: IPAddress | None
    oif: int | None
    proto: int
    priority: int | None = None


@dataclass(frozen=True)
class Change:
    op: Literal["add", "replace", "delete"]
    dst: IPNetwork
    gateway: IPAddress | None
    oif: int | None
    ifname: str = ""
    priority: int | None = None  # of the route deleted (IPv6 keys include the metric)

    def __str__(self) -> str:
        via = f" via {self.gateway}" if self.gateway is not None else ""
        dev = f" dev {self.ifname or self.oif}" if self.oif is not None else ""
        return f"route {self.op} {self.dst}{via}{dev} proto {PROTO}"


@dataclass
class RoutePlan:
    changes: list[Change] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    local: list[Peer] = field(default_factory=list)  # this node's own lines, skipped
    kept: int = 0  # routes already as wanted


def _on_link(addr: IPAddress, addrs: Sequence[LocalAddr]) -> LocalAddr | None:
    """The local address whose subnet holds addr, longest prefix first."""
    best: LocalAddr | None = None
    for a in addrs:
        net = a.iface.network
        if a.iface.version != addr.version or net.prefixlen == net.max_prefixlen:
            continue
        if addr in net and (best is None or net.prefixlen > best.iface.network.prefixlen):
            best = a
    return best


def plan_routes(
    peers: Iterable[Peer], addrs: Sequence[LocalAddr], routes: Iterable[KernelRoute]
) -> RoutePlan:
    plan = RoutePlan()
    local_ips = {a.iface.ip for a in addrs}
    names = {a.index: a.ifname for a in addrs}
    routes = list(routes)
    foreign = {r.dst: r for r in routes if r.proto != PROTO}
    ours: dict[IPNetwork, list[KernelRoute]] = {}
    for r in routes:
        if r.proto == PROTO:
            ours.setdefault(r.dst, []).append(r)
    wanted: dict[IPNetwork, tuple[IPAddress, LocalAddr, Peer]] = {}
    for peer in peers:
        if peer.node_ip in local_ips:
            plan.local.append(peer)
            continue
        link = _on_link(peer.node_ip, addrs)
        if link is None:
            shown = " ".join(map(str, peer.cidrs)) or "none"
            plan.problems.append(
                f"{peer.label()} is not on a directly connected subnet of this node "
                f"(host-gw routes need the nodes on one L2 segment); no route to its pod "
                f"CIDRs ({shown})"
            )
            continue
        for cidr in peer.cidrs:
            if cidr.version != peer.node_ip.version:
                plan.problems.append(
                    f"{peer.label()}: pod CIDR {cidr} has no node address of its family"
                )
                continue
            mine = [a for a in addrs if a.iface.network.overlaps(cidr)]
            if mine:
                a = mine[0]
                plan.problems.append(
                    f"{peer.label()}: pod CIDR {cidr} overlaps {a.iface} on {a.ifname} of "
                    "this node; no route"
                )
                continue
            if cidr in wanted:
                other = wanted[cidr][2]
                plan.problems.append(
                    f"{peer.label()}: pod CIDR {cidr} is also claimed by {other.label()}; "
                    "routed to the first"
                )
                continue
            clash = foreign.get(cidr)
            if clash is not None:
                plan.problems.append(
                    f"{peer.label()}: a route to {cidr} of another owner (proto "
                    f"{clash.proto}) exists; left alone"
                )
                continue
            wanted[cidr] = (peer.node_ip, link, peer)
    for dst in sorted(set(wanted) | set(ours), key=lambda n: (n.version, n)):
        have = ours.get(dst, [])
        want = wanted.get(dst)
        if want is None:
            for r in have:
                plan.changes.append(
                    Change("delete", dst, r.gateway, r.oif, names.get(r.oif or 0, ""), r.priority)
                )
            continue
        gw, link, _ = want
        same = [r for r in have if r.gateway == gw and r.oif == link.index]
        if same:
            plan.kept += 1
            extra = [r for r in have if r is not same[0]]
        else:
            op: Literal["add", "replace"] = "replace" if have else "add"
            plan.changes.append(Change(op, dst, gw, link.index, link.ifname))
            extra = have[1:]
        for r in extra:  # duplicates of ours (another metric): one route per pod CIDR
            plan.changes.append(
                Change("delete", dst, r.gateway, r.oif, names.get(r.oif or 0, ""), r.priority)
            )
    return plan
