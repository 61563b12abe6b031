"""Convergence with real kernel state and real packets (issue 14 items 1-3): the host's firewall
is flushed or rewritten behind our back, and `cni-bridge sync`, the next ADD, or the agent's
watch bring back published ports, masquerade, the 127.0.0.0/8 guard and isolation; `status`
says what differs meanwhile.

Two networks, A and B, on their own bridges, one container each publishing a port, and an
"outside" namespace behind a veth: the same host the issue's operator had.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.lab import TEST_NET_1, Netns, nft
from tests.lab.plugin import ROOT, PluginLab, plugin_command
from tests.lab.poll import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.plugin]

HOST4, OUT4 = TEST_NET_1


@dataclass
class Host:
    lab: PluginLab
    out: Netns
    confs: dict[str, dict[str, Any]]
    ns: dict[str, Netns]  # container name -> namespace
    ips: dict[str, str]
    # With CNI_BRIDGE_TEST_RESIDENT=1 the plugin starts the agent: its watch would heal every
    # drift before the test looks, so the tests of sync, ADD and status start it without.
    env: dict[str, str]

    def add(self, net: str, name: str) -> None:
        ns = self.ns[name] = self.lab.container()
        result = self.lab.add(self.confs[net], name, ns, extra=self.env)
        self.ips[name] = result["ips"][0]["address"].split("/")[0]
        self.lab.server(ns, "tcp", 80)  # answers with the client's address as it sees it

    def sync(self, *args: str) -> tuple[int, str]:
        proc = self.lab.cli("sync", "--data-dir", str(self.lab.data_dir), *args)
        assert "Traceback" not in proc.stderr, proc.stderr
        return proc.returncode, proc.stdout + proc.stderr

    def status(self) -> tuple[int, str]:
        proc = self.lab.cli("status", "--data-dir", str(self.lab.data_dir))
        assert "Traceback" not in proc.stderr, proc.stderr
        return proc.returncode, proc.stdout + proc.stderr

    # what the operator saw break

    def port(self, host_port: int) -> bool:
        """A published port from outside is DNATed to its container, the client's address
        preserved (the agent's held-ports proxy may answer too, but from the host's address)."""
        return self.lab.probe(self.out, "tcp", HOST4, host_port) == OUT4

    def masqueraded(self, name: str) -> bool:
        """The container reaches the outside with the host's address."""
        return self.lab.probe(self.ns[name], "tcp", OUT4, 9000) == HOST4

    def isolated(self, src: str, dst: str) -> bool:
        return self.lab.probe(self.ns[src], "tcp", self.ips[dst], 80) is None

    def guarded(self) -> bool:
        """127.0.0.1 of the host is not reachable from off the host (CVE-2020-8558)."""
        return self.lab.probe(self.out, "tcp", "127.0.0.1", 7000) is None

    def healthy(self) -> bool:
        return (
            self.port(8081)
            and self.port(8082)
            and self.masqueraded("c1")
            and self.masqueraded("c2")
            and self.isolated("c1", "c2")
            and self.guarded()
        )


def _conf(lab: PluginLab, net: str, index: int) -> dict[str, Any]:
    return lab.conf(
        f"{net}{lab.tag}",
        bridge=f"cb{net}{lab.tag}",
        capabilities={"portMappings": True},
        ipam={
            "type": "host-local",
            "ranges": [[{"subnet": f"10.66.{index}.0/24"}]],
            "dataDir": str(lab.data_dir),
        },
    )


def _with_ports(conf: dict[str, Any], host_port: int) -> dict[str, Any]:
    mapping = {"hostPort": host_port, "containerPort": 80, "protocol": "tcp"}
    return dict(conf, runtimeConfig={"portMappings": [mapping]})


@pytest.fixture
def host(lab: PluginLab) -> Iterator[Host]:
    yield _host(lab, {"CNI_BRIDGE_WATCH": "0"})


