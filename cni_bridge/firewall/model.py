"""What the firewall layer needs to know about a network and one attachment, what it reads
back from the kernel, and what it refuses.

Standard library only: the commands import it without pulling in libnftables. Names and ports
arrive as domain.py's checked types (config.py checked them, or `mapping_from_dict` when a
record is read) and are not checked again; only nftables' own limits (comment length, range
sizes) are checked, in rules.py and ports.py. This module holds data, the errors of the pure
layer and a port mapping's JSON form (as attachment records keep it).
"""

from __future__ import annotations

import ipaddress

from cni_bridge.domain import InterfaceName, NetworkName, Port, port_range_count

# Re-exported for the firewall modules that take them from here.
from cni_bridge.domain import IPAddress as IPAddress
from cni_bridge.domain import IPNetwork as IPNetwork
from cni_bridge.hints import Literal
from cni_bridge.slotted import Slotted
from cni_bridge.tuples import NamedTuple

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

Protocol = Literal["tcp", "udp", "sctp"]
PROTOCOLS: tuple[Protocol, ...] = ("tcp", "udp", "sctp")


# No dataclasses here (every ADD, CHECK and DEL imports this module; see slotted.py): what is
# immutable is a NamedTuple, what a read fills in (the views) a Slotted.


class PortMapping(NamedTuple):
    """hostPort[..hostPortEnd] on host_ip (None: any local address) -> containerPort[..+n].

    An unspecified host_ip (0.0.0.0 or ::) means any local address of that family only,
    as the reference portmap plugin reads it; None means any address of both families.
    """

    host_port: Port
    container_port: Port
    protocol: Protocol = "tcp"
    host_ip: IPAddress | None = None
    host_port_end: Port | None = None  # inclusive; None: a single port

    @property
    def port_count(self) -> int:  # not `count`: a NamedTuple's own method
        return port_range_count(self.host_port, self.host_port_end, self.container_port)


class NetworkFw(NamedTuple):
    name: NetworkName
    bridge: InterfaceName
    subnets: list[IPNetwork]
    ip_masq: bool
    isolate: bool = True
    non_masq: tuple[IPNetwork, ...] = ()  # destinations ipMasq leaves alone
    internal: bool = False  # no forwarding into or out of the bridge, no masquerade
    dns_gateways: tuple[IPAddress, ...] = ()  # containerDNS listens there


class AttachmentFw(NamedTuple):
    tag: str  # short, safe ASCII, unique per (network, containerID, ifname)
    owner: str  # human text, "network/containerID/ifname"
    ips: list[IPAddress]
    port_mappings: tuple[PortMapping, ...] = ()


# What the kernel holds, as read back through libnftables.


class ForeignChain(NamedTuple):
    """A base chain of another table hooked at forward (routed traffic: ip, ip6, inet): the
    chain is its family, table and name; its policy is what was seen (left out of equality)."""

    family: str
    table: str
    name: str
    policy: str = "drop"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ForeignChain):
            return NotImplemented
        return self[:3] == other[:3]

    def __ne__(self, other: object) -> bool:
        return not self == other

    def __hash__(self) -> int:
        return hash(self[:3])

    def __str__(self) -> str:
        return f"{self.family} {self.table} {self.name}"


class Element(NamedTuple):
    """A set or map element; its comment is "<network> <tag> <owner>" for an
    attachment's element and "<network>" for a network's."""

    key: Any  # libnftables JSON, usable as is in a delete command
    data: Any  # the data of a map element (JSON), None in a set
    comment: str

    @property
    def network(self) -> str:
        return self.comment.split(" ", 1)[0]

    @property
    def tag(self) -> str:
        parts = self.comment.split(" ", 2)
        return parts[1] if len(parts) > 1 else ""

    @property
    def owner(self) -> str:
        parts = self.comment.split(" ", 2)
        return parts[2] if len(parts) > 2 else self.comment


