"""The network config validated without pydantic, for an exec'd process (netconf.load_netconf
says when): importing pydantic and building the models' validator cost ~200 ms, a validation
with this module well under a millisecond.

config.py's pydantic models stay the definition. This module restates their structure as a
table (each model's fields: name, alias, type, default) and calls the same rule functions
(confrules.py); tests/unit/test_leanconf.py derives the table from the models and fails on any
difference, and runs both validators over the examples and generated configs: same accepted
configs, equal values, same errors. The types' coercions are pydantic's lax mode for the values
JSON decodes to (leantypes.py). The objects are frozen and satisfy netconf.py's views.
"""

from __future__ import annotations

from cni_bridge import confrules as rules
from cni_bridge.domain import (
    DEFAULT_DATA_DIR,
    InterfaceName,
    MacAddress,
    NetworkName,
    Port,
    VlanId,
)
from cni_bridge.errors import INVALID_CONFIG, CNIError
from cni_bridge.leantypes import (
    ANY,
    BOOL,
    INT,
    IP_ADDRESS,
    IP_NETWORK,
    REQUIRED,
    STR,
    Checked,
    Dict,
    Errors,
    Field,
    Int,
    IPAddressType,
    List,
    Literal,
    Model,
    Optional,
)
from cni_bridge.protocol.versions import DEFAULT_CONFIG_VERSION

TYPE_CHECKING = False
if TYPE_CHECKING:
    import typing
    from typing import Any

    from cni_bridge import netconf
    from cni_bridge.domain import IPAddress, IPNetwork
    from cni_bridge.ipam.ranges import Range


class _Frozen:
    """Fields set once by the validator, as pydantic's frozen models: no assignment after."""

    __slots__ = ()
    def __init__(self, **values: Any) -> None:
        for name, value in values.items():
            object.__setattr__(self, name, value)

    def _names(self) -> tuple[str, ...]:
        names: tuple[str, ...] = type(self).__slots__
        return names

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is frozen")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is frozen")

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return all(getattr(self, n) == getattr(other, n) for n in self._names())

    __hash__ = None  # type: ignore[assignment]  # holds lists, as the models do

    def __repr__(self) -> str:
        fields = ", ".join(f"{n}={getattr(self, n)!r}" for n in self._names())
        return f"{type(self).__name__}({fields})"


class RangeConf(_Frozen):
    __slots__ = ("gateway", "range_end", "range_start", "subnet")
    subnet: IPNetwork
    range_start: IPAddress | None
    range_end: IPAddress | None
    gateway: IPAddress | None

    def to_range(self) -> Range:
        return rules.to_range(self)


class RouteConf(_Frozen):
    __slots__ = ("dst", "gw")
    dst: IPNetwork
    gw: IPAddress | None


class DNSConf(_Frozen):
    __slots__ = ("domain", "nameservers", "options", "search")
    nameservers: list[str]
    domain: str
    search: list[str]
    options: list[str]


class ContainerDNSConf(_Frozen):
    __slots__ = ("domain", "upstream")
    domain: str
    upstream: list[IPAddress]


class IPAMConf(_Frozen):
    __slots__ = (
        "data_dir",
        "gateway",
        "range_end",
        "range_start",
        "ranges",
        "resolv_conf",
        "routes",
        "subnet",
        "type",
    )
    type: str
    ranges: list[list[RangeConf]]
    subnet: IPNetwork | None
    range_start: IPAddress | None
    range_end: IPAddress | None
    gateway: IPAddress | None
    routes: list[RouteConf]
    data_dir: str
    resolv_conf: str

    def range_sets(self) -> list[tuple[Range, ...]]:
        return rules.range_sets(self)


class PortMappingConf(_Frozen):
    __slots__ = ("container_port", "host_ip", "host_port", "host_port_end", "protocol")
    host_port: Port
    container_port: Port
    protocol: typing.Literal["tcp", "udp", "sctp"]
    host_ip: IPAddress | None
    host_port_end: Port | None

    @property
    def count(self) -> int:
        return rules.count(self)


