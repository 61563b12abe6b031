"""Held ports without root: which sockets records ask for, the plan, /proc/net parsing, ADD's
check with a fake bind and the status report (the agent's duty: test_ports_duty.py)."""

from __future__ import annotations

import errno
import json
import time
from collections.abc import Callable, Sequence
from ipaddress import ip_address
from pathlib import Path
from typing import NoReturn

import pytest

from cni_bridge.commands.deps import Deps
from cni_bridge.errors import PORT_CONFLICT, CNIError
from cni_bridge.firewall.model import PortMapping
from cni_bridge.ports import check, lockfile, lookup, report, sockets
from cni_bridge.ports.holder import Holder
from cni_bridge.ports.model import (
    HoldKey,
    Target,
    keys_for,
    plan,
    runtime_holds_ports,
    wanted_for,
    wanted_from_record,
)
from cni_bridge.ports.records import Records
from tests.firewall_json import port_map
from tests.unit.test_commands import World

T4, T6 = "10.66.0.2", "fd00:66::2"


def test_every_address_is_held_in_both_families_whatever_the_network() -> None:
    wanted = wanted_for([port_map(8080, 80)], [f"{T4}/24"])
    assert wanted == {
        HoldKey("tcp", "0.0.0.0", 8080): Target(T4, 80),
        # An IPv4-only container: [::] (and so [::1]) relays to its IPv4 address.
        HoldKey("tcp", "::", 8080): Target(T4, 80),
    }
    dual = wanted_for([port_map(8080, 80)], [f"{T4}/24", f"{T6}/64"])
    assert dual[HoldKey("tcp", "::", 8080)] == Target(T6, 80)


def test_host_ip_ranges_and_protocols() -> None:
    mappings = [
        port_map(53, 5353, "udp", ip_address("127.0.0.1")),
        port_map(9000, 90, "tcp", ip_address("::"), 9001),
        port_map(7000, 70, "sctp"),
    ]
    assert keys_for(mappings) == [
        HoldKey("udp", "127.0.0.1", 53),
        HoldKey("tcp", "::", 9000),
        HoldKey("tcp", "::", 9001),
    ]
    wanted = wanted_for(mappings, [f"{T4}/24"])
    assert wanted[HoldKey("tcp", "::", 9001)] == Target(T4, 91)
    assert wanted_for(mappings, []) == dict.fromkeys(keys_for(mappings))
    assert str(HoldKey("tcp", "::", 9000)) == "tcp/9000 on [::]"


def test_podman_holds_its_own_sockets_and_leaves_us_the_ipv6_one() -> None:
    assert runtime_holds_ports("IgnoreUnknown=1;K8S_POD_NAME=web")
    assert runtime_holds_ports("IgnoreUnknown=1;K8S_POD_NAME=web;IP=10.0.0.5")
    cri = "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;K8S_POD_UID=u"
    assert not runtime_holds_ports(cri)
    assert not runtime_holds_ports("")
    mappings = [port_map(8080, 80), port_map(53, 53, "udp", ip_address("10.1.1.1"))]
    assert keys_for(mappings, runtime_holds=True) == [HoldKey("tcp", "::", 8080)]
    record = {"ips": [f"{T4}/24"], "runtime_holds_ports": True,
              "port_mappings": [{"hostPort": 8080, "containerPort": 80}]}
    assert wanted_from_record(record) == {HoldKey("tcp", "::", 8080): Target(T4, 80)}


def test_wanted_from_record_reads_what_records_keep() -> None:
    record = {
        "ips": [f"{T4}/24"],
        "port_mappings": [{"hostPort": 80, "containerPort": 8080, "protocol": "tcp"}, {"bad": 1}],
    }
    assert wanted_from_record(record) == {
        HoldKey("tcp", "0.0.0.0", 80): Target(T4, 8080),
        HoldKey("tcp", "::", 80): Target(T4, 8080),
    }
    assert wanted_from_record({"ips": [], "port_mappings": []}) == {}


def test_plan() -> None:
    a, b, c = (HoldKey("tcp", "0.0.0.0", p) for p in (1, 2, 3))
    held = {a: Target(T4, 1), b: Target(T4, 2)}
    p = plan({b: Target(T6, 2), c: Target(T4, 3)}, held)
    assert p.close == [a] and p.open == [(c, Target(T4, 3))] and p.retarget == [(b, Target(T6, 2))]


