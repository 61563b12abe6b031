"""Port mappings as the ``pub*`` maps hold them: one entry per (address family, host port,
host address), written as an address element and a port element under the same key (see
layout.py for why two maps), and read back.

A mapping on every local address is keyed (l4proto, port) in ``pub4``/``pub6``; one on a
specific host address is keyed (address, l4proto, port) in ``pub4h``/``pub6h``. The kernel
cannot see that ``tcp . 80`` and ``192.0.2.1 . tcp . 80`` overlap: the claims in ``ports``
(claims.py) make it refuse that.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from cni_bridge.firewall.elements import add_elems, attachment_comment, canon, elem, keys
from cni_bridge.firewall.layout import PUB, Json, PubMaps
from cni_bridge.firewall.model import (
    AttachmentFw,
    Element,
    InvalidConfig,
    IPAddress,
    NetworkFw,
    PortConflict,
    PortMapping,
    TableView,
)
from cni_bridge.tuples import NamedTuple

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

MAX_PORTS = 4096  # host ports per attachment after expanding ranges
PROTO_NUMBERS = {6: "tcp", 17: "udp", 132: "sctp"}  # as libnftables may list inet_proto

PortId = tuple[int, str, int]  # (address family, l4 protocol, host port)


# NamedTuples, not frozen dataclasses: the same immutable, hashable records, without the six
# methods a frozen dataclass compiles at import (~2.5 M instructions each of every cold exec).
class PubKey(NamedTuple):
    family: int
    protocol: str
    port: int
    host_ip: IPAddress | None  # None: any local address

    def json(self) -> Json:
        key: list[Any] = [str(self.host_ip)] if self.host_ip is not None else []
        return {"concat": [*key, self.protocol, self.port]}

    @property
    def port_id(self) -> PortId:
        return (self.family, self.protocol, self.port)

    def maps(self) -> PubMaps:
        return PUB[(self.family, self.host_ip is not None)]

    def overlaps(self, other: PubKey) -> bool:
        return self.port_id == other.port_id and (
            self.host_ip is None or other.host_ip is None or self.host_ip == other.host_ip
        )

    def __str__(self) -> str:
        where = f" on {self.host_ip}" if self.host_ip is not None else ""
        return f"host port {self.protocol}/{self.port}{where}"


class PubEntry(NamedTuple):  # a NamedTuple: see PubKey
    """One published port: its key and the DNAT target (container address, port)."""

    key: PubKey
    addr: IPAddress
    port: int

    def __str__(self) -> str:
        target = f"[{self.addr}]" if self.addr.version == 6 else str(self.addr)
        return f"{self.key} -> {target}:{self.port}"


# ---------------------------------------------------------------- from the model


def validate_mappings(mappings: Iterable[PortMapping]) -> None:
    """Raises InvalidConfig for what nftables cannot publish: the ports themselves are domain
    values (Port, port_range_count), checked where the mapping was made."""
    total = sum(pm.port_count for pm in mappings)
    if total > MAX_PORTS:
        raise InvalidConfig(f"more than {MAX_PORTS} host ports in port mappings")




def expand_mappings(att: AttachmentFw) -> list[PubEntry]:
    """One entry per (address family, host port); the container's first address of a
    family is the target, as the reference portmap plugin does. A mapping whose host
    address has a family the container lacks publishes nothing. Raises PortConflict when
    two mappings publish one host port to different targets."""
    first: dict[int, IPAddress] = {}
    for ip in att.ips:
        first.setdefault(ip.version, ip)
    entries: dict[PubKey, PubEntry] = {}
    for pm in att.port_mappings:
        if pm.host_ip is None:
            families = [4, 6]
            host_ip = None
        else:
            families = [pm.host_ip.version]
            host_ip = None if pm.host_ip.is_unspecified else pm.host_ip
        for fam in families:
            if fam not in first:
                continue
            for i in range(pm.port_count):
                key = PubKey(fam, pm.protocol, pm.host_port + i, host_ip)
                entry = PubEntry(key, first[fam], pm.container_port + i)
                for other in entries.values():
                    if other.key.overlaps(key) and other != entry:
                        raise PortConflict(f"{key} is mapped twice")
                entries[key] = entry
    return list(entries.values())


def conflict(entry: PubEntry, other: PubKey, owner: str) -> PortConflict:
    """The error for `entry` when `owner` already publishes `other`, an overlapping key."""
    where = ""
    if other.host_ip != entry.key.host_ip:
        where = f" on {other.host_ip or 'every local address'}"
    return PortConflict(f"{entry.key} is already published by {owner}{where}")


def attachment_add(net: NetworkFw, att: AttachmentFw, entries: Iterable[PubEntry]) -> list[Json]:
    comment = attachment_comment(net, att)
    by_maps: dict[PubMaps, list[PubEntry]] = {}
    for e in entries:
        by_maps.setdefault(e.key.maps(), []).append(e)
    cmds: list[Json] = []
    for maps, group in by_maps.items():
        # `create` on a specific address: the kernel refuses the same address twice
        verb = "create" if group[0].key.host_ip is not None else "add"
        addrs = [[elem(e.key.json(), comment), str(e.addr)] for e in group]
        cmds.append(add_elems(maps.addr, addrs, verb))
        cmds.append(add_elems(maps.port, [[elem(e.key.json(), comment), e.port] for e in group]))
    return cmds


# ---------------------------------------------------------------- reading back


def protocol_name(value: Any) -> str:
    """libnftables lists an inet_proto by name or, for some, by number."""
    return PROTO_NUMBERS.get(value, str(value)) if isinstance(value, int) else str(value)


def pub_key(maps_key: tuple[int, bool], raw: Any) -> PubKey | None:
    """The key of an element of the maps PUB[maps_key]; None when it is not one of ours."""
    fam, specific = maps_key
    parts = raw.get("concat") if isinstance(raw, dict) else None
    if not isinstance(parts, list) or len(parts) != (3 if specific else 2):
        return None
    try:
        host_ip = ipaddress.ip_address(parts[0]) if specific else None
        return PubKey(fam, protocol_name(parts[-2]), int(parts[-1]), host_ip)
    except (ValueError, TypeError):
        return None


def published(view: TableView) -> list[tuple[PubEntry | None, Element, Element | None]]:
    """(entry, addr element, port element) for every element of the pub*_addr maps."""
    out = []
    for maps_key, maps in PUB.items():
        ports = keys(view, maps.port)
        for el in view.sets.get(maps.addr, []):
            key = pub_key(maps_key, el.key)
            port_el = ports.get(canon(el.key))
            entry = None
            if key is not None and port_el is not None:
                try:
                    entry = PubEntry(key, ipaddress.ip_address(el.data), int(port_el.data))
                except (ValueError, TypeError):
                    entry = None
            out.append((entry, el, port_el))
    return out
