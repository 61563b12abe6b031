"""CNI 1.1 STATUS and GC, and state that survives crashes and reboots (issue 6).

Every test runs the real plugin as a process inside a throwaway "host" namespace and judges
the outcome by kernel state (`ip -j`, `nft -j list ruleset`) and by the files in the dataDir.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from cni_bridge.state import attachment_tag, boot_time, host_veth_name
from tests.lab import Netns, nft, ping, probe
from tests.lab.plugin import PluginLab
from tests.lab.poll import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.plugin]

PREFIX = "cbG"
ADD_STEPS = ["record", "ipam", "firewall", "bridge", "veth", "container", "ready"]
KILL_AT = "CNI_BRIDGE_TEST_KILL_AT"
HOST_PORT = 18080
OUTSIDE_HOST = "192.0.2.1"
V4_GW, V6_GW = "10.66.0.1", "fd00:66::1"
# What an ADD killed right before each step has already made (each step adds to the last).
# The firewall transaction starts at its step and runs beside the datapath steps, so a kill
# during those may come before or after it: its elements may or may not be there.
LEFT_BEFORE = {
    "record": set(),
    # With host-local the record is first written with the addresses, right after IPAM (the
    # reservation files name their owner until then); see commands/add.py.
    "ipam": set(),
    "firewall": {"record", "reservation"},
    "bridge": {"record", "reservation"},
    "veth": {"record", "reservation", "bridge"},
    "container": {"record", "reservation", "bridge", "veth"},
    "ready": {"record", "reservation", "bridge", "veth", "addresses", "nft"},
}
NFT_MAYBE = {"bridge", "veth", "container"}

@pytest.fixture
def glab(tmp_path: Path) -> Iterator[PluginLab]:
    lab = PluginLab(tmp_path, prefix=PREFIX)
    try:
        yield lab
    finally:
        lab.close()


# ---------------------------------------------------------------- observations


def _atoms(value: Any) -> Iterator[Any]:
    """Every scalar inside an nft JSON value (concatenations, prefixes, map data)."""
    if isinstance(value, dict):
        for v in value.values():
            yield from _atoms(v)
    elif isinstance(value, list):
        for v in value:
            yield from _atoms(v)
    else:
        yield value


def nft_elements(ns: Netns) -> list[tuple[str, str, set[Any]]]:
    """(set or map name, comment, scalars of key and data) of every element in our table."""
    out = []
    for obj in nft.ruleset(ns):
        for kind in ("set", "map"):
            s = obj.get(kind)
            if not s or s.get("family") != "inet" or s.get("table") != "cni_bridge":
                continue
            for raw in s.get("elem", []):
                data = None
                if isinstance(raw, list):
                    raw, data = raw
                comment = ""
                if isinstance(raw, dict) and "elem" in raw:
                    comment = str(raw["elem"].get("comment", ""))
                    raw = raw["elem"]["val"]
                out.append((s["name"], comment, set(_atoms(raw)) | set(_atoms(data))))
    return out


def elements_of(ns: Netns, tag: str = "", ips: tuple[str, ...] = (), port: int = 0,
                network: str = "") -> list[tuple[str, str, set[Any]]]:
    """The elements mentioning the attachment's tag, an address, the host port or the network."""
    found = []
    for name, comment, atoms in nft_elements(ns):
        words = comment.split()
        if (
            (tag and tag in words)
            or any(ip in atoms for ip in ips)
            or (port and port in atoms)
            or (network and words[:1] == [network])
        ):
            found.append((name, comment, atoms))
    return found


def host_veths(lab: PluginLab) -> list[str]:
    return [n for n in lab.host.links() if n.startswith("vcb")]


def records(lab: PluginLab, network: str) -> list[dict[str, Any]]:
    d = lab.data_dir / network / ".cni-bridge"
    if not d.is_dir():
        return []
    return [json.loads(p.read_text()) for p in sorted(d.glob("*.json"))]


def record_path(lab: PluginLab, network: str, cid: str) -> Path:
    return lab.data_dir / network / ".cni-bridge" / f"{attachment_tag(network, cid, 'eth0')}.json"


def owner_of(lab: PluginLab, network: str, ip: str) -> str:
    """The container ID in a host-local reservation file (`<id>\\r\\n<ifname>`)."""
    return (lab.data_dir / network / ip).read_bytes().decode().split("\r\n")[0]