@pytest.fixture
def watched_host(lab: PluginLab) -> Iterator[Host]:
    # With the resident, the plugin's first call starts the agent: its log goes here too.
    yield _host(lab, {"CNI_BRIDGE_RESIDENT_LOG": str(lab.tmp / "agent.log")})


def _host(lab: PluginLab, env: dict[str, str]) -> Host:
    out = lab.outside(lab.host)
    lab.server(out, "tcp", 9000)
    # The hole the guard closes: the uplink accepts 127/8, and outside routes 127.0.0.1 to us.
    lab.server(lab.host, "tcp", 7000, host="127.0.0.1", reply="localhost-only")
    lab.host.sysctl(f"net.ipv4.conf.up{lab.tag}.route_localnet", 1)
    out.sysctl("net.ipv4.conf.eth0.route_localnet", 1)
    out.ip_batch([
        f"route add 127.0.0.1/32 via {HOST4} dev eth0 table 100",
        "rule add to 127.0.0.1 lookup 100 pref 10",
        "rule del pref 0",
        "rule add lookup local pref 100",
    ])  # fmt: skip
    h = Host(lab, out, {"A": _conf(lab, "A", 1), "B": _conf(lab, "B", 2)}, {}, {}, env)
    h.confs["A1"] = _with_ports(h.confs["A"], 8081)
    h.confs["B2"] = _with_ports(h.confs["B"], 8082)
    h.add("A1", "c1")
    h.add("B2", "c2")
    assert h.healthy()
    return h


def _flush(h: Host) -> None:
    h.lab.host.exec("nft", "flush", "ruleset")
    assert not h.port(8081) and not h.masqueraded("c1")
    assert not h.guarded() and not h.isolated("c1", "c2")


def test_sync_heals_a_flushed_ruleset(host: Host) -> None:
    h = host
    code, out = h.sync()
    assert code == 0 and "0 repair(s)" in out, out
    _flush(h)
    code, out = h.sync("--dry-run")
    assert code == 1 and "table inet cni_bridge is missing" in out, out
    assert "guard is missing while route_localnet is on" in out, out
    assert not h.healthy()  # a dry run changes nothing
    code, out = h.sync()
    assert code == 0 and "converged" in out, out
    assert h.healthy()
    code, out = h.sync()
    assert code == 0 and "0 repair(s)" in out, out


def test_sync_heals_a_deleted_bridge_and_sysctls(host: Host) -> None:
    h = host
    bridge = h.confs["A"]["bridge"]
    h.lab.host.ip("link", "del", bridge)
    h.lab.host.sysctl(f"net.ipv4.conf.{h.confs['B']['bridge']}.route_localnet", 0)
    assert not h.port(8081)
    code, out = h.sync()
    assert code == 0, out
    assert f"bridge {bridge} of network A{h.lab.tag} is missing" in out
    assert "10.66.1.1/24" in h.lab.host.addrs(bridge)
    ports = h.lab.host.ip_json("link", "show", "master", bridge)
    assert len(ports) == 1 and ports[0]["ifname"].startswith("vcb")
    assert h.healthy()
    # published ports from the host itself need route_localnet on the bridge again
    assert h.lab.probe(h.lab.host, "tcp", "127.0.0.1", 8082) == "10.66.2.1"  # masqueraded


def test_iptables_flush_with_a_forward_drop(host: Host) -> None:
    h = host
    h.lab.host.exec("iptables-nft", "-P", "FORWARD", "DROP")
    assert not h.masqueraded("c1")  # networks that existed before the drop policy: cut off
    code, out = h.sync()
    assert code == 0 and "lacks the accept rules" in out, out
    assert h.healthy()
    h.lab.host.exec("iptables-nft", "-F")
    assert not h.masqueraded("c1")
    code, out = h.sync()
    assert code == 0, out
    assert h.healthy()


