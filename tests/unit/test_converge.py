"""The convergence planner and the foreign-chain placement, without root: views built by hand
and the fake libnftables of test_firewall_rules as the kernel."""

from __future__ import annotations

import json
from ipaddress import ip_interface
from pathlib import Path
from typing import Any

import pytest

from cni_bridge.config import load_netconf
from cni_bridge.converge import desired as desired_mod
from cni_bridge.converge.observe import IP_FORWARD, Observed, route_localnet
from cni_bridge.converge.planner import ADDRESS, BRIDGE, PORT, SYSCTL, plan
from cni_bridge.firewall import foreign, listing
from cni_bridge.firewall.model import FirewallView, ForeignChain, ForeignView, Rule
from cni_bridge.firewall.nft import Firewall
from cni_bridge.net.ops import HostLink
from cni_bridge.state import PHASE_READY, Attachment, StateStore
from tests.unit.test_firewall_rules import FakeNft

ACCEPT: dict[str, Any] = {"accept": None}
REJECT: dict[str, Any] = {"reject": {"type": "icmpx", "expr": "admin-prohibited"}}


def _rule(handle: int, *expr: dict[str, Any], comment: str = "") -> Rule:
    return Rule(handle, comment, list(expr))


def _match(key: str, value: str) -> dict[str, Any]:
    return {"match": {"op": "==", "left": {"meta": {"key": key}}, "right": value}}


FIREWALLD = [
    _rule(1, {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established"]}}, ACCEPT),
    _rule(2, {"jump": {"target": "filter_FORWARD_ZONES"}}),
    _rule(3, {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": "invalid"}}, {"drop": None}),
    _rule(4, {"log": {"prefix": "FWD_REJECT: "}}),
    _rule(5, REJECT),
]  # fmt: skip
DOCKER = [
    _rule(10, {"counter": {"packets": 0, "bytes": 0}}, {"jump": {"target": "DOCKER-USER"}}),
    _rule(11, {"counter": {"packets": 0, "bytes": 0}}, {"jump": {"target": "DOCKER-FORWARD"}}),
]


# ------------------------------------------------------------------ foreign chains


def test_a_final_reject_blocks_and_our_rules_go_before_it() -> None:
    assert foreign.blocks("accept", FIREWALLD)
    assert not foreign.blocks("accept", FIREWALLD[:3])  # a conditional drop is not a catch-all
    assert foreign.placement(FIREWALLD) == ("insert", 4)  # before the log that goes with it
    view = ForeignView(ForeignChain("inet", "firewalld", "filter_FORWARD", "accept"), FIREWALLD,
                       foreign.blocks("accept", FIREWALLD))  # fmt: skip
    cmds = foreign.repairs(view, "netA", "cni0")
    assert [next(iter(c)) for c in cmds] == ["insert", "insert"]
    assert all(c["insert"]["rule"]["handle"] == 4 for c in cmds)


def test_docker_user_decides_first() -> None:
    assert foreign.placement(DOCKER) == ("add", 10)
    assert foreign.placement([]) == ("add", None)  # policy drop alone: at the end
    old = [_rule(20, _match("oifname", "cni0"), ACCEPT, comment="cni-bridge:netA"), *DOCKER]
    assert foreign.misplaced(old, "netA")
    view = ForeignView(ForeignChain("ip", "filter", "FORWARD"), old, True)
    cmds = foreign.repairs(view, "netA", "cni0")
    assert cmds[0] == {"delete": {"rule": {"family": "ip", "table": "filter", "chain": "FORWARD", "handle": 20}}}
    assert [c["add"]["rule"]["handle"] for c in cmds[1:]] == [10, 10]
    placed = [*DOCKER[:1], _rule(21, _match("oifname", "cni0"), ACCEPT, comment="cni-bridge:netA"), *DOCKER[1:]]
    assert not foreign.misplaced(placed, "netA")
    assert foreign.repairs(ForeignView(view.chain, placed, True), "netA", "cni0") == []


def test_a_chain_that_stopped_blocking_keeps_only_what_delete_finds() -> None:
    rows = [{"rule": {"family": "ip", "table": "filter", "chain": "FORWARD", "handle": 7,
                      "comment": "cni-bridge:netA", "expr": [_match("iifname", "cni0"), ACCEPT]}}]  # fmt: skip
    view = listing.parse_foreign_rules(ForeignChain("ip", "filter", "FORWARD", "accept"), rows)
    assert not view.blocking
    assert foreign.repairs(view, "netA", "cni0") == []  # not added where not needed
    assert foreign.delete_rules(view, "netA")  # and removed with the network


# ------------------------------------------------------------------ the planner


def _records(tmp: Path, mac: str = "") -> desired_mod.Desired:
    conf = {
        "cniVersion": "1.0.0", "name": "netA", "type": "cni-bridge", "bridge": "cni0",
        "isGateway": True, "ipMasq": True, "macspoofchk": bool(mac),
        "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.88.0.0/24"}]], "dataDir": str(tmp)},
    }  # fmt: skip
    load_netconf(conf)
    store = StateStore(str(tmp / "netA"))
    store.save_network(conf)
    att = Attachment.new("netA", "c1", "eth0", "/run/netns/x")
    att.phase, att.ips, att.mac = PHASE_READY, ["10.88.0.2/24"], mac
    att.port_mappings = [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]
    att.result = {"ips": [{"address": "10.88.0.2/24", "gateway": "10.88.0.1"}]}
    store.put(att)
    (tmp / "netA" / ".cni-bridge" / "broken.json").write_text("[1, 2, 3]")
    return desired_mod.load([str(tmp)])


