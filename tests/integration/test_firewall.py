"""The nftables layer with real packets: a "host" namespace with two bridges (netA with
containers c1 and c2, netB with c3) and an "outside" namespace behind a veth. The
firewall code runs inside the host namespace, in a child process (nsenter, see tests/lab).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import ip_address, ip_network
from pathlib import Path
from typing import Any

import pytest

from cni_bridge.firewall.model import AttachmentFw, NetworkFw, PortMapping
from tests.firewall_json import attachment_to_dict, fw_net, network_to_dict, port_map
from tests.lab import Lab, Netns, nft

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
]

PREFIX = "cbC"
REPO = str(Path(__file__).resolve().parents[2])
HOST4, OUT4, HOST6, OUT6 = "192.0.2.1", "192.0.2.2", "2001:db8::1", "2001:db8::2"
NET_A = fw_net("netA", "cbbrA", [ip_network("10.88.1.0/24"), ip_network("fd88:1::/64")], True)
NET_B = fw_net("netB", "cbbrB", [ip_network("10.88.2.0/24"), ip_network("fd88:2::/64")], True)
# container -> (network, bridge index, IPv4, IPv6)
CONTAINERS = {
    "c1": (NET_A, "10.88.1.2", "fd88:1::2"),
    "c2": (NET_A, "10.88.1.3", "fd88:1::3"),
    "c3": (NET_B, "10.88.2.2", "fd88:2::2"),
}

_DRIVER = r"""
import json, sys
from cni_bridge.errors import CNIError
from cni_bridge.firewall.nft import Firewall
from tests.firewall_json import attachment_from_dict, network_from_dict
req = json.load(sys.stdin)
fw = Firewall()
net = network_from_dict(req["net"]) if "net" in req else None
att = attachment_from_dict(req["att"]) if "att" in req else None
op = req["op"]
try:
    if op == "add":
        res = fw.add_attachment(net, att)
    elif op == "del":
        res = fw.del_attachment(net, att, req["last"])
    elif op == "check":
        res = fw.check_attachment(net, att)
    elif op == "gc":
        res = fw.gc(net, set(req["keep"]))
    elif op == "tags":
        res = sorted(fw.owned_tags(net))
    elif op == "foreign":
        res = [str(c) for c in fw.foreign_forward_drop()]
    elif op == "status":
        res = fw.status()
    print(json.dumps({"ok": res}))
except CNIError as e:
    print(json.dumps({"error": {"code": e.code, "msg": e.msg, "details": e.details}}))
