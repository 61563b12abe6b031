"""ADD/DEL/CHECK/GC/STATUS against fakes: sequencing, rollback at every step, idempotency."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
from pathlib import Path
from typing import Any

import pytest

from cni_bridge.commands import dispatch
from cni_bridge.commands.deps import Deps
from cni_bridge.config import load_netconf
from cni_bridge.errors import CNIError
from cni_bridge.firewall.ipspoof import link_local
from cni_bridge.ipam.disk import DiskStore
from cni_bridge.protocol.request import parse_request
from cni_bridge.state import PHASE_READY, StateStore, host_veth_name
from tests.unit.fakes import Boom, FakeFirewall, FakeNet


@pytest.fixture
def netns(tmp_path: Path) -> str:
    p = tmp_path / "netns"
    p.write_text("")  # stands in for an nsfs file; the fakes never open it
    return str(p)


def config(tmp_path: Path, **over: Any) -> dict[str, Any]:
    c: dict[str, Any] = {
        "cniVersion": "1.1.0",
        "name": "unit",
        "type": "cni-bridge",
        "bridge": "cbu0",
        "isGateway": True,
        "isDefaultGateway": True,
        "ipMasq": True,
        "capabilities": {"portMappings": True},
        "runtimeConfig": {"portMappings": [{"hostPort": 8080, "containerPort": 80}]},
        "ipam": {
            "type": "host-local",
            "ranges": [[{"subnet": "10.50.0.0/29"}], [{"subnet": "fd00:50::/120"}]],
            "dataDir": str(tmp_path / "ipam"),
        },
    }
    c.update(over)
    return c


def gc_args(args: dict[str, Any]) -> dict[str, Any]:
    """GC's keys are not identifiers: typed as Any so they pass through `call`'s **over."""
    return args


class World:
    def __init__(self, tmp_path: Path, netns: str) -> None:
        self.tmp = tmp_path
        self.netns = netns
        self.net = FakeNet()
        self.fw = FakeFirewall()

    def deps(self) -> Deps:
        return Deps(net_factory=lambda: self.net, firewall_factory=lambda: self.fw)

    def call(self, verb: str, cid: str = "c1", ifname: str = "eth0", netns: str | None = None, **over: Any) -> Any:
        conf = config(self.tmp, **over)
        env = {
            "CNI_COMMAND": verb,
            "CNI_CONTAINERID": cid,
            "CNI_NETNS": self.netns if netns is None else netns,
            "CNI_IFNAME": ifname,
            "CNI_PATH": "/nonexistent",
        }
        req = parse_request(env, json.dumps(conf).encode())
        nc = load_netconf(req.config)
        return dispatch(req, nc, env, self.deps())

    def store(self) -> DiskStore:
        return DiskStore("unit", str(self.tmp / "ipam"))

    def records(self) -> list[Any]:
        return StateStore(self.store().dir).all()


@pytest.fixture
def world(tmp_path: Path, netns: str) -> World:
    return World(tmp_path, netns)


def test_add_renders_result_and_records(world: World) -> None:
    out = world.call("ADD")
    assert [i["name"] for i in out["interfaces"]] == ["cbu0", host_veth_name("unit", "c1", "eth0"), "eth0"]
    assert [ip["address"] for ip in out["ips"]] == ["10.50.0.2/29", "fd00:50::2/120"]
    assert {r["dst"] for r in out["routes"]} == {"0.0.0.0/0", "::/0"}
    (rec,) = world.records()
    assert rec.phase == PHASE_READY and rec.ips == ["10.50.0.2/29", "fd00:50::2/120"]
    assert world.net.links["cbu0"]["addrs"] == [
        __import__("ipaddress").ip_interface("10.50.0.1/29"),
        __import__("ipaddress").ip_interface("fd00:50::1/120"),
    ]
    # A published port turns hairpin on: a container may reach its own port.
    assert world.net.links[rec.host_veth]["hairpin"] is True
    assert rec.tag in world.fw.elements


@pytest.mark.parametrize(
    ("ranges", "link_local", "ipv6"),
    [
        ([[{"subnet": "10.50.0.0/29"}]], False, False),
        ([[{"subnet": "10.50.0.0/29"}]], True, True),
        ([[{"subnet": "10.50.0.0/29"}], [{"subnet": "fd00:50::/120"}]], False, True),
    ],
)
def test_ipv6_link_local_only_with_an_ipv6_address_or_when_asked(
    world: World, ranges: list[Any], link_local: bool, ipv6: bool
) -> None:
    ipam = {"type": "host-local", "ranges": ranges, "dataDir": str(world.tmp / "ipam")}
    world.call("ADD", ipam=ipam, ipv6LinkLocal=link_local)
    assert world.net.container[(world.netns, "eth0")]["ipv6"] is ipv6


@pytest.mark.parametrize(
    "step",
    ["ensure_bridge", "ensure_bridge_addrs", "set_forwarding", "create_veth", "configure_container"],
)
def test_failure_at_each_net_step_rolls_back(world: World, step: str) -> None:
    world.net.fail_at = step
    with pytest.raises(Boom):
        world.call("ADD")
    assert world.records() == []
    assert world.store().reservations() == {}
    assert [n for n in world.net.links if n.startswith("vcb")] == []
    assert world.fw.elements == {}


def test_firewall_failure_rolls_back(world: World) -> None:
    world.fw.fail_at = "add_attachment"
    with pytest.raises(Boom):
        world.call("ADD")
    assert world.records() == [] and world.store().reservations() == {}
    assert [n for n in world.net.links if n.startswith("vcb")] == []


def test_requested_ip_taken_leaves_nothing(world: World) -> None:
    world.call("ADD", cid="c1")
    with pytest.raises(CNIError) as err:
        world.call("ADD", cid="c2", args={"cni": {"ips": ["10.50.0.2"]}})
    assert err.value.code == 102
    assert [r.container_id for r in world.records()] == ["c1"]
    assert sorted(o[0] for o in world.store().reservations().values()) == ["c1", "c1"]


def test_exhaustion_is_a_clear_error(world: World, tmp_path: Path) -> None:
    for i in range(5):  # a /29 has 5 addresses after the gateway
        world.call("ADD", cid=f"c{i}", netns=str(tmp_path / f"n{i}") if (tmp_path / f"n{i}").write_text("") is not None else "")
    (tmp_path / "n9").write_text("")
    with pytest.raises(CNIError) as err:
        world.call("ADD", cid="c9", netns=str(tmp_path / "n9"))
    assert err.value.code == 101 and "no IP addresses available" in err.value.msg
    assert len(world.records()) == 5


def test_second_add_of_same_attachment_is_refused(world: World) -> None:
    world.call("ADD")
    with pytest.raises(CNIError) as err:
        world.call("ADD")
    assert err.value.code == 103


def test_del_is_idempotent_and_needs_no_netns(world: World) -> None:
    world.call("ADD")
    assert world.call("DEL", netns="") is None
    assert world.records() == [] and world.store().reservations() == {}
    assert world.fw.elements == {} and "unit" not in world.fw.networks
    assert [n for n in world.net.links if n.startswith("vcb")] == []
    assert world.call("DEL", netns="") is None


def test_del_of_unknown_network_creates_nothing(world: World) -> None:
    world.call("DEL", netns="")
    assert not (world.tmp / "ipam").exists()


def test_network_rules_stay_until_last_attachment(world: World, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.write_text("")
    world.call("ADD", cid="a")
    world.call("ADD", cid="b", netns=str(other), runtimeConfig={})
    world.call("DEL", cid="a")
    assert "unit" in world.fw.networks
    world.call("DEL", cid="b")
    assert "unit" not in world.fw.networks


def test_check(world: World) -> None:
    out = world.call("ADD")
    world.call("CHECK", prevResult=out)
    tampered = json.loads(json.dumps(out))
    tampered["ips"][0]["address"] = "10.50.0.6/29"
    with pytest.raises(CNIError) as err:
        world.call("CHECK", prevResult=tampered)
    assert err.value.code == 105 and "10.50.0.6/29" in err.value.msg
    world.fw.elements.clear()
    with pytest.raises(CNIError) as err:
        world.call("CHECK", prevResult=out)
    assert "firewall" in err.value.msg


def test_check_without_attachment(world: World) -> None:
    with pytest.raises(CNIError) as err:
        world.call("CHECK", prevResult={"cniVersion": "1.1.0"})
    assert err.value.code == 3


def test_crashed_add_is_cleaned_by_next_add(world: World) -> None:
    world.net.fail_at = "configure_container"
    # Simulate a crash: the record says "adding" and the veth is still there.
    rec_store = None
    with contextlib.suppress(Boom):
        world.call("ADD")
    assert world.records() == []
    world.net.fail_at = ""
    world.call("ADD")
    assert rec_store is None and len(world.records()) == 1


def test_gc_removes_what_is_not_valid(world: World, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.write_text("")
    world.call("ADD", cid="keep")
    world.call("ADD", cid="drop", netns=str(other), runtimeConfig={})
    # A leftover veth of a crashed attachment and a reservation nobody recorded.
    world.net.links["vcbdeadbeef0000"] = {"kind": "veth", "index": 999, "master": "cbu0"}
    store = world.store()
    with store.lock():
        store.reserve("ghost", "eth0", __import__("ipaddress").ip_address("10.50.0.6"), "0")
    world.call("GC", **gc_args({"cni.dev/valid-attachments": [{"containerID": "keep", "ifname": "eth0"}]}))
    assert [r.container_id for r in world.records()] == ["keep"]
    assert {o[0] for o in store.reservations().values()} == {"keep"}
    assert "vcbdeadbeef0000" not in world.net.links
    assert set(world.fw.elements) == {world.records()[0].tag}


def test_gc_with_empty_list_empties_the_network(world: World) -> None:
    world.call("ADD")
    world.call("GC", **gc_args({"cni.dev/attachments": []}))
    assert world.records() == [] and world.store().reservations() == {}
    assert world.fw.elements == {} and "unit" not in world.fw.networks


def test_status_exhausted_is_50(world: World, tmp_path: Path) -> None:
    world.call("STATUS")
    for i in range(5):
        p = tmp_path / f"s{i}"
        p.write_text("")
        world.call("ADD", cid=f"s{i}", netns=str(p))
    with pytest.raises(CNIError) as err:
        world.call("STATUS")
    assert err.value.code == 50 and "no IP addresses" in err.value.msg


def test_status_unwritable_data_dir_is_50(world: World) -> None:
    # /proc/sys refuses new files even to root, unlike a mode-0500 directory.
    with pytest.raises(CNIError) as err:
        world.call("STATUS", ipam={"type": "host-local", "subnet": "10.1.0.0/24", "dataDir": "/proc/sys/cni-bridge-test"})
    assert err.value.code == 50 and "not writable" in err.value.msg


def _fake_record(world: World, cid: str, **fields: Any) -> None:
    from cni_bridge.state import Attachment

    att = Attachment.new("unit", cid, "eth0", world.netns)
    for k, v in fields.items():
        setattr(att, k, v)
    store = world.store()
    with store.lock():
        StateStore(store.dir).put(att)


def test_add_while_the_same_add_runs_is_try_again(world: World) -> None:
    from cni_bridge.state import process_start

    # Our own process stands in for a live ADD of the same attachment.
    _fake_record(world, "c1", pid=os.getpid(), pid_start=process_start(os.getpid()))
    with pytest.raises(CNIError) as err:
        world.call("ADD")
    assert err.value.code == 11 and "still running" in err.value.msg


def test_ready_record_from_an_earlier_boot_is_replaced(world: World) -> None:
    _fake_record(world, "c1", phase=PHASE_READY, boot_id="an-earlier-boot", pid=0)
    out = world.call("ADD")
    assert out["ips"][0]["address"] == "10.50.0.2/29"
    (rec,) = world.records()
    assert rec.phase == PHASE_READY and rec.boot_id != "an-earlier-boot"


def test_gc_leaves_an_add_in_progress_alone(world: World) -> None:
    from cni_bridge.state import process_start

    world.call("ADD", cid="done")
    _fake_record(world, "running", pid=os.getpid(), pid_start=process_start(os.getpid()))
    world.call("GC", **gc_args({"cni.dev/valid-attachments": []}))
    assert [r.container_id for r in world.records()] == ["running"]


def test_dead_adder_is_not_in_progress(world: World) -> None:
    _fake_record(world, "c1", pid=os.getpid(), pid_start="not-this-start")
    world.call("ADD")  # the crashed ADD's remains are cleared, not waited for
    assert [r.phase for r in world.records()] == [PHASE_READY]


def test_network_dns_wins_over_resolv_conf(world: World, tmp_path: Path) -> None:
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 192.0.2.53\nsearch from.ipam\n")
    ipam = config(tmp_path)["ipam"] | {"resolvConf": str(resolv)}
    out = world.call("ADD", ipam=ipam, dns={"nameservers": ["10.50.0.1"]})
    assert out["dns"] == {"nameservers": ["10.50.0.1"]}
    out = world.call("ADD", cid="c2", netns=str(resolv), ipam=ipam)
    assert out["dns"] == {"nameservers": ["192.0.2.53"], "search": ["from.ipam"]}


def test_macspoofchk_guards_the_port_and_del_removes_it(world: World) -> None:
    out = world.call("ADD", macspoofchk=True)
    (rec,) = world.records()
    assert world.fw.spoofchk == {rec.host_veth: out["interfaces"][2]["mac"]} and rec.mac
    world.call("DEL", macspoofchk=True)
    assert world.fw.spoofchk == {}


def test_add_guards_the_container_addresses_and_del_removes_them(world: World) -> None:
    out = world.call("ADD", ipspoofchk=True)
    (rec,) = world.records()
    mac = out["interfaces"][2]["mac"]
    assert rec.mac == mac  # recorded before the guard: DEL derives the link-local from it
    network, tag, addrs = world.fw.ipspoof[rec.host_veth]
    assert (network, tag) == ("unit", rec.tag)
    assert addrs == [
        ipaddress.ip_address("10.50.0.2"),
        ipaddress.ip_address("fd00:50::2"),
        link_local(mac),
    ]
    world.call("DEL", ipspoofchk=True)
    assert world.fw.ipspoof == {}


def test_a_failed_add_leaves_no_guard(world: World) -> None:
    world.fw.fail_at = "add_attachment"
    with pytest.raises(Boom):
        world.call("ADD", ipspoofchk=True)
    assert world.fw.ipspoof == {} and "add_ipspoof" not in world.fw.calls


def test_check_reports_a_missing_element_and_gc_removes_the_rest(world: World) -> None:
    out = world.call("ADD", ipspoofchk=True)
    world.call("ADD", cid="c2", ifname="eth1", ipspoofchk=True)
    world.call("CHECK", prevResult=out, ipspoofchk=True)
    rec1 = next(r for r in world.records() if r.container_id == "c1")
    world.fw.ipspoof[rec1.host_veth][2].pop()  # the link-local element is gone
    with pytest.raises(CNIError) as err:
        world.call("CHECK", prevResult=out, ipspoofchk=True)
    assert err.value.code == 105 and "ipspoofchk element" in err.value.msg
    world.call("GC", ipspoofchk=True, **gc_args({"cni.dev/valid-attachments": [
        {"containerID": "c2", "ifname": "eth1"}]}))
    rec2 = next(r for r in world.records() if r.container_id == "c2")
    assert list(world.fw.ipspoof) == [rec2.host_veth]


def test_ipspoofchk_and_vlan_trunk_are_refused(world: World) -> None:
    with pytest.raises(CNIError) as err:
        world.call("ADD", ipspoofchk=True, vlanTrunk=[10])
    assert err.value.code == 7 and "vlanTrunk" in err.value.msg


def test_runtime_ip_ranges_replace_the_configured_ones(world: World) -> None:
    out = world.call(
        "ADD",
        capabilities={"ipRanges": True},
        runtimeConfig={"ipRanges": [[{"subnet": "10.51.0.0/28", "rangeStart": "10.51.0.9"}]]},
    )
    assert [ip["address"] for ip in out["ips"]] == ["10.51.0.9/28"]


def test_an_internal_error_makes_the_process_unfit_for_reuse(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cni_bridge import engine

    monkeypatch.setattr(engine, "_internal_errors", [])
    assert engine.reusable()

    def broken(*args: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr("cni_bridge.commands.dispatch", broken)
    env = {
        "CNI_COMMAND": "ADD",
        "CNI_CONTAINERID": "c9",
        "CNI_NETNS": world.netns,
        "CNI_IFNAME": "eth0",
        "CNI_PATH": "/nonexistent",
    }
    code, out = engine.handle(env, json.dumps(config(world.tmp)).encode())
    assert code == 1 and json.loads(out)["code"] == 999
    assert not engine.reusable()


def test_add_writes_the_record_only_where_crash_safety_needs_it(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    # plan.py/add.py's contract: with host-local, once before any kernel change (with the
    # addresses) and once ready; macspoofchk adds one (the guard's key before the guard).
    phases: list[tuple[str, list[str], str]] = []
    real_put = StateStore.put

    def put(self: StateStore, att: Any) -> None:
        phases.append((att.phase, list(att.ips), att.mac))
        real_put(self, att)

    monkeypatch.setattr(StateStore, "put", put)
    world.call("ADD")
    assert [p for p, _, _ in phases] == ["adding", PHASE_READY]
    assert phases[0][1] == ["10.50.0.2/29", "fd00:50::2/120"]  # addresses before the kernel
    phases.clear()
    world.call("ADD", cid="c2", ifname="eth1", macspoofchk=True)
    assert [p for p, _, _ in phases] == ["adding", "adding", PHASE_READY]
    assert phases[0][2] == "" and phases[1][2] != ""  # the MAC, recorded before its guard


def test_add_firewall_inputs_come_from_the_plan_and_match_the_record(world: World) -> None:
    # ADD installs from its frozen plan; DEL, GC and CHECK rebuild the same inputs from the
    # record: both must describe the same elements or DEL would miss what ADD made.
    from cni_bridge.commands.common import record_fw

    added: list[tuple[Any, Any]] = []
    real_add = world.fw.add_attachment
    def recording(net: Any, att: Any) -> None:
        added.append((net, att))
        real_add(net, att)

    world.fw.add_attachment = recording  # type: ignore[method-assign]  # a spy on the fake's method
    world.call("ADD", args={"cni": {"ips": ["10.50.0.5"]}})
    (rec,) = world.records()
    ((net, att),) = added
    conf = load_netconf(config(world.tmp, args={"cni": {"ips": ["10.50.0.5"]}}))
    assert record_fw(conf, rec) == (net, att)
    assert [str(ip) for ip in att.ips] == ["10.50.0.5", "fd00:50::2"]
    assert att.port_mappings[0].host_port == 8080


def test_firewall_inputs_compare_by_value(world: World) -> None:
    # Their sequences are tuples whoever builds them (a field left to its default is ()), so
    # equal inputs are equal records, as when they were dataclasses.
    from cni_bridge.commands.common import record_fw
    from cni_bridge.firewall.model import AttachmentFw, NetworkFw

    world.call("ADD")
    (rec,) = world.records()
    net, att = record_fw(load_netconf(config(world.tmp)), rec)
    assert net == NetworkFw(net.name, net.bridge, net.subnets, net.ip_masq, net.isolate)
    assert att == AttachmentFw(att.tag, att.owner, att.ips, tuple(att.port_mappings))
    masq = load_netconf(config(world.tmp, nonMasqueradeCIDRs=["192.0.2.0/24"]))
    net, _ = record_fw(masq, rec)
    assert net == net._replace(non_masq=(ipaddress.ip_network("192.0.2.0/24"),))


def test_unreadable_resolv_conf_is_an_io_failure(world: World, tmp_path: Path) -> None:
    ipam = config(tmp_path)["ipam"] | {"resolvConf": str(tmp_path / "missing")}
    with pytest.raises(CNIError) as err:
        world.call("ADD", ipam=ipam)
    assert err.value.code == 5 and "resolvConf" in err.value.msg
    assert world.records() == [] and world.store().get_by_id("c1", "eth0") == []


def test_add_del_gc_each_log_one_info_line(world: World, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="cni_bridge.report")
    world.call("ADD", ipspoofchk=True)
    world.call("ADD", cid="c2", ifname="eth1")
    world.call("DEL", ipspoofchk=True)
    world.call("GC", **gc_args({"cni.dev/valid-attachments": []}))
    lines = [r.getMessage() for r in caplog.records if r.name == "cni_bridge.report"]
    veth = host_veth_name("unit", "c1", "eth0")
    assert len(lines) == 4
    assert lines[0].startswith(f"ADD unit/c1/eth0: created veth {veth} on bridge cbu0 (eth0 in ")
    assert "addresses 10.50.0.2/29, fd00:50::2/120; ports 8080->80/tcp; ipspoofchk guard" in lines[0]
    assert lines[2] == (
        f"DEL unit/c1/eth0: removed veth {veth}; addresses 10.50.0.2/29, fd00:50::2/120; "
        "ports 8080->80/tcp; ipspoofchk guard; record"
    )
    assert lines[3].startswith("GC unit: removed unit/c2/eth1 (veth ")