def assert_gone(lab: PluginLab, conf: Mapping[str, Any], cid: str, ips: tuple[str, ...] = (),
                port: int = 0) -> None:
    """Nothing of attachment cid is left: host veth, reservations, record, nft elements."""
    net = conf["name"]
    tag = attachment_tag(net, cid, "eth0")
    assert host_veth_name(net, cid, "eth0") not in lab.host.links()
    owners = {ip: owner_of(lab, net, ip) for ip in lab.reservations(net)}
    assert cid not in owners.values(), owners
    assert not set(ips) & set(owners), owners
    assert not record_path(lab, net, cid).exists()
    assert elements_of(lab.host, tag=tag, ips=ips, port=port) == []


def assert_network_empty(lab: PluginLab, conf: Mapping[str, Any]) -> None:
    """After the last attachment: no veth, no reservation, no record, no nft element at all."""
    net = conf["name"]
    assert host_veths(lab) == []
    assert lab.reservations(net) == []
    assert records(lab, net) == []
    # A single network lives in this host namespace: none of its elements may remain.
    assert nft_elements(lab.host) == []


def addresses(result: Mapping[str, Any]) -> tuple[str, ...]:
    return tuple(ip["address"].split("/")[0] for ip in result["ips"])


def no_resident(**extra: str) -> dict[str, str]:
    # The kill hook must kill this very process, not a warm resident's worker.
    return {"CNI_BRIDGE_RESIDENT": "0", **extra}


def killed_add(lab: PluginLab, conf: Mapping[str, Any], cid: str, ns: Netns, step: str) -> None:
    code, out = lab.plugin("ADD", conf, cid, ns.path, extra=no_resident(**{KILL_AT: step}))
    assert code in (-9, 137), (code, out)
    assert out is None


def gc(lab: PluginLab, conf: Mapping[str, Any], valid: list[str], key: str = "cni.dev/valid-attachments"
       ) -> tuple[int, Any]:
    req = dict(conf, cniVersion="1.1.0")
    req[key] = [{"containerID": cid, "ifname": "eth0"} for cid in valid]
    return lab.plugin("GC", req)


def dual_stack_conf(lab: PluginLab, **over: Any) -> dict[str, Any]:
    return lab.conf(
        cniVersion="1.1.0",
        capabilities={"portMappings": True},
        runtimeConfig={"portMappings": [
            {"hostPort": HOST_PORT, "containerPort": 80, "protocol": "tcp"},
        ]},
        ipam={
            "type": "host-local",
            "ranges": [[{"subnet": "10.66.0.0/29"}], [{"subnet": "fd00:66::/125"}]],
            "dataDir": str(lab.data_dir),
        },
        **over,
    )


def with_port(conf: Mapping[str, Any], host_port: int) -> dict[str, Any]:
    return dict(conf, runtimeConfig={"portMappings": [
        {"hostPort": host_port, "containerPort": 80, "protocol": "tcp"},
    ]})


def serve_hello(lab: PluginLab, ns: Netns, port: int = 80) -> None:
    """Answers every TCP connection with "hello": the published container port."""
    lab.server(ns, "tcp", port, reply="hello")


def connect(ns: Netns, host: str, port: int) -> str:
    return probe(ns, "tcp", host, port, timeout=3) or "ERR (no answer)"


# ---------------------------------------------------------------- 1. SIGKILL at each ADD step


