"""The operator commands (`cni-bridge ls|status|gc`) over records made by real ADDs, with the
netlink and nftables layers faked (no root)."""

from __future__ import annotations

import ipaddress
import json
import os
from pathlib import Path
from typing import Any

import pytest

from cni_bridge import admin
from cni_bridge.commands import add
from cni_bridge.commands import deps as deps_module
from cni_bridge.commands.common import ORIGINAL_NETNS_ENV, sandbox_path
from cni_bridge.commands.deps import Deps
from cni_bridge.config import load_netconf
from cni_bridge.ipam.disk import DiskStore
from cni_bridge.protocol.request import parse_request
from cni_bridge.resident import worker
from cni_bridge.state import NETWORK_FILE, STATE_DIR, StateStore, host_veth_name
from tests.unit.fakes import FakeFirewall, FakeNet

NET = "opnet"


class World:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.data_dir = tmp / "ipam"
        self.net = FakeNet()
        self.fw = FakeFirewall()

    def deps(self) -> Deps:
        return Deps(net_factory=lambda: self.net, firewall_factory=lambda: self.fw)

    def conf(self, **over: Any) -> dict[str, Any]:
        c: dict[str, Any] = {
            "cniVersion": "1.1.0",
            "name": NET,
            "type": "cni-bridge",
            "bridge": "cbop0",
            "isGateway": True,
            "ipMasq": True,
            "capabilities": {"portMappings": True},
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": "10.51.0.0/29"}], [{"subnet": "fd00:51::/125"}]],
                "dataDir": str(self.data_dir),
            },
        }
        c.update(over)
        return c

    def netns(self, name: str) -> str:
        p = self.tmp / f"ns-{name}"
        p.write_text("")  # stands in for an nsfs file: the fakes never open it
        return str(p)

    def add(self, cid: str, netns: str, host_port: int, env_extra: dict[str, str] | None = None
            ) -> dict[str, Any]:
        conf = self.conf(runtimeConfig={"portMappings": [{"hostPort": host_port, "containerPort": 80}]})
        env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": cid, "CNI_NETNS": netns,
               "CNI_IFNAME": "eth0", "CNI_PATH": "/nonexistent", **(env_extra or {})}
        req = parse_request(env, json.dumps(conf).encode())
        result: dict[str, Any] = add.run(req, load_netconf(req.config), env, self.deps())
        return result

    def kill_netns(self, path: str) -> None:
        """The namespace dies: its path goes, and the kernel takes the veth pair with it."""
        os.unlink(path)
        for netns, ifname in [k for k in self.net.container if k[0] == path]:
            self.net.delete_container_link(netns, ifname)

    def store(self) -> DiskStore:
        return DiskStore(NET, str(self.data_dir))

    def records(self) -> dict[str, Any]:
        return {a.container_id: a for a in StateStore(self.store().dir).all()}


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> World:
    w = World(tmp_path)
    # The operator builds its dependencies itself: hand it the fakes.
    monkeypatch.setattr(deps_module, "real_deps", lambda env: w.deps())
    return w


