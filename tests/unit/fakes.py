"""In-memory stand-ins for the netlink and nftables layers, for command tests without root."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cni_bridge.domain import InterfaceName
from cni_bridge.firewall.layout import Json
from cni_bridge.firewall.model import (
    AttachmentFw,
    FirewallView,
    ForeignChain,
    IPAddress,
    NetworkFw,
    TableView,
)
from cni_bridge.net.ops import ContainerView, HostLink, LinkExists, LinkInfo


class Boom(Exception):
    pass


@dataclass
class FakeNet:
    fail_at: str = ""
    links: dict[str, dict[str, Any]] = field(default_factory=dict)  # host links
    container: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)
    sysctls: dict[str, str] = field(default_factory=dict)

    def _call(self, name: str) -> None:
        self.calls.append(name)
        if name == self.fail_at:
            raise Boom(f"injected failure in {name}")

    def ensure_bridge(self, name: str, mtu: int | None, vlan_filtering: bool, mark: str = "") -> LinkInfo:
        self._call("ensure_bridge")
        created = name not in self.links
        self.links.setdefault(name, {"kind": "bridge", "index": len(self.links) + 1, "addrs": [],
                                     "alias": mark})
        return LinkInfo(name, self.links[name]["index"], "0a:00:00:00:00:01", mtu or 1500, created)

    def ensure_bridge_addrs(self, name: str, addrs: Sequence[Any], force: bool) -> list[Any]:
        self._call("ensure_bridge_addrs")
        added = [a for a in addrs if a not in self.links[name]["addrs"]]
        self.links[name]["addrs"].extend(added)
        return added

    def check_subnets_free(self, bridge: str, addrs: Sequence[Any]) -> None:
        self._call("check_subnets_free")

    def del_bridge_addrs(self, name: str, addrs: Sequence[Any]) -> None:
        if name in self.links:
            self.links[name]["addrs"] = [a for a in self.links[name]["addrs"] if a not in addrs]

    def remove_bridge(self, name: str, mark: str) -> bool:
        link = self.links.get(name)
        if link is None or not mark or link.get("alias") != mark or self.bridge_ports(name):
            return False
        del self.links[name]
        return True

    def create_veth(self, netns_path: str, ifname: str, host_name: str, bridge: str, **kw: Any) -> tuple[LinkInfo, LinkInfo]:
        self._call("create_veth")
        if (netns_path, ifname) in self.container:
            raise LinkExists(ifname, netns_path)
        self.links[host_name] = {"kind": "veth", "index": 100 + len(self.links), "master": bridge, **kw}
        self.container[(netns_path, ifname)] = {"host": host_name, "addrs": [], "routes": []}
        return (
            LinkInfo(host_name, self.links[host_name]["index"], "0a:00:00:00:00:02", 1500),
            LinkInfo(ifname, 2, kw.get("container_mac") or "0a:00:00:00:00:03", 1500),
        )

    def configure_container(self, netns_path: str, ifname: str, addrs: Sequence[Any], routes: Sequence[Any], *, enable_dad: bool = False, ipv6: bool = True) -> None:
        self._call("configure_container")
        c = self.container[(netns_path, ifname)]
        c["ipv6"] = ipv6
        c["addrs"] = list(addrs)
        c["routes"] = list(routes)

    def container_view(self, netns_path: str, ifname: str) -> ContainerView | None:
        c = self.container.get((netns_path, ifname))
        if c is None:
            return None
        return ContainerView(ifname, 2, "0a:00:00:00:00:03", 1500, "veth", True, None, tuple(c["addrs"]), tuple(c["routes"]))

    def host_link(self, name: str) -> HostLink | None:
        link = self.links.get(name)
        if link is None:
            return None
        master = link.get("master")
        master_idx = self.links[master]["index"] if master in self.links else None
        # A veth whose peer is in a container namespace: the kernel gives it a netnsid.
        in_container = any(c["host"] == name for c in self.container.values())
        return HostLink(name, link["index"], "0a:00:00:00:00:02", 1500, link["kind"], master_idx, True, True, False, None,
                        peer_netnsid=0 if in_container else None)

    def delete_link(self, name: str) -> bool:
        self._call("delete_link")
        link = self.links.pop(name, None)
        if link is None:
            return False
        for key, c in list(self.container.items()):
            if c["host"] == name:
                del self.container[key]
        return True

    def delete_container_link(self, netns_path: str, ifname: str) -> bool:
        c = self.container.pop((netns_path, ifname), None)
        if c is None:
            return False
        self.links.pop(c["host"], None)
        return True

    def link_exists(self, name: str) -> bool:
        return name in self.links

    def host_links_with_prefix(self, prefix: str) -> list[str]:
        return [n for n in self.links if n.startswith(prefix)]

    def bridge_ports(self, bridge: str) -> list[InterfaceName]:
        return [InterfaceName(n) for n, link in self.links.items() if link.get("master") == bridge]

    def set_forwarding(self, v4: bool, v6: bool) -> None:
        self._call("set_forwarding")
        if v4:
            self.sysctls["net/ipv4/ip_forward"] = "1"
        if v6:
            self.sysctls["net/ipv6/conf/all/forwarding"] = "1"

    def set_route_localnet(self, bridge: str) -> None:
        self._call("set_route_localnet")
        self.sysctls[f"net/ipv4/conf/{bridge}/route_localnet"] = "1"

    def get_sysctl(self, path: str) -> str | None:
        return self.sysctls.get(path)

    def link_addrs(self, name: InterfaceName) -> list[Any]:
        return list(self.links.get(name, {}).get("addrs", []))

    def attach_port(self, port: InterfaceName, bridge: InterfaceName, hairpin: bool) -> None:
        self._call("attach_port")
        self.links[port]["master"] = bridge

    def set_sysctl(self, path: str, value: str) -> None:
        pass

    def close(self) -> None:
        pass


@dataclass
class FakeFirewall:
    fail_at: str = ""
    elements: dict[str, AttachmentFw] = field(default_factory=dict)
    networks: set[str] = field(default_factory=set)
    calls: list[str] = field(default_factory=list)
    spoofchk: dict[str, str] = field(default_factory=dict)
    ipspoof: dict[str, tuple[str, str, list[IPAddress]]] = field(default_factory=dict)
    applied: list[list[dict[str, Any]]] = field(default_factory=list)

    def add_attachment(self, net: NetworkFw, att: AttachmentFw) -> None:
        self.calls.append("add_attachment")
        if self.fail_at == "add_attachment":
            raise Boom("injected firewall failure")
        self.networks.add(net.name)
        self.elements[att.tag] = att

    def del_attachment(
        self, net: NetworkFw, att: AttachmentFw, last_in_network: bool, *, thorough: bool = False
    ) -> None:
        self.calls.append("del_attachment")
        self.elements.pop(att.tag, None)
        if last_in_network:
            self.networks.discard(net.name)

    def check_attachment(self, net: NetworkFw, att: AttachmentFw) -> list[str]:
        return [] if att.tag in self.elements else [f"firewall elements of {att.tag} missing"]

    def gc(self, net: NetworkFw, keep_tags: set[str]) -> list[str]:
        for tag in list(self.elements):
            if tag not in keep_tags:
                del self.elements[tag]
        for port, (network, tag, _) in list(self.ipspoof.items()):
            if network == net.name and tag not in keep_tags:
                del self.ipspoof[port]
        if not keep_tags:
            self.networks.discard(net.name)
        return []

    def add_macspoof(self, port: str, mac: str) -> None:
        self.calls.append("add_macspoof")
        self.spoofchk[port] = mac

    def del_macspoof(self, port: str, mac: str) -> None:
        self.calls.append("del_macspoof")
        if not mac or self.spoofchk.get(port) == mac:
            self.spoofchk.pop(port, None)

    def gc_macspoof(self, port_exists: Callable[[str], bool]) -> list[str]:
        for port in [p for p in self.spoofchk if not port_exists(p)]:
            del self.spoofchk[port]
        return []

    def add_ipspoof(
        self,
        net: NetworkFw,
        att: AttachmentFw,
        port: str,
        addrs: Sequence[IPAddress],
        *,
        relayout: bool = False,
    ) -> None:
        self.calls.append("add_ipspoof")
        self.ipspoof[port] = (net.name, att.tag, list(addrs))

    def del_ipspoof(self, port: str, addrs: Sequence[IPAddress], *, thorough: bool = False) -> None:
        self.calls.append("del_ipspoof")
        self.ipspoof.pop(port, None)

    def check_ipspoof(self, port: str, addrs: Sequence[IPAddress]) -> list[str]:
        have = self.ipspoof.get(port, ("", "", []))[2]
        return [f"ipspoofchk element {port} . {a} is missing" for a in addrs if a not in have]

    def status(self) -> str | None:
        return None

    def drift_seen(self) -> bool:
        return False

    def observe(self) -> FirewallView:
        self.calls.append("observe")
        return FirewallView(TableView(), [], None)

    def apply(self, cmds: Sequence[Json], what: str = "transaction") -> None:
        self.calls.append("apply")
        self.applied.append(list(cmds))

    def foreign_forward_drop(self) -> list[ForeignChain]:
        return []


def ip(text: str) -> Any:
    return ipaddress.ip_interface(text)
