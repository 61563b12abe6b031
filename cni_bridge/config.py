"""Network configuration models (pydantic v2) and their validation.

Field names follow the reference `bridge`, `host-local` and `portmap` plugins so a config written
for that chain keeps working once its `type` says cni-bridge. Unknown fields are ignored, as the
reference does; wrong types and impossible values are CNI error 7 naming the field.

These models are the definition of the config's structure; the rules themselves live in
confrules.py, which the lean validator (leanconf.py, used where pydantic is not loaded yet, see
netconf.load_netconf) calls too. Validators here are those functions, attached as they are
(a staticmethod), so tests/unit/test_leanconf.py can check that both attach the same ones.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from cni_bridge import confrules as rules
from cni_bridge.confrules import DEFAULT_BRIDGE, DEFAULT_DNS_DOMAIN, error_path
from cni_bridge.domain import (
    DEFAULT_DATA_DIR,
    InterfaceName,
    IPAddress,
    IPNetwork,
    MacAddress,
    NetworkName,
    Port,
    VlanId,
)
from cni_bridge.errors import INVALID_CONFIG, CNIError
from cni_bridge.ipam.ranges import Range
from cni_bridge.protocol.versions import DEFAULT_CONFIG_VERSION

if TYPE_CHECKING:
    from cni_bridge import netconf


class _Model(BaseModel):
    # defer_build (pydantic's documented switch): no schema or validator is built when a class
    # is defined, only at its first validation. NetConf's schema takes in the nested models',
    # so their seven validators are never built; the agent builds NetConf's once, before it
    # forks (engine.warm). An exec'd plugin does not use these models (netconf.load_netconf).
    model_config = ConfigDict(
        extra="ignore", populate_by_name=True, frozen=True, defer_build=True
    )


class RangeConf(_Model):
    subnet: IPNetwork
    range_start: IPAddress | None = Field(None, alias="rangeStart")
    range_end: IPAddress | None = Field(None, alias="rangeEnd")
    gateway: IPAddress | None = None

    _subnet = field_validator("subnet", mode="before")(staticmethod(rules.subnet))
    _addr = field_validator("range_start", "range_end", "gateway", mode="before")(
        staticmethod(rules.optional_address)
    )

    def to_range(self) -> Range:
        return rules.to_range(self)


class RouteConf(_Model):
    dst: IPNetwork
    gw: IPAddress | None = None

    _dst = field_validator("dst", mode="before")(staticmethod(rules.route_dst))
    _gw = field_validator("gw", mode="before")(staticmethod(rules.optional_address))

    @model_validator(mode="after")
    def _checks(self) -> RouteConf:
        rules.route_checks(self)
        return self


class DNSConf(_Model):
    nameservers: list[str] = Field(default_factory=list)
    domain: str = ""
    search: list[str] = Field(default_factory=list)
    options: list[str] = Field(default_factory=list)


class ContainerDNSConf(_Model):
    """`containerDNS`: a name server for the network's containers on its gateway addresses."""

    domain: str = DEFAULT_DNS_DOMAIN
    # Where other names go; empty: the resolvers of /etc/resolv.conf as the plugin reads it.
    upstream: list[IPAddress] = Field(default_factory=list)

    _domain = field_validator("domain", mode="after")(staticmethod(rules.dns_domain))
    _upstream = field_validator("upstream", mode="before")(staticmethod(rules.dns_upstream))


class IPAMConf(_Model):
    type: str = ""
    ranges: list[list[RangeConf]] = Field(default_factory=list)
    # The legacy single-range form of host-local.
    subnet: IPNetwork | None = None
    range_start: IPAddress | None = Field(None, alias="rangeStart")
    range_end: IPAddress | None = Field(None, alias="rangeEnd")
    gateway: IPAddress | None = None
    routes: list[RouteConf] = Field(default_factory=list)
    data_dir: str = Field(DEFAULT_DATA_DIR, alias="dataDir")
    resolv_conf: str = Field("", alias="resolvConf")

    _subnet = field_validator("subnet", mode="before")(staticmethod(rules.optional_subnet))
    _addr = field_validator("range_start", "range_end", "gateway", mode="before")(
        staticmethod(rules.optional_address)
    )
    _data_dir = field_validator("data_dir", mode="after")(staticmethod(rules.data_dir))

    def range_sets(self) -> list[tuple[Range, ...]]:
        return rules.range_sets(self)


class PortMappingConf(_Model):
    host_port: Port = Field(alias="hostPort")
    container_port: Port = Field(alias="containerPort")
    protocol: Literal["tcp", "udp", "sctp"] = "tcp"
    host_ip: IPAddress | None = Field(None, alias="hostIP")
    # Extension: publish hostPort..hostPortEnd onto containerPort..containerPort+(end-start).
    host_port_end: Port | None = Field(None, alias="hostPortEnd")

    _keys = model_validator(mode="before")(staticmethod(rules.port_mapping_keys))

    @model_validator(mode="after")
    def _checks(self) -> PortMappingConf:
        rules.port_mapping_checks(self)
        return self

    @property
    def count(self) -> int:
        return rules.count(self)


