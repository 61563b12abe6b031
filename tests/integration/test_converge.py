"""Convergence with real kernel state and real packets (issue 14 items 1-3): the host's firewall
is flushed or rewritten behind our back, and `cni-bridge sync`, the next ADD, or the agent's
watch bring back published ports, masquerade, the 127.0.0.0/8 guard and isolation; `status`
says what differs meanwhile.

Two networks, A and B, on their own bridges, one container each publishing a port, and an
"outside" namespace behind a veth: the same host the issue's operator had.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.lab import TEST_NET_1, Netns
from tests.lab.plugin import PluginLab

pytestmark = [pytest.mark.integration, pytest.mark.plugin]

HOST4, OUT4 = TEST_NET_1


@dataclass
class Host:
    lab: PluginLab
    out: Netns
    confs: dict[str, dict[str, Any]]
    ns: dict[str, Netns]  # container name -> namespace
    ips: dict[str, str]

    def add(self, net: str, name: str) -> None:
        ns = self.ns[name] = self.lab.container()
        result = self.lab.add(self.confs[net], name, ns)
        self.ips[name] = result["ips"][0]["address"].split("/")[0]
        self.lab.server(ns, "tcp", 80, reply=name)

    def sync(self, *args: str) -> tuple[int, str]:
        proc = self.lab.cli("sync", "--data-dir", str(self.lab.data_dir), *args)
        assert "Traceback" not in proc.stderr, proc.stderr
        return proc.returncode, proc.stdout + proc.stderr

    def status(self) -> tuple[int, str]:
        proc = self.lab.cli("status", "--data-dir", str(self.lab.data_dir))
        assert "Traceback" not in proc.stderr, proc.stderr
        return proc.returncode, proc.stdout + proc.stderr

    # what the operator saw break

    def port(self, host_port: int) -> str | None:
        """A published port from outside: the container's answer."""
        return self.lab.probe(self.out, "tcp", HOST4, host_port)

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
            self.port(8081) == "c1"
            and self.port(8082) == "c2"
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
    h = Host(lab, out, {"A": _conf(lab, "A", 1), "B": _conf(lab, "B", 2)}, {}, {})
    h.confs["A1"] = _with_ports(h.confs["A"], 8081)
    h.confs["B2"] = _with_ports(h.confs["B"], 8082)
    h.add("A1", "c1")
    h.add("B2", "c2")
    assert h.healthy()
    yield h


def _flush(h: Host) -> None:
    h.lab.host.exec("nft", "flush", "ruleset")
    assert h.port(8081) is None and not h.masqueraded("c1")
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
    assert h.port(8081) is None
    code, out = h.sync()
    assert code == 0, out
    assert f"bridge {bridge} of network A{h.lab.tag} is missing" in out
    assert "10.66.1.1/24" in h.lab.host.addrs(bridge)
    ports = h.lab.host.ip_json("link", "show", "master", bridge)
    assert len(ports) == 1 and ports[0]["ifname"].startswith("vcb")
    assert h.healthy()
    # published ports from the host itself need route_localnet on the bridge again
    assert h.lab.probe(h.lab.host, "tcp", "127.0.0.1", 8082) == "c2"


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