def test_next_add_heals_every_network(host: Host) -> None:
    h = host
    _flush(h)
    h.add("A", "c3")  # another container, on one of the two networks
    assert h.healthy()
    assert h.isolated("c3", "c2")
    h.lab.host.exec("iptables-nft", "-P", "FORWARD", "DROP")
    h.add("A", "c4")  # the first ADD on a drop policy: its network's rules
    assert h.masqueraded("c4")
    h.lab.host.exec("iptables-nft", "-F")
    assert not h.masqueraded("c2")
    h.add("A", "c5")  # sees network A's rules gone: heals B's too
    assert h.healthy() and h.masqueraded("c5")


def test_status_lists_each_drift(host: Host) -> None:
    h = host
    code, out = h.status()
    assert code == 0 and "differs" not in out and "healing: manual" in out, out
    h.lab.host.exec("nft", "flush", "ruleset")
    code, out = h.status()
    assert code == 3, out
    assert "drift: nftables table inet cni_bridge is missing" in out
    assert "drift: the 127.0.0.0/8 guard is missing while route_localnet is on" in out
    h.sync()
    h.lab.host.exec("iptables-nft", "-P", "FORWARD", "DROP")
    code, out = h.status()
    assert code == 3 and "(policy drop) lacks the accept rules of network" in out, out
    h.sync()
    h.lab.host.ip("link", "set", h.confs["B"]["bridge"], "down")
    records = h.lab.data_dir / h.confs["A"]["name"] / ".cni-bridge"
    (records / "0123456789ab.json").write_text("{not json")
    proc = h.lab.cli("status", "--data-dir", str(h.lab.data_dir), "--json")
    assert proc.returncode == 3, proc.stderr
    by_net = {e["network"]: e for e in json.loads(proc.stdout)}
    assert by_net[h.confs["B"]["name"]]["drift"] == [f"bridge {h.confs['B']['bridge']} of network B{h.lab.tag} is down"]
    assert by_net[h.confs["A"]["name"]]["unusableFiles"] == [str(records / "0123456789ab.json")]
    (records / "0123456789ab.json").unlink()
    h.sync()
    code, out = h.status()
    assert code == 0, out


def _iptables(h: Host, *args: str) -> None:
    h.lab.host.exec("iptables-nft", *args)


def test_docker_user_decides_first(host: Host) -> None:
    h = host
    _iptables(h, "-N", "DOCKER-USER")
    _iptables(h, "-A", "DOCKER-USER", "-j", "RETURN")
    _iptables(h, "-A", "FORWARD", "-j", "DOCKER-USER")
    _iptables(h, "-P", "FORWARD", "DROP")
    assert not h.masqueraded("c1")  # networks from before the drop policy are cut off
    code, out = h.sync()
    assert code == 0, out
    assert h.healthy()
    rules = h.lab.host.exec("iptables-nft", "-S", "FORWARD").stdout.splitlines()
    assert rules[1] == "-A FORWARD -j DOCKER-USER"
    assert all("cni-bridge:" in r for r in rules[2:]) and len(rules) == 6, rules
    # the operator's DOCKER-USER drop holds for an old container and a new one
    _iptables(h, "-I", "DOCKER-USER", "-s", h.ips["c1"], "-j", "DROP")
    assert not h.masqueraded("c1") and h.masqueraded("c2")
    h.add("A", "c3")
    assert h.masqueraded("c3")
    _iptables(h, "-I", "DOCKER-USER", "-s", h.ips["c3"], "-j", "DROP")
    assert not h.masqueraded("c3")
    # a network made now gets its rules after the jump too
    h.confs["C"] = _conf(h.lab, "C", 3)
    h.add("C", "c4")
    assert h.masqueraded("c4")
    rules = h.lab.host.exec("iptables-nft", "-S", "FORWARD").stdout.splitlines()
    assert rules[1] == "-A FORWARD -j DOCKER-USER" and len(rules) == 8, rules
    _iptables(h, "-I", "DOCKER-USER", "-s", h.ips["c4"], "-j", "DROP")
    assert not h.masqueraded("c4")


FIREWALLD = """
add table inet fwld
add chain inet fwld filter_FORWARD { type filter hook forward priority 10; policy accept; }
add rule inet fwld filter_FORWARD ct state established,related accept
add rule inet fwld filter_FORWARD ct state invalid drop
add rule inet fwld filter_FORWARD reject with icmpx type admin-prohibited
"""


