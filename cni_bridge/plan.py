"""What an ADD must make, decided before anything is made. Pure.

The request is read once, into `AddRequest` (names, the requested MAC and addresses, the
published ports): CNI_ARGS is parsed here and nowhere else. Once IPAM has answered,
`build_plan` turns both into one frozen `AddPlan` that holds every input of every effect:
the bridge's and the container's addresses, routes and DNS, and the firewall's network and
attachment, so the effects never reach back into the config or the mutable record.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from cni_bridge.dns.names import Entry, NetworkDNS, container_names, entry
from cni_bridge.domain import InterfaceName, IPAddress, IPInterface, IPNetwork, MacAddress
from cni_bridge.errors import INVALID_CONFIG, CNIError
from cni_bridge.firewall.model import AttachmentFw, NetworkFw, PortMapping
from cni_bridge.log import getLogger
from cni_bridge.netconf import NetConf, PortMappingConf
from cni_bridge.protocol.cniargs import CniArgs, normalize_mac, parse_cni_args
from cni_bridge.protocol.request import Request
from cni_bridge.protocol.result import DNS, Interface, IPConfig, Result, Route
from cni_bridge.state import attachment_tag, host_veth_name
from cni_bridge.tuples import NamedTuple

log = getLogger(__name__)

DEFAULT_V4 = ipaddress.ip_network("0.0.0.0/0")
DEFAULT_V6 = ipaddress.ip_network("::/0")


# NamedTuples, not frozen dataclasses: the same immutable records, without the six methods a
# frozen dataclass compiles at import (~2.5 M instructions each of every cold exec).
class AddRequest(NamedTuple):
    """One ADD as asked: who, where, and what the runtime requested."""

    network: str
    container_id: str
    ifname: InterfaceName
    netns: str  # what netlink opens (a resident worker's descriptor path, possibly)
    sandbox: str  # the namespace as the runtime named it: what results and records report
    host_veth: InterfaceName
    tag: str
    mac: MacAddress | None  # requested for the container end; None lets the kernel choose
    requested_ips: tuple[IPAddress, ...]
    port_mappings: tuple[PortMapping, ...]
    dns_names: tuple[str, ...] = ()  # with containerDNS: the names it serves for the container

    @property
    def owner(self) -> str:
        return attachment_owner(self.network, self.container_id, self.ifname)


def attachment_owner(network: str, container_id: str, ifname: str) -> str:
    """How the firewall names an attachment to people (in its element comments)."""
    return f"{network}/{container_id}/{ifname}"


def parse_add(request: Request, conf: NetConf, sandbox: str) -> AddRequest:
    cni_args = parse_cni_args(request.args)
    if conf.internal and conf.port_mappings():
        # Nothing from outside may enter an internal network: a published port could only
        # ever answer from the host itself, so say so rather than half-publish it.
        raise CNIError(
            INVALID_CONFIG,
            f"network {conf.name} is internal: it cannot publish ports "
            f"({len(conf.port_mappings())} port mapping(s) requested)",
        )
    return AddRequest(
        network=conf.name,
        container_id=request.container_id,
        # Checked by parse_request already; the type says so to the net layer.
        ifname=InterfaceName(request.ifname),
        netns=request.netns,
        sandbox=sandbox,
        host_veth=InterfaceName(host_veth_name(conf.name, request.container_id, request.ifname)),
        tag=attachment_tag(conf.name, request.container_id, request.ifname),
        mac=requested_mac(conf, cni_args),
        requested_ips=tuple(requested_ips(conf, cni_args)),
        port_mappings=tuple(port_mapping(pm) for pm in conf.port_mappings()),
        dns_names=tuple(dns_names(conf, request.container_id, cni_args)),
    )


def dns_names(conf: NetConf, container_id: str, cni_args: CniArgs) -> list[str]:
    if conf.container_dns is None:
        return []
    names, problems = container_names(
        container_id,
        cni_args.pod.get("K8S_POD_NAME", ""),
        conf.dns_aliases(),
        conf.container_dns.domain,
    )
    bad = [p for p in problems if p.startswith("aliases")]
    if bad:
        raise CNIError(INVALID_CONFIG, f"runtimeConfig.aliases of network {conf.name}: {bad[0]}")
    for problem in problems:
        log.warning("containerDNS: %s", problem)
    return names


def port_mapping(pm: PortMappingConf) -> PortMapping:
    return PortMapping(pm.host_port, pm.container_port, pm.protocol, pm.host_ip, pm.host_port_end)


def requested_ips(conf: NetConf, cni_args: CniArgs) -> list[IPAddress]:
    """Static IPs, from the sources host-local reads, in its order: runtimeConfig.ips (with
    the `ips` capability), args.cni.ips, then CNI_ARGS IP. Duplicates are dropped."""
    raw: list[str] = []
    if conf.capabilities.get("ips"):
        raw.extend(conf.runtime_config.ips)
    cni = conf.args.get("cni") if isinstance(conf.args, dict) else None
    if isinstance(cni, dict) and isinstance(cni.get("ips"), list):
        raw.extend(str(x) for x in cni["ips"])
    out: list[IPAddress] = []
    for text in raw:
        try:
            out.append(ipaddress.ip_interface(text).ip)
        except ValueError:
            raise CNIError(INVALID_CONFIG, f"requested IP {text!r} is not an IP address") from None
    out.extend(cni_args.ips)
    return list(dict.fromkeys(out))


def requested_mac(conf: NetConf, cni_args: CniArgs) -> MacAddress | None:
    """MAC for the container interface: runtimeConfig.mac (with the `mac` capability), then
    args.cni.mac, then CNI_ARGS MAC."""
    if conf.capabilities.get("mac") and conf.runtime_config.mac:
        return conf.runtime_config.mac  # normalised once, by config's MacAddress type
    cni = conf.args.get("cni") if isinstance(conf.args, dict) else None
    if isinstance(cni, dict) and cni.get("mac"):
        return normalize_mac(str(cni["mac"]), "args.cni.mac")
    return cni_args.mac


def network_fw(conf: NetConf, subnets: Sequence[IPNetwork]) -> NetworkFw:
    return NetworkFw(
        name=conf.name,
        bridge=conf.bridge,
        subnets=list(subnets),
        ip_masq=conf.ip_masq,
        isolate=conf.isolation,
        non_masq=tuple(conf.non_masquerade_cidrs),
        internal=conf.internal,
        dns_gateways=tuple(dns_gateways(conf)),
    )


def dns_gateways(conf: NetConf) -> list[IPAddress]:
    """Where a containerDNS network's name server listens, from the config alone (so every
    verb and sync agree): the gateways of its host-local ranges. A delegated IPAM plugin's are
    known only from its answers: such a network has no guard (firewall layout dns4/dns6)."""
    if conf.container_dns is None or not conf.gateway_mode:
        return []
    return list(dict.fromkeys(r.gateway for rs in conf.effective_range_sets() for r in rs))


def network_subnets(conf: NetConf, addresses: Sequence[IPInterface] = ()) -> list[IPNetwork]:
    """The network's subnets: from host-local's ranges, else from the attachment's addresses
    (a delegated IPAM plugin's network is known only by what it handed out)."""
    subnets: list[IPNetwork] = [r.subnet for rs in conf.effective_range_sets() for r in rs]
    if not subnets:
        subnets = [a.network for a in addresses]
    return list(dict.fromkeys(subnets))


class AddPlan(NamedTuple):  # a NamedTuple: see AddRequest
    ask: AddRequest
    ips: tuple[IPConfig, ...]
    routes: tuple[Route, ...]
    dns: DNS
    bridge_addrs: tuple[IPInterface, ...]
    fw_net: NetworkFw
    fw_att: AttachmentFw
    dns_net: NetworkDNS | None = None
    dns_entry: Entry | None = None

    @property
    def families(self) -> set[int]:
        return {ip.address.version for ip in self.ips}

    @property
    def container_addrs(self) -> list[IPInterface]:
        return [ip.address for ip in self.ips]

    @property
    def publishes(self) -> bool:
        return bool(self.ask.port_mappings)

    def kernel_routes(self) -> list[tuple[IPNetwork, IPAddress | None]]:
        """Routes as the container's kernel gets them: a route without gw goes via the gateway
        of its family (host-local's ConfigureIface rule)."""
        gws: dict[int, IPAddress] = {}
        for ip in self.ips:
            if ip.gateway is not None:
                gws.setdefault(ip.address.version, ip.gateway)
        return [(r.dst, r.gw if r.gw is not None else gws.get(r.dst.version)) for r in self.routes]


def build_plan(
    ask: AddRequest,
    conf: NetConf,
    ipam_result: Result,
    upstream: Sequence[IPAddress] = (),
) -> AddPlan:
    """Gateways, routes and DNS for the container, following the reference bridge plugin,
    and the firewall's inputs. `upstream`: where containerDNS forwards other names."""
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
    if conf.internal:
        # As Docker's internal networks: no default route at all (the firewall drops what
        # leaves the bridge anyway; without the route a container fails fast, "unreachable").
        routes = [r for r in routes if r.dst not in (DEFAULT_V4, DEFAULT_V6)]
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
    dns_net = dns_entry = None
    if conf.container_dns is not None:
        listen = tuple(a.ip for a in bridge_addrs)
        if not listen:
            raise CNIError(
                INVALID_CONFIG,
                f"containerDNS of network {conf.name} needs a gateway address on the bridge, "
                "and IPAM gave none",
            )
        dns_net = NetworkDNS(conf.name, listen, tuple(upstream))
        dns_entry = entry(ask.container_id, [str(ip.address) for ip in ips], ask.dns_names)
        # The gateways answer; the domain is searched (the network's own `dns` adds to it).
        dns = DNS(
            nameservers=[str(a) for a in listen],
            domain=c.domain,
            search=list(dict.fromkeys([conf.container_dns.domain, *c.search])),
            options=list(c.options),
        )
    addresses = [ip.address for ip in ips]
    return AddPlan(
        ask=ask,
        ips=tuple(ips),
        routes=tuple(routes),
        dns=dns,
        bridge_addrs=tuple(bridge_addrs),
        fw_net=network_fw(conf, network_subnets(conf, addresses)),
        fw_att=AttachmentFw(
            tag=ask.tag,
            owner=ask.owner,
            ips=[a.ip for a in addresses],
            port_mappings=tuple(ask.port_mappings),
        ),
        dns_net=dns_net,
        dns_entry=dns_entry,
    )


def render_result(
    plan: AddPlan,
    bridge: tuple[str, str],
    host: tuple[str, str],
    container: tuple[str, str, int],
) -> Result:
    return Result(
        interfaces=[
            Interface(name=bridge[0], mac=bridge[1]),
            Interface(name=host[0], mac=host[1]),
            Interface(
                name=container[0], mac=container[1], mtu=container[2], sandbox=plan.ask.sandbox
            ),
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
