"""containerDNS without root: names, the aardvark-dns file, and what ADD/DEL ask of it."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Any

import pytest

from cni_bridge.commands.deps import Deps
from cni_bridge.dns.names import (
    Entry,
    NetworkDNS,
    container_names,
    entry,
    parse_entries,
    parse_listen,
    render,
    replaced,
    resolvers,
)
from cni_bridge.errors import CNIError
from tests.unit.test_commands import World, gc_args, netns, world

__all__ = ["netns", "world"]  # fixtures


def test_names_bare_and_under_the_domain() -> None:
    names, problems = container_names("ABCDEF0123456789", "DB", ["database"], "test.lan")
    assert names == ["db", "db.test.lan", "database", "database.test.lan",
                     "abcdef012345", "abcdef012345.test.lan"]
    assert problems == []
    names, problems = container_names("c1", "bad name", ["ok", "no,comma"], "")
    assert names == ["ok", "c1"]
    assert any("aliases" in p for p in problems) and any("bad name" in p for p in problems)


def test_file_round_trip_and_replace() -> None:
    net = NetworkDNS("n", (ipaddress.ip_address("10.0.0.1"), ipaddress.ip_address("fd00::1")),
                     (ipaddress.ip_address("192.0.2.53"),))
    a = entry("C1", ["10.0.0.2/24", "fd00::2/64"], ["a"])
    b = entry("c2", ["10.0.0.3/24"], ["b"])
    text = render(net, [a, b])
    assert text.splitlines() == [
        "10.0.0.1,fd00::1 192.0.2.53",
        "c1 10.0.0.2 fd00::2 a",
        "c2 10.0.0.3  b",  # aardvark-dns reads an empty column as "no IPv6"
    ]
    assert parse_entries(text) == [a, b]
    assert [str(x) for x in parse_listen(text)] == ["10.0.0.1", "fd00::1"]
    assert replaced([a, b], None, "c1", ["10.0.0.2/24"]) == [b]
    # Another interface of the same container (other addresses) keeps its line.
    assert replaced([a, b], None, "c2", ["10.0.0.9/24"]) == [a, b]


def test_resolvers_skip_what_aardvark_cannot_parse() -> None:
    text = "# c\nnameserver 192.0.2.1\nnameserver fe80::1%eth0\nnameserver x\nsearch a\nnameserver ::1\n"
    assert [str(x) for x in resolvers(text)] == ["192.0.2.1", "::1"]


class FakeDns:
    def __init__(self) -> None:
        self.files: dict[str, list[Entry]] = {}
        self.fail = False

    def publish(self, net: NetworkDNS, e: Entry) -> None:
        self.files[net.name] = replaced(self.files.get(net.name, []), e, e.id, e.ips)
        if self.fail:
            raise RuntimeError("boom")

    def check(
        self, network: str, container_id: str, ips: Sequence[str], names: Sequence[str]
    ) -> list[str]:
        have = [e for e in self.files.get(network, []) if e.id == container_id]
        return [] if have else [f"no entry for {container_id}"]

    def withdraw(self, network: str, container_id: str, ips: Sequence[str]) -> None:
        left = replaced(self.files.get(network, []), None, container_id, ips)
        if left:
            self.files[network] = left
        else:
            self.files.pop(network, None)


def _dns_world(world: World) -> FakeDns:
    fake = FakeDns()
    orig = world.deps

    def deps() -> Deps:
        d = orig()
        d.dns_factory = lambda: fake
        return d

    world.deps = deps  # type: ignore[method-assign]
    return fake


def test_add_publishes_and_del_withdraws(world: World) -> None:
    fake = _dns_world(world)
    conf: dict[str, Any] = {"containerDNS": {"domain": "x.lan", "upstream": ["192.0.2.53"]},
            "capabilities": {"aliases": True}, "runtimeConfig": {"aliases": {"unit": ["al"]}}}
    out = world.call("ADD", **conf)
    assert out["dns"] == {"nameservers": ["10.50.0.1", "fd00:50::1"], "search": ["x.lan"]}
    (e,) = fake.files["unit"]
    assert e.names == ("al", "al.x.lan", "c1", "c1.x.lan") and e.v4 == ("10.50.0.2",)
    (rec,) = world.records()
    assert rec.dns_names == list(e.names)
    prev = {"prevResult": out}
    assert world.call("CHECK", **conf, **prev) is None
    fake.files.clear()  # the name server lost it
    with pytest.raises(CNIError) as exc:
        world.call("CHECK", **conf, **prev)
    assert exc.value.code == 105 and "no entry for c1" in str(exc.value.details or exc.value.msg)
    world.call("DEL", **conf)
    assert fake.files == {}


def test_failed_publish_rolls_back(world: World) -> None:
    fake = _dns_world(world)
    fake.fail = True
    with pytest.raises(RuntimeError):
        world.call("ADD", containerDNS=True)
    assert fake.files == {} and world.records() == []


def test_bad_alias_and_no_gateway_are_config_errors(world: World) -> None:
    _dns_world(world)
    with pytest.raises(CNIError) as exc:
        world.call("ADD", containerDNS=True, capabilities={"aliases": True},
                   runtimeConfig={"aliases": {"unit": ["a b"]}})
    assert exc.value.code == 7 and "aliases" in exc.value.msg
    with pytest.raises(CNIError) as exc:
        world.call("ADD", containerDNS=True, isGateway=False, isDefaultGateway=False)
    assert exc.value.code == 7 and "isGateway" in exc.value.msg
    assert world.records() == []


def test_name_server_guard_elements() -> None:

    from cni_bridge.firewall.elements import network_keys
    from cni_bridge.firewall.layout import DNS_ADDR, DNS_GW
    from tests.firewall_json import fw_net

    base = fw_net("n", "br0", [ipaddress.ip_network("10.0.0.0/24")], ip_masq=True)
    net = base._replace(dns_gateways=(ipaddress.ip_address("10.0.0.1"),))
    keys = network_keys(net, strict=False)
    assert keys[DNS_ADDR[4]] == ["10.0.0.1"]
    assert keys[DNS_GW[4]] == [{"concat": ["br0", "10.0.0.1"]}]
    assert DNS_ADDR[4] not in network_keys(base, strict=False)


def test_rebuild_keeps_an_add_in_progress_and_drops_the_dead(tmp_path: Any) -> None:
    import os

    from cni_bridge.config import load_netconf
    from cni_bridge.dns.rebuild import network_file
    from cni_bridge.state import Attachment

    conf = load_netconf({"cniVersion": "1.0.0", "name": "n", "isGateway": True,
                         "containerDNS": {"upstream": ["192.0.2.53"]},
                         "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.0.0.0/24"}]]}})
    running = Attachment.new("n", "c1", "eth0", "")  # this process: an ADD in progress
    running.ips, running.dns_names = ["10.0.0.2/24"], ["one"]
    dead = Attachment.new("n", "c2", "eth0", "")
    dead.ips, dead.dns_names = ["10.0.0.3/24"], ["two"]
    dead.pid = os.getpid() + 10**7  # no such process: a crashed ADD
    dead.pid_start = "1"
    text = network_file(conf, [running, dead], ["192.0.2.53"])
    assert text == "10.0.0.1 192.0.2.53\nc1 10.0.0.2  one\n"
    assert network_file(conf, [dead], []) is None


def test_gc_withdraws_the_names(world: World) -> None:
    fake = _dns_world(world)
    world.call("ADD", containerDNS=True)
    assert [e.id for e in fake.files["unit"]] == ["c1"]
    world.call("GC", containerDNS=True, **gc_args({"cni.dev/attachments": []}))
    assert fake.files == {} and world.records() == []


def test_rebuild_writes_only_what_the_rules_allow_from_records(tmp_path: Any) -> None:
    # A record is a file, read and not trusted: a name or ID with a space, a comma or a newline
    # would make a line aardvark-dns cannot parse (it then ends at its next reload, for every
    # network) or add a line of its own.
    from cni_bridge.config import load_netconf
    from cni_bridge.dns.rebuild import network_file
    from cni_bridge.state import Attachment

    conf = load_netconf({"cniVersion": "1.0.0", "name": "n", "isGateway": True,
                         "containerDNS": {"upstream": ["192.0.2.53"]},
                         "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.0.0.0/24"}]]}})
    good = Attachment.new("n", "c1", "eth0", "")
    good.ips = ["10.0.0.2/24"]
    good.dns_names = ["one", "a b", "x,y", "evil\nc9 10.0.0.9  bank", "Two"]
    bad_id = Attachment.new("n", "c2 10.0.0.7  bank\nc3", "eth0", "")
    bad_id.ips, bad_id.dns_names = ["10.0.0.3/24"], ["three"]
    text = network_file(conf, [good, bad_id], ["192.0.2.53"])
    assert text == "10.0.0.1 192.0.2.53\nc1 10.0.0.2  one,two\n"


def test_a_network_cannot_take_the_name_of_the_servers_pid_file() -> None:
    # Its file would overwrite aardvark-dns's pid file in the directory: the running server
    # lost track of (never stopped again) and a second one started beside it.
    from cni_bridge.config import load_netconf
    from cni_bridge.dns.aardvark import PID_FILE

    conf = {"cniVersion": "1.0.0", "name": PID_FILE, "isGateway": True, "containerDNS": True,
            "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.0.0.0/24"}]]}}
    with pytest.raises(CNIError) as err:
        load_netconf(conf)
    assert err.value.code == 7 and PID_FILE in err.value.msg
    assert load_netconf({**conf, "containerDNS": False}).name == PID_FILE
