"""Address allocation over a Store, with host-local's semantics.

Pure logic: all I/O goes through the Store. One address per range set; all range sets are
served under one store lock, and a failure part-way releases what this call reserved.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from cni_bridge.domain import IPAddress, IPInterface
from cni_bridge.ipam.ranges import (
    Range,
    allocatable_count,
    iter_candidates,
    range_for,
    range_set_str,
    validate_range_sets,
)
from cni_bridge.ipam.store import Owner, Store
from cni_bridge.tuples import NamedTuple

Reclaim = Callable[[IPAddress, Owner], bool]
"""Asked about a reserved address when a pool is exhausted (or a requested address is taken):
True means its owner is gone (e.g. an attachment from before the last boot) and the address
may be released and reused."""


class Allocation(NamedTuple):
    address: IPInterface  # the address with its subnet's prefix length
    gateway: IPAddress
    rangeset_index: int


class IPAMError(ValueError):
    """The request cannot be satisfied by this configuration or this pool."""


class IPAMExhausted(IPAMError):
    """A range set has no free address left."""


class IPAMConflict(IPAMError):
    """The address is held by someone: another attachment, or this one already (re-ADD)."""

    def __init__(self, msg: str, owner: Owner | None) -> None:
        super().__init__(msg)
        self.owner = owner


def _owner_str(owner: Owner | None) -> str:
    if owner is None:
        return "an unknown owner"
    cid, ifname = owner
    return f"container {cid} interface {ifname}" if ifname else f"container {cid}"


def match_requested(
    range_sets: Sequence[Sequence[Range]], requested: Sequence[IPAddress]
) -> list[IPAddress | None]:
    """The requested address for each range set (None: allocate any).

    Raises IPAMError for an address no range set contains (host-local: "failed to allocate all
    requested IPs"), two addresses for one set, or the gateway/network/broadcast address.
    """
    per_set: list[IPAddress | None] = [None] * len(range_sets)
    for ip in dict.fromkeys(requested):  # duplicates collapse, as in host-local's map
        for idx, rs in enumerate(range_sets):
            ri = range_for(rs, ip)
            if ri is None:
                continue
            r = rs[ri]
            if ip == r.gateway:
                raise IPAMError(f"requested ip {ip} is subnet's gateway")
            if not r.allocatable(ip):
                raise IPAMError(f"requested ip {ip} is the network or broadcast address")
            if per_set[idx] is not None:
                raise IPAMError(
                    f"requested IPs {per_set[idx]} and {ip} are both in range set "
                    f"{range_set_str(rs)}: only one address per range set"
                )
            per_set[idx] = ip
            break
        else:
            raise IPAMError(f"failed to allocate all requested IPs: {ip} is in no range set")
    return per_set


def allocate(
    store: Store,
    range_sets: Sequence[Sequence[Range]],
    container_id: str,
    ifname: str,
    requested: Sequence[IPAddress] = (),
    reclaim: Reclaim | None = None,
    *,
    check_duplicate: bool = True,
) -> list[Allocation]:
    """Reserve one address per range set for (container_id, ifname), in range set order.

    `check_duplicate` (host-local's refusal of a second allocation for the same attachment)
    reads every reservation file, so its cost grows with the pool; a caller that knows the
    attachment holds nothing (the plugin's ADD, from its own record) may skip it."""
    validate_range_sets(range_sets)
    wanted = match_requested(range_sets, requested)
    with store.lock():
        # host-local refuses a second allocation for the same attachment (the spec forbids
        # duplicates); the caller handles an idempotent re-ADD before it gets here.
        for ip in store.get_by_id(container_id, ifname) if check_duplicate else ():
            for rs in range_sets:
                if range_for(rs, ip) is not None:
                    raise IPAMConflict(
                        f"{ip} has been allocated to {container_id}, "
                        "duplicate allocation is not allowed",
                        (container_id, ifname),
                    )
        done: list[Allocation] = []
        try:
            for idx, rs in enumerate(range_sets):
                done.append(
                    _allocate_one(store, idx, rs, container_id, ifname, wanted[idx], reclaim)
                )
        except BaseException:
            for a in done:
                # Best effort: the original error is the one to report.
                try:  # noqa: SIM105 - contextlib stays off the exec path
                    store.release(a.address.ip)
                except Exception:
                    pass
            raise
    return done


def _allocate_one(
    store: Store,
    idx: int,
    rs: Sequence[Range],
    container_id: str,
    ifname: str,
    requested: IPAddress | None,
    reclaim: Reclaim | None,
) -> Allocation:
    rid = str(idx)

    def take(ri: int, ip: IPAddress) -> Allocation | None:
        if not store.reserve(container_id, ifname, ip, rid):
            return None
        return Allocation(rs[ri].interface(ip), rs[ri].gateway, idx)

    def try_reclaim(ri: int, ip: IPAddress) -> Allocation | None:
        owner = store.owner(ip)
        if owner is not None:
            if reclaim is None or not reclaim(ip, owner):
                return None
            store.release(ip)
        return take(ri, ip)

    if requested is not None:
        ri = range_for(rs, requested)
        assert ri is not None  # match_requested put it here
        got = take(ri, requested) or try_reclaim(ri, requested)
        if got is None:
            owner = store.owner(requested)
            raise IPAMConflict(
                f"requested IP address {requested} is not available in range set "
                f"{range_set_str(rs)}: reserved by {_owner_str(owner)}",
                owner,
            )
        return got

    taken: list[tuple[int, IPAddress]] = []
    for ri, ip in iter_candidates(rs, store.last_reserved_ip(rid)):
        got = take(ri, ip)
        if got is not None:
            return got
        taken.append((ri, ip))
    if reclaim is not None:
        for ri, ip in taken:
            got = try_reclaim(ri, ip)
            if got is not None:
                return got
    raise IPAMExhausted(f"no IP addresses available in range set: {range_set_str(rs)}")


def free_count(store: Store, range_sets: Sequence[Sequence[Range]]) -> list[int]:
    """Addresses still free in each range set (reservations by anyone count as used)."""
    with store.lock():
        reserved = list(store.reservations())
    counts: list[int] = []
    for rs in range_sets:
        used = sum(1 for ip in reserved if any(r.allocatable(ip) for r in rs))
        counts.append(allocatable_count(rs) - used)
    return counts