class RuntimeConf(_Frozen):
    __slots__ = ("aliases", "ip_ranges", "ips", "mac", "port_mappings")
    port_mappings: list[PortMappingConf]
    ips: list[str]
    mac: MacAddress | None
    ip_ranges: list[list[RangeConf]]
    aliases: dict[str, list[str]]


class NetConf(_Frozen):
    __slots__ = (
        "args",
        "bridge",
        "capabilities",
        "cni_version",
        "container_dns",
        "dns",
        "enabledad",
        "force_address",
        "hairpin_mode",
        "internal",
        "ip_masq",
        "ipam",
        "ipspoofchk",
        "ipv6_link_local",
        "is_default_gateway",
        "is_gateway",
        "isolation",
        "macspoofchk",
        "mtu",
        "name",
        "non_masquerade_cidrs",
        "port_isolation",
        "prev_result",
        "promisc_mode",
        "runtime_config",
        "type",
        "vlan",
        "vlan_trunk",
    )
    cni_version: str
    name: NetworkName
    type: str
    bridge: InterfaceName
    is_gateway: bool
    is_default_gateway: bool
    force_address: bool
    ip_masq: bool
    non_masquerade_cidrs: list[IPNetwork]
    mtu: int | None
    hairpin_mode: bool
    promisc_mode: bool
    vlan: VlanId | None
    vlan_trunk: list[VlanId]
    macspoofchk: bool
    ipspoofchk: bool
    enabledad: bool
    ipv6_link_local: bool
    port_isolation: bool
    isolation: bool
    internal: bool
    container_dns: ContainerDNSConf | None
    dns: DNSConf
    args: dict[str, Any]
    ipam: IPAMConf
    capabilities: dict[str, bool]
    runtime_config: RuntimeConf
    prev_result: dict[str, Any] | None

    @property
    def gateway_mode(self) -> bool:
        return rules.gateway_mode(self)

    def port_mappings(self) -> list[netconf.PortMappingConf]:
        return rules.port_mappings(self)

    def dns_aliases(self) -> list[str]:
        return rules.dns_aliases(self)

    def effective_range_sets(self) -> list[tuple[Range, ...]]:
        return rules.effective_range_sets(self)


# --- the table: config.py's models, field by field, in their order ---------------------------
# Field(name, alias, type, default; before=, after=): `default` is REQUIRED, a value, or a
# Model (its defaults, as pydantic's default_factory) or `list`/`dict` (a new empty one).

_ADDR = Optional(IP_ADDRESS)