@pytest.mark.parametrize("step", ADD_STEPS)
def test_add_killed_at_each_step_is_cleaned_by_del_and_by_gc(glab: PluginLab, step: str) -> None:
    conf = dual_stack_conf(glab)
    net, cid = conf["name"], "crashy"
    tag = attachment_tag(net, cid, "eth0")
    c = glab.container()

    for cleanup in ("DEL", "GC"):
        killed_add(glab, conf, cid, c, step)
        # The kill really happened where asked: exactly the earlier steps' work is there.
        left = LEFT_BEFORE[step]
        assert record_path(glab, net, cid).exists() == ("record" in left)
        reserved = glab.reservations(net)
        assert len(reserved) == (2 if "reservation" in left else 0), reserved
        # The last DEL or GC of a network removes the bridge it made: the next ADD makes it again.
        assert (conf["bridge"] in glab.host.links()) == ("bridge" in left)
        assert host_veths(glab) == (["vcb" + tag] if "veth" in left else [])
        assert bool(c.links() != ["lo"] and c.addrs("eth0")) == ("addresses" in left)
        if step not in NFT_MAYBE:
            assert bool(elements_of(glab.host, tag=tag)) == ("nft" in left)

        if cleanup == "DEL":
            # containerd's second DEL: no netns at all.
            code, out = glab.plugin("DEL", conf, cid, "")
        else:
            code, out = gc(glab, conf, [])
        assert code == 0, out
        assert out is None
        assert_gone(glab, conf, cid, tuple(reserved), HOST_PORT)
        assert_network_empty(glab, conf)
        assert conf["bridge"] not in glab.host.links()
        assert c.links() == ["lo"]

    # And the same container can be added again, completely.
    result = glab.add(conf, cid, c)
    ips = addresses(result)
    assert len(ips) == 2
    assert sorted(a.split("/")[0] for a in c.addrs("eth0")) == sorted(ips)
    assert host_veths(glab) == ["vcb" + tag]
    assert sorted(glab.reservations(net)) == sorted(ips)
    assert [r["phase"] for r in records(glab, net)] == ["ready"]
    published = elements_of(glab.host, tag=tag)
    assert {name for name, _, _ in published} >= {"pub4_addr", "pub6_addr", "ports"}
    assert all(HOST_PORT in atoms for _, _, atoms in published)
    assert ping(c, V4_GW)


@pytest.mark.parametrize("step", ["container", "ready"])
def test_add_after_a_killed_add_replaces_its_leftovers(glab: PluginLab, step: str) -> None:
    """The runtime may simply retry the ADD: what the dead one left is cleared first."""
    conf = dual_stack_conf(glab)
    net, c = conf["name"], glab.container()
    killed_add(glab, conf, "retry", c, step)
    result = glab.add(conf, "retry", c)
    ips = addresses(result)
    assert sorted(a.split("/")[0] for a in c.addrs("eth0")) == sorted(ips)
    assert sorted(glab.reservations(net)) == sorted(ips)  # the dead ADD's addresses are freed
    assert host_veths(glab) == [host_veth_name(net, "retry", "eth0")]
    assert [r["phase"] for r in records(glab, net)] == ["ready"]
    assert ping(c, V4_GW)
    glab.delete(conf, "retry", c.path)
    assert_network_empty(glab, conf)


# ---------------------------------------------------------------- 2. GC keeps the valid ones


