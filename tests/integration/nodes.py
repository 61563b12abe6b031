"""Simulated cluster nodes for integration tests: a "LAN" namespace holding a bridge, each
node a PluginLab (its own host namespace, data dir and cni-bridge network with its own pod
CIDR) linked to the LAN by a veth, and an "outside" host on the LAN. Namespaces start with
cbK (the kube stream's prefix); everything is removed in teardown."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.lab import Lab, Netns
from tests.lab.plugin import PluginLab

PREFIX = "cbK"
LAN4, LAN6 = "192.168.77.{}", "fd77::{}"
OUT = 100  # the outside host's last address byte on the LAN
CLUSTER4, CLUSTER6 = "10.244.0.0/16", "fd00:10:244::/56"


def pod_cidrs(i: int) -> tuple[str, str]:
    return f"10.244.{i}.0/24", f"fd00:10:244:{i}::/64"


@dataclass
class Node:
    index: int
    lab: PluginLab
    conf: dict[str, Any]
    pods: dict[str, tuple[Netns, list[str]]] = field(default_factory=dict)  # name -> ns, ips

    @property
    def host(self) -> Netns:
        return self.lab.host

    @property
    def ip4(self) -> str:
        return LAN4.format(self.index + 10)

    @property
    def ip6(self) -> str:
        return LAN6.format(self.index + 10)

    def pod(self, name: str) -> tuple[Netns, list[str]]:
        ns = self.lab.container()
        result = self.lab.add(self.conf, f"{name}-{self.index}", ns)
        ips = [ip["address"].split("/")[0] for ip in result["ips"]]
        self.pods[name] = (ns, ips)
        return ns, ips

    def cni_bridge(self, *args: str, env: dict[str, str] | None = None,
                   timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """An operator command of the plugin under test, run inside the node's namespace."""
        return self.lab.cli(*args, env=env, timeout=timeout)

    def routes(self, family: str = "-4") -> list[dict[str, Any]]:
        data: list[dict[str, Any]] = self.host.ip_json(family, "route", "show")
        return data


class Cluster:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        # The LAN, the outside host and the test's servers (in any node's pods).
        self.infra = self.procs = Lab(PREFIX)
        self.nodes: list[Node] = []
        try:
            self.lan = self.infra.netns("lan")
            self.lan.ip_batch(["link add lan0 type bridge", "link set lan0 up"])
            self.out = self.infra.netns("out")
            self._plug(self.out, "eth0", OUT)
        except BaseException:
            self.close()
            raise

    def _plug(self, ns: Netns, ifname: str, last: int) -> None:
        port = f"p{last}"
        self.infra.veth(self.lan, port, ns, ifname)
        self.lan.ip("link", "set", port, "master", "lan0")
        ns.ip_batch([f"addr add {LAN4.format(last)}/24 dev {ifname}",
                     f"addr add {LAN6.format(last)}/64 dev {ifname} nodad"])

    def node(self, **over: Any) -> Node:
        i = len(self.nodes) + 1
        (self.tmp / f"node{i}").mkdir(parents=True, exist_ok=True)
        lab = PluginLab(self.tmp / f"node{i}", prefix=PREFIX)
        c4, c6 = pod_cidrs(i)
        conf = lab.conf(
            name="cluster",
            bridge="cni0",
            nonMasqueradeCIDRs=[CLUSTER4, CLUSTER6],
            ipam={"type": "host-local", "ranges": [[{"subnet": c4}], [{"subnet": c6}]],
                  "dataDir": str(lab.data_dir)},
        )
        conf.update(over)
        node = Node(i, lab, conf)
        self.nodes.append(node)
        self._plug(lab.host, "eth0", i + 10)
        return node

    def peers_file(self, nodes: list[Node], extra: str = "") -> Path:
        lines = []
        for n in nodes:
            c4, c6 = pod_cidrs(n.index)
            lines += [f"{n.ip4} {c4}", f"{n.ip6} {c6}"]
        path = self.tmp / "peers"
        path.write_text("\n".join(lines) + "\n" + extra)
        return path

    def close(self) -> None:
        try:
            self.infra.stop_processes()
            for node in reversed(self.nodes):
                node.lab.close()
        finally:
            self.infra.close()
