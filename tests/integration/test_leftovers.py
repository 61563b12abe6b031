"""No leftovers, and liveness the kernel judges (issue 14, items 5 and 6).

The real plugin runs as a process in a throwaway "host" namespace; outcomes are judged by
kernel state (`ip -j`, `nft -j list ruleset`), real packets and the files in the data dir.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cni_bridge.state import host_veth_name
from tests.lab import nft, ping, probe
from tests.lab.plugin import ROOT, PluginLab, in_host, plugin_command
from tests.lab.poll import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.plugin]

PREFIX = "cbF"


@pytest.fixture
def flab(tmp_path: Path) -> Iterator[PluginLab]:
    lab = PluginLab(tmp_path, prefix=PREFIX)
    try:
        yield lab
    finally:
        lab.close()


def records(lab: PluginLab, network: str) -> list[dict[str, Any]]:
    d = lab.data_dir / network / ".cni-bridge"
    return [json.loads(p.read_text()) for p in sorted(d.glob("*.json"))] if d.is_dir() else []


# ---------------------------------------------------------------- 6. GC liveness


def cli_hiding_run_netns(lab: PluginLab, *args: str) -> subprocess.CompletedProcess[str]:
    """An operator command from a mount namespace of its own in which /run/netns is an empty
    tmpfs (a DaemonSet or `kubectl debug node` shell that mounts only the CNI data dir): the
    containers' netns paths do not exist there, their namespaces do. Private propagation
    (unshare's default) keeps the tmpfs out of every other mount namespace."""
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONPATH": str(ROOT)}
    script = 'mount -t tmpfs cbF-hide /run/netns && test -z "$(ls /run/netns)" && exec "$@"'
    argv = in_host(lab.host, env, ["unshare", "--mount", "--propagation", "private",
                                   "sh", "-c", script, "sh", *plugin_command(), *args])
    return subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=60, cwd=ROOT)


def test_gc_from_a_mount_namespace_without_run_netns_keeps_live_attachments(flab: PluginLab
                                                                            ) -> None:
    conf = flab.conf(cniVersion="1.1.0")
    net, d = conf["name"], str(flab.data_dir)
    live, dead = flab.container(), flab.container()
    flab.add(conf, "live", live)
    flab.add(conf, "dead", dead)
    flab.remove([dead])
    # The kernel frees a deleted namespace, and the veth end in it, a moment later.
    assert wait_for(lambda: host_veth_name(net, "dead", "eth0") not in flab.host.links())
    assert all(r["netns_inode"] for r in records(flab, net))

    listing = cli_hiding_run_netns(flab, "ls", "--data-dir", d, "--json")
    assert listing.returncode == 0, listing.stderr
    assert {r["containerID"]: r["netnsAlive"] for r in json.loads(listing.stdout)} == {
        "live": True, "dead": False}

    proc = cli_hiding_run_netns(flab, "gc", "--data-dir", d)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert f"{net}: removed 1 attachment(s)" in proc.stdout
    assert [r["container_id"] for r in records(flab, net)] == ["live"]
    assert [n for n in flab.host.links() if n.startswith("vcb")] == [
        host_veth_name(net, "live", "eth0")]
    assert flab.reservations(net) == ["10.66.0.2"]
    assert ping(live, "10.66.0.1")
    # The tmpfs stayed in its own mount namespace.
    assert live.exists()