def test_holder_indexes_records_by_socket() -> None:
    h = Records(data_dirs=list)
    a, b = HoldKey("tcp", "0.0.0.0", 1), HoldKey("tcp", "::", 1)
    assert h.replace(("n", "y"), {a: Target(T4, 1), b: None}, "net/y/eth0") == [a, b]
    assert h.replace(("n", "x"), {a: Target(T6, 1)}, "net/x/eth0") == [a]
    # Two records wanting one socket (one of them stale): the first sorted owner's target.
    assert h.wanted([a, b]) == {a: Target(T6, 1), b: None}
    assert h.replace(("n", "x"), {}, "") == [a]
    assert h.wanted([a, b]) == {a: Target(T4, 1), b: None}
    h.replace(("n", "y"), {}, "")
    assert h.wanting == {} and h.records == {} and h.wanted([a, b]) == {}


PROC_TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1
   1: 0100007F:1F90 0200000A:C350 01 00000000:00000000 00:00000000 00000000     0        0 4243 1
   2: 00000000:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4244 1
"""
PROC_TCP6 = """\
  sl  local_address                         remote_address                        st tx_queue
   0: 00000000000000000000000000000000:1F91 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 5151 1
   1: 00000000000000000000000001000000:1F92 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 5252 1
"""


def test_proc_net_parsing_and_collisions() -> None:
    v4 = lookup.parse_proc_net(PROC_TCP)
    v6 = lookup.parse_proc_net(PROC_TCP6)
    assert v4[0] == lookup.SockEntry("127.0.0.1", 8080, lookup.TCP_LISTEN, 4242)
    assert v6[1].address == "::1" and v6[1].port == 8082
    tables = [(False, v4), (True, v6)]
    # A listener on 127.0.0.1 collides with holding 0.0.0.0, not an established connection.
    assert lookup.colliding(HoldKey("tcp", "0.0.0.0", 8080), tables) == [4242]
    assert lookup.colliding(HoldKey("tcp", "10.0.0.1", 8080), tables) == []
    assert lookup.colliding(HoldKey("tcp", "10.0.0.1", 80), tables) == [4244]  # a wildcard
    # A dual-stack [::] listener takes the IPv4 port too; [::1] only the IPv6 one.
    assert lookup.colliding(HoldKey("tcp", "0.0.0.0", 8081), tables) == [5151]
    assert lookup.colliding(HoldKey("tcp", "0.0.0.0", 8082), tables) == []
    assert lookup.colliding(HoldKey("tcp", "::", 8082), tables) == [5252]
    assert lookup.describe([(12, "nc"), (13, "nc")]) == "pid 12 (nc), pid 13 (nc)"


def _busy(key: HoldKey, listen: bool) -> NoReturn:
    raise OSError(errno.EADDRINUSE, "Address already in use")


def test_check_names_the_holder_and_lets_our_own_holder_be(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sockets, "bind", _busy)
    mappings = [port_map(8080, 80)]
    with pytest.raises(CNIError) as err:
        check.check(mappings, holders=lambda key: [(77, "nginx")], ours=set)
    assert err.value.code == PORT_CONFLICT
    assert "tcp/8080 on 0.0.0.0" in err.value.msg and "pid 77 (nginx)" in err.value.msg
    ours = {"tcp/8080 on 0.0.0.0", "tcp/8080 on [::]"}
    check.check(mappings, holders=lambda key: [], ours=lambda: ours)
    # podman's conmon holds 0.0.0.0 (a `network reload` repeats the ADD): its to check.
    with pytest.raises(CNIError) as err:
        check.check(mappings, runtime_holds=True, holders=lambda key: [(7, "x")], ours=set)
    assert "tcp/8080 on [::]" in err.value.msg
    check.check(mappings, runtime_holds=True, holders=lambda key: [], ours=lambda: ours)


def test_check_skips_a_family_the_host_lacks(monkeypatch: pytest.MonkeyPatch) -> None:
    class Sock:
        def close(self) -> None:
            pass

    def bind(key: HoldKey, listen: bool) -> Sock:
        if key.family == 6:
            raise OSError(errno.EAFNOSUPPORT, "Address family not supported")
        return Sock()

    monkeypatch.setattr(sockets, "bind", bind)
    check.check([port_map(8080, 80)], holders=lambda key: [], ours=set)


def test_status_report() -> None:
    assert report.held_ports("a", None)["agent"] is False
    answer = {
        "pid": 9,
        "failed": [
            {"port": "tcp/1 on 0.0.0.0", "reason": "held by pid 3 (x)", "attachment": "a/c1/eth0"},
            {"port": "tcp/2 on 0.0.0.0", "reason": "held by pid 4 (y)", "attachment": "b/c2/eth0"},
        ],
    }
    rep = report.held_ports("a", answer)
    assert rep["holderPid"] == 9 and [u["port"] for u in rep["unheld"]] == ["tcp/1 on 0.0.0.0"]
    assert report.problems(rep) == [
        "published port tcp/1 on 0.0.0.0 of a/c1/eth0 is not held: held by pid 3 (x)"
    ]


def _record(path: Path, tag: str, veth: str, phase: str = "ready", port: int = 80) -> None:
    (path / ".cni-bridge").mkdir(parents=True, exist_ok=True)
    data = {
        "network": path.name, "container_id": tag, "ifname": "eth0", "host_veth": veth,
        "phase": phase, "ips": [f"{T4}/24"],
        "port_mappings": [{"hostPort": port, "containerPort": 8080, "protocol": "tcp"}],
    }
    (path / ".cni-bridge" / f"{tag}.json").write_text(json.dumps(data))


def test_records_want_what_ready_records_of_this_namespace_publish(tmp_path: Path) -> None:
    net = tmp_path / "data" / "net1"
    _record(net, "here", "lo")  # "lo" stands for a host veth present in this namespace
    _record(net, "gone", "vcbnotthere1", port=81)
    _record(net, "adding", "lo", phase="adding", port=82)
    (net / ".cni-bridge" / "network.json").write_text("{}")
    recs = Records(data_dirs=lambda: [str(tmp_path / "data"), str(tmp_path / "missing")])
    recs.scan_all()
    key4 = HoldKey("tcp", "0.0.0.0", 80)
    assert recs.wanted(recs.wanting) == {
        key4: Target(T4, 8080), HoldKey("tcp", "::", 80): Target(T4, 8080)
    }
    assert recs.owner_of(key4) == "net1/here/eth0"
    (net / ".cni-bridge" / "here.json").unlink()
    assert sorted(recs.read_one(str(net), "here")) == [key4, HoldKey("tcp", "::", 80)]
    assert recs.wanting == {} and recs.told == {str(tmp_path / "data")}


class FakePorts:
    """What ADD and DEL tell the holder, with whether the record existed at that moment."""

    def __init__(self, world: World, refuse: bool) -> None:
        self.world = world
        self.refuse = refuse
        self.calls: list[tuple[str, bool]] = []

    def check(self, mappings: Sequence[PortMapping], runtime_holds: bool) -> None:
        self.calls.append(("check", bool(self.world.records())))

    def hold(self, network_dir: str, tag: str) -> None:
        self.calls.append(("hold", bool(self.world.records())))
        if self.refuse:
            raise CNIError(PORT_CONFLICT, "host port tcp/8080 on 0.0.0.0 could not be held")

    def changed(self, network_dir: str, tag: str) -> None:
        self.calls.append(("changed", bool(self.world.records())))


class PortsWorld(World):
    def __init__(self, tmp_path: Path, refuse: bool) -> None:
        netns = tmp_path / "netns"
        netns.write_text("")  # stands in for an nsfs file; the fakes never open it
        super().__init__(tmp_path, str(netns))
        self.ports = FakePorts(self, refuse)

    def deps(self) -> Deps:
        return Deps(
            net_factory=lambda: self.net,
            firewall_factory=lambda: self.fw,
            ports_factory=lambda: self.ports,
        )


def test_add_holds_its_ports_and_del_releases_them(tmp_path: Path) -> None:
    world = PortsWorld(tmp_path, refuse=False)
    world.call("ADD")
    assert world.ports.calls == [("check", False), ("hold", True)]
    world.call("DEL")
    assert world.ports.calls[2:] == [("changed", False)]


def test_a_port_the_holder_cannot_take_fails_the_add_and_undoes_it(tmp_path: Path) -> None:
    world = PortsWorld(tmp_path, refuse=True)
    with pytest.raises(CNIError) as err:
        world.call("ADD")
    assert err.value.code == PORT_CONFLICT
    # The holder is told again once the record is gone, so it lets the sockets go.
    assert world.ports.calls == [("check", False), ("hold", True), ("changed", False)]
    assert world.records() == [] and world.store().reservations() == {}
    assert world.net.links.keys() <= {"cbu0"} and world.fw.elements == {}


def test_lock_files_are_taken_released_and_swept(tmp_path: Path) -> None:
    held = lockfile.take(str(tmp_path / "ports-1.lock"), lambda: False)
    assert held is not None
    (tmp_path / "ports-1.sock").write_text("")
    # Another taker gives up when told; a sweep leaves a held lock alone.
    assert lockfile.take(str(tmp_path / "ports-1.lock"), lambda: False) is None
    for stale in ("ports-2.lock", "ports-2.sock", "ports-3.lock", "other.lock"):
        (tmp_path / stale).write_text("")
    assert lockfile.sweep(str(tmp_path), "ports-") == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.lock", "ports-1.lock", "ports-1.sock"]
    lockfile.release(held, str(tmp_path / "ports-1.lock"), str(tmp_path / "ports-1.sock"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.lock"]


def test_a_malformed_record_costs_its_own_ports_not_the_holder(tmp_path: Path) -> None:
    # The holder reads records in its asyncio loop: an exception there ends it, and it would
    # end again at every restart, so one bad file would leave every published port unheld.
    net = tmp_path / "data" / "net1"
    _record(net, "good", "lo")
    bad: dict[str, dict[str, object]] = {
        "not-an-object": {"port_mappings": ["80:8080"]},
        "infinite": {"port_mappings": [{"hostPort": 1e999, "containerPort": 80}]},
        "nul-veth": {"host_veth": "lo\u0000x"},
    }
    for i, (tag, fields) in enumerate(bad.items()):
        _record(net, tag, "lo", port=90 + i)
        path = net / ".cni-bridge" / f"{tag}.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **fields}))
    recs = Records(data_dirs=lambda: [str(tmp_path / "data")])
    recs.scan_all()
    assert set(recs.wanting) == {HoldKey("tcp", "0.0.0.0", 80), HoldKey("tcp", "::", 80)}
    for tag in bad:
        assert recs.read_one(str(net), tag) == []



def _ask_status_from_a_thread(path: str) -> list[object]:
    """Ask the control socket at `path` for the status, twice, from a thread (the test runs the
    holder's loop); the answers land in the list."""
    import socket
    import threading

    from cni_bridge.ports import control

    answers: list[object] = []

    def ask() -> None:
        for _ in range(2):
            with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as c:
                c.settimeout(10)
                c.connect(path)
                c.send(json.dumps({"op": "status"}).encode())
                answers.append(json.loads(c.recv(control.MAX_MESSAGE)))

    threading.Thread(target=ask, daemon=True).start()
    return answers


def _spin(loop: object, done: Callable[[], bool], timeout: float = 20) -> None:
    from cni_bridge.ports.loop import Loop

    assert isinstance(loop, Loop)
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline
        loop.run_once(0.05)


def test_the_control_loop_outlives_a_lack_of_descriptors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every relayed connection costs the holder two descriptors, and anyone on the host can
    # open connections to [::1]:port: at its limit accept() fails with EMFILE. That must not
    # end the holder (every port let go, for a host program to take), only delay the answer.
    import socket

    from cni_bridge.ports import holder as holder_mod

    failures = [OSError(errno.EMFILE, "Too many open files")] * 2

    class Flaky(socket.socket):
        def accept(self) -> tuple[socket.socket, object]:
            if failures:
                raise failures.pop()
            return super().accept()

    path = str(tmp_path / "ctl.sock")
    listener = Flaky(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(path)
    listener.listen(8)
    listener.setblocking(False)
    monkeypatch.setattr(holder_mod, "ACCEPT_RETRY", 0.01)
    holder = Holder(Records(list))
    holder_mod.Control(holder, listener)
    try:
        answers = _ask_status_from_a_thread(path)
        _spin(holder.loop, lambda: len(answers) == 2)
    finally:
        holder.loop.shut()  # its epoll descriptor and the listener: nothing left to a later test
    assert isinstance(answers[0], dict) and answers[0]["held"] == [] and not failures


def test_a_holder_named_in_any_bytes_is_described(tmp_path: Path) -> None:
    # Anyone may name their process anything (prctl PR_SET_NAME takes bytes): a name that is
    # not UTF-8 raised out of the lookup, which ended the holder at each retry (every port let
    # go) and gave ADD's check a traceback.
    proc = tmp_path / "proc"
    (proc / "4242" / "fd").mkdir(parents=True)
    (proc / "4242" / "fd" / "3").symlink_to("socket:[555]")
    (proc / "4242" / "comm").write_bytes(b"evil\xff\xfe\n")
    found = lookup.processes([555], proc=str(proc))
    assert found == [(4242, "evil\\xff\\xfe")]
    assert lookup.describe(found) == "pid 4242 (evil\\xff\\xfe)"


def test_one_request_failing_does_not_end_the_holder(tmp_path: Path) -> None:
    # An exception out of one request ended the control loop, hence the holder: every port
    # let go (for a host program to take) and every relayed connection cut, for one message.
    import socket
    from typing import Any

    from cni_bridge.ports import holder as holder_mod

    path = str(tmp_path / "ctl.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(path)
    listener.listen(8)
    listener.setblocking(False)
    holder = Holder(Records(list))
    real = holder.handle
    failures = [RuntimeError("a bug")]

    def handle(message: Any) -> dict[str, Any]:
        if failures:
            raise failures.pop()
        return real(message)

    holder.handle = handle  # type: ignore[method-assign]
    holder_mod.Control(holder, listener)
    try:
        answers = _ask_status_from_a_thread(path)
        _spin(holder.loop, lambda: len(answers) == 2)  # the loop ran on: no exception out of it
    finally:
        holder.loop.shut()
    first, second = answers
    assert isinstance(first, dict) and "error" in first
    assert isinstance(second, dict) and second["held"] == []


def test_ports_found_taken_together_are_named_with_one_walk(monkeypatch: pytest.MonkeyPatch) -> None:
    # Naming who holds a port walks every process's descriptors (~90 ms on a busy host) in the
    # agent's loop: one walk per taken port made an ADD wait N walks behind N taken ports.
    import os
    import socket

    takers = [socket.socket() for _ in range(3)]
    walks: list[str] = []
    listdir = os.listdir

    def counting(path: str) -> list[str]:
        if path == "/proc":
            walks.append(path)
        return listdir(path)

    monkeypatch.setattr(os, "listdir", counting)
    holder = Holder(Records(list))
    try:
        for i, taker in enumerate(takers):
            taker.bind(("127.0.0.1", 0))
            taker.listen(1)
            holder.want.replace(("net", f"c{i}"), {
                HoldKey("tcp", "127.0.0.1", taker.getsockname()[1]): Target(T4, 80)
            }, f"net/c{i}/eth0")
        holder.apply()
        assert len(walks) == 1
        mine = f"pid {os.getpid()} "
        assert len(holder.failed) == 3
        assert all(why.startswith("held by") and mine in why for why in holder.failed.values())
        holder.apply()  # still taken: named already, no walk
        assert len(walks) == 1 and len(holder.failed) == 3
    finally:
        holder.close()
        holder.loop.shut()
        for taker in takers:
            taker.close()


def test_relays_leave_the_agent_its_reserve_of_descriptors(monkeypatch: pytest.MonkeyPatch) -> None:
    # The relays share the agent's descriptor table and anyone can connect to [::1]:port: past
    # the reserve a relay stops accepting (its listener paused), so the agent's own work (its
    # listener, requests, workers' channels) always finds descriptors.
    import resource
    import socket

    from cni_bridge.ports import loop as loop_mod
    from cni_bridge.ports.proxy import TcpRelay

    loop = loop_mod.Loop(lambda _: None)
    target = socket.socket()
    held = socket.socket()
    clients = [socket.socket() for _ in range(3)]
    try:
        target.bind(("127.0.0.1", 0))
        target.listen(8)  # never accepts: the kernel completes the relays' connects
        held.bind(("127.0.0.1", 0))
        held.listen(8)
        held.setblocking(False)
        relay = TcpRelay(loop, held, lambda: Target("127.0.0.1", target.getsockname()[1]))
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        room_for_one = soft - len(loop.owned) - 2  # one connection: two descriptors
        monkeypatch.setattr(loop_mod, "AGENT_RESERVE", room_for_one)
        for client in clients:
            client.connect(held.getsockname())
        for _ in range(5):
            loop.run_once(0.05)
        assert len(relay.conns) == 1
    finally:
        loop.shut()
        for sock in (target, held, *clients):
            sock.close()
