"""Kubernetes mode, pure part: Node objects (the API's JSON) to what this node needs, the
peer list (every other node's pod CIDRs via its InternalIP of the same family) and this
node's network config (its spec.podCIDRs as host-local ranges). Standard library only."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cni_bridge.domain import IPAddress, IPNetwork
from cni_bridge.nodes.peers import Peer


@dataclass(frozen=True)
class NodeInfo:
    name: str
    internal_ips: tuple[IPAddress, ...] = ()
    pod_cidrs: tuple[IPNetwork, ...] = ()
    problems: tuple[str, ...] = field(default=(), compare=False)

    def describe(self) -> str:
        ips = " ".join(map(str, self.internal_ips)) or "no InternalIP"
        cidrs = " ".join(map(str, self.pod_cidrs)) or "no podCIDRs"
        return f"{ips}, {cidrs}"


def node_info(obj: Mapping[str, Any]) -> NodeInfo:
    """A v1 Node (as JSON). spec.podCIDRs, else the older single spec.podCIDR; the
    InternalIP addresses of status.addresses. Unparsable values are skipped and named."""
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    name = str(meta.get("name", ""))
    problems: list[str] = []
    raw_cidrs = spec.get("podCIDRs") or ([spec["podCIDR"]] if spec.get("podCIDR") else [])
    cidrs: list[IPNetwork] = []
    for text in raw_cidrs:
        try:
            cidrs.append(ipaddress.ip_network(str(text), strict=True))
        except ValueError:
            problems.append(f"node {name}: podCIDR {text!r} is not a CIDR")
    ips: list[IPAddress] = []
    for addr in status.get("addresses") or []:
        if not isinstance(addr, Mapping) or addr.get("type") != "InternalIP":
            continue
        try:
            ips.append(ipaddress.ip_address(str(addr.get("address", ""))))
        except ValueError:
            problems.append(f"node {name}: InternalIP {addr.get('address')!r} is not an address")
    return NodeInfo(name, tuple(dict.fromkeys(ips)), tuple(dict.fromkeys(cidrs)), tuple(problems))


def peers_of(nodes: Iterable[NodeInfo], local: str) -> tuple[list[Peer], list[str]]:
    """One peer per (node, address family): its pod CIDRs of that family via its first
    InternalIP of that family. The local node is left out by name."""
    peers: list[Peer] = []
    problems: list[str] = []
    for node in sorted(nodes, key=lambda n: n.name):
        if node.name == local:
            continue
        for fam in (4, 6):
            cidrs = tuple(c for c in node.pod_cidrs if c.version == fam)
            if not cidrs:
                continue
            via = [ip for ip in node.internal_ips if ip.version == fam]
            if not via:
                problems.append(
                    f"node {node.name}: no IPv{fam} InternalIP for its pod CIDRs "
                    f"{' '.join(map(str, cidrs))}; no route"
                )
                continue
            peers.append(Peer(via[0], cidrs, f"node {node.name}"))
    return peers, problems


@dataclass(frozen=True)
class ConfOptions:
    name: str = "cni-bridge"
    bridge: str = "cni0"
    cluster_cidrs: tuple[IPNetwork, ...] = ()  # nonMasqueradeCIDRs
    mtu: int | None = None
    template: Mapping[str, Any] | None = None  # a conflist whose cni-bridge entry gets the ranges


def render_conflist(local: NodeInfo, opts: ConfOptions) -> dict[str, Any]:
    """This node's conflist: the template's (or a default) cni-bridge entry with host-local
    ranges from the node's pod CIDRs and, when given, the cluster CIDRs exempt from masquerade."""
    ranges = [[{"subnet": str(c)}] for c in sorted(local.pod_cidrs, key=lambda c: c.version)]
    if opts.template is not None:
        conf: dict[str, Any] = json.loads(json.dumps(opts.template))  # a deep copy of plain JSON
        entries = [p for p in conf.get("plugins", []) if p.get("type") == "cni-bridge"]
        if len(entries) != 1:
            raise ValueError("the template must hold exactly one plugin of type cni-bridge")
        entry = entries[0]
    else:
        entry = {
            "type": "cni-bridge",
            "bridge": opts.bridge,
            "isGateway": True,
            "isDefaultGateway": True,
            "ipMasq": True,
            "hairpinMode": True,
            "capabilities": {"portMappings": True},
        }
        if opts.mtu:
            entry["mtu"] = opts.mtu
        conf = {"cniVersion": "1.0.0", "name": opts.name, "plugins": [entry]}
    ipam = entry.setdefault("ipam", {"type": "host-local"})
    ipam.setdefault("type", "host-local")
    ipam.pop("subnet", None)
    ipam["ranges"] = ranges
    if opts.cluster_cidrs and "nonMasqueradeCIDRs" not in entry:
        entry["nonMasqueradeCIDRs"] = [str(c) for c in opts.cluster_cidrs]
    return conf


def node_changes(old: NodeInfo | None, new: NodeInfo | None) -> str | None:
    """A log line for a change that matters to the routes, None for one that does not."""
    if old == new:
        return None
    if old is None and new is not None:
        return f"node {new.name} added: {new.describe()}"
    if new is None and old is not None:
        return f"node {old.name} removed"
    assert old is not None and new is not None
    if old.internal_ips != new.internal_ips:
        return f"node {new.name} re-addressed: {old.describe()} -> {new.describe()}"
    return f"node {new.name} changed: {old.describe()} -> {new.describe()}"
