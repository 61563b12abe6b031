"""The actual state: what the host holds of what the desired state names, read through the
FirewallOps and NetOps protocols (so the unit tests can fake it)."""

from __future__ import annotations

from dataclasses import dataclass, field

from cni_bridge.converge.desired import Desired
from cni_bridge.domain import DomainError, InterfaceName, IPInterface
from cni_bridge.firewall.model import FirewallView
from cni_bridge.firewall.ops import FirewallOps
from cni_bridge.net.ops import HostLink, NetError, NetOps

IP_FORWARD = "net/ipv4/ip_forward"
IP6_FORWARD = "net/ipv6/conf/all/forwarding"


def route_localnet(bridge: str) -> str:
    return f"net/ipv4/conf/{bridge}/route_localnet"


@dataclass
class Observed:
    fw: FirewallView
    links: dict[str, HostLink | None] = field(default_factory=dict)  # bridges and host veths
    addrs: dict[str, list[IPInterface]] = field(default_factory=dict)  # bridges'
    sysctls: dict[str, str | None] = field(default_factory=dict)


def observe(desired: Desired, fw: FirewallOps, net: NetOps) -> Observed:
    seen = Observed(fw.observe())
    keys = {IP_FORWARD, IP6_FORWARD}
    for n in desired.networks:
        for name in (n.bridge, *(m.record.host_veth for m in n.members)):
            if name not in seen.links:
                try:
                    seen.links[name] = net.host_link(InterfaceName(name))
                except (DomainError, NetError):  # a name the kernel cannot hold: no such link
                    seen.links[name] = None
        if seen.links.get(n.bridge) is not None:
            seen.addrs[n.bridge] = net.link_addrs(InterfaceName(n.bridge))
        keys.add(route_localnet(n.bridge))
    for key in sorted(keys):
        try:
            seen.sysctls[key] = net.get_sysctl(key)
        except NetError:
            seen.sysctls[key] = None
    return seen