def test_gc_keeps_a_live_namespace_by_its_inode_when_its_veth_is_gone(flab: PluginLab) -> None:
    """Without its veth the attachment is broken but its container lives: a manual gc removes
    only what is dead. Its record from before the inode was kept has only the veth to go by."""
    conf = flab.conf(cniVersion="1.1.0")
    net, d = conf["name"], str(flab.data_dir)
    a, b = flab.container(), flab.container()
    flab.add(conf, "a", a)
    flab.add(conf, "b", b)
    # A container's own process: what shows its namespace to a caller that cannot see the
    # bind mount (both have one; only a's record has the inode to compare).
    for ns in (a, b):
        flab.spawn(ns, ["sleep", "600"])
    for cid in ("a", "b"):
        flab.host.ip("link", "del", host_veth_name(net, cid, "eth0"))
    path = next(p for p in (flab.data_dir / net / ".cni-bridge").glob("*.json")
                if json.loads(p.read_text())["container_id"] == "b")
    old = json.loads(path.read_text())
    del old["netns_inode"]
    path.write_text(json.dumps(old))

    proc = cli_hiding_run_netns(flab, "gc", "--data-dir", d)
    assert proc.returncode == 0, proc.stderr
    assert f"{net}: removed 1 attachment(s)" in proc.stdout
    assert [r["container_id"] for r in records(flab, net)] == ["a"]
    assert flab.reservations(net) == ["10.66.0.2"]


def test_gc_is_not_fooled_by_a_reused_netns_inode_number(flab: PluginLab) -> None:
    """The kernel gives a freed namespace's inode number to the next namespace it makes (other
    tests on this machine did, within moments): the recorded cookie tells them apart. Here the
    dead attachment's record is given the inode of a live, unrelated namespace."""
    conf = flab.conf(cniVersion="1.1.0")
    net, d = conf["name"], str(flab.data_dir)
    dead, other = flab.container(), flab.netns("other")
    flab.add(conf, "dead", dead)
    flab.spawn(other, ["sleep", "600"])  # shows the other namespace through /proc/<pid>/ns/net
    (path,) = (flab.data_dir / net / ".cni-bridge").glob("*.json")
    rec = json.loads(path.read_text())
    assert rec["netns_cookie"] > 0
    flab.remove([dead])
    identity = other.identity()
    assert identity is not None
    rec["netns_inode"] = identity[1]
    path.write_text(json.dumps(rec))

    proc = cli_hiding_run_netns(flab, "gc", "--data-dir", d)
    assert proc.returncode == 0, proc.stderr
    assert f"{net}: removed 1 attachment(s)" in proc.stdout
    assert records(flab, net) == [] and flab.reservations(net) == []


# ---------------------------------------------------------------- 5. no leftovers


def _strip_counters(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_counters(v) for k, v in value.items() if k not in ("counter", "handle")}
    if isinstance(value, list):
        return [_strip_counters(v) for v in value]
    return value


def host_state(lab: PluginLab) -> dict[str, Any]:
    """What an ADD could leave on the host: links, addresses, routes, the whole ruleset."""
    h = lab.host
    return {
        "links": sorted(h.links()),
        "addrs": sorted(f"{d['ifname']} {a['local']}/{a['prefixlen']}"
                        for d in h.ip_json("addr", "show") for a in d.get("addr_info", [])),
        "routes": sorted(json.dumps(r, sort_keys=True)
                         for fam in ("-4", "-6") for r in h.ip_json(fam, "route", "show")),
        "ruleset": _strip_counters(nft.ruleset(h)),
    }


def published(lab: PluginLab, name: str, bridge: str, subnet: str, port: int) -> dict[str, Any]:
    return lab.conf(
        name=name, bridge=bridge, cniVersion="1.1.0", capabilities={"portMappings": True},
        runtimeConfig={"portMappings": [{"hostPort": port, "containerPort": 80, "protocol": "tcp"}]},
        ipam={"type": "host-local", "ranges": [[{"subnet": subnet}]], "dataDir": str(lab.data_dir)},
    )