@pytest.mark.parametrize("key", ["cni.dev/valid-attachments", "cni.dev/attachments"])
def test_gc_keeps_valid_attachments_and_removes_the_rest(glab: PluginLab, key: str
                                                         ) -> None:
    conf = dual_stack_conf(glab)
    net = conf["name"]
    outside = glab.outside(glab.host)
    cids = ["keep", "drop1", "drop2"]
    nss = {cid: glab.container() for cid in cids}
    ports = {cid: HOST_PORT + i for i, cid in enumerate(cids)}
    results = {cid: glab.add(with_port(conf, ports[cid]), cid, nss[cid]) for cid in cids}
    # Another network on the same host, with the same container on it: GC of one network
    # must not touch another's attachments.
    other = with_port(glab.conf(
        name=f"other{glab.tag}", bridge=f"cbo{glab.tag}", cniVersion="1.1.0",
        capabilities={"portMappings": True}, isDefaultGateway=False,
        # Replies to "outside" leave through this network, whatever happens to the other.
        ipam={"type": "host-local", "ranges": [[{"subnet": "10.67.0.0/29"}]],
              "routes": [{"dst": "192.0.2.0/24"}], "dataDir": str(glab.data_dir)},
    ), HOST_PORT + 10)
    glab.add(other, "drop1", nss["drop1"], ifname="net1")
    other_veth = host_veth_name(other["name"], "drop1", "net1")
    for cid in cids:
        serve_hello(glab, nss[cid])
    # Everything answers before GC, so a silence afterwards means something.
    for port in [*ports.values(), HOST_PORT + 10]:
        assert connect(outside, OUTSIDE_HOST, port) == "hello"

    # Debris no record describes: a host veth of ours on the bridge and a stray reservation.
    stray = "vcbdeadbeef0001"
    glab.host.exec("ip", "link", "add", stray, "type", "veth", "peer", "name", "x0")
    glab.host.exec("ip", "link", "set", stray, "master", conf["bridge"])
    ghost_ip = "10.66.0.6"
    assert ghost_ip not in glab.reservations(net)
    (glab.data_dir / net / ghost_ip).write_bytes(b"ghost-container\r\neth0")

    code, out = gc(glab, conf, ["keep"], key=key)
    assert code == 0, out

    for cid in ("drop1", "drop2"):
        assert_gone(glab, conf, cid, addresses(results[cid]), ports[cid])
        # The peer went with the host veth.
        assert nss[cid].links() == (["lo", "net1"] if cid == "drop1" else ["lo"])
        assert connect(outside, OUTSIDE_HOST, ports[cid]).startswith("ERR")
    assert stray not in glab.host.links() and "x0" not in glab.host.links()
    assert ghost_ip not in glab.reservations(net)

    # The kept one is whole and works.
    keep_ips = addresses(results["keep"])
    assert sorted(host_veths(glab)) == sorted([host_veth_name(net, "keep", "eth0"), other_veth])
    assert sorted(glab.reservations(net)) == sorted(keep_ips)
    assert [r["container_id"] for r in records(glab, net)] == ["keep"]
    assert elements_of(glab.host, tag=attachment_tag(net, "keep", "eth0"))
    assert elements_of(glab.host, network=net)  # the network's own elements stay
    assert ping(nss["keep"], V4_GW) and ping(nss["keep"], V6_GW)
    assert connect(outside, OUTSIDE_HOST, ports["keep"]) == "hello"
    # The other network is untouched.
    assert glab.reservations(other["name"]) == ["10.67.0.2"]
    assert [r["container_id"] for r in records(glab, other["name"])] == ["drop1"]
    assert elements_of(glab.host, tag=attachment_tag(other["name"], "drop1", "net1"))
    assert connect(outside, OUTSIDE_HOST, HOST_PORT + 10) == "hello"


def test_gc_keeps_a_valid_attachment_whose_record_is_lost(glab: PluginLab) -> None:
    """The runtime's list is the authority on what is alive: an attachment it lists keeps its
    veth and its published port even when our record of it is gone (a data dir wiped by hand,
    an unreadable file)."""
    conf = dual_stack_conf(glab)
    net = conf["name"]
    outside = glab.outside(glab.host)
    a, b = glab.container(), glab.container()
    glab.add(with_port(conf, HOST_PORT), "lost", a)
    glab.add(with_port(conf, HOST_PORT + 1), "known", b)
    serve_hello(glab, a)
    record_path(glab, net, "lost").unlink()

    code, out = gc(glab, conf, ["lost", "known"])
    assert code == 0, out
    assert elements_of(glab.host, tag=attachment_tag(net, "lost", "eth0"), port=HOST_PORT)
    assert host_veth_name(net, "lost", "eth0") in glab.host.links()
    assert len(glab.reservations(net)) == 4
    assert connect(outside, OUTSIDE_HOST, HOST_PORT) == "hello"


# ---------------------------------------------------------------- 3. STATUS


def test_status_healthy_exhausted_and_version(glab: PluginLab) -> None:
    conf = glab.conf(
        cniVersion="1.1.0",
        ipam={"type": "host-local", "dataDir": str(glab.data_dir),
              "ranges": [[{"subnet": "10.66.0.0/24", "rangeStart": "10.66.0.9",
                           "rangeEnd": "10.66.0.9"}]]},
    )
    assert glab.plugin("STATUS", conf) == (0, None)  # nothing there yet
    c1, c2 = glab.container(), glab.container()
    assert addresses(glab.add(conf, "only", c1)) == ("10.66.0.9",)
    code, out = glab.plugin("STATUS", conf)
    assert code == 1 and out["code"] == 50, out
    assert "10.66.0.9" in out["msg"]
    # STATUS said so, and ADD agrees.
    code, out = glab.plugin("ADD", conf, "second", c2.path)
    assert code == 1 and out["code"] == 101, out
    assert c2.links() == ["lo"]
    glab.delete(conf, "only", c1.path)
    assert glab.plugin("STATUS", conf) == (0, None)

    # STATUS and GC came with 1.1.0: older versions are refused, and GC then removes nothing.
    old = dict(conf, cniVersion="1.0.0")
    code, out = glab.plugin("STATUS", old)
    assert code == 1 and out["code"] == 1, out
    glab.add(old, "kept", c1)
    code, out = glab.plugin("GC", dict(old, **{"cni.dev/valid-attachments": []}))
    assert code == 1 and out["code"] == 1, out
    assert glab.reservations(conf["name"]) == ["10.66.0.9"]
    assert host_veths(glab) == [host_veth_name(conf["name"], "kept", "eth0")]
    assert ping(c1, V4_GW)