def run_op(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = admin.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_ls_lists_attachments_with_addresses_veth_and_ports(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = world.netns("a"), world.netns("b")
    world.add("ctr-a", a, 8080)
    world.add("ctr-b", b, 8081)
    code, out, _ = run_op(capsys, "ls", "--data-dir", str(world.data_dir), "--json")
    assert code == 0
    rows = {r["containerID"]: r for r in json.loads(out)}
    assert rows["ctr-a"] == {
        "network": NET,
        "containerID": "ctr-a",
        "ifname": "eth0",
        "addresses": ["10.51.0.2/29", "fd00:51::2/125"],
        "hostVeth": host_veth_name(NET, "ctr-a", "eth0"),
        "bridge": "cbop0",
        "ports": [":8080->80/tcp"],
        "phase": "ready",
        "netns": a,
        "netnsAlive": True,
    }
    assert rows["ctr-b"]["ports"] == [":8081->80/tcp"]

    world.kill_netns(b)
    code, out, _ = run_op(capsys, "ls", "--data-dir", str(world.data_dir))
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("NETWORK")
    (line_b,) = [line for line in lines if "ctr-b" in line]
    assert "(netns gone)" in line_b and "10.51.0.3/29" in line_b
    assert "(netns gone)" not in next(line for line in lines if "ctr-a" in line)
    # --network filters; an unknown one lists nothing.
    code, out, _ = run_op(capsys, "ls", "--data-dir", str(world.data_dir), "--network", "nope", "--json")
    assert code == 0 and json.loads(out) == []


def test_gc_removes_exactly_the_attachments_whose_netns_is_gone(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = world.netns("a"), world.netns("b")
    world.add("ctr-a", a, 8080)
    world.add("ctr-b", b, 8081)
    store = world.store()
    foreign = ipaddress.ip_address("10.51.0.6")
    with store.lock():  # another plugin's reservation in the same directory: not ours to judge
        assert store.reserve("other-plugin", "eth0", foreign, "0")
    recs = world.records()
    tag_b, veth_b = recs["ctr-b"].tag, recs["ctr-b"].host_veth

    world.kill_netns(b)
    code, out, err = run_op(capsys, "gc", "--data-dir", str(world.data_dir))
    assert code == 0, err
    assert f"{NET}: removed 1 attachment(s)" in out
    assert set(world.records()) == {"ctr-a"}
    with store.lock():
        owners = {str(ip): o for ip, o in store.reservations().items()}
    assert owners == {
        "10.51.0.2": ("ctr-a", "eth0"),
        "fd00:51::2": ("ctr-a", "eth0"),
        "10.51.0.6": ("other-plugin", "eth0"),
    }
    assert veth_b not in world.net.links and recs["ctr-a"].host_veth in world.net.links
    assert tag_b not in world.fw.elements and recs["ctr-a"].tag in world.fw.elements
    assert NET in world.fw.networks

    # Nothing else is dead: a second run removes nothing.
    code, out, _ = run_op(capsys, "gc", "--data-dir", str(world.data_dir))
    assert code == 0 and "removed 0" in out
    assert set(world.records()) == {"ctr-a"}


def test_gc_skips_a_network_without_saved_config(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    b = world.netns("b")
    world.add("ctr-b", b, 8081)
    os.unlink(world.data_dir / NET / STATE_DIR / NETWORK_FILE)
    world.kill_netns(b)
    code, _, err = run_op(capsys, "gc", "--data-dir", str(world.data_dir))
    assert code == 0
    assert "no readable network config" in err
    assert set(world.records()) == {"ctr-b"}  # without its config nothing is touched


def test_status_reports_pools_and_stale_attachments(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = world.netns("a"), world.netns("b")
    world.add("ctr-a", a, 8080)
    world.add("ctr-b", b, 8081)
    world.kill_netns(b)
    code, out, _ = run_op(capsys, "status", "--data-dir", str(world.data_dir), "--json")
    assert code == 3  # the fake firewall holds nothing: the host differs from the records
    (entry,) = json.loads(out)
    assert "nftables table inet cni_bridge is missing" in entry["drift"]
    assert entry["network"] == NET and entry["bridge"] == "cbop0"
    assert entry["attachments"] == 2 and entry["stale"] == 1
    assert entry["fatal"] == [] and entry["foreignDropChains"] == []
    assert entry["free"] == [3, 4]  # .2-.6 and ::2-::7, two of each taken

    for i, cid in enumerate(["c3", "c4", "c5"]):
        world.add(cid, world.netns(cid), 9000 + i)
    code, out, _ = run_op(capsys, "status", "--data-dir", str(world.data_dir))
    assert code == 2  # the IPv4 pool is exhausted
    assert "unavailable: no IP addresses available in range set 10.51.0.1-10.51.0.6" in out
    assert "free addresses per range set [0, 1]" in out


def test_records_and_results_name_the_runtimes_netns(world: World) -> None:
    """Under the resident, CNI_NETNS is the worker's descriptor path; the runtime's own path
    travels in ORIGINAL_NETNS_ENV and is what results and records must name."""
    assert ORIGINAL_NETNS_ENV == worker.ORIGINAL_NETNS_VAR
    runtime_path = world.netns("r")
    worker_path = "/proc/self/ns/net"  # any existing nsfs path under /proc
    out = world.add("res", worker_path, 8080, {ORIGINAL_NETNS_ENV: runtime_path})
    assert out["interfaces"][2]["sandbox"] == runtime_path
    rec = world.records()["res"]
    assert rec.netns == runtime_path
    assert rec.result is not None and rec.result["interfaces"][2]["sandbox"] == runtime_path
    # The netlink work used the path it was given.
    assert (worker_path, "eth0") in world.net.container


def test_sandbox_path_ignores_a_stray_original_outside_the_resident() -> None:
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "x", "CNI_NETNS": "/run/netns/real",
           "CNI_IFNAME": "eth0", "CNI_PATH": "/x", ORIGINAL_NETNS_ENV: "/run/netns/stale"}
    req = parse_request(env, json.dumps({"cniVersion": "1.1.0", "name": "n", "type": "t"}).encode())
    assert sandbox_path(req, env) == "/run/netns/real"
    env["CNI_NETNS"] = "/proc/123/fd/4"
    req = parse_request(env, json.dumps({"cniVersion": "1.1.0", "name": "n", "type": "t"}).encode())
    assert sandbox_path(req, env) == "/run/netns/stale"


def test_gc_judges_liveness_by_the_kernel_not_by_the_path(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    """A path this process cannot see (another mount namespace) is no sign of death: the veth
    with its peer in a namespace, or the recorded namespace inode still alive, keeps it."""
    hidden, by_inode, old, dead = (world.netns(n) for n in ("hidden", "inode", "old", "dead"))
    world.add("ctr-hidden", hidden, 8080)
    world.add("ctr-dead", dead, 8081)
    world.add("ctr-old", old, 8082)
    # Under the resident CNI_NETNS is a /proc path: the inode is what the kernel shows for it.
    world.add("ctr-inode", "/proc/self/ns/net", 8083, {ORIGINAL_NETNS_ENV: by_inode})
    recs = world.records()
    assert recs["ctr-inode"].netns_inode == os.stat("/proc/self/ns/net").st_ino
    os.unlink(hidden)  # not visible here, the namespace (and so its veth) lives on
    world.kill_netns(dead)
    # Alive by its inode alone, although its path is gone and its veth was taken away.
    os.unlink(by_inode)
    world.net.delete_link(recs["ctr-inode"].host_veth)
    # A record from before the inode was kept: only its veth can tell, and it is gone.
    world.net.delete_link(recs["ctr-old"].host_veth)
    rec_old = recs["ctr-old"]
    rec_old.netns_inode = 0
    with world.store().lock():
        StateStore(world.store().dir).put(rec_old)

    code, out, _ = run_op(capsys, "ls", "--data-dir", str(world.data_dir), "--json")
    alive = {r["containerID"]: r["netnsAlive"] for r in json.loads(out)}
    assert alive == {"ctr-hidden": True, "ctr-inode": True, "ctr-old": False, "ctr-dead": False}
    code, out, err = run_op(capsys, "gc", "--data-dir", str(world.data_dir))
    assert code == 0, err
    assert f"{NET}: removed 2 attachment(s)" in out
    assert set(world.records()) == {"ctr-hidden", "ctr-inode"}
    assert recs["ctr-hidden"].host_veth in world.net.links
