"""Every rule of the network config, once: the field checks, the cross checks and the derived
values. Pure, no pydantic (cheap to import): the pydantic models (config.py, the agent's
validator) and the lean validator (leanconf.py, an exec'd process) both call these functions,
so the two cannot drift apart on a rule; tests/unit/test_leanconf.py checks they agree on the
rest (the fields, their types, defaults and aliases) and on what they answer.

Each function takes the value its field holds at that step (`before`: the raw decoded JSON,
`after`: the value of the field's type) or, for the model checks, the object as the consumers
see it (netconf.py's views); a ValueError is reported under the field's or object's path.
"""

from __future__ import annotations

import ipaddress

from cni_bridge.domain import InterfaceName, dns_name_problem, port_range_count
from cni_bridge.ipam.ranges import Range, validate_range_sets
from cni_bridge.protocol.versions import require_supported

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from cni_bridge.domain import IPAddress, IPNetwork
    from cni_bridge.netconf import (
        IPAMConf,
        NetConf,
        PortMappingConf,
        RangeConf,
        RouteConf,
    )

DEFAULT_BRIDGE = InterfaceName("cni0")
DEFAULT_DNS_DOMAIN = "dns.cni-bridge"
# dns/aardvark.py's PID_FILE (not imported: the cold path does not load the dns package), in
# the directory where each containerDNS network has a file named after it.
AARDVARK_PID_FILE = "aardvark.pid"

# --- values ---------------------------------------------------------------------------------


def network(value: Any, what: str = "subnet") -> IPNetwork:
    try:
        return ipaddress.ip_network(str(value), strict=True)
    except ValueError as exc:
        if "host bits set" in str(exc):
            raise ValueError(f"{what} {value!r} has host bits set") from None
        raise ValueError(f"{what} {value!r} is not a CIDR: {exc}") from None


def address(value: Any) -> IPAddress:
    try:
        return ipaddress.ip_address(str(value))
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address") from None


# --- field checks (the name says which field; `before`/`after` as in the tables) ------------


def subnet(v: Any) -> IPNetwork:
    """RangeConf.subnet, before."""
    return network(v)


def optional_subnet(v: Any) -> IPNetwork | None:
    """IPAMConf.subnet (the legacy single range), before."""
    return None if v in (None, "") else network(v)


def optional_address(v: Any) -> IPAddress | None:
    """rangeStart, rangeEnd, gateway, gw, before: "" is absent."""
    return None if v in (None, "") else address(v)


def route_dst(v: Any) -> IPNetwork:
    """RouteConf.dst, before."""
    return network(v, "route dst")


def dns_domain(v: str) -> str:
    """ContainerDNSConf.domain, after."""
    problem = dns_name_problem(v)
    if problem is not None:
        raise ValueError(f"domain {v!r} {problem}")
    return v.lower()


def dns_upstream(v: Any) -> list[IPAddress]:
    """ContainerDNSConf.upstream, before."""
    if not isinstance(v, list):
        raise ValueError("upstream must be a list of IP addresses")
    out = [address(x) for x in v]
    for ip in out:
        if ip.version == 6 and (ip.is_link_local or ip.scope_id is not None):
            raise ValueError(f"upstream {ip}: link-local and scoped addresses are not usable")
    return out


def data_dir(v: str) -> str:
    """IPAMConf.dataDir, after."""
    if not v.startswith("/"):
        raise ValueError(f"dataDir {v!r} must be an absolute path")
    return v


_PORT_MAPPING_KEYS = {
    "hostport": "hostPort",
    "containerport": "containerPort",
    "protocol": "protocol",
    "hostip": "hostIP",
    "hostportend": "hostPortEnd",
}


def port_mapping_keys(data: Any) -> Any:
    """PortMappingConf, before (the whole object): containerd's CRI sends
    HostPort/ContainerPort/Protocol/HostIP (Go decodes keys case-insensitively), podman sends
    camelCase: accept both."""
    if not isinstance(data, dict):
        return data
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = _PORT_MAPPING_KEYS.get(str(key).lower())
        if name is not None:
            out[name] = value
    if isinstance(out.get("protocol"), str):
        out["protocol"] = out["protocol"].lower() or "tcp"
    if out.get("hostIP") in ("", None):
        out.pop("hostIP", None)
    return out


def no_aliases(v: Any) -> Any:
    """RuntimeConf.aliases, before: null is none."""
    return {} if v is None else v


def no_mac(v: Any) -> Any:
    """RuntimeConf.mac, before: "" is none."""
    return None if v == "" else v