def test_refused_and_failed_adds_leave_nothing(flab: PluginLab) -> None:
    flab.outside(flab.host)
    tag = flab.tag
    a = published(flab, f"a{tag}", f"cba{tag}", "10.66.0.0/24", 18100)
    flab.add(a, "a1", flab.container())
    before = host_state(flab)

    # Refused: its subnet is the live network a's (the holder is named).
    c = flab.container()
    same_subnet = published(flab, f"b{tag}", f"cbb{tag}", "10.66.0.0/24", 18101)
    code, out = flab.plugin("ADD", same_subnet, "b1", c.path)
    assert code == 1 and out["code"] == 7, out
    assert f"address 10.66.0.1/24 on cba{tag}" in out["msg"], out
    assert host_state(flab) == before
    assert c.links() == ["lo"]
    assert flab.reservations(f"b{tag}") == []

    # Failed after the bridge, its address and the veth were made: the host port is a's.
    port_taken = published(flab, f"b{tag}", f"cbb{tag}", "10.67.0.0/24", 18100)
    code, out = flab.plugin("ADD", port_taken, "b1", c.path)
    assert code == 1 and out["code"] == 100, out
    assert host_state(flab) == before
    assert c.links() == ["lo"]
    assert flab.reservations(f"b{tag}") == []


def test_a_foreign_holder_of_the_subnet_is_named_and_nothing_is_left(flab: PluginLab) -> None:
    """podman's cni-podman1 on 10.89.0.0/24, and a route to a wider range via another link."""
    flab.outside(flab.host)
    h = flab.host
    h.ip_batch(["link add cni-podman1 type bridge", "link set cni-podman1 up",
                "addr add 10.89.0.1/24 dev cni-podman1",
                "route add 10.90.0.0/16 via 192.0.2.2"])
    before = host_state(flab)
    c = flab.container()
    for subnet, holder in (("10.89.0.0/24", "address 10.89.0.1/24 on cni-podman1"),
                           ("10.90.7.0/24", "route 10.90.0.0/16 via 192.0.2.2 dev up")):
        conf = published(flab, f"n{flab.tag}", f"cbn{flab.tag}", subnet, 18102)
        code, out = flab.plugin("ADD", conf, "c1", c.path)
        assert code == 1 and out["code"] == 7, out
        assert holder in out["msg"] and subnet in out["msg"], out
        assert host_state(flab) == before
        assert c.links() == ["lo"]


def test_last_del_frees_the_subnet_for_another_network_on_another_bridge(flab: PluginLab
                                                                         ) -> None:
    out_ns = flab.outside(flab.host)
    tag = flab.tag
    first = published(flab, f"a{tag}", f"cba{tag}", "10.66.0.0/24", 18103)
    c1 = flab.container()
    flab.add(first, "c1", c1)
    alias = flab.host.ip_json("-d", "link", "show", f"cba{tag}")[0].get("ifalias")
    assert alias == f"cni-bridge network a{tag}"
    flab.delete(first, "c1", c1.path)
    # The bridge the plugin made went with the last attachment, and its address and route.
    assert f"cba{tag}" not in flab.host.links()
    assert [r["dst"] for r in flab.host.ip_json("route", "show")
            if r["dst"].startswith("10.66.")] == []

    second = published(flab, f"b{tag}", f"cbb{tag}", "10.66.0.0/24", 18103)
    c2 = flab.container()
    result = flab.add(second, "c2", c2)
    assert result["ips"][0]["address"] == "10.66.0.2/24"
    flab.server(c2, "tcp", 80, reply="hello")
    assert probe(out_ns, "tcp", "192.0.2.1", 18103, timeout=5) == "hello"
    assert [r["dev"] for r in flab.host.ip_json("route", "show")
            if r["dst"] == "10.66.0.0/24"] == [f"cbb{tag}"]


def test_a_bridge_the_operator_made_stays_after_the_last_del(flab: PluginLab) -> None:
    bridge = f"cbo{flab.tag}"
    flab.host.ip_batch([f"link add {bridge} type bridge", f"link set {bridge} up"])
    conf = flab.conf(bridge=bridge)
    c = flab.container()
    flab.add(conf, "c1", c)
    flab.delete(conf, "c1", c.path)
    assert bridge in flab.host.links()