RANGE = Model(
    "RangeConf",
    RangeConf,
    Field("subnet", None, IP_NETWORK, REQUIRED, before=rules.subnet),
    Field("range_start", "rangeStart", _ADDR, None, before=rules.optional_address),
    Field("range_end", "rangeEnd", _ADDR, None, before=rules.optional_address),
    Field("gateway", None, _ADDR, None, before=rules.optional_address),
)
ROUTE = Model(
    "RouteConf",
    RouteConf,
    Field("dst", None, IP_NETWORK, REQUIRED, before=rules.route_dst),
    Field("gw", None, _ADDR, None, before=rules.optional_address),
    after=rules.route_checks,
)
DNS = Model(
    "DNSConf",
    DNSConf,
    Field("nameservers", None, List(STR), list),
    Field("domain", None, STR, ""),
    Field("search", None, List(STR), list),
    Field("options", None, List(STR), list),
)
CONTAINER_DNS = Model(
    "ContainerDNSConf",
    ContainerDNSConf,
    Field("domain", None, STR, rules.DEFAULT_DNS_DOMAIN, after=rules.dns_domain),
    Field("upstream", None, List(IP_ADDRESS), list, before=rules.dns_upstream),
)
IPAM = Model(
    "IPAMConf",
    IPAMConf,
    Field("type", None, STR, ""),
    Field("ranges", None, List(List(RANGE)), list),
    Field("subnet", None, Optional(IP_NETWORK), None, before=rules.optional_subnet),
    Field("range_start", "rangeStart", _ADDR, None, before=rules.optional_address),
    Field("range_end", "rangeEnd", _ADDR, None, before=rules.optional_address),
    Field("gateway", None, _ADDR, None, before=rules.optional_address),
    Field("routes", None, List(ROUTE), list),
    Field("data_dir", "dataDir", STR, DEFAULT_DATA_DIR, after=rules.data_dir),
    Field("resolv_conf", "resolvConf", STR, ""),
)
PORT = Checked(Port, INT)
PORT_MAPPING = Model(
    "PortMappingConf",
    PortMappingConf,
    Field("host_port", "hostPort", PORT, REQUIRED),
    Field("container_port", "containerPort", PORT, REQUIRED),
    Field("protocol", None, Literal("tcp", "udp", "sctp"), "tcp"),
    Field("host_ip", "hostIP", Optional(IPAddressType()), None),
    Field("host_port_end", "hostPortEnd", Optional(PORT), None),
    before=rules.port_mapping_keys,
    after=rules.port_mapping_checks,
)
RUNTIME = Model(
    "RuntimeConf",
    RuntimeConf,
    Field("port_mappings", "portMappings", List(PORT_MAPPING), list),
    Field("ips", None, List(STR), list),
    Field("mac", None, Optional(Checked(MacAddress, STR)), None, before=rules.no_mac),
    Field("ip_ranges", "ipRanges", List(List(RANGE)), list),
    Field("aliases", None, Dict(List(STR)), dict, before=rules.no_aliases),
)
VLAN = Checked(VlanId, INT)
NETCONF = Model(
    "NetConf",
    NetConf,
    Field("cni_version", "cniVersion", STR, DEFAULT_CONFIG_VERSION, after=rules.cni_version),
    Field("name", None, Checked(NetworkName, STR), REQUIRED),
    Field("type", None, STR, ""),
    Field("bridge", None, Checked(InterfaceName, STR), rules.DEFAULT_BRIDGE),
    Field("is_gateway", "isGateway", BOOL, False),
    Field("is_default_gateway", "isDefaultGateway", BOOL, False),
    Field("force_address", "forceAddress", BOOL, False),
    Field("ip_masq", "ipMasq", BOOL, False),
    Field(
        "non_masquerade_cidrs", "nonMasqueradeCIDRs", List(IP_NETWORK), list,
        before=rules.non_masquerade_cidrs,
    ),
    Field("mtu", None, Optional(Int(ge=68, le=65535)), None),
    Field("hairpin_mode", "hairpinMode", BOOL, False),
    Field("promisc_mode", "promiscMode", BOOL, False),
    Field("vlan", None, Optional(VLAN), None, before=rules.no_vlan),
    Field("vlan_trunk", "vlanTrunk", List(VLAN), list),
    Field("macspoofchk", None, BOOL, False),
    Field("ipspoofchk", None, BOOL, False),
    Field("enabledad", None, BOOL, False),
    Field("ipv6_link_local", "ipv6LinkLocal", BOOL, False),
    Field("port_isolation", "portIsolation", BOOL, False),
    Field("isolation", None, BOOL, True),
    Field("internal", None, BOOL, False),
    Field(
        "container_dns", "containerDNS", Optional(CONTAINER_DNS), None,
        before=rules.container_dns,
    ),
    Field("dns", None, DNS, DNS),
    Field("args", None, Dict(ANY), dict),
    Field("ipam", None, IPAM, IPAM),
    Field("capabilities", None, Dict(BOOL), dict),
    Field("runtime_config", "runtimeConfig", RUNTIME, RUNTIME),
    Field("prev_result", "prevResult", Optional(Dict(ANY)), None),
    after=rules.cross_checks,
)
MODELS = (RANGE, ROUTE, DNS, CONTAINER_DNS, IPAM, PORT_MAPPING, RUNTIME, NETCONF)


def validate(data: Any) -> NetConf:
    """The config as NetConf, or ValueError listing every problem as config.py words it."""
    errors: Errors = []
    conf = NETCONF.validate(data, (), errors)
    if errors:
        raise ValueError("; ".join(f"{rules.error_path(loc)}: {msg}" for loc, msg in errors))
    assert isinstance(conf, NetConf)
    return conf


def load_netconf(data: dict[str, Any]) -> NetConf:
    """Validates a decoded network config; any problem is CNI error 7 naming the field."""
    try:
        return validate(data)
    except ValueError as exc:
        raise CNIError(INVALID_CONFIG, f"invalid network config: {exc}") from None
