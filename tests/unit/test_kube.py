"""Kubernetes mode without an API server or root: Node JSON to peers and a conflist, and the
controller driven by a scripted node source against the fake route table."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from ipaddress import ip_address, ip_network
from pathlib import Path
from typing import Any

import pytest

from cni_bridge.config import load_netconf
from cni_bridge.nodes.kube import Gone, KubeMode, write_atomic
from cni_bridge.nodes.kubestate import (
    ConfOptions,
    NodeInfo,
    node_changes,
    node_info,
    peers_of,
    render_conflist,
)
from tests.unit.test_routes import FakeTable


def node_json(name: str, ips: list[str], cidrs: list[str], rv: str = "1") -> dict[str, Any]:
    """A v1 Node as the API server sends it (the fields we read, and some we do not)."""
    return {
        "kind": "Node",
        "apiVersion": "v1",
        "metadata": {"name": name, "uid": f"uid-{name}", "resourceVersion": rv,
                     "labels": {"kubernetes.io/hostname": name}},
        "spec": {"podCIDR": cidrs[0] if cidrs else None, "podCIDRs": cidrs},
        "status": {
            "addresses": [{"type": "InternalIP", "address": ip} for ip in ips]
            + [{"type": "Hostname", "address": name}],
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }


N1 = node_info(node_json("n1", ["192.168.50.11", "fd50::11"], ["10.244.1.0/24", "fd00:10:244:1::/64"]))
N2 = node_info(node_json("n2", ["192.168.50.12", "fd50::12"], ["10.244.2.0/24", "fd00:10:244:2::/64"]))
N3 = node_info(node_json("n3", ["192.168.50.13"], ["10.244.3.0/24"]))
OPTS = ConfOptions(name="k8s", cluster_cidrs=(ip_network("10.244.0.0/16"), ip_network("fd00:10:244::/56")))


def test_node_info_reads_the_api_shapes() -> None:
    assert N1.internal_ips == (ip_address("192.168.50.11"), ip_address("fd50::11"))
    assert [str(c) for c in N1.pod_cidrs] == ["10.244.1.0/24", "fd00:10:244:1::/64"]
    legacy = node_info({"metadata": {"name": "old"}, "spec": {"podCIDR": "10.244.9.0/24"}})
    assert [str(c) for c in legacy.pod_cidrs] == ["10.244.9.0/24"] and legacy.internal_ips == ()
    bad = node_info(node_json("b", ["nonsense"], ["10.244.5.1/24"]))
    assert bad.pod_cidrs == () and len(bad.problems) == 2
    assert node_info({"metadata": {"name": "new"}}).pod_cidrs == ()  # not allocated yet


def test_peers_per_family_and_the_local_node_left_out() -> None:
    peers, problems = peers_of([N1, N2, N3], local="n1")
    assert [(str(p.node_ip), [str(c) for c in p.cidrs], p.source) for p in peers] == [
        ("192.168.50.12", ["10.244.2.0/24"], "node n2"),
        ("fd50::12", ["fd00:10:244:2::/64"], "node n2"),
        ("192.168.50.13", ["10.244.3.0/24"], "node n3"),
    ]
    assert problems == []
    v4only = NodeInfo("n4", (ip_address("192.168.50.14"),), (ip_network("fd00:10:244:4::/64"),))
    _, problems = peers_of([v4only], local="n1")
    assert problems == ["node n4: no IPv6 InternalIP for its pod CIDRs fd00:10:244:4::/64; no route"]


def test_conflist_from_the_pod_cidrs_is_valid() -> None:
    conf = render_conflist(N1, OPTS)
    (plugin,) = conf["plugins"]
    assert plugin["ipam"]["ranges"] == [[{"subnet": "10.244.1.0/24"}], [{"subnet": "fd00:10:244:1::/64"}]]
    assert plugin["nonMasqueradeCIDRs"] == ["10.244.0.0/16", "fd00:10:244::/56"]
    load_netconf({"cniVersion": conf["cniVersion"], "name": conf["name"], **plugin})
    template: dict[str, Any] = {"cniVersion": "1.1.0", "name": "mine", "plugins": [
        {"type": "cni-bridge", "bridge": "br9", "ipMasq": True,
         "ipam": {"type": "host-local", "subnet": "10.0.0.0/8", "dataDir": "/run/x"}},
        {"type": "bandwidth"},
    ]}
    out = render_conflist(N1, ConfOptions(template=template))
    assert out["plugins"][0]["ipam"] == {"type": "host-local", "dataDir": "/run/x",
                                         "ranges": plugin["ipam"]["ranges"]}
    assert out["plugins"][1] == {"type": "bandwidth"} and template["plugins"][0]["ipam"]["subnet"]
    with pytest.raises(ValueError, match="exactly one"):
        render_conflist(N1, ConfOptions(template={"plugins": []}))


def test_node_changes_lines() -> None:
    moved = node_info(node_json("n2", ["192.168.50.22"], ["10.244.2.0/24"]))
    assert node_changes(None, N2) == f"node n2 added: {N2.describe()}"
    assert node_changes(N2, None) == "node n2 removed"
    assert (node_changes(N2, moved) or "").startswith("node n2 re-addressed: ")
    assert node_changes(N2, node_info(node_json("n2", ["192.168.50.12", "fd50::12"],
                                                 ["10.244.2.0/24", "fd00:10:244:2::/64"], rv="9"))) is None


def test_write_atomic(tmp_path: Path) -> None:
    path = tmp_path / "net.d" / "10-x.conflist"
    assert write_atomic(str(path), b"one") is True
    assert write_atomic(str(path), b"one") is False
    assert write_atomic(str(path), b"two") is True
    assert path.read_bytes() == b"two" and [p.name for p in path.parent.iterdir()] == ["10-x.conflist"]
    assert oct(path.stat().st_mode & 0o777) == "0o644"


class ScriptedSource:
    """Lists and watches played from a script; each watch is a list of (kind, node) that
    ends with "gone" (410), "end" (the stream stops) or "stop" (the test is over)."""

    def __init__(self, lists: list[list[NodeInfo]], watches: list[list[Any]], stop: threading.Event) -> None:
        self.lists, self.watches, self.stop = lists, watches, stop
        self.calls: list[str] = []

    def list(self) -> tuple[list[NodeInfo], str]:
        self.calls.append("list")
        return self.lists.pop(0), str(len(self.calls))

    def watch(self, version: str) -> Iterator[tuple[str, NodeInfo]]:
        self.calls.append(f"watch {version}")
        for step in self.watches.pop(0):
            if step == "gone":
                raise Gone(version)
            if step == "stop":
                self.stop.set()
                return
            yield step

    def close(self) -> None:
        pass


def make(tmp_path: Path, source: Any, table: FakeTable) -> KubeMode:
    return KubeMode("n1", source, table, str(tmp_path / "10-cni-bridge.conflist"), OPTS)


def our_routes(table: FakeTable) -> dict[str, str]:
    return {str(r.dst): str(r.gateway) for r in table.table}


def test_events_keep_routes_and_conf_in_step(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="cni_bridge")
    n1 = node_info(node_json("n1", ["192.168.50.11"], ["10.244.1.0/24"]))
    table = FakeTable([])
    mode = make(tmp_path, None, table)
    mode.nodes = {}
    mode.handle("ADDED", NodeInfo("n1", n1.internal_ips))  # not allocated yet: nothing written
    assert not (tmp_path / "10-cni-bridge.conflist").exists()
    assert mode.problems == ["node n1 has no spec.podCIDRs yet: no network config written"]
    mode.handle("MODIFIED", n1)
    conf = json.loads((tmp_path / "10-cni-bridge.conflist").read_text())
    assert conf["plugins"][0]["ipam"]["ranges"] == [[{"subnet": "10.244.1.0/24"}]]
    mode.handle("ADDED", N2)
    assert our_routes(table) == {"10.244.2.0/24": "192.168.50.12", "fd00:10:244:2::/64": "fd50::12"}
    mode.handle("MODIFIED", node_info(node_json("n2", ["192.168.50.22", "fd50::12"],
                                                ["10.244.2.0/24", "fd00:10:244:2::/64"])))
    assert our_routes(table)["10.244.2.0/24"] == "192.168.50.22"
    table.applied.clear()
    mode.handle("MODIFIED", mode.nodes["n2"])  # a heartbeat: nothing to do
    assert table.applied == []
    mode.handle("DELETED", mode.nodes["n2"])
    assert our_routes(table) == {}
    text = caplog.text
    for line in ("node n2 added", "node n2 re-addressed", "node n2 removed", "wrote ",
                 "route replace 10.244.2.0/24 via 192.168.50.22", "route delete 10.244.2.0/24"):
        assert line in text, line


def test_run_resumes_and_relists_after_410(tmp_path: Path) -> None:
    stop = threading.Event()
    n1 = node_info(node_json("n1", ["192.168.50.11"], ["10.244.1.0/24"]))
    source = ScriptedSource(
        lists=[[n1, N2, N3], [n1, N2]],  # n3 was deleted while the history was compacted
        watches=[[("MODIFIED", N2), "gone"], ["stop"]],
        stop=stop,
    )
    table = FakeTable([])
    mode = make(tmp_path, source, table)
    mode.run(heal_every=30, stop=stop)
    assert source.calls == ["list", "watch 1", "list", "watch 3"]
    assert our_routes(table) == {"10.244.2.0/24": "192.168.50.12", "fd00:10:244:2::/64": "fd50::12"}