class Rule(NamedTuple):
    handle: int
    comment: str
    expr: list[dict[str, Any]]


class TableView(Slotted):
    """Our table as read: rule comments by chain, elements by set. A partial read
    leaves out the elements of the sets it did not need."""

    __slots__ = ("chains", "exists", "sets")

    def __init__(
        self,
        exists: bool = False,
        sets: dict[str, list[Element]] | None = None,
        chains: dict[str, list[Rule]] | None = None,
    ) -> None:
        self.exists = exists
        self.sets: dict[str, list[Element]] = {} if sets is None else sets
        self.chains: dict[str, list[Rule]] = {} if chains is None else chains


class ForeignView(Slotted):
    """A foreign forward chain with its rules. `blocking`: it drops what no rule of it
    accepts, by its policy or by final unconditional drop/reject rules (firewalld's style,
    policy accept then `reject`); only those get our accept rules (foreign.py)."""

    __slots__ = ("blocking", "chain", "rules")

    def __init__(self, chain: ForeignChain, rules: list[Rule], blocking: bool = True) -> None:
        self.chain = chain
        self.rules = rules
        self.blocking = blocking


class FirewallView(Slotted):
    """Everything of ours the kernel's ruleset holds, as a sync compares it with the records:
    our table, the foreign forward chains (foreign.py), and the macspoofchk guards as
    (host veth, MAC) pairs (None when the bridge table or its rule is missing), and the
    ipspoofchk elements by set (None when its chain or one of its rules is missing)."""

    __slots__ = ("foreign", "ipspoof", "spoofchk", "table")

    def __init__(
        self,
        table: TableView,
        foreign: list[ForeignView],
        spoofchk: set[tuple[str, str]] | None = None,
        ipspoof: dict[str, list[Element]] | None = None,
    ) -> None:
        self.table = table
        self.foreign = foreign
        self.spoofchk = spoofchk
        self.ipspoof = ipspoof


# What the pure layer refuses. It knows no CNI error codes: nft.py maps these to them.


class FirewallError(Exception):
    """str() is the message the runtime shows."""


class InvalidConfig(FirewallError):
    """The network or attachment cannot be carried by our table (INVALID_CONFIG)."""


class PortConflict(FirewallError):
    """A host port is taken, or mapped twice by one attachment (PORT_CONFLICT)."""


# A port mapping's JSON form, as attachment records keep it (commands/common.py).


def mapping_to_dict(pm: PortMapping) -> dict[str, Any]:
    d: dict[str, Any] = {
        "hostPort": pm.host_port,
        "containerPort": pm.container_port,
        "protocol": pm.protocol,
    }
    if pm.host_ip is not None:
        d["hostIP"] = str(pm.host_ip)
    if pm.host_port_end is not None:
        d["hostPortEnd"] = pm.host_port_end
    return d


def _record_port(value: Any) -> Port:
    # Records keep JSON integers; a float (1e999 is infinity) or a string is not one.
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"port {value!r} is not an integer")
    return Port(value)


def mapping_from_dict(d: dict[str, Any]) -> PortMapping:
    """A record's mapping, checked by domain.py's rules (a record is a file: read, not trusted);
    ValueError if it breaks one."""
    if not isinstance(d, dict):
        raise ValueError(f"a port mapping is a JSON {type(d).__name__}, not an object")
    proto = str(d.get("protocol", "tcp")).lower()
    if proto not in PROTOCOLS:
        raise ValueError(f"unsupported protocol {proto!r}")
    host_ip = d.get("hostIP")
    end = d.get("hostPortEnd")
    pm = PortMapping(
        host_port=_record_port(d["hostPort"]),
        container_port=_record_port(d["containerPort"]),
        protocol=proto,
        host_ip=ipaddress.ip_address(host_ip) if host_ip else None,
        host_port_end=_record_port(end) if end is not None else None,
    )
    port_range_count(pm.host_port, pm.host_port_end, pm.container_port)
    return pm