def cni_version(v: str) -> str:
    """NetConf.cniVersion, after (a CNIError of its own code, not a ValueError)."""
    return require_supported(v)


def container_dns(v: Any) -> Any:
    """NetConf.containerDNS, before: true is the defaults, false and null are off."""
    if v is None or v is False:
        return None
    if v is True:
        return {}
    if not isinstance(v, dict):
        raise ValueError("containerDNS must be true, false or an object")
    return v


def non_masquerade_cidrs(v: Any) -> list[IPNetwork]:
    """NetConf.nonMasqueradeCIDRs, before."""
    if not isinstance(v, list):
        raise ValueError("nonMasqueradeCIDRs must be a list of CIDRs")
    return [network(x, "nonMasqueradeCIDRs entry") for x in v]


def no_vlan(v: Any) -> Any:
    """NetConf.vlan, before: 0 is none, as the reference bridge reads it."""
    return None if v == 0 else v


# --- the objects' checks, run once all their fields are valid ---------------------------------


def route_checks(r: RouteConf) -> None:
    if r.gw is not None and r.gw.version != r.dst.version:
        raise ValueError(f"route {r.dst} has a gateway of another IP family ({r.gw})")


def port_mapping_checks(pm: PortMappingConf) -> None:
    count(pm)


def cross_checks(c: NetConf) -> None:
    if c.ipam.type == "host-local":
        if not c.ipam.ranges and c.ipam.subnet is None:
            raise ValueError("ipam: host-local needs `ranges` or `subnet`")
        try:
            sets = range_sets(c.ipam)
            validate_range_sets(sets)
        except ValueError as exc:
            raise ValueError(f"ipam.ranges: {exc}") from None
        for route in c.ipam.routes:
            fams = {r.subnet.version for rs in sets for r in rs}
            if route.dst.version not in fams:
                raise ValueError(f"ipam.routes: {route.dst} has no range of its IP family")
    if c.container_dns is not None and not gateway_mode(c):
        raise ValueError("containerDNS needs isGateway: the name server listens on the gateway")
    if c.container_dns is not None and c.name == AARDVARK_PID_FILE:
        raise ValueError(
            f"containerDNS cannot serve a network named {c.name!r}: its file would be "
            "the name server's pid file"
        )
    if c.vlan and c.vlan_trunk:
        raise ValueError("vlan and vlanTrunk cannot both be set")
    if c.ipspoofchk and c.vlan_trunk:
        # Tagged frames from a guarded port are dropped: the checks cannot see inside them.
        raise ValueError("ipspoofchk cannot be used with vlanTrunk (tagged frames are dropped)")


# --- derived values (the models' methods and properties call these) --------------------------


def to_range(r: RangeConf) -> Range:
    return Range(r.subnet, r.range_start, r.range_end, r.gateway)


def count(pm: PortMappingConf) -> int:
    """How many ports a mapping publishes (hostPort..hostPortEnd); DomainError if none fit."""
    return port_range_count(pm.host_port, pm.host_port_end, pm.container_port)


def range_sets(ipam: IPAMConf) -> list[tuple[Range, ...]]:
    if ipam.ranges:
        return [tuple(to_range(r) for r in rs) for rs in ipam.ranges]
    if ipam.subnet is not None:
        return [(Range(ipam.subnet, ipam.range_start, ipam.range_end, ipam.gateway),)]
    return []


def gateway_mode(conf: NetConf) -> bool:
    # The reference bridge: isDefaultGateway implies isGateway.
    return conf.is_gateway or conf.is_default_gateway


def port_mappings(conf: NetConf) -> list[PortMappingConf]:
    if not conf.capabilities.get("portMappings"):
        return []
    return list(conf.runtime_config.port_mappings)


def dns_aliases(conf: NetConf) -> list[str]:
    """The container's aliases on this network (capability `aliases`, podman's form)."""
    if not conf.capabilities.get("aliases"):
        return []
    return list(conf.runtime_config.aliases.get(conf.name, []))


def effective_range_sets(conf: NetConf) -> list[tuple[Range, ...]]:
    if conf.capabilities.get("ipRanges") and conf.runtime_config.ip_ranges:
        return [tuple(to_range(r) for r in rs) for rs in conf.runtime_config.ip_ranges]
    return range_sets(conf.ipam)


# --- reporting --------------------------------------------------------------------------------


def error_path(loc: tuple[int | str, ...]) -> str:
    """A validation error's location as the message names it: `ipam.ranges[0][1].subnet`."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part.startswith(("function-after", "function-before", "lax-or-strict[")):
            continue  # pydantic's tags for the branches of a union
        else:
            out += ("." if out else "") + part
    return out or "config"

