"""Address ranges and range sets with host-local's defaults, validation and iteration order.

Pure: no I/O. Standard library only.

A range set is one or more ranges of one address family; IPAM hands out one address per range
set, so two range sets (one IPv4, one IPv6) make a dual-stack attachment.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from ipaddress import IPv4Network, IPv6Network, ip_interface

from cni_bridge.domain import IPAddress, IPInterface, IPNetwork
from cni_bridge.tuples import NamedTuple

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

# host-local canonicalises IPv4-mapped IPv6 addresses to IPv4 and names their files that way;
# we refuse them rather than write files it would name differently.
_V4_MAPPED = IPv6Network("::ffff:0:0/96")


def _reserved_ints(subnet: IPNetwork) -> tuple[int, ...]:
    """Addresses of the subnet that are never handed out: the network address and, for IPv4,
    the broadcast address. host-local only avoids them through its defaults; we also skip them
    when an explicit rangeStart/rangeEnd includes them."""
    if isinstance(subnet, IPv4Network):
        return (int(subnet.network_address), int(subnet.broadcast_address))
    return (int(subnet.network_address),)


class _RangeFields(NamedTuple):
    subnet: IPNetwork
    range_start: IPAddress
    range_end: IPAddress
    gateway: IPAddress


# A NamedTuple (immutable, hashable, equal by its fields, as the frozen dataclass it was) whose
# constructor fills in the defaults and validates: no `dataclasses` (nor the `inspect` it
# imports) on the exec'd path, where every config's ranges are built.
class Range(_RangeFields):
    """One contiguous range inside a subnet, with host-local's defaults filled in.

    Defaults: range_start = network + 1, range_end = last address (IPv4: broadcast - 1),
    gateway = network + 1. The gateway is never handed out. Raises ValueError when the range
    itself is inconsistent; checks that involve several ranges are in validate_range_set(s).
    """

    __slots__ = ()

    def __new__(
        cls,
        subnet: IPNetwork,
        range_start: IPAddress | None = None,
        range_end: IPAddress | None = None,
        gateway: IPAddress | None = None,
    ) -> Range:
        if not isinstance(subnet, IPNetwork):
            raise ValueError(f"subnet {subnet!r} is not an IP network")
        if isinstance(subnet, IPv6Network) and subnet.subnet_of(_V4_MAPPED):
            raise ValueError(f"network {subnet} is IPv4-mapped IPv6; use the IPv4 form")
        # Same rule as host-local: a /31 or /32 (/127, /128) has nothing to hand out once the
        # gateway is taken.
        if subnet.prefixlen > subnet.max_prefixlen - 2:
            raise ValueError(f"network {subnet} too small to allocate from")
        first = subnet.network_address + 1
        last = subnet.broadcast_address - 1 if subnet.version == 4 else subnet.broadcast_address
        start = first if range_start is None else range_start
        end = last if range_end is None else range_end
        gw = first if gateway is None else gateway
        for what, addr in (("rangeStart", start), ("rangeEnd", end), ("gateway", gw)):
            if not isinstance(addr, IPAddress):
                raise ValueError(f"{what} {addr!r} is not an IP address")
            if addr.version != subnet.version:
                raise ValueError(f"{what} {addr} is not the same address family as subnet {subnet}")
            if addr not in subnet:
                raise ValueError(f"{what} {addr} not in network {subnet}")
        if int(start) > int(end):
            raise ValueError(f"rangeStart {start} is after rangeEnd {end} in network {subnet}")
        if int(gw) in _reserved_ints(subnet):
            raise ValueError(f"gateway {gw} is the network or broadcast address of {subnet}")
        self = super().__new__(cls, subnet, start, end, gw)
        if self.size() == 0:
            raise ValueError(f"range {self} in network {subnet} has no address to hand out")
        return self

    # namedtuple's own would build the tuple without the checks above (dataclasses.replace,
    # when this was a dataclass, ran them again).
    def _replace(self, **changes: Any) -> Range:
        return Range(**{**dict(zip(self._fields, self, strict=True)), **changes})

    @classmethod
    def _make(cls, iterable: Iterable[Any]) -> Range:  # type: ignore[override]  # mypy's is generic
        return Range(*iterable)

    @property
    def version(self) -> int:
        return self.subnet.version

    def contains(self, ip: IPAddress) -> bool:
        """True when ip lies in [range_start, range_end] (host-local's Range.Contains)."""
        return ip.version == self.version and int(self.range_start) <= int(ip) <= int(
            self.range_end
        )

    def allocatable(self, ip: IPAddress) -> bool:
        """True when ip may be handed out: in the range, not the gateway, network or broadcast."""
        return (
            self.contains(ip) and ip != self.gateway and int(ip) not in _reserved_ints(self.subnet)
        )

    def size(self) -> int:
        """How many addresses of this range can be handed out."""
        lo, hi = int(self.range_start), int(self.range_end)
        excluded = {int(self.gateway), *_reserved_ints(self.subnet)}
        return hi - lo + 1 - sum(1 for x in excluded if lo <= x <= hi)

    def interface(self, ip: IPAddress) -> IPInterface:
        """ip with this range's subnet prefix length, e.g. 10.0.0.5/24."""
        return ip_interface(f"{ip}/{self.subnet.prefixlen}")

    def overlaps(self, other: Range) -> bool:
        return (
            self.version == other.version
            and int(self.range_start) <= int(other.range_end)
            and int(other.range_start) <= int(self.range_end)
        )

    def __str__(self) -> str:
        # host-local's Range.String(), used in its error messages.
        return f"{self.range_start}-{self.range_end}"


RangeSet = tuple[Range, ...]


def range_set_str(rs: Sequence[Range]) -> str:
    """host-local's RangeSet.String(): "10.0.0.1-10.0.0.6,10.0.1.1-10.0.1.254"."""
    return ",".join(str(r) for r in rs)


def range_for(rs: Sequence[Range], ip: IPAddress) -> int | None:
    """Index of the range of rs that contains ip, or None."""
    for i, r in enumerate(rs):
        if r.contains(ip):
            return i
    return None


def validate_range_set(rs: Sequence[Range]) -> None:
    """Raise ValueError unless rs is a non-empty set of non-overlapping ranges of one family."""
    if len(rs) == 0:
        raise ValueError("empty range set")
    for r in rs:
        if not isinstance(r, Range):
            raise ValueError(f"{r!r} is not a Range")
    if len({r.version for r in rs}) > 1:
        raise ValueError(f"mixed address families in range set {range_set_str(rs)}")
    for i, r1 in enumerate(rs):
        for r2 in rs[i + 1 :]:
            if r1.overlaps(r2):
                raise ValueError(f"ranges {r1} and {r2} overlap")


def validate_range_sets(range_sets: Sequence[Sequence[Range]]) -> None:
    """validate_range_set for each set, plus: at least one set, and no overlap across sets."""
    if len(range_sets) == 0:
        raise ValueError("no IP ranges specified")
    for i, rs in enumerate(range_sets):
        try:
            validate_range_set(rs)
        except ValueError as exc:
            raise ValueError(f"invalid range set {i}: {exc}") from None
    for i, rs1 in enumerate(range_sets):
        for j in range(i + 1, len(range_sets)):
            if any(r1.overlaps(r2) for r1 in rs1 for r2 in range_sets[j]):
                raise ValueError(f"range set {i} overlaps with {j}")


def allocatable_count(rs: Sequence[Range]) -> int:
    """How many addresses the range set can hand out in total."""
    return sum(r.size() for r in rs)


def iter_candidates(
    rs: Sequence[Range], last_reserved: IPAddress | None = None
) -> Iterator[tuple[int, IPAddress]]:
    """Yield (range index, address) in host-local's round-robin order.

    Starts just after last_reserved when the set contains it (so a crash-looping container does
    not get the same address back until the whole set has been used), otherwise at the first
    range's start; walks the ranges in order, wraps around, and stops after one full cycle.
    The gateway, network and broadcast addresses are skipped.
    """
    n = len(rs)
    if n == 0:
        return
    idx, cur = 0, int(rs[0].range_start)
    if last_reserved is not None:
        found = range_for(rs, last_reserved)
        if found is not None:
            idx, cur = found, int(last_reserved)
            idx, cur = _advance(rs, idx, cur)
    begin = (idx, cur)
    while True:
        r = rs[idx]
        ip = type(r.range_start)(cur)
        if r.allocatable(ip):
            yield idx, ip
        idx, cur = _advance(rs, idx, cur)
        if (idx, cur) == begin:
            return


def _advance(rs: Sequence[Range], idx: int, cur: int) -> tuple[int, int]:
    if cur >= int(rs[idx].range_end):
        idx = (idx + 1) % len(rs)
        return idx, int(rs[idx].range_start)
    return idx, cur + 1
