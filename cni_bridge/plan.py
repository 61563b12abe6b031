"""From a validated config and the addresses IPAM handed out to what ADD must make. Pure."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field

from cni_bridge.config import NetConf
from cni_bridge.protocol.result import DNS, Interface, IPConfig, Result, Route

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_V4 = ipaddress.ip_network("0.0.0.0/0")
DEFAULT_V6 = ipaddress.ip_network("::/0")


@dataclass
class AddPlan:
    ips: list[IPConfig]
    routes: list[Route]
    dns: DNS
    bridge_addrs: list[IPInterface] = field(default_factory=list)

    @property
    def families(self) -> set[int]:
        return {ip.address.version for ip in self.ips}

    @property
    def container_addrs(self) -> list[IPInterface]:
        return [ip.address for ip in self.ips]

    def kernel_routes(self) -> list[tuple[IPNetwork, IPAddress | None]]:
        """Routes as the container's kernel gets them: a route without gw goes via the gateway
        of its family (host-local's ConfigureIface rule)."""
        gws: dict[int, IPAddress] = {}
        for ip in self.ips:
            if ip.gateway is not None:
                gws.setdefault(ip.address.version, ip.gateway)
        return [(r.dst, r.gw if r.gw is not None else gws.get(r.dst.version)) for r in self.routes]


def build_plan(conf: NetConf, ipam_result: Result) -> AddPlan:
    """Gateways, routes and DNS for the container, following the reference bridge plugin."""
    ips = [IPConfig(address=ip.address, gateway=ip.gateway, interface=2) for ip in ipam_result.ips]
    routes = list(ipam_result.routes)
    if conf.is_default_gateway:
        # The reference replaces any IPAM default route with one via the bridge's gateway.
        routes = [r for r in routes if r.dst not in (DEFAULT_V4, DEFAULT_V6)]
        seen: set[int] = set()
        for ip in ips:
            fam = ip.address.version
            if ip.gateway is None or fam in seen:
                continue
            seen.add(fam)
            routes.append(Route(dst=DEFAULT_V4 if fam == 4 else DEFAULT_V6, gw=ip.gateway))
    bridge_addrs: list[IPInterface] = []
    if conf.gateway_mode:
        for ip in ips:
            if ip.gateway is None:
                continue
            gw = ipaddress.ip_interface(f"{ip.gateway}/{ip.address.network.prefixlen}")
            if gw not in bridge_addrs:
                bridge_addrs.append(gw)
    # As the reference bridge plugin: the network's own `dns` wins; IPAM's (resolvConf) else.
    c = conf.dns
    if c.nameservers or c.domain or c.search or c.options:
        dns = DNS(
            nameservers=list(c.nameservers),
            domain=c.domain,
            search=list(c.search),
            options=list(c.options),
        )
    else:
        dns = ipam_result.dns
    return AddPlan(ips=ips, routes=routes, dns=dns, bridge_addrs=bridge_addrs)


def render_result(
    plan: AddPlan,
    bridge: tuple[str, str],
    host: tuple[str, str],
    container: tuple[str, str, int],
    netns: str,
) -> Result:
    return Result(
        interfaces=[
            Interface(name=bridge[0], mac=bridge[1]),
            Interface(name=host[0], mac=host[1]),
            Interface(name=container[0], mac=container[1], mtu=container[2], sandbox=netns),
        ],
        ips=list(plan.ips),
        routes=list(plan.routes),
        dns=plan.dns,
    )


def parse_resolv_conf(text: str) -> DNS:
    """host-local's resolvConf: nameserver, domain, search and options lines."""
    dns = DNS()
    for line in text.splitlines():
        parts = line.split("#", 1)[0].split()
        if not parts:
            continue
        key, values = parts[0], parts[1:]
        if key == "nameserver" and values:
            dns.nameservers.append(values[0])
        elif key == "domain" and values:
            dns.domain = values[0]
        elif key == "search":
            dns.search.extend(values)
        elif key == "options":
            dns.options.extend(values)
    return dns


def ipam_result_from(
    allocations: Sequence[tuple[IPInterface, IPAddress | None]],
    routes: Sequence[tuple[IPNetwork, IPAddress | None]],
    dns: DNS,
) -> Result:
    return Result(
        ips=[IPConfig(address=a, gateway=g) for a, g in allocations],
        routes=[Route(dst=d, gw=g) for d, g in routes],
        dns=dns,
    )