def test_status_with_unwritable_data_dir_is_50(glab: PluginLab) -> None:
    conf = glab.conf(
        cniVersion="1.1.0",
        ipam={"type": "host-local", "dataDir": "/proc/sys/net/cbG-no-such-dir",
              "ranges": [[{"subnet": "10.66.0.0/24"}]]},
    )
    code, out = glab.plugin("STATUS", conf)
    assert code == 1 and out["code"] == 50, out
    assert "/proc/sys/net/cbG-no-such-dir" in out["msg"]
    assert not os.path.exists("/proc/sys/net/cbG-no-such-dir")


# ---------------------------------------------------------------- 4. reboot


def _fake_earlier_boot(lab: PluginLab, net: str, cid: str, ip: str, record: str = "rewritten") -> None:
    before = boot_time() - 3600
    os.utime(lab.data_dir / net / ip, (before, before))
    path = record_path(lab, net, cid)
    if record == "unreadable":
        # What a power loss can leave of a record renamed into place without fsync.
        path.write_bytes(b"")
        return
    rec = json.loads(path.read_text())
    rec["boot_id"] = "00000000-0000-0000-0000-000000000000"
    path.write_text(json.dumps(rec))


@pytest.mark.parametrize("record", ["rewritten", "unreadable"])
def test_earlier_boot_reservation_is_reclaimed_only_when_its_netns_is_gone(glab: PluginLab, record: str
                                                                           ) -> None:
    conf = glab.conf(
        cniVersion="1.1.0",
        ipam={"type": "host-local", "dataDir": str(glab.data_dir),
              "ranges": [[{"subnet": "10.66.0.0/24", "rangeStart": "10.66.0.2",
                           "rangeEnd": "10.66.0.3"}]]},
    )
    net = conf["name"]
    gone, alive, newcomer, late = (glab.container() for _ in range(4))
    ip_gone = addresses(glab.add(conf, "gone", gone))[0]
    ip_alive = addresses(glab.add(conf, "alive", alive))[0]
    _fake_earlier_boot(glab, net, "gone", ip_gone, record)
    _fake_earlier_boot(glab, net, "alive", ip_alive)

    if record == "rewritten":
        # Both namespaces still exist: nothing may be taken. (An unreadable record names no
        # namespace: its reservation from before the boot is all there is to go by.)
        code, out = glab.plugin("ADD", conf, "newcomer", newcomer.path)
        assert code == 1 and out["code"] == 101, out

    glab.remove([gone])
    result = glab.add(conf, "newcomer", newcomer)
    assert addresses(result) == (ip_gone,)
    assert newcomer.addrs("eth0") == [f"{ip_gone}/24"]
    assert owner_of(glab, net, ip_gone) == "newcomer"
    assert not record_path(glab, net, "gone").exists()

    code, out = glab.plugin("ADD", conf, "late", late.path)
    assert code == 1 and out["code"] == 101, out
    assert late.links() == ["lo"]
    # The live attachment kept its address, on disk and in the kernel.
    assert owner_of(glab, net, ip_alive) == "alive"
    assert alive.addrs("eth0") == [f"{ip_alive}/24"]
    assert record_path(glab, net, "alive").exists()
    assert ping(alive, V4_GW) and ping(newcomer, V4_GW)


# ---------------------------------------------------------------- 5. operator commands


def operator(lab: PluginLab, *args: str) -> tuple[int, str]:
    proc = lab.cli(*args)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.returncode, proc.stdout


