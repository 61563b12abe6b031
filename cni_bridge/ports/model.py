"""What a record's port mappings ask the host to hold, and what the holder must change.

Pure: no sockets, no files. A mapping on every address is held on 0.0.0.0 and on [::]
(IPV6_V6ONLY), whatever the network's families, so a host program cannot bind the port in
either family and [::1] always finds a socket; a mapping on a host address is held on that
address only. SCTP is published by DNAT but not held.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping

from cni_bridge.firewall.model import PortMapping, mapping_from_dict
from cni_bridge.tuples import NamedTuple

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

HELD_PROTOCOLS = ("tcp", "udp")
ANY4, ANY6 = "0.0.0.0", "::"


# NamedTuples, not frozen dataclasses: the same immutable, hashable records (HoldKey ordered by
# its fields, as order=True did), without the six methods a frozen dataclass compiles at import
# (~2.5 M instructions each of every cold exec).
class HoldKey(NamedTuple):
    """One socket: protocol, the address it binds (ANY4, ANY6 or a host address), port."""

    protocol: str
    address: str
    port: int

    @property
    def family(self) -> int:
        return 6 if ":" in self.address else 4

    @property
    def wildcard(self) -> bool:
        return self.address in (ANY4, ANY6)

    def __str__(self) -> str:
        addr = f"[{self.address}]" if self.family == 6 else self.address
        return f"{self.protocol}/{self.port} on {addr}"


class Target(NamedTuple):  # a NamedTuple: see HoldKey
    """Where the proxy relays what reaches a held socket: the container's address and port."""

    address: str
    port: int

    def __str__(self) -> str:
        return f"[{self.address}]:{self.port}" if ":" in self.address else f"{self.address}:{self.port}"


Wanted = dict[HoldKey, Target | None]


def bind_addresses(pm: PortMapping, runtime_holds: bool = False) -> list[str]:
    """Where the mapping's sockets are held. `runtime_holds`: the runtime holds the mapping's
    own address itself (podman: conmon binds hostIP, or 0.0.0.0 without one, after ADD, and
    fails if anything else holds it), so only the [::] socket of a mapping without hostIP is
    left to us (podman leaves it: it is what serves [::1])."""
    if pm.host_ip is None:
        return [ANY6] if runtime_holds else [ANY4, ANY6]
    if runtime_holds:
        return []
    if pm.host_ip.is_unspecified:
        return [ANY4 if pm.host_ip.version == 4 else ANY6]
    return [str(pm.host_ip)]


def keys_for(mappings: Iterable[PortMapping], runtime_holds: bool = False) -> list[HoldKey]:
    """The sockets a list of port mappings calls for, in order, without repeats."""
    out: dict[HoldKey, None] = {}
    for pm in mappings:
        if pm.protocol not in HELD_PROTOCOLS:
            continue
        for addr in bind_addresses(pm, runtime_holds):
            for i in range(pm.port_count):
                out[HoldKey(pm.protocol, addr, pm.host_port + i)] = None
    return list(out)


def wanted_for(
    mappings: Iterable[PortMapping], ips: Iterable[str], runtime_holds: bool = False
) -> Wanted:
    """Held sockets with their relay targets: the container's first address of the socket's
    family, else its first of the other family (a [::] socket of an IPv4-only container relays
    to its IPv4 address); None when the container has no address (nothing to relay to)."""
    first: dict[int, str] = {}
    for raw in ips:
        try:
            ip = ipaddress.ip_interface(raw).ip
        except ValueError:
            continue
        first.setdefault(ip.version, str(ip))
    out: Wanted = {}
    for pm in mappings:
        if pm.protocol not in HELD_PROTOCOLS:
            continue
        for addr in bind_addresses(pm, runtime_holds):
            fam = 6 if ":" in addr else 4
            dest = first.get(fam) or first.get(10 - fam)
            for i in range(pm.port_count):
                key = HoldKey(pm.protocol, addr, pm.host_port + i)
                out[key] = Target(dest, pm.container_port + i) if dest else None
    return out


def wanted_from_record(data: Mapping[str, Any]) -> Wanted:
    """From an attachment record's JSON (state.Attachment.to_json); {} for what is unreadable."""
    raw = data.get("port_mappings")
    ips = data.get("ips")
    if not isinstance(raw, list) or not raw:
        return {}
    mappings = []
    for d in raw:
        try:
            mappings.append(mapping_from_dict(d))
        except (KeyError, TypeError, ValueError):
            continue
    addresses = [str(i) for i in ips] if isinstance(ips, list) else []
    return wanted_for(mappings, addresses, data.get("runtime_holds_ports") is True)


def runtime_holds_ports(cni_args: str) -> bool:
    """Whether the runtime holds the published ports itself: podman does (conmon binds them
    right after ADD), and podman is the runtime that sends K8S_POD_NAME alone of the K8S_POD_*
    args ("Only K8S_POD_NAME is used by dnsname", containers/common libnetwork/cni), while CRI
    runtimes always send K8S_POD_NAMESPACE too. Guessing podman wrongly only costs holding
    IPv4 sockets; missing it would make podman's own bind fail."""
    keys = {item.partition("=")[0] for item in cni_args.split(";")}
    return "K8S_POD_NAME" in keys and not keys & {
        "K8S_POD_NAMESPACE",
        "K8S_POD_UID",
        "K8S_POD_INFRA_CONTAINER_ID",
    }


class Plan(NamedTuple):  # a NamedTuple: see HoldKey
    close: list[HoldKey]
    open: list[tuple[HoldKey, Target | None]]
    retarget: list[tuple[HoldKey, Target | None]]


def first_owner(owners: Iterable[Any]) -> Any:
    """Of two records wanting one socket, the one whose target it relays to. The firewall lets
    only one attachment publish a port, so the other record is stale; any fixed choice does."""
    return min(owners, key=repr)


def plan(wanted: Mapping[HoldKey, Target | None], held: Mapping[HoldKey, Target | None]) -> Plan:
    """From the sockets held (with their targets) to the ones wanted."""
    return Plan(
        close=sorted(k for k in held if k not in wanted),
        open=sorted(((k, t) for k, t in wanted.items() if k not in held), key=lambda kt: kt[0]),
        retarget=sorted(
            ((k, t) for k, t in wanted.items() if k in held and held[k] != t),
            key=lambda kt: kt[0],
        ),
    )
