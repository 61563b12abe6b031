"""ipspoofchk's rendering (firewall/ipspoof.py) and its wiring into the verbs (with fakes)."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest

from cni_bridge.firewall import ipspoof
from cni_bridge.firewall.model import Element
from tests.unit.golden_util import assert_golden

PORT = "vcb0123456789ab"
V4 = ipaddress.ip_address("10.50.0.2")
V6 = ipaddress.ip_address("fd00:50::2")
LL = ipaddress.ip_address("fe80::858:aff:fe32:2")


def test_link_local_is_the_kernels_eui64() -> None:
    # 0a:58:0a:32:00:02 -> universal/local bit flipped, ff:fe in the middle
    assert ipspoof.link_local("0a:58:0a:32:00:02") == LL
    with pytest.raises(ValueError):
        ipspoof.link_local("0a:58")


def test_own_addresses_add_the_link_local_only_where_ipv6_is_on() -> None:
    mac = "0a:58:0a:32:00:02"
    assert ipspoof.own_addresses([V4], mac, False) == [V4]
    assert ipspoof.own_addresses([V4], mac, True) == [V4, LL]  # ipv6LinkLocal
    assert ipspoof.own_addresses([V4, V6], mac, False) == [V4, V6, LL]
    assert ipspoof.own_addresses([V4, V6], "", False) == [V4, V6]  # MAC unknown


def test_layout_is_one_chain_of_static_rules() -> None:
    text = ipspoof.layout()
    assert text.count("add rule ") == 8 and f"flush chain bridge cni_bridge {ipspoof.CHAIN}" in text
    rules = [line for line in text.splitlines() if line.startswith("add rule")]
    assert all(f"iifname @{ipspoof.PORTS} " in r and ipspoof.COMMENT in r for r in rules)
    # nothing per port in the rules: ports are only elements
    assert PORT not in text
    assert "typeof iifname . @th,64,128" in text


def test_add_renders_tagged_elements_ports_last() -> None:
    cmds = ipspoof.add(PORT, [V4, V6, LL], "net1 abcdef012345 net1/c1/eth0")
    assert_golden("firewall/ipspoof_add.json", cmds)
    assert cmds[-1]["add"]["element"]["name"] == ipspoof.PORTS
    v6 = next(c for c in cmds if c["add"]["element"]["name"] == ipspoof.TARGETS6)
    assert v6["add"]["element"]["elem"][0]["elem"]["val"] == {
        "concat": [PORT, "0xfd000050000000000000000000000002"]
    }


def test_delete_is_delete_if_present() -> None:
    cmds = ipspoof.delete(PORT, [V4])
    assert [next(iter(c)) for c in cmds] == ["add", "delete", "add", "delete"]
    assert_golden("firewall/ipspoof_delete.json", cmds)


def _listed(network: str, tag: str, port: str, addrs: list[ipaddress.IPv4Address | ipaddress.IPv6Address]) -> dict[str, list[Element]]:
    comment = f"{network} {tag} {network}/c/eth0"
    return {
        name: [Element(k, None, comment) for k in ks]
        for name, ks in ipspoof.keys(port, addrs).items()
    }


def _merge(*views: dict[str, list[Element]]) -> dict[str, list[Element]]:
    out: dict[str, list[Element]] = {}
    for v in views:
        for name, els in v.items():
            out.setdefault(name, []).extend(els)
    return out


def test_gc_takes_the_networks_elements_whose_tag_is_not_kept() -> None:
    sets = _merge(
        _listed("net1", "aaaaaaaaaaaa", "vcbaaaaaaaaaaaa", [V4, V6]),
        _listed("net1", "bbbbbbbbbbbb", "vcbbbbbbbbbbbbb", [ipaddress.ip_address("10.50.0.3")]),
        _listed("net2", "cccccccccccc", "vcbcccccccccccc", [ipaddress.ip_address("10.60.0.3")]),
    )
    stale = ipspoof.stale(sets, "net1", {"bbbbbbbbbbbb"})
    assert {e.tag for els in stale.values() for e in els} == {"aaaaaaaaaaaa"}
    assert sum(len(v) for v in stale.values()) == 4  # ip4, ip6, nd6, port
    cmds = ipspoof.delete_elements(stale)
    assert all("delete" in c for c in cmds) and len(cmds) == 4
    # with nothing kept, every element of the network, never another network's
    gone = ipspoof.stale(sets, "net1", set())
    assert {e.tag for els in gone.values() for e in els} == {"aaaaaaaaaaaa", "bbbbbbbbbbbb"}


def test_of_port_finds_a_ports_elements_whatever_their_addresses() -> None:
    sets = _merge(
        _listed("net1", "aaaaaaaaaaaa", "vcbaaaaaaaaaaaa", [V4, V6]),
        _listed("net1", "bbbbbbbbbbbb", "vcbbbbbbbbbbbbb", [V4]),
    )
    found = ipspoof.of_port(sets, "vcbaaaaaaaaaaaa")
    assert sum(len(v) for v in found.values()) == 4


def test_check_looks_up_each_element_by_key() -> None:
    found = ipspoof.lookups(PORT, [V4, V6])
    assert [cmd for _, cmd in found] == [
        f'get element bridge cni_bridge ipspoof_ip4 {{ "{PORT}" . 10.50.0.2 }}',
        f'get element bridge cni_bridge ipspoof_ip6 {{ "{PORT}" . fd00:50::2 }}',
        f'get element bridge cni_bridge ipspoof_nd6 {{ "{PORT}" . 0xfd000050000000000000000000000002 }}',
        f'get element bridge cni_bridge ipspoof_ports {{ "{PORT}" }}',
    ]
    assert found[2][0] == f"ipspoofchk element {PORT} . fd00:50::2 is missing from set ipspoof_nd6"


# ---------------------------------------------------------------- sync (converge/planner.py)


def _desired(tmp: Path) -> Any:
    from cni_bridge.converge import desired as desired_mod
    from cni_bridge.state import PHASE_READY, Attachment, StateStore

    conf = {
        "cniVersion": "1.0.0", "name": "netA", "type": "cni-bridge", "bridge": "cni0",
        "isGateway": True, "ipspoofchk": True,
        "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.88.0.0/24"}], [{"subnet": "fd00:88::/64"}]],
                 "dataDir": str(tmp)},
    }  # fmt: skip
    store = StateStore(str(tmp / "netA"))
    store.save_network(conf)
    att = Attachment.new("netA", "c1", "eth0", "/run/netns/x")
    att.phase, att.ips, att.mac = PHASE_READY, ["10.88.0.2/24", "fd00:88::2/64"], "0a:58:0a:58:00:02"
    store.put(att)
    return desired_mod.load([str(tmp)])


def test_sync_plans_the_guard_of_each_unguarded_port(tmp_path: Path) -> None:
    from cni_bridge.converge.observe import Observed
    from cni_bridge.converge.planner import IPSPOOF, plan
    from cni_bridge.firewall.model import FirewallView, TableView
    from cni_bridge.net.ops import HostLink

    want = _desired(tmp_path)
    veth = want.networks[0].members[0].record.host_veth
    links: dict[str, HostLink | None] = {
        "cni0": HostLink("cni0", 4, "0a:00:00:00:00:01", 1500, "bridge", None, True, True, False, None),
        veth: HostLink(veth, 5, "0a:00:00:00:00:02", 1500, "veth", 4, True, True, False, 2,
                       peer_netnsid=0),
    }  # fmt: skip
    own = [ipaddress.ip_address("10.88.0.2"), ipaddress.ip_address("fd00:88::2"),
           ipspoof.link_local("0a:58:0a:58:00:02")]  # fmt: skip

    def steps(seen: dict[str, list[Element]] | None) -> list[Any]:
        view = FirewallView(TableView(), [], None, seen)
        return [s for s in plan(want, Observed(view, links=links)).steps if s.kind == IPSPOOF]

    (step,) = steps(None)  # chain gone (a flush): the first repair rewrites it
    assert step.target == veth and list(step.args[2]) == own and step.args[3] is True
    assert step.what == "the ipspoofchk guard of netA/c1/eth0 is missing"
    whole = _listed("netA", "t", veth, own)
    assert steps(whole) == []
    partial = dict(whole)
    partial[ipspoof.TARGETS6] = partial[ipspoof.TARGETS6][:1]  # the link-local's ND target gone
    (step,) = steps(partial)
    assert step.args[3] is False  # the chain is whole: elements only