class RuntimeConf(_Model):
    port_mappings: list[PortMappingConf] = Field(default_factory=list, alias="portMappings")
    ips: list[str] = Field(default_factory=list)
    mac: MacAddress | None = None
    ip_ranges: list[list[RangeConf]] = Field(default_factory=list, alias="ipRanges")
    # podman's --network-alias: {"<network>": ["alias", ...]} (capability `aliases`).
    aliases: dict[str, list[str]] = Field(default_factory=dict)

    _aliases = field_validator("aliases", mode="before")(staticmethod(rules.no_aliases))
    _no_mac = field_validator("mac", mode="before")(staticmethod(rules.no_mac))


class NetConf(_Model):
    cni_version: str = Field(DEFAULT_CONFIG_VERSION, alias="cniVersion")
    name: NetworkName
    type: str = ""
    bridge: InterfaceName = DEFAULT_BRIDGE
    is_gateway: bool = Field(False, alias="isGateway")
    is_default_gateway: bool = Field(False, alias="isDefaultGateway")
    force_address: bool = Field(False, alias="forceAddress")
    ip_masq: bool = Field(False, alias="ipMasq")
    # Extension (ip-masq-agent's option of the same name): destinations that ipMasq leaves
    # alone, so pods keep their address towards the cluster CIDR (pods on other nodes).
    non_masquerade_cidrs: list[IPNetwork] = Field(default_factory=list, alias="nonMasqueradeCIDRs")
    mtu: int | None = Field(None, ge=68, le=65535)
    hairpin_mode: bool = Field(False, alias="hairpinMode")
    promisc_mode: bool = Field(False, alias="promiscMode")
    vlan: VlanId | None = None  # 0: none, as the reference bridge reads it
    vlan_trunk: list[VlanId] = Field(default_factory=list, alias="vlanTrunk")
    macspoofchk: bool = False
    # Extension: frames from the container carry only its own IP addresses (firewall/ipspoof.py).
    # Not implied by macspoofchk: that is the reference plugin's option, and a container with
    # it may legitimately send from other addresses (a router, a VPN endpoint, a DHCP lease).
    ipspoofchk: bool = False
    enabledad: bool = False
    # Extension: keep IPv6 (the kernel's link-local address) on a container interface that
    # gets no IPv6 address. Off by default, as Docker: its DAD, MLD and router solicitations
    # are multicast the bridge floods to every port, which made ADD 1.6x slower at 1000 ports.
    ipv6_link_local: bool = Field(False, alias="ipv6LinkLocal")
    port_isolation: bool = Field(False, alias="portIsolation")
    # Extension: Docker-style isolation between bridges of this plugin (on by default, as Docker).
    isolation: bool = True
    # Extension, Docker's and podman's --internal: no forwarding into or out of the bridge and
    # no masquerade; containers reach each other and the host's gateway address only.
    internal: bool = False
    # Extension: a name server for the containers (aardvark-dns), see cni_bridge/dns/.
    container_dns: ContainerDNSConf | None = Field(None, alias="containerDNS")
    dns: DNSConf = Field(default_factory=DNSConf)
    args: dict[str, Any] = Field(default_factory=dict)
    ipam: IPAMConf = Field(default_factory=IPAMConf)
    capabilities: dict[str, bool] = Field(default_factory=dict)
    runtime_config: RuntimeConf = Field(default_factory=RuntimeConf, alias="runtimeConfig")
    prev_result: dict[str, Any] | None = Field(None, alias="prevResult")

    _version = field_validator("cni_version", mode="after")(staticmethod(rules.cni_version))
    _container_dns = field_validator("container_dns", mode="before")(
        staticmethod(rules.container_dns)
    )
    _non_masq = field_validator("non_masquerade_cidrs", mode="before")(
        staticmethod(rules.non_masquerade_cidrs)
    )
    _no_vlan = field_validator("vlan", mode="before")(staticmethod(rules.no_vlan))

    @model_validator(mode="after")
    def _checks(self) -> NetConf:
        rules.cross_checks(self)
        return self

    @property
    def gateway_mode(self) -> bool:
        return rules.gateway_mode(self)

    def port_mappings(self) -> list[netconf.PortMappingConf]:
        return rules.port_mappings(self)

    def dns_aliases(self) -> list[str]:
        """The container's aliases on this network (capability `aliases`, podman's form)."""
        return rules.dns_aliases(self)

    def effective_range_sets(self) -> list[tuple[Range, ...]]:
        return rules.effective_range_sets(self)


def format_validation_error(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False):
        msg = str(err.get("msg", "")).removeprefix("Value error, ")
        parts.append(f"{error_path(tuple(err.get('loc', ())))}: {msg}")
    return "; ".join(parts)


def load_netconf(data: dict[str, Any]) -> NetConf:
    """Validates a decoded network config; any problem is CNI error 7 naming the field."""
    try:
        return NetConf.model_validate(data)
    except ValidationError as exc:
        msg = format_validation_error(exc)
        raise CNIError(INVALID_CONFIG, f"invalid network config: {msg}") from None