def _fwld_comments(h: Host) -> list[str]:
    return [
        str(o["rule"].get("comment", "") or next(iter(o["rule"]["expr"][-1])))
        for o in nft.ruleset(h.lab.host)
        if "rule" in o and o["rule"]["table"] == "fwld"
    ]


def test_firewalld_style_reject_chain(host: Host) -> None:
    h = host
    h.lab.host.exec("nft", "-f", "-", input=FIREWALLD)
    assert not h.masqueraded("c1")  # egress blocked by the final reject
    code, out = h.status()
    assert code == 3 and "(final drop/reject) lacks the accept rules" in out, out
    code, out = h.sync()
    assert code == 0, out
    assert h.healthy()
    code, out = h.status()
    assert code == 0, out
    a, b = (f"cni-bridge:{h.confs[n]['name']}" for n in ("A", "B"))
    assert _fwld_comments(h) == ["accept", "drop", a, a, b, b, "reject"]
    h.add("A", "c3")  # a new container of a covered network: works, nothing added
    assert h.masqueraded("c3") and _fwld_comments(h).count(a) == 2
    for name in ("c1", "c3"):
        h.lab.delete(h.confs["A"], name, h.ns[name].path)
    assert _fwld_comments(h) == ["accept", "drop", b, b, "reject"]  # gone with the last
    h.lab.delete(h.confs["B"], "c2", h.ns["c2"].path)
    assert _fwld_comments(h) == ["accept", "drop", "reject"]


def test_agent_heals_by_itself(watched_host: Host) -> None:
    h = watched_host
    log = open(h.lab.tmp / "agent.log", "a")  # noqa: SIM115 - lives with the process
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(ROOT)}
    # (with the resident, the plugin started the agent already: this one leaves at once)
    h.lab.spawn(h.lab.host, [*plugin_command(), "serve", "--idle", "0"], env=env, stderr=log)
    log.close()

    def watching() -> bool:
        return "healing: automatic" in h.status()[1]

    assert wait_for(watching, timeout=20, interval=0.3), (h.lab.tmp / "agent.log").read_text()
    h.lab.host.exec("nft", "flush", "ruleset")  # healed within a second: no look at it broken
    assert wait_for(h.healthy, timeout=30, interval=0.5), (h.lab.tmp / "agent.log").read_text()
    h.lab.host.exec("iptables-nft", "-P", "FORWARD", "DROP")
    assert wait_for(lambda: h.masqueraded("c1"), timeout=30, interval=0.5)
    h.lab.host.exec("iptables-nft", "-F")
    assert wait_for(h.healthy, timeout=30, interval=0.5)
    text = (h.lab.tmp / "agent.log").read_text()
    assert "watch: healed (ruleset changed by nft[" in text, text
    assert "table inet cni_bridge is missing" in text
    assert h.status()[0] == 0


def test_a_bare_sync_finds_a_network_without_ports_or_dns(lab: PluginLab) -> None:
    # The agent's watch heals the data dirs ADDs registered (datadirs.in_use()), as `sync`
    # with no --data-dir does: every host-local ADD registers its own. Only ADDs with published
    # ports or container DNS did, so a plain network with its own dataDir was never healed.
    conf = lab.conf(
        f"P{lab.tag}",
        bridge=f"cbP{lab.tag}",
        ipam={"type": "host-local", "ranges": [[{"subnet": "10.66.9.0/24"}]],
              "dataDir": str(lab.data_dir)},
    )
    lab.add(conf, "p1", lab.container(), extra={"CNI_BRIDGE_WATCH": "0"})
    lab.host.exec("nft", "flush", "ruleset")
    assert "cni_bridge" not in lab.host.exec("nft", "list", "tables").stdout
    proc = lab.cli("sync")
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "table inet cni_bridge" in lab.host.exec("nft", "list", "tables").stdout, proc.stdout