def test_operator_ls_status_gc(glab: PluginLab) -> None:
    conf = dual_stack_conf(glab)
    net, d = conf["name"], str(glab.data_dir)
    cids = ["op1", "op2"]
    nss = {cid: glab.container() for cid in cids}
    results = {
        cid: glab.add(with_port(conf, HOST_PORT + i), cid, nss[cid]) for i, cid in enumerate(cids)
    }

    code, out = operator(glab, "ls", "--data-dir", d, "--json")
    assert code == 0, out
    rows = {r["containerID"]: r for r in json.loads(out)}
    assert set(rows) == set(cids)
    for i, cid in enumerate(cids):
        r = rows[cid]
        assert r["network"] == net and r["ifname"] == "eth0" and r["phase"] == "ready"
        assert tuple(a.split("/")[0] for a in r["addresses"]) == addresses(results[cid])
        assert r["hostVeth"] == host_veth_name(net, cid, "eth0") and r["hostVeth"] in glab.host.links()
        assert r["ports"] == [f":{HOST_PORT + i}->80/tcp"]
        assert r["netnsAlive"] is True

    code, out = operator(glab, "status", "--data-dir", d, "--json")
    assert code == 0, out
    (entry,) = json.loads(out)
    assert entry["network"] == net and entry["attachments"] == 2 and entry["stale"] == 0
    assert entry["fatal"] == [] and entry["bridge"] == conf["bridge"]
    assert entry["free"] == [3, 4]  # /29 with .2-.6; /125 with ::2-::7 (host-local's counts)

    glab.remove([nss["op1"]])
    # The kernel frees a deleted namespace (and the veth end in it) a moment later.
    assert wait_for(lambda: host_veth_name(net, "op1", "eth0") not in glab.host.links())
    code, out = operator(glab, "status", "--data-dir", d, "--json")
    assert code == 0 and json.loads(out)[0]["stale"] == 1, out

    code, out = operator(glab, "gc", "--data-dir", d)
    assert code == 0, out
    assert "removed 1" in out
    assert_gone(glab, conf, "op1", addresses(results["op1"]), HOST_PORT)
    # Exactly that one: the other is untouched and works.
    op2_ips = addresses(results["op2"])
    assert sorted(glab.reservations(net)) == sorted(op2_ips)
    assert host_veths(glab) == [host_veth_name(net, "op2", "eth0")]
    assert elements_of(glab.host, tag=attachment_tag(net, "op2", "eth0"), port=HOST_PORT + 1)
    assert ping(nss["op2"], V4_GW)
    code, out = operator(glab, "ls", "--data-dir", d, "--json")
    assert [r["containerID"] for r in json.loads(out)] == ["op2"]


def test_records_and_results_name_the_runtimes_netns_under_the_resident(glab: PluginLab) -> None:
    """A warm resident works in the container netns through a descriptor path of its worker
    (/proc/<pid>/fd/<n>), which dies with the worker: results and records must still name the
    namespace as the runtime did, or every later liveness check (reboot reclaim, `gc`) thinks
    a live container is gone."""
    conf = glab.conf(cniVersion="1.1.0")
    net = conf["name"]
    c = glab.container()
    via_resident = {"CNI_BRIDGE_RESIDENT": "1"}
    # The first call only starts the resident (and runs in-process); wait until it listens.
    assert glab.plugin("STATUS", conf, extra=via_resident) == (0, None)
    assert wait_for(lambda: "/run/cni-bridge/" in glab.host.exec("ss", "-xlH").stdout, timeout=30)
    code, out = glab.plugin("ADD", conf, "warm", c.path, extra=via_resident)
    assert code == 0, out
    assert out["interfaces"][2]["sandbox"] == c.path
    assert [r["netns"] for r in records(glab, net)] == [c.path]
    code, err = glab.plugin("CHECK", dict(conf, prevResult=out), "warm", c.path, extra=via_resident)
    assert code == 0, err

    d = str(glab.data_dir)
    code, listing = operator(glab, "ls", "--data-dir", d, "--json")
    assert [r["netnsAlive"] for r in json.loads(listing)] == [True]
    assert operator(glab, "gc", "--data-dir", d)[0] == 0
    assert host_veths(glab) == [host_veth_name(net, "warm", "eth0")]
    assert ping(c, V4_GW)