"""


class FwError(Exception):
    def __init__(self, code: int, msg: str) -> None:
        super().__init__(f"{code}: {msg}")
        self.code = code
        self.msg = msg


def attachment(tag: str, container: str, *mappings: PortMapping) -> AttachmentFw:
    net, ip4, ip6 = CONTAINERS[container]
    return AttachmentFw(
        tag, f"{net.name}/{container}/eth0", [ip_address(ip4), ip_address(ip6)], tuple(mappings)
    )


@dataclass
class Topo:
    lab: Lab
    host: Netns
    out: Netns
    ns: dict[str, Netns]  # container -> namespace

    def fw(
        self, op: str, net: NetworkFw | None = None, att: AttachmentFw | None = None, **kw: Any
    ) -> Any:
        req: dict[str, Any] = {"op": op, **kw}
        if net is not None:
            req["net"] = network_to_dict(net)
        if att is not None:
            req["att"] = attachment_to_dict(att)
        out = self.lab.python(self.host, _DRIVER, json.dumps(req), pythonpath=REPO)
        res = json.loads(out)
        if "error" in res:
            raise FwError(res["error"]["code"], res["error"]["msg"])
        return res["ok"]

    def add(self, att: AttachmentFw) -> None:
        self.fw("add", CONTAINERS[att.owner.split("/")[1]][0], att)

    def delete(self, att: AttachmentFw, last: bool) -> None:
        self.fw("del", CONTAINERS[att.owner.split("/")[1]][0], att, last=last)

    def reach(self, src: str, proto: str, host: str, port: int, src_port: int = 0) -> str | None:
        ns = {"host": self.host, "out": self.out}.get(src) or self.ns[src]
        return self.lab.probe(ns, proto, host, port, src_port)


def build(lab: Lab, br_netfilter: bool = True) -> Topo:
    host, out = lab.netns("h", dad=False), lab.netns("o", dad=False)
    host.sysctl("net.ipv4.ip_forward", 1)
    host.sysctl("net.ipv6.conf.all.forwarding", 1)
    if os.path.exists("/proc/sys/net/bridge"):
        host.sysctl("net.bridge.bridge-nf-call-iptables", int(br_netfilter))
        host.sysctl("net.bridge.bridge-nf-call-ip6tables", int(br_netfilter))
    lines = []
    for i, net in enumerate((NET_A, NET_B), start=1):
        lines += [
            f"link add {net.bridge} type bridge",
            f"addr add 10.88.{i}.1/24 dev {net.bridge}",
            f"addr add fd88:{i}::1/64 dev {net.bridge} nodad",
            f"link set {net.bridge} up",
        ]
    host.ip_batch(lines)
    lab.veth(host, "up0", out, "eth0")
    host.ip_batch([f"addr add {HOST4}/24 dev up0", f"addr add {HOST6}/64 dev up0 nodad"])
    out.ip_batch([f"addr add {OUT4}/24 dev eth0", f"addr add {OUT6}/64 dev eth0 nodad"])
    ns = {}
    for name, (net, ip4, ip6) in CONTAINERS.items():
        c = ns[name] = lab.netns(name, dad=False)
        veth = f"v{name}"
        lab.veth(host, veth, c, "eth0")
        host.ip_batch(
            [
                f"link set {veth} master {net.bridge}",
                f"link set {veth} type bridge_slave hairpin on",
            ],
        )
        gw4 = ip4.rsplit(".", 1)[0] + ".1"
        gw6 = ip6.rsplit(":", 1)[0] + ":1"
        c.ip_batch(
            [
                f"addr add {ip4}/24 dev eth0",
                f"addr add {ip6}/64 dev eth0 nodad",
                f"route add default via {gw4}",
                f"route add default via {gw6}",
            ],
        )
    for net in (NET_A, NET_B):  # what the lead's net layer does for localhost access
        host.sysctl(f"net.ipv4.conf.{net.bridge}.route_localnet", 1)
    return Topo(lab, host, out, ns)


@pytest.fixture
def topo() -> Iterator[Topo]:
    with Lab(PREFIX) as lab:
        yield build(lab)


@pytest.fixture(params=[True, False], ids=["br_netfilter", "no_br_netfilter"])
def topo_bnf(request: pytest.FixtureRequest) -> Iterator[Topo]:
    with Lab(PREFIX) as lab:
        yield build(lab, br_netfilter=request.param)


def our_comments(t: Topo, needle: str) -> list[str]:
    return [c for c in nft.comments(t.host) if needle in c.split()]


# ------------------------------------------------------------------------ tests


def test_status_and_fresh_table(topo: Topo) -> None:
    assert topo.fw("status") is None
    assert topo.fw("foreign") == []
    topo.add(attachment("t1", "c1"))
    tables = [o["table"]["name"] for o in nft.ruleset(topo.host) if "table" in o]
    assert tables == ["cni_bridge"]
    assert topo.fw("check", NET_A, attachment("t1", "c1")) == []


def test_published_port_reachable_every_way(topo_bnf: Topo) -> None:
    t = topo_bnf
    t.lab.server(t.ns["c1"], "tcp", 80)
    t.lab.server(t.ns["c1"], "udp", 53)
    t.lab.server(t.ns["c3"], "tcp", 80)
    assert t.reach("out", "tcp", HOST4, 8080) is None  # nothing published yet
    t.add(attachment("t1", "c1", port_map(8080, 80), port_map(5353, 53, "udp")))
    t.add(attachment("t3", "c3", port_map(8081, 80)))

    # 1. from outside, to every host address, the client's own address preserved
    assert t.reach("out", "tcp", HOST4, 8080) == OUT4
    assert t.reach("out", "tcp", HOST6, 8080) == OUT6
    assert t.reach("out", "udp", HOST4, 5353) == OUT4
    assert t.reach("out", "udp", HOST6, 5353) == OUT6
    # 2. from the host itself: loopback and its own addresses
    assert t.reach("host", "tcp", "127.0.0.1", 8080) is not None
    assert t.reach("host", "tcp", HOST4, 8080) is not None
    assert t.reach("host", "tcp", "10.88.2.1", 8080) is not None
    assert t.reach("host", "tcp", HOST6, 8080) is not None
    assert t.reach("host", "udp", "127.0.0.1", 5353) is not None
    # 3. from containers of the same bridge, its own port included (hairpin)
    assert t.reach("c2", "tcp", HOST4, 8080) is not None
    assert t.reach("c1", "tcp", HOST4, 8080) is not None
    assert t.reach("c1", "tcp", "10.88.1.1", 8080) is not None
    assert t.reach("c1", "tcp", HOST6, 8080) is not None
    assert t.reach("c2", "udp", HOST4, 5353) is not None
    # ... and from another bridge: published ports stay reachable despite isolation
    assert t.reach("c3", "tcp", HOST4, 8080) is not None
    assert t.reach("c1", "tcp", HOST4, 8081) is not None
    # unpublished ports are not forwarded
    assert t.reach("out", "tcp", HOST4, 8082) is None


def test_masquerade_only_leaving_the_network(topo_bnf: Topo) -> None:
    t = topo_bnf
    t.lab.server(t.out, "tcp", 9000)
    t.lab.server(t.ns["c2"], "tcp", 80)
    assert t.reach("c1", "tcp", OUT4, 9000) is None  # the outside has no route back
    t.add(attachment("t1", "c1"))
    assert t.reach("c1", "tcp", OUT4, 9000) == HOST4
    assert t.reach("c1", "tcp", OUT6, 9000) == HOST6
    # within the network: no masquerade
    assert t.reach("c1", "tcp", "10.88.1.3", 80) == "10.88.1.2"
    assert t.reach("c1", "tcp", "fd88:1::3", 80) == "fd88:1::2"


def test_no_masquerade_without_ip_masq(topo: Topo) -> None:
    t = topo
    t.lab.server(t.out, "tcp", 9000)
    plain = fw_net(NET_A.name, NET_A.bridge, NET_A.subnets, ip_masq=False)
    t.fw("add", plain, attachment("t1", "c1"))
    assert t.reach("c1", "tcp", OUT4, 9000) is None
    t.out.ip_batch(["route add 10.88.1.0/24 via " + HOST4])
    assert t.reach("c1", "tcp", OUT4, 9000) == "10.88.1.2"


def test_non_masquerade_cidrs_keep_the_source_address(topo: Topo) -> None:
    t = topo
    t.lab.server(t.out, "tcp", 9000)
    t.out.ip_batch(["route add 10.88.1.0/24 via " + HOST4])
    # the outside's IPv4 subnet stands for "the cluster": the container's address is kept
    # there; IPv6 traffic still leaves masqueraded
    kept = fw_net(NET_A.name, NET_A.bridge, NET_A.subnets, True, non_masq=[ip_network("192.0.2.0/24")])
    t.fw("add", kept, attachment("t1", "c1"))
    assert t.reach("c1", "tcp", OUT4, 9000) == "10.88.1.2"
    assert t.reach("c1", "tcp", OUT6, 9000) == HOST6
    t.fw("del", kept, attachment("t1", "c1"), last=True)
    assert [e for o in nft.ruleset(t.host) if "set" in o and o["set"]["name"].startswith("nomasq")
            for e in o["set"].get("elem", [])] == []


def test_isolation_between_bridges(topo_bnf: Topo) -> None:
    t = topo_bnf
    t.lab.server(t.ns["c3"], "tcp", 80)
    t.lab.server(t.ns["c1"], "tcp", 80)
    assert t.reach("c1", "tcp", "10.88.2.2", 80) == "10.88.1.2"  # open before ADD
    t.add(attachment("t1", "c1", port_map(8080, 80)))
    t.add(attachment("t3", "c3", port_map(8081, 80)))
    assert t.reach("c1", "tcp", "10.88.2.2", 80) is None
    assert t.reach("c3", "tcp", "10.88.1.2", 80) is None
    assert t.reach("c1", "tcp", "fd88:2::2", 80) is None
    assert nft.counter(t.host, "cni_bridge", "forward", "v1 isolation: from") > 0
    # the published port of the other network, through a host address
    assert t.reach("c1", "tcp", HOST4, 8081) is not None
    assert t.reach("c1", "tcp", "10.88.1.1", 8081) is not None
    # a non-isolated network talks to other non-isolated ones
    t.fw("del", NET_B, attachment("t3", "c3"), last=True)
    t.fw("del", NET_A, attachment("t1", "c1"), last=True)
    open_a = fw_net(NET_A.name, NET_A.bridge, NET_A.subnets, True, isolate=False)
    open_b = fw_net(NET_B.name, NET_B.bridge, NET_B.subnets, True, isolate=False)
    t.fw("add", open_a, attachment("t1", "c1"))
    t.fw("add", open_b, attachment("t3", "c3"))
    assert t.reach("c1", "tcp", "10.88.2.2", 80) is not None


def test_port_conflicts(topo: Topo) -> None:
    t = topo
    t.add(attachment("t1", "c1", port_map(8080, 80)))
    for pm in (port_map(8080, 80), port_map(8080, 81, host_ip=ip_address(HOST4))):
        with pytest.raises(FwError) as exc:
            t.add(attachment("t2", "c2", pm))
        assert exc.value.code == 100
        assert "tcp/8080" in exc.value.msg and "netA/c1/eth0" in exc.value.msg
    # a conflict from another network, and specific host address against any
    t.add(attachment("t3", "c3", port_map(9000, 80, host_ip=ip_address(HOST4))))
    with pytest.raises(FwError, match="netB/c3/eth0"):
        t.add(attachment("t2", "c2", port_map(9000, 80)))
    # different protocol, different host address: fine; the failed ADDs left nothing
    t.add(
        attachment(
            "t2",
            "c2",
            port_map(8080, 80, "udp"),
            port_map(9000, 80, host_ip=ip_address("10.88.1.1")),
        )
    )
    assert sorted(t.fw("tags", NET_A)) == ["t1", "t2"]
    t.add(attachment("t1", "c1", port_map(8080, 80)))  # the same again: fine
    assert sorted(t.fw("tags", NET_A)) == ["t1", "t2"]


def test_foreign_inet_forward_drop(topo: Topo) -> None:
    t = topo
    t.host.exec(
        "nft",
        "add table inet admin; add chain inet admin filter_fwd { type filter hook forward priority 0; policy drop; }; add rule inet admin filter_fwd tcp dport 22 accept",
    )
    t.lab.server(t.ns["c1"], "tcp", 80)
    t.lab.server(t.out, "tcp", 9000)
    assert t.fw("foreign") == ["inet admin filter_fwd"]
    t.add(attachment("t1", "c1", port_map(8080, 80)))
    t.add(attachment("t2", "c2"))
    assert t.reach("out", "tcp", HOST4, 8080) == OUT4
    assert t.reach("c1", "tcp", OUT4, 9000) == HOST4
    # the admin's policy still holds for traffic that is neither a reply nor published
    t.out.ip_batch(["route add 10.88.1.0/24 via " + HOST4])
    assert t.reach("out", "tcp", "10.88.1.2", 80) is None
    admin = [c for c in nft.comments(t.host) if c.startswith("cni-bridge:")]
    assert admin == ["cni-bridge:netA", "cni-bridge:netA"]  # once per network
    assert t.fw("check", NET_A, attachment("t1", "c1", port_map(8080, 80))) == []
    t.delete(attachment("t1", "c1"), last=False)
    assert [c for c in nft.comments(t.host) if c.startswith("cni-bridge:")] == admin
    t.delete(attachment("t2", "c2"), last=True)
    assert not [c for c in nft.comments(t.host) if c.startswith("cni-bridge:")]
    chains = [
        o["chain"]["name"]
        for o in nft.ruleset(t.host)
        if "chain" in o and o["chain"]["table"] == "admin"
    ]
    assert chains == ["filter_fwd"]


def test_iptables_nft_forward_drop_stays_readable(topo: Topo) -> None:
    t = topo
    t.host.exec("iptables-nft", "-P", "FORWARD", "DROP")
    t.host.exec("ip6tables-nft", "-P", "FORWARD", "DROP")
    t.lab.server(t.ns["c1"], "tcp", 80)
    t.add(attachment("t1", "c1", port_map(8080, 80)))
    assert t.reach("out", "tcp", HOST4, 8080) == OUT4
    assert t.reach("out", "tcp", HOST6, 8080) == OUT6
    rules = t.host.exec("iptables-nft", "-S", "FORWARD").stdout
    ours = [line.replace('"', "") for line in rules.splitlines() if "cni-bridge:netA" in line]
    assert sorted(ours) == [
        "-A FORWARD -i cbbrA -m comment --comment cni-bridge:netA -j ACCEPT",
        "-A FORWARD -o cbbrA -m comment --comment cni-bridge:netA -j ACCEPT",
    ]
    t.delete(attachment("t1", "c1"), last=True)
    assert "cni-bridge" not in t.host.exec("iptables-nft", "-S", "FORWARD").stdout
    assert "cni-bridge" not in t.host.exec("ip6tables-nft", "-S", "FORWARD").stdout


def test_guard_drops_loopback_from_off_host(topo: Topo) -> None:
    t = topo
    t.lab.server(t.host, "tcp", 7000, host="127.0.0.1")
    t.lab.server(t.ns["c1"], "tcp", 80)
    # make the hole reachable: the uplink accepts 127/8 and both senders route it to the host
    t.host.sysctl("net.ipv4.conf.up0.route_localnet", 1)
    for ns, gw, dev in ((t.out, HOST4, "eth0"), (t.ns["c1"], "10.88.1.1", "eth0")):
        ns.sysctl(f"net.ipv4.conf.{dev}.route_localnet", 1)
        ns.ip_batch(
            [
                f"route add 127.0.0.1/32 via {gw} dev {dev} table 100",
                "rule add to 127.0.0.1 lookup 100 pref 10",
                "rule del pref 0",
                "rule add lookup local pref 100",
            ],
        )
    assert t.reach("out", "tcp", "127.0.0.1", 7000) is not None  # the CVE-2020-8558 hole
    assert t.reach("c1", "tcp", "127.0.0.1", 7000) is not None
    t.add(attachment("t1", "c1", port_map(8080, 80)))
    assert t.reach("out", "tcp", "127.0.0.1", 7000) is None
    assert t.reach("c1", "tcp", "127.0.0.1", 7000) is None
    assert nft.counter(t.host, "cni_bridge", "guard", "v1 guard") > 0
    # localhost access to a published port still works
    assert t.reach("host", "tcp", "127.0.0.1", 8080) is not None


def test_udp_mapping_flushes_stale_conntrack(topo: Topo) -> None:
    t = topo
    t.lab.server(t.ns["c1"], "udp", 53)
    t.add(attachment("t2", "c2"))  # conntrack runs in a namespace once a rule needs it
    assert t.reach("out", "udp", HOST4, 5454, src_port=40000) is None
    entries = t.host.exec("conntrack", "-L", "-p", "udp", "--dport", "5454").stdout
    assert "sport=40000" in entries
    t.add(attachment("t1", "c1", port_map(5454, 53, "udp")))
    entries = t.host.exec("conntrack", "-L", "-p", "udp", "--dport", "5454").stdout
    assert "sport=40000" not in entries
    assert t.reach("out", "udp", HOST4, 5454, src_port=40000) == OUT4


def test_port_range(topo: Topo) -> None:
    t = topo
    t.lab.server(t.ns["c1"], "tcp", 80)
    t.lab.server(t.ns["c1"], "tcp", 82)
    t.add(attachment("t1", "c1", port_map(8000, 80, host_port_end=8002)))
    assert t.reach("out", "tcp", HOST4, 8000) == OUT4
    assert t.reach("out", "tcp", HOST4, 8002) == OUT4
    assert t.reach("out", "tcp", HOST4, 8003) is None


def test_host_ip_mappings_answer_on_that_address_only(topo: Topo) -> None:
    t = topo
    t.lab.server(t.ns["c1"], "tcp", 80)
    t.add(
        attachment(
            "t1",
            "c1",
            port_map(8080, 80, host_ip=ip_address(HOST4)),
            port_map(8080, 80, host_ip=ip_address(HOST6)),
            port_map(8081, 80, host_ip=ip_address("0.0.0.0")),  # every IPv4 address
        )
    )
    assert t.reach("out", "tcp", HOST4, 8080) == OUT4
    assert t.reach("out", "tcp", HOST6, 8080) == OUT6
    assert t.reach("host", "tcp", "10.88.1.1", 8080) is None
    assert t.reach("c2", "tcp", "10.88.2.1", 8080) is None
    assert t.reach("host", "tcp", "10.88.2.1", 8081) is not None
    assert t.reach("out", "tcp", HOST6, 8081) is None


def test_del_removes_exactly_the_attachment(topo: Topo) -> None:
    t = topo
    t.lab.server(t.ns["c1"], "tcp", 80)
    t.lab.server(t.ns["c2"], "tcp", 80)
    first = attachment("t1", "c1", port_map(8080, 80))
    t.add(first)
    t.add(attachment("t2", "c2", port_map(9090, 80)))
    t.delete(first, last=False)
    assert our_comments(t, "t1") == []
    assert len(our_comments(t, "t2")) == 6  # (addr, port, claim) x (IPv4, IPv6)
    assert t.reach("out", "tcp", HOST4, 8080) is None
    assert t.reach("out", "tcp", HOST4, 9090) == OUT4
    # the same IP and port later belong to another attachment: a late DEL of the first
    # spares them
    again = AttachmentFw("t9", "netA/c1/eth0", first.ips, first.port_mappings)
    t.fw("add", NET_A, again)
    t.delete(first, last=False)
    assert len(our_comments(t, "t9")) == 6
    assert t.reach("out", "tcp", HOST4, 8080) == OUT4
    t.fw("del", NET_A, again, last=False)
    assert our_comments(t, "t9") == []
    # hostIP-specific mappings share a port marker, dropped with the last of them
    on_a = attachment("t5", "c1", port_map(7070, 80, host_ip=ip_address(HOST4)))
    on_b = attachment("t6", "c2", port_map(7070, 80, host_ip=ip_address("10.88.1.1")))
    t.add(on_a)
    t.add(on_b)
    assert t.reach("out", "tcp", HOST4, 7070) == OUT4
    t.delete(on_a, last=False)
    assert "* published on specific host addresses" in nft.comments(t.host)
    assert t.reach("c1", "tcp", "10.88.1.1", 7070) is not None
    t.delete(on_b, last=False)
    assert "* published on specific host addresses" not in nft.comments(t.host)
    t.delete(attachment("t2", "c2"), last=True)
    assert our_comments(t, "netA") == []
    assert not [c for c in nft.comments(t.host) if c.startswith("netA")]
    t.delete(attachment("t2", "c2"), last=True)  # DEL twice: fine
    assert t.fw("check", NET_A, attachment("t2", "c2")) != []


def test_gc_and_check(topo: Topo) -> None:
    t = topo
    keep, stale = (
        attachment("t2", "c2", port_map(9090, 80)),
        attachment("t1", "c1", port_map(8080, 80)),
    )
    t.add(stale)
    t.add(keep)
    assert t.fw("check", NET_A, keep) == []
    assert t.fw("gc", NET_A, keep=["t2"]) == []
    assert t.fw("tags", NET_A) == ["t2"]
    assert any("tcp/8080" in m for m in t.fw("check", NET_A, stale))
    t.host.exec("nft", "flush map inet cni_bridge pub4_port")
    assert any("tcp/9090" in m for m in t.fw("check", NET_A, keep))
    assert t.fw("gc", NET_A, keep=[]) == []
    assert not [c for c in nft.comments(t.host) if c.startswith("netA")]