def _link(name: str, index: int, kind: str, master: int | None = None, up: bool = True) -> HostLink:
    return HostLink(name, index, "0a:00:00:00:00:01", 1500, kind, master, up, up, False, None,
                    peer_netnsid=0 if kind == "veth" else None)  # fmt: skip


def test_plan_from_nothing_then_nothing_to_do(tmp_path: Path) -> None:
    want = _records(tmp_path)
    assert len(want.networks) == 1 and len(want.networks[0].members) == 1
    assert any("broken.json" in u for u in want.unreadable)
    veth = want.networks[0].members[0].record.host_veth
    nft = FakeNft()
    fw = Firewall(nft)
    seen = Observed(fw.observe(), links={"cni0": None, veth: _link(veth, 5, "veth")})
    p = plan(want, seen)
    assert [s.kind for s in p.steps] == [BRIDGE, ADDRESS, PORT, SYSCTL, SYSCTL]
    assert {s.target for s in p.steps if s.kind == SYSCTL} == {IP_FORWARD, route_localnet("cni0")}
    assert "nftables table inet cni_bridge is missing" in p.drift
    fw.apply(p.firewall)
    # what the repairs made, as the host now holds it: nothing left to do
    ip = ip_interface("10.88.0.1/24")
    seen = Observed(
        fw.observe(),
        links={"cni0": _link("cni0", 4, "bridge"), veth: _link(veth, 5, "veth", master=4)},
        addrs={"cni0": [ip]},
        sysctls={IP_FORWARD: "1", route_localnet("cni0"): "1"},
    )
    again = plan(want, seen)
    assert again.empty and again.drift == [], again.drift
    published = [c for c in nft.comments() if c.startswith("netA ")]
    assert published and all(c.split()[1] == want.networks[0].members[0].record.tag for c in published)


def test_gone_containers_are_stale_not_recreated(tmp_path: Path) -> None:
    want = _records(tmp_path)
    veth = want.networks[0].members[0].record.host_veth
    seen = Observed(FirewallView(listing.parse_table([]), []), links={"cni0": None, veth: None})
    p = plan(want, seen)
    assert p.empty and p.drift == []
    assert p.stale and veth in p.stale[0]


def test_macspoofchk_guards_come_back(tmp_path: Path) -> None:
    want = _records(tmp_path, mac="0a:58:0a:58:00:02")
    veth = want.networks[0].members[0].record.host_veth
    nft = FakeNft()
    fw = Firewall(nft)
    links: dict[str, HostLink | None] = {
        "cni0": _link("cni0", 4, "bridge"), veth: _link(veth, 5, "veth", master=4)
    }
    p = plan(want, Observed(fw.observe(), links=links))
    assert [s.what for s in p.steps if s.kind == "macspoof"] == [
        "the macspoofchk guard of netA/c1/eth0 is missing"
    ]
    fw.add_macspoof(veth, "0a:58:0a:58:00:02")
    assert fw.observe().spoofchk == {(veth, "0a:58:0a:58:00:02")}
    assert not [s for s in plan(want, Observed(fw.observe(), links=links)).steps if s.kind == "macspoof"]
    assert json.loads(json.dumps(p.firewall))  # plain JSON, one transaction


def test_a_verbs_own_read_tells_drift() -> None:
    from ipaddress import ip_network

    from cni_bridge.firewall import layout, rules
    from tests.firewall_json import fw_net

    net = fw_net("netA", "cni0", [ip_network("10.88.0.0/24")], True)
    nft = FakeNft()
    fw = Firewall(nft)
    assert rules.drifted(net, *fw.read())  # no table at all
    fw.apply(layout.layout_repairs(fw.read()[0]) + rules.network_repairs(net, fw.read()[0], False))
    assert not rules.drifted(net, *fw.read())
    chain = ForeignChain("ip", "filter", "FORWARD")
    nft.add_foreign_drop_chain(chain)  # a drop policy, and the network has no rules in it
    assert rules.drifted(net, *fw.read())
    other = fw_net("netB", "cni1", [ip_network("10.89.0.0/24")], True)
    assert not rules.drifted(other, *fw.read())  # a network's first ADD: not drift


# ------------------------------------------------------------------ the agent's watch


def _nl(kind: int, body: bytes) -> bytes:
    import struct

    msg = struct.pack("=IHHII", 16 + len(body), kind, 0, 0, 0) + body
    return msg + b"\0" * (-len(msg) % 4)


