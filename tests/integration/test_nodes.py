"""Pods on simulated nodes of one L2 segment, routed host-gw by `cni-bridge routes`: pod to
pod across nodes keeps the pod's address (nonMasqueradeCIDRs), egress to the outside is
masqueraded to the node's address, a peer dropped from the list loses its route, and
nobody else's routes are touched; IPv4 and IPv6."""

from __future__ import annotations

import os

import pytest

from cni_bridge.nodes.routeplan import PROTO
from tests.integration.nodes import LAN4, LAN6, OUT, Cluster, Node
from tests.lab import Netns
from tests.lab.poll import wait_for

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
]


def ours(node: Node, family: str) -> dict[str, str]:
    """dst -> gateway of the node's routes with our protocol."""
    return {
        r["dst"]: r.get("gateway", "")
        for r in node.routes(family)
        if str(r.get("protocol")) in (str(PROTO), "cni-bridge")
    }


def first_answer(cluster: Cluster, ns: Netns, addr: str, port: int = 8080) -> str | None:
    """The first IPv6 packets can wait for the duplicate address detection of the gateway
    address on a bridge the first ADD created: retried until an answer comes."""
    seen: list[str | None] = []

    def answered() -> str | None:
        seen.append(cluster.procs.probe(ns, "tcp", addr, port))
        return seen[-1]

    wait_for(answered, 15)
    return seen[-1]


def test_pods_across_nodes_keep_their_addresses_and_egress_is_masqueraded(
    cluster: Cluster,
) -> None:
    n1, n2 = cluster.node(), cluster.node()
    p1, (ip4_1, ip6_1) = n1.pod("a")
    p2, (ip4_2, ip6_2) = n2.pod("b")
    cluster.procs.server(p2, "tcp", 8080)
    cluster.procs.server(cluster.out, "tcp", 9000)
    # no routes yet: the other node's pods are unreachable
    assert cluster.procs.probe(p1, "tcp", ip4_2, 8080) is None
    peers = cluster.peers_file([n1, n2])
    for node in (n1, n2):
        res = node.cni_bridge("routes", "--peers", str(peers))
        assert res.returncode == 0, res.stderr
        assert f"skipped peer {node.ip4} (line" in res.stdout
    assert ours(n1, "-4") == {"10.244.2.0/24": n2.ip4}
    assert ours(n1, "-6") == {"fd00:10:244:2::/64": n2.ip6}
    # the server on the other node sees the pod's own address, both families
    assert cluster.procs.probe(p1, "tcp", ip4_2, 8080) == ip4_1
    assert first_answer(cluster, p1, ip6_2) == ip6_1
    # leaving the cluster: masqueraded to the node's address
    assert cluster.procs.probe(p1, "tcp", LAN4.format(OUT), 9000) == n1.ip4
    assert cluster.procs.probe(p1, "tcp", LAN6.format(OUT), 9000) == n1.ip6
    # a second run changes nothing
    again = n1.cni_bridge("routes", "--peers", str(peers))
    assert again.returncode == 0 and "0 change(s), 2 route(s) already in place" in again.stdout


def test_a_removed_peer_loses_its_route_and_others_routes_stay(cluster: Cluster) -> None:
    n1, n2 = cluster.node(), cluster.node()
    # somebody else's routes: a static one and one a daemon tagged with its own protocol
    n1.host.exec("ip", "route", "add", "10.250.0.0/16", "via", LAN4.format(OUT), "proto", "static")
    n1.host.exec("ip", "-6", "route", "add", "fd00:250::/64", "via", LAN6.format(OUT), "proto", "bird")
    ghost = f"{LAN4.format(13)} 10.244.3.0/24\n{LAN6.format(13)} fd00:10:244:3::/64\n"
    res = n1.cni_bridge("routes", "--peers", str(cluster.peers_file([n1, n2], ghost)))
    assert res.returncode == 0, res.stderr
    assert ours(n1, "-4") == {"10.244.2.0/24": n2.ip4, "10.244.3.0/24": LAN4.format(13)}
    assert ours(n1, "-6") == {"fd00:10:244:2::/64": n2.ip6, "fd00:10:244:3::/64": LAN6.format(13)}
    # node 3 leaves the list: its routes are withdrawn, node 2's and the others' stay
    res = n1.cni_bridge("routes", "--peers", str(cluster.peers_file([n1, n2])))
    assert res.returncode == 0, res.stderr
    assert "route delete 10.244.3.0/24" in res.stdout
    assert ours(n1, "-4") == {"10.244.2.0/24": n2.ip4}
    assert ours(n1, "-6") == {"fd00:10:244:2::/64": n2.ip6}
    dsts4 = {r["dst"] for r in n1.routes("-4")}
    dsts6 = {r["dst"] for r in n1.routes("-6")}
    assert "10.250.0.0/16" in dsts4 and "fd00:250::/64" in dsts6
    # an empty list withdraws all of ours, nothing else
    res = n1.cni_bridge("routes", "--peers", str(cluster.peers_file([])))
    assert res.returncode == 0, res.stderr
    assert ours(n1, "-4") == {} and ours(n1, "-6") == {}
    assert "10.250.0.0/16" in {r["dst"] for r in n1.routes("-4")}


def test_unroutable_peers_and_bad_files_are_clear_errors(cluster: Cluster) -> None:
    n1, n2 = cluster.node(), cluster.node()
    far = "10.9.9.9 10.244.9.0/24\n"
    res = n1.cni_bridge("routes", "--peers", str(cluster.peers_file([n1, n2], far)))
    assert res.returncode == 1
    assert "peer 10.9.9.9 (line 5) is not on a directly connected subnet" in res.stderr
    assert "Traceback" not in res.stderr
    assert ours(n1, "-4") == {"10.244.2.0/24": n2.ip4}  # the rest is still applied
    bad = cluster.tmp / "bad"
    bad.write_text("192.168.77.12 10.244.2.0/33\n")
    res = n1.cni_bridge("routes", "--peers", str(bad))
    assert res.returncode == 2 and "line 1" in res.stderr and "Traceback" not in res.stderr
    res = n1.cni_bridge("routes", "--peers", str(cluster.tmp / "missing"))
    assert res.returncode == 2 and "cannot read" in res.stderr
    assert ours(n1, "-4") == {"10.244.2.0/24": n2.ip4}  # an unreadable list changes nothing
