"""The peer file and the route planner, without root: desired (peers) against actual
(addresses, routes) gives the changes; a fake table applies them."""

from __future__ import annotations

from ipaddress import ip_address, ip_interface, ip_network

import pytest

from cni_bridge.nodes.netlink import RouteError
from cni_bridge.nodes.peers import Peer, PeerFileError, parse_peers
from cni_bridge.nodes.routeplan import PROTO, Change, KernelRoute, LocalAddr, plan_routes
from cni_bridge.nodes.routes import sync_routes

ADDRS = [
    LocalAddr(1, "lo", ip_interface("127.0.0.1/8")),
    LocalAddr(2, "eth0", ip_interface("192.168.50.11/24")),
    LocalAddr(2, "eth0", ip_interface("fd50::11/64")),
    LocalAddr(3, "cni0", ip_interface("10.244.1.1/24")),
]
PEERS_TEXT = """\
# node-ip   pod CIDRs
192.168.50.11 10.244.1.0/24
fd50::11      fd00:244:1::/64
192.168.50.12 10.244.2.0/24   # worker-2
fd50::12      fd00:244:2::/64
192.168.50.13 10.244.3.0/24 10.245.3.0/24
"""


def ours(dst: str, gw: str, oif: int = 2) -> KernelRoute:
    return KernelRoute(ip_network(dst), ip_address(gw), oif, PROTO)


def test_parse_peers() -> None:
    peers = parse_peers(PEERS_TEXT)
    assert [str(p.node_ip) for p in peers] == [
        "192.168.50.11", "fd50::11", "192.168.50.12", "fd50::12", "192.168.50.13"
    ]
    assert [str(c) for c in peers[4].cidrs] == ["10.244.3.0/24", "10.245.3.0/24"]
    assert peers[2].source == "line 4"


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("192.168.50.12\n", "line 1: expected"),
        ("node-2 10.244.2.0/24\n", "'node-2' is not an IP address"),
        ("192.168.50.12 10.244.2.1/24\n", "has host bits set"),
        ("192.168.50.12 fd00:244:2::/64\n", "one line per family"),
        ("\n\n192.168.50.12 x\n", "line 3"),
    ],
)
def test_peer_file_errors(text: str, needle: str) -> None:
    with pytest.raises(PeerFileError, match=needle):
        parse_peers(text)


def test_plan_from_nothing_adds_the_other_nodes_routes() -> None:
    plan = plan_routes(parse_peers(PEERS_TEXT), ADDRS, [])
    assert [str(c) for c in plan.changes] == [
        f"route add 10.244.2.0/24 via 192.168.50.12 dev eth0 proto {PROTO}",
        f"route add 10.244.3.0/24 via 192.168.50.13 dev eth0 proto {PROTO}",
        f"route add 10.245.3.0/24 via 192.168.50.13 dev eth0 proto {PROTO}",
        f"route add fd00:244:2::/64 via fd50::12 dev eth0 proto {PROTO}",
    ]
    assert [str(p.node_ip) for p in plan.local] == ["192.168.50.11", "fd50::11"]
    assert plan.problems == []


def test_plan_is_idempotent_and_withdraws_only_ours() -> None:
    have = [
        ours("10.244.2.0/24", "192.168.50.12"),
        ours("10.244.9.0/24", "192.168.50.19"),  # a peer no longer listed
        KernelRoute(ip_network("10.99.0.0/16"), ip_address("192.168.50.1"), 2, 4),  # static
        KernelRoute(ip_network("0.0.0.0/0"), ip_address("192.168.50.1"), 2, 3),
    ]
    peers = [Peer(ip_address("192.168.50.12"), (ip_network("10.244.2.0/24"),))]
    plan = plan_routes(peers, ADDRS, have)
    assert plan.changes == [
        Change("delete", ip_network("10.244.9.0/24"), ip_address("192.168.50.19"), 2, "eth0")
    ]
    assert plan.kept == 1
    assert plan_routes(peers, ADDRS, have[:1] + have[2:]).changes == []


def test_a_readdressed_peer_is_replaced() -> None:
    have = [ours("10.244.2.0/24", "192.168.50.12")]
    peers = [Peer(ip_address("192.168.50.22"), (ip_network("10.244.2.0/24"),))]
    (change,) = plan_routes(peers, ADDRS, have).changes
    assert (change.op, str(change.gateway)) == ("replace", "192.168.50.22")


def test_problems_are_named_and_the_rest_still_planned() -> None:
    peers = parse_peers(
        "10.9.9.9 10.244.7.0/24\n"  # not on a connected subnet
        "192.168.50.12 10.244.1.0/25\n"  # overlaps this node's own pod subnet
        "192.168.50.13 10.244.3.0/24 10.99.0.0/16\n"  # the second clashes with a static route
        "192.168.50.14 10.244.3.0/24\n"  # claimed twice
    )
    static = KernelRoute(ip_network("10.99.0.0/16"), ip_address("192.168.50.1"), 2, 4)
    plan = plan_routes(peers, ADDRS, [static])
    assert [str(c.dst) for c in plan.changes] == ["10.244.3.0/24"]
    text = "\n".join(plan.problems)
    assert "peer 10.9.9.9 (line 1) is not on a directly connected subnet" in text
    assert "10.244.1.0/25 overlaps 10.244.1.1/24 on cni0" in text
    assert "route to 10.99.0.0/16 of another owner (proto 4) exists; left alone" in text
    assert "10.244.3.0/24 is also claimed by peer 192.168.50.13 (line 3)" in text
    assert len(plan.problems) == 4


class FakeTable:
    def __init__(self, routes: list[KernelRoute], fail: str = "") -> None:
        self.table = routes
        self.fail = fail
        self.applied: list[str] = []

    def addresses(self) -> list[LocalAddr]:
        return ADDRS

    def routes(self) -> list[KernelRoute]:
        return list(self.table)

    def apply(self, change: Change) -> None:
        if self.fail and self.fail in str(change):
            raise RouteError(f"{change}: Network is unreachable")
        self.applied.append(str(change))
        self.table = [r for r in self.table if r.dst != change.dst or r.proto != PROTO]
        if change.op != "delete":
            self.table.append(KernelRoute(change.dst, change.gateway, change.oif, PROTO))

    def close(self) -> None:
        pass


def test_sync_applies_and_a_second_pass_changes_nothing() -> None:
    table = FakeTable([ours("10.244.9.0/24", "192.168.50.19")], fail="10.245.3.0")
    plan = sync_routes(parse_peers(PEERS_TEXT), table)
    assert len(table.applied) == 4 and any("delete 10.244.9.0/24" in a for a in table.applied)
    assert plan.problems == [
        f"route add 10.245.3.0/24 via 192.168.50.13 dev eth0 proto {PROTO}: Network is unreachable"
    ]
    table.fail = ""
    sync_routes(parse_peers(PEERS_TEXT), table)
    table.applied.clear()
    again = sync_routes(parse_peers(PEERS_TEXT), table)
    assert table.applied == [] and again.kept == 4 and again.problems == []
    dry = sync_routes([], table, dry_run=True)
    assert len(dry.changes) == 4 and table.applied == []