def test_ruleset_events_name_their_generation_and_committer() -> None:
    import struct

    from cni_bridge.converge import nfgen

    def attr(kind: int, data: bytes) -> bytes:
        a = struct.pack("=HH", 4 + len(data), kind) + data
        return a + b"\0" * (-len(a) % 4)

    newgen = (nfgen.NFNL_SUBSYS_NFTABLES << 8) | nfgen.NFT_MSG_NEWGEN
    body = struct.pack("=BBH", 0, 0, 0) + attr(1, struct.pack(">I", 42))
    body += attr(2, struct.pack(">I", 4242)) + attr(3, b"iptables-nft\0")
    newtable = (nfgen.NFNL_SUBSYS_NFTABLES << 8) | 0
    gens, count = nfgen.parse(_nl(newtable, b"\0" * 8) + _nl(newgen, body))
    assert count == 2
    assert gens == [nfgen.Generation(42, 4242, "iptables-nft")]


def _newgen(gen: int, pid: int, name: str) -> bytes:
    import struct

    from cni_bridge.converge import nfgen

    def attr(kind: int, data: bytes) -> bytes:
        a = struct.pack("=HH", 4 + len(data), kind) + data
        return a + b"\0" * (-len(a) % 4)

    body = struct.pack("=BBH", 0, 0, 0) + attr(1, struct.pack(">I", gen))
    body += attr(2, struct.pack(">I", pid)) + attr(3, name.encode() + b"\0")
    return _nl((nfgen.NFNL_SUBSYS_NFTABLES << 8) | nfgen.NFT_MSG_NEWGEN, body)


def test_the_watch_ignores_the_agent_and_its_children_even_once_reaped() -> None:
    import os
    import subprocess

    from cni_bridge.converge.watch import Watch

    w = Watch()
    assert w.ours(os.getpid())  # the agent (the parent loop runs the watch)
    child = subprocess.Popen(["sleep", "30"])
    try:
        assert w.ours(child.pid)  # a worker, a heal
    finally:
        child.kill()
        child.wait()
    assert not w.ours(child.pid)
    assert not w.reaped(child.pid, 0)  # not a heal of the watch, but its commits are ours
    assert w.ours(child.pid)
    assert not w.ours(0)
    assert not w.ours(1)  # init: not a child of this agent
    # our plugin in-process, or `cni-bridge sync`: it wrote what its records say
    assert w.ours(1, "cni-bridge")
    assert not w.ours(1, "nft") and not w.ours(1, "iptables-nft")


def test_the_watch_heals_once_a_burst_of_foreign_commits_ends(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import math
    import os
    import socket
    import time

    from cni_bridge.converge import watch

    w = watch.Watch()
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    mine.setblocking(False)
    w.sock = mine
    w.healed = time.monotonic()  # started and healed: the next heal is the periodic one
    try:
        assert watch.RESYNC_EVERY - 1 < w.due_in() <= watch.RESYNC_EVERY
        theirs.send(_newgen(5, os.getpid(), "python"))  # the agent's own: nothing due
        w.readable(mine.fileno())
        assert w.burst < 0 and w.due_in() > watch.MAX_DELAY
        theirs.send(_newgen(6, 1, "nft"))
        w.readable(mine.fileno())
        assert w.who == {"nft[1]"}
        assert 0 < w.due_in() <= watch.DEBOUNCE  # once the burst is quiet
        w.burst -= watch.MAX_DELAY  # a burst that never ends is acted on after MAX_DELAY
        theirs.send(_newgen(7, 1, "nft"))
        w.readable(mine.fileno())
        assert w.due_in() == 0.0
        monkeypatch.setattr(os, "fork", lambda: 4242)
        w.tick()  # a heal runs: nothing else until it is reaped
        assert w.pid == 4242 and w.due_in() == math.inf and not w.who
        w.started = time.monotonic() - 0.5
        assert w.reaped(4242, 0) and w.pid == 0
        # paused as long as the heal took, then the periodic one
        assert 0.4 < w.not_before - time.monotonic() <= 0.5
        assert watch.RESYNC_EVERY - 1 < w.due_in() <= watch.RESYNC_EVERY
    finally:
        w.forget()
        theirs.close()
    assert w.sock is None and mine.fileno() == -1


def test_a_killed_watch_lock_is_swept_and_a_live_one_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fcntl
    import os

    from cni_bridge.converge import watch
    from cni_bridge.ports import lockfile
    from cni_bridge.resident import naming

    monkeypatch.setattr(naming, "agent_dir", lambda create=False: str(tmp_path))
    mine = watch.lock_path()
    assert os.path.dirname(mine) == str(tmp_path)
    assert os.path.basename(mine).startswith(watch.LOCK_PREFIX) and mine.endswith(".lock")
    dead = tmp_path / f"{watch.LOCK_PREFIX}1.lock"
    dead.write_text("123\n")
    live = lockfile.take(mine, lambda: True)
    assert live is not None
    os.pwrite(live, f"{os.getpid()}\n".encode(), 0)
    try:
        assert lockfile.sweep(str(tmp_path), watch.LOCK_PREFIX) == 1
        assert not dead.exists() and os.path.exists(mine)
        assert watch.watcher_pid() == os.getpid()
    finally:
        fcntl.flock(live, fcntl.LOCK_UN)
        os.close(live)
    assert watch.watcher_pid() == 0
