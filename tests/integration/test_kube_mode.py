"""`cni-bridge kube` against a local stand-in for the API server (fake_apiserver.py, on the
loopback of node 1's namespace; no real API server can run here): the conflist written from
the node's podCIDRs, pods reaching pods on the other node with their own address through it,
and the routes following watch events — a node added, re-addressed, deleted; a watch that
ends and is resumed from its resourceVersion; a 410 that forces a fresh list."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.integration.nodes import CLUSTER4, CLUSTER6, LAN4, LAN6, Cluster, Node, pod_cidrs
from tests.integration.test_nodes import first_answer, ours
from tests.lab.plugin import ROOT, plugin_command
from tests.lab.poll import wait_for

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
]
FAKE = Path(__file__).with_name("fake_apiserver.py")


def node_obj(name: str, ips: list[str], cidrs: list[str]) -> dict[str, Any]:
    return {
        "kind": "Node",
        "apiVersion": "v1",
        "metadata": {"name": name, "uid": f"uid-{name}", "labels": {"kubernetes.io/os": "linux"}},
        "spec": {"podCIDR": cidrs[0], "podCIDRs": cidrs},
        "status": {
            "addresses": [{"type": "InternalIP", "address": ip} for ip in ips]
            + [{"type": "Hostname", "address": name}],
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}],
        },
    }


def of(node: Node) -> dict[str, Any]:
    return node_obj(f"node{node.index}", [node.ip4, node.ip6], list(pod_cidrs(node.index)))


class Api:
    def __init__(self, control: Path, proc: subprocess.Popen[str], port: int) -> None:
        self.control, self.proc, self.port = control, proc, port

    def __call__(self, op: str, **kw: Any) -> Any:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(10)
            s.connect(str(self.control))
            s.sendall(json.dumps({"op": op, **kw}).encode() + b"\n")
            return json.loads(s.makefile().readline())


def start(args: list[str], ns: str, log: Path) -> subprocess.Popen[bytes]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(ROOT)}
    cmd = ["nsenter", f"--net=/run/netns/{ns}", "env", "-i",
           *[f"{k}={v}" for k, v in env.items()], *args]
    return subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, cwd=ROOT)


def test_kube_mode_writes_the_conf_and_follows_the_nodes(cluster: Cluster, tmp_path: Path) -> None:
    n1, n2 = cluster.node(), cluster.node()
    control = tmp_path / "api.sock"
    server = subprocess.Popen(
        ["nsenter", f"--net={n1.host.path}", sys.executable, str(FAKE), str(control)],
        stdout=subprocess.PIPE, text=True,
    )
    procs: list[subprocess.Popen[Any]] = [server]
    try:
        assert server.stdout is not None
        api = Api(control, server, int(server.stdout.readline()))
        api("put", node=of(n1))
        api("put", node=of(n2))
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "test",
            "clusters": [{"name": "fake", "cluster": {"server": f"http://127.0.0.1:{api.port}"}}],
            "users": [{"name": "agent", "user": {"token": "test-token"}}],
            "contexts": [{"name": "test", "context": {"cluster": "fake", "user": "agent"}}],
        }))
        template = tmp_path / "template.conflist"
        template.write_text(json.dumps({"cniVersion": "1.0.0", "name": "cluster", "plugins": [
            {**{k: v for k, v in n1.conf.items() if k not in ("cniVersion", "name")},
             "ipam": {"type": "host-local", "dataDir": str(n1.lab.data_dir)}}]}))
        template_conf = json.loads(template.read_text())
        del template_conf["plugins"][0]["nonMasqueradeCIDRs"]  # from --cluster-cidr instead
        template.write_text(json.dumps(template_conf))
        net_d = tmp_path / "net.d"
        log = tmp_path / "kube.log"
        kube = start([*plugin_command(), "kube", "--node-name", "node1", "--kubeconfig",
                      str(kubeconfig), "--cni-conf-dir", str(net_d), "--template", str(template),
                      "--cluster-cidr", CLUSTER4, "--cluster-cidr", CLUSTER6,
                      "--heal-every", "2", "--watch-timeout", "60"], n1.host.name, log)
        procs.append(kube)
        conf_file = net_d / "10-cni-bridge.conflist"
        assert wait_for(conf_file.exists, 20), log.read_text()
        conf = json.loads(conf_file.read_text())
        plugin = conf["plugins"][0]
        assert plugin["ipam"]["ranges"] == [[{"subnet": c}] for c in pod_cidrs(1)]
        assert plugin["nonMasqueradeCIDRs"] == [CLUSTER4, CLUSTER6]
        assert [p.name for p in net_d.iterdir()] == ["10-cni-bridge.conflist"]  # no temp left
        assert wait_for(lambda: ours(n1, "-4") == {"10.244.2.0/24": n2.ip4}, 10), log.read_text()
        assert ours(n1, "-6") == {"fd00:10:244:2::/64": n2.ip6}

        # a pod attached with the written config reaches a pod on node 2 with its own address
        # (node 2's route back comes from a peers file: node 2 runs no kube mode here)
        n1.conf = {"cniVersion": conf["cniVersion"], "name": conf["name"], **plugin}
        p1, (ip4_1, ip6_1) = n1.pod("a")
        p2, (ip4_2, ip6_2) = n2.pod("b")
        assert n2.cni_bridge("routes", "--peers", str(cluster.peers_file([n1, n2]))).returncode == 0
        cluster.procs.server(p2, "tcp", 8080)
        assert cluster.procs.probe(p1, "tcp", ip4_2, 8080) == ip4_1
        assert first_answer(cluster, p1, ip6_2) == ip6_1

        # watch events: a node added, a node re-addressed
        ghost4, ghost6 = LAN4.format(13), LAN6.format(13)
        api("put", node=node_obj("node3", [ghost4, ghost6], ["10.244.3.0/24", "fd00:10:244:3::/64"]))
        assert wait_for(lambda: ours(n1, "-4").get("10.244.3.0/24") == ghost4, 10), log.read_text()
        assert ours(n1, "-6").get("fd00:10:244:3::/64") == ghost6
        moved = of(n2)
        moved["status"]["addresses"][0]["address"] = LAN4.format(22)
        api("put", node=moved)
        assert wait_for(lambda: ours(n1, "-4").get("10.244.2.0/24") == LAN4.format(22), 10)

        # the server ends the watch: it is resumed from the last version seen, and the next
        # event still arrives
        last = api("put", node=of(n2))  # back to its real address
        assert wait_for(lambda: ours(n1, "-4").get("10.244.2.0/24") == n2.ip4, 10)
        api("end_watches")
        assert wait_for(lambda: any(f"resourceVersion={last}" in r and "watch=true" in r
                                    for r in api("requests")), 10), api("requests")
        api("delete", name="node3")
        assert wait_for(lambda: "10.244.3.0/24" not in ours(n1, "-4"), 10), log.read_text()
        assert "fd00:10:244:3::/64" not in ours(n1, "-6")

        # history compacted while node 3 came back and left again unseen: the resumed watch
        # gets 410 Gone, a fresh list follows and node 3's routes (re-added meanwhile) go
        api("put", node=node_obj("node3", [ghost4], ["10.244.3.0/24"]))
        assert wait_for(lambda: "10.244.3.0/24" in ours(n1, "-4"), 10)
        lists_before = sum(1 for r in api("requests") if "watch" not in r)
        api("compact", delete=["node3"])
        assert wait_for(lambda: "10.244.3.0/24" not in ours(n1, "-4"), 15), log.read_text()
        assert sum(1 for r in api("requests") if "watch" not in r) > lists_before
        assert ours(n1, "-4") == {"10.244.2.0/24": n2.ip4}  # the rest untouched

        # healing: a route removed by hand comes back on the timer
        n1.host.exec("ip", "route", "del", "10.244.2.0/24")
        assert wait_for(lambda: "10.244.2.0/24" in ours(n1, "-4"), 10)

        kube.send_signal(signal.SIGTERM)
        assert kube.wait(timeout=10) == 0
        text = log.read_text()
        for line in ("wrote ", "node node3 added", "node node2 re-addressed", "node node3 removed",
                     "route add 10.244.3.0/24", "route delete 10.244.3.0/24"):
            assert line in text, (line, text)
        # the relist after compaction (counted above) follows the 410 itself, or, on a loaded
        # machine, a resumed watch that lightkube reports as failed first: both list again
        assert "410 Gone" in text or "listing again" in text, text
        assert "Traceback" not in text
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=10)
            if p.stdout is not None:
                p.stdout.close()
