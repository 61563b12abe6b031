"""Network configuration models (pydantic v2) and their validation.

Field names follow the reference `bridge`, `host-local` and `portmap` plugins so a config written
for that chain keeps working once its `type` says cni-bridge. Unknown fields are ignored, as the
reference does; wrong types and impossible values are CNI error 7 naming the field.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from cni_bridge.domain import (
    DEFAULT_DATA_DIR,
    InterfaceName,
    IPAddress,
    IPNetwork,
    MacAddress,
    NetworkName,
    Port,
    VlanId,
    dns_name_problem,
    port_range_count,
)
from cni_bridge.errors import INVALID_CONFIG, CNIError
from cni_bridge.ipam.ranges import Range, validate_range_sets
from cni_bridge.protocol.versions import DEFAULT_CONFIG_VERSION, require_supported

DEFAULT_BRIDGE = InterfaceName("cni0")


class _Model(BaseModel):
    # defer_build (pydantic's documented switch): no schema or validator is built when a class
    # is defined, only at its first validation. A request validates NetConf alone, whose schema
    # takes in the nested models', so the seven nested validators are never built in a
    # short-lived process; the agent builds NetConf's once, before it forks (engine.warm).
    model_config = ConfigDict(
        extra="ignore", populate_by_name=True, frozen=True, defer_build=True
    )


def _network(value: Any, what: str = "subnet") -> IPNetwork:
    try:
        return ipaddress.ip_network(str(value), strict=True)
    except ValueError as exc:
        if "host bits set" in str(exc):
            raise ValueError(f"{what} {value!r} has host bits set") from None
        raise ValueError(f"{what} {value!r} is not a CIDR: {exc}") from None


def _address(value: Any) -> IPAddress:
    try:
        return ipaddress.ip_address(str(value))
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address") from None


class RangeConf(_Model):
    subnet: IPNetwork
    range_start: IPAddress | None = Field(None, alias="rangeStart")
    range_end: IPAddress | None = Field(None, alias="rangeEnd")
    gateway: IPAddress | None = None

    @field_validator("subnet", mode="before")
    @classmethod
    def _subnet(cls, v: Any) -> IPNetwork:
        return _network(v)

    @field_validator("range_start", "range_end", "gateway", mode="before")
    @classmethod
    def _addr(cls, v: Any) -> IPAddress | None:
        return None if v in (None, "") else _address(v)

    def to_range(self) -> Range:
        return Range(self.subnet, self.range_start, self.range_end, self.gateway)


class RouteConf(_Model):
    dst: IPNetwork
    gw: IPAddress | None = None

    @field_validator("dst", mode="before")
    @classmethod
    def _dst(cls, v: Any) -> IPNetwork:
        return _network(v, "route dst")

    @field_validator("gw", mode="before")
    @classmethod
    def _gw(cls, v: Any) -> IPAddress | None:
        return None if v in (None, "") else _address(v)

    @model_validator(mode="after")
    def _same_family(self) -> RouteConf:
        if self.gw is not None and self.gw.version != self.dst.version:
            raise ValueError(f"route {self.dst} has a gateway of another IP family ({self.gw})")
        return self


class DNSConf(_Model):
    nameservers: list[str] = Field(default_factory=list)
    domain: str = ""
    search: list[str] = Field(default_factory=list)
    options: list[str] = Field(default_factory=list)


DEFAULT_DNS_DOMAIN = "dns.cni-bridge"
# dns/aardvark.py's PID_FILE (not imported: the cold path does not load the dns package), in
# the directory where each containerDNS network has a file named after it.
_AARDVARK_PID_FILE = "aardvark.pid"


class ContainerDNSConf(_Model):
    """`containerDNS`: a name server for the network's containers on its gateway addresses."""

    domain: str = DEFAULT_DNS_DOMAIN
    # Where other names go; empty: the resolvers of /etc/resolv.conf as the plugin reads it.
    upstream: list[IPAddress] = Field(default_factory=list)

    @field_validator("domain")
    @classmethod
    def _domain(cls, v: str) -> str:
        problem = dns_name_problem(v)
        if problem is not None:
            raise ValueError(f"domain {v!r} {problem}")
        return v.lower()

    @field_validator("upstream", mode="before")
    @classmethod
    def _upstream(cls, v: Any) -> list[IPAddress]:
        if not isinstance(v, list):
            raise ValueError("upstream must be a list of IP addresses")
        out = [_address(x) for x in v]
        for ip in out:
            if ip.version == 6 and (ip.is_link_local or ip.scope_id is not None):
                raise ValueError(f"upstream {ip}: link-local and scoped addresses are not usable")
        return out


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

    @field_validator("subnet", mode="before")
    @classmethod
    def _subnet(cls, v: Any) -> IPNetwork | None:
        return None if v in (None, "") else _network(v)

    @field_validator("range_start", "range_end", "gateway", mode="before")
    @classmethod
    def _addr(cls, v: Any) -> IPAddress | None:
        return None if v in (None, "") else _address(v)

    @field_validator("data_dir")
    @classmethod
    def _data_dir(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError(f"dataDir {v!r} must be an absolute path")
        return v

    def range_sets(self) -> list[tuple[Range, ...]]:
        if self.ranges:
            return [tuple(r.to_range() for r in rs) for rs in self.ranges]
        if self.subnet is not None:
            return [(Range(self.subnet, self.range_start, self.range_end, self.gateway),)]
        return []


class PortMappingConf(_Model):
    host_port: Port = Field(alias="hostPort")
    container_port: Port = Field(alias="containerPort")
    protocol: Literal["tcp", "udp", "sctp"] = "tcp"
    host_ip: IPAddress | None = Field(None, alias="hostIP")
    # Extension: publish hostPort..hostPortEnd onto containerPort..containerPort+(end-start).
    host_port_end: Port | None = Field(None, alias="hostPortEnd")

    @model_validator(mode="before")
    @classmethod
    def _any_case(cls, data: Any) -> Any:
        # containerd's CRI sends HostPort/ContainerPort/Protocol/HostIP (Go decodes keys
        # case-insensitively), podman sends camelCase: accept both.
        if not isinstance(data, dict):
            return data
        canon = {
            "hostport": "hostPort",
            "containerport": "containerPort",
            "protocol": "protocol",
            "hostip": "hostIP",
            "hostportend": "hostPortEnd",
        }
        out: dict[str, Any] = {}
        for key, value in data.items():
            name = canon.get(str(key).lower())
            if name is not None:
                out[name] = value
        if isinstance(out.get("protocol"), str):
            out["protocol"] = out["protocol"].lower() or "tcp"
        if out.get("hostIP") in ("", None):
            out.pop("hostIP", None)
        return out

    @model_validator(mode="after")
    def _range(self) -> PortMappingConf:
        port_range_count(self.host_port, self.host_port_end, self.container_port)
        return self

    @property
    def count(self) -> int:
        return port_range_count(self.host_port, self.host_port_end, self.container_port)


class RuntimeConf(_Model):
    port_mappings: list[PortMappingConf] = Field(default_factory=list, alias="portMappings")
    ips: list[str] = Field(default_factory=list)
    mac: MacAddress | None = None
    ip_ranges: list[list[RangeConf]] = Field(default_factory=list, alias="ipRanges")
    # podman's --network-alias: {"<network>": ["alias", ...]} (capability `aliases`).
    aliases: dict[str, list[str]] = Field(default_factory=dict)

    @field_validator("aliases", mode="before")
    @classmethod
    def _aliases(cls, v: Any) -> Any:
        return {} if v is None else v

    @field_validator("mac", mode="before")
    @classmethod
    def _no_mac(cls, v: Any) -> Any:
        return None if v == "" else v


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

    @field_validator("cni_version")
    @classmethod
    def _version(cls, v: str) -> str:
        return require_supported(v)

    @field_validator("container_dns", mode="before")
    @classmethod
    def _container_dns(cls, v: Any) -> Any:
        if v is None or v is False:
            return None
        if v is True:
            return {}
        if not isinstance(v, dict):
            raise ValueError("containerDNS must be true, false or an object")
        return v

    @field_validator("non_masquerade_cidrs", mode="before")
    @classmethod
    def _non_masq(cls, v: Any) -> list[IPNetwork]:
        if not isinstance(v, list):
            raise ValueError("nonMasqueradeCIDRs must be a list of CIDRs")
        return [_network(x, "nonMasqueradeCIDRs entry") for x in v]

    @field_validator("vlan", mode="before")
    @classmethod
    def _no_vlan(cls, v: Any) -> Any:
        return None if v == 0 else v

    @model_validator(mode="after")
    def _cross_checks(self) -> NetConf:
        if self.ipam.type == "host-local":
            if not self.ipam.ranges and self.ipam.subnet is None:
                raise ValueError("ipam: host-local needs `ranges` or `subnet`")
            try:
                sets = self.ipam.range_sets()
                validate_range_sets(sets)
            except ValueError as exc:
                raise ValueError(f"ipam.ranges: {exc}") from None
            for route in self.ipam.routes:
                fams = {r.subnet.version for rs in sets for r in rs}
                if route.dst.version not in fams:
                    raise ValueError(f"ipam.routes: {route.dst} has no range of its IP family")
        if self.container_dns is not None and not self.gateway_mode:
            raise ValueError("containerDNS needs isGateway: the name server listens on the gateway")
        if self.container_dns is not None and self.name == _AARDVARK_PID_FILE:
            raise ValueError(
                f"containerDNS cannot serve a network named {self.name!r}: its file would be "
                "the name server's pid file"
            )
        if self.vlan and self.vlan_trunk:
            raise ValueError("vlan and vlanTrunk cannot both be set")
        if self.ipspoofchk and self.vlan_trunk:
            # Tagged frames from a guarded port are dropped: the checks cannot see inside them.
            raise ValueError("ipspoofchk cannot be used with vlanTrunk (tagged frames are dropped)")
        return self

    @property
    def gateway_mode(self) -> bool:
        # The reference bridge: isDefaultGateway implies isGateway.
        return self.is_gateway or self.is_default_gateway

    def port_mappings(self) -> list[PortMappingConf]:
        if not self.capabilities.get("portMappings"):
            return []
        return list(self.runtime_config.port_mappings)

    def dns_aliases(self) -> list[str]:
        """The container's aliases on this network (capability `aliases`, podman's form)."""
        if not self.capabilities.get("aliases"):
            return []
        return list(self.runtime_config.aliases.get(self.name, []))

    def effective_range_sets(self) -> list[tuple[Range, ...]]:
        if self.capabilities.get("ipRanges") and self.runtime_config.ip_ranges:
            return [tuple(r.to_range() for r in rs) for rs in self.runtime_config.ip_ranges]
        return self.ipam.range_sets()


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part.startswith("function-after") or part.startswith("function-before"):
            continue
        else:
            out += ("." if out else "") + part
    return out or "config"


def format_validation_error(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False):
        msg = str(err.get("msg", "")).removeprefix("Value error, ")
        parts.append(f"{_loc(tuple(err.get('loc', ())))}: {msg}")
    return "; ".join(parts)


def load_netconf(data: dict[str, Any]) -> NetConf:
    """Validates a decoded network config; any problem is CNI error 7 naming the field."""
    try:
        return NetConf.model_validate(data)
    except ValidationError as exc:
        msg = format_validation_error(exc)
        raise CNIError(INVALID_CONFIG, f"invalid network config: {msg}") from None
