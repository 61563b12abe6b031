from __future__ import annotations

from collections.abc import Sequence
from ipaddress import ip_address, ip_interface, ip_network

import pytest

from cni_bridge.domain import IPAddress
from cni_bridge.ipam.allocator import (
    Allocation,
    IPAMConflict,
    IPAMError,
    IPAMExhausted,
    Reclaim,
    allocate,
    free_count,
)
from cni_bridge.ipam.ranges import Range, RangeSet
from cni_bridge.ipam.store import MemoryStore, Owner, Store


def a(s: str) -> IPAddress:
    return ip_address(s)


def rs(*subnets: str) -> RangeSet:
    return tuple(Range(ip_network(s)) for s in subnets)


def one(
    store: Store,
    sets: Sequence[Sequence[Range]],
    cid: str,
    ifname: str = "eth0",
    requested: Sequence[IPAddress] = (),
    reclaim: Reclaim | None = None,
) -> list[str]:
    got = allocate(store, sets, cid, ifname, requested=requested, reclaim=reclaim)
    return [x.address.with_prefixlen for x in got]


def test_round_robin_skips_gateway_and_returns_prefix_and_gateway() -> None:
    store = MemoryStore()
    sets = [rs("10.0.0.0/29")]
    got = allocate(store, sets, "c1", "eth0")
    assert got == [Allocation(ip_interface("10.0.0.2/29"), a("10.0.0.1"), 0)]
    assert one(store, sets, "c2") == ["10.0.0.3/29"]
    # Releasing .2 does not make it the next one: round robin continues after the last.
    with store.lock():
        store.release_by_id("c1", "eth0")
    assert one(store, sets, "c3") == ["10.0.0.4/29"]
    assert store.lock_count == 4


def test_wraps_around_and_skips_reserved() -> None:
    store = MemoryStore()
    sets = [rs("10.0.0.0/29")]  # .2 … .6
    for i in range(5):
        one(store, sets, f"c{i}")
    with store.lock():
        store.release_by_id("c1", "eth0")  # frees .3
    assert store.last_reserved_ip("0") == a("10.0.0.6")
    assert one(store, sets, "new") == ["10.0.0.3/29"]


def test_range_start_and_end() -> None:
    store = MemoryStore()
    sets = [(Range(ip_network("10.0.0.0/24"), a("10.0.0.100"), a("10.0.0.101")),)]
    assert one(store, sets, "c1") == ["10.0.0.100/24"]
    assert one(store, sets, "c2") == ["10.0.0.101/24"]
    with pytest.raises(
        IPAMExhausted, match=r"^no IP addresses available in range set: 10.0.0.100-10.0.0.101$"
    ):
        one(store, sets, "c3")


def test_slash30_pool_then_exhausted_message() -> None:
    store = MemoryStore()
    sets = [rs("10.1.0.0/30")]
    assert one(store, sets, "a") == ["10.1.0.2/30"]
    with pytest.raises(IPAMExhausted) as exc:
        one(store, sets, "b")
    assert str(exc.value) == "no IP addresses available in range set: 10.1.0.1-10.1.0.2"
    assert isinstance(exc.value, ValueError)


def test_slash31_is_invalid() -> None:
    with pytest.raises(ValueError, match="too small"):
        rs("10.1.0.0/31")


def test_exhaustion_message_like_host_local_for_slash29() -> None:
    store = MemoryStore()
    sets = [rs("10.0.0.0/29")]
    for i in range(5):
        one(store, sets, f"c{i}")
    with pytest.raises(
        IPAMExhausted, match=r"^no IP addresses available in range set: 10.0.0.1-10.0.0.6$"
    ):
        one(store, sets, "c9")
    assert free_count(store, sets) == [0]


def test_ipv6() -> None:
    store = MemoryStore()
    sets = [rs("fd00:1::/64")]
    got = allocate(store, sets, "c1", "eth0")
    assert str(got[0].address) == "fd00:1::2/64"
    assert got[0].gateway == a("fd00:1::1")
    assert one(store, sets, "c2") == ["fd00:1::3/64"]


def test_dual_stack_two_sets() -> None:
    store = MemoryStore()
    sets = [rs("10.0.0.0/24"), rs("fd00::/64")]
    got = allocate(store, sets, "c1", "eth0")
    assert [(str(x.address), str(x.gateway), x.rangeset_index) for x in got] == [
        ("10.0.0.2/24", "10.0.0.1", 0),
        ("fd00::2/64", "fd00::1", 1),
    ]
    assert store.last_reserved_ip("0") == a("10.0.0.2")
    assert store.last_reserved_ip("1") == a("fd00::2")
    assert sorted(map(str, store.get_by_id("c1", "eth0"))) == ["10.0.0.2", "fd00::2"]
    assert free_count(store, sets) == [252, 2**64 - 2 - 1]


def test_several_ranges_in_one_set() -> None:
    store = MemoryStore()
    sets = [(Range(ip_network("10.0.0.0/30")), Range(ip_network("10.0.1.0/30")))]
    got = [allocate(store, sets, f"c{i}", "eth0")[0] for i in range(2)]
    assert [(str(x.address), str(x.gateway)) for x in got] == [
        ("10.0.0.2/30", "10.0.0.1"),
        ("10.0.1.2/30", "10.0.1.1"),
    ]


def test_requested_ip() -> None:
    store = MemoryStore()
    sets = [rs("10.0.0.0/24"), rs("fd00::/64")]
    got = allocate(store, sets, "c1", "eth0", requested=[a("fd00::99"), a("10.0.0.50")])
    assert [str(x.address) for x in got] == ["10.0.0.50/24", "fd00::99/64"]
    # The other set allocates normally, round robin after the last (requested) address.
    assert one(store, sets, "c2", requested=[a("10.0.0.60")]) == ["10.0.0.60/24", "fd00::9a/64"]


def test_requested_ip_errors() -> None:
    store = MemoryStore()
    sets = [rs("10.0.0.0/24")]
    with pytest.raises(IPAMError, match=r"failed to allocate all requested IPs: 192.168.1.1"):
        one(store, sets, "c1", requested=[a("192.168.1.1")])
    with pytest.raises(IPAMError, match="subnet's gateway"):
        one(store, sets, "c1", requested=[a("10.0.0.1")])
    with pytest.raises(IPAMError, match="only one address per range set"):
        one(store, sets, "c1", requested=[a("10.0.0.5"), a("10.0.0.6")])
    assert store.reservations() == {}
    one(store, sets, "c1", requested=[a("10.0.0.5")])
    with pytest.raises(
        IPAMConflict,
        match=r"requested IP address 10.0.0.5 is not available .*container c1 interface eth0",
    ) as exc:
        one(store, sets, "c2", requested=[a("10.0.0.5")])
    assert exc.value.owner == ("c1", "eth0")


def test_second_allocation_for_same_attachment_is_refused() -> None:
    store = MemoryStore()
    sets = [rs("10.0.0.0/24")]
    one(store, sets, "c1")
    with pytest.raises(
        IPAMConflict,
        match=r"10.0.0.2 has been allocated to c1, duplicate allocation is not allowed",
    ):
        one(store, sets, "c1")
    with pytest.raises(IPAMConflict, match="has been allocated"):
        one(store, sets, "c1", requested=[a("10.0.0.9")])
    assert one(store, sets, "c1", ifname="eth1") == ["10.0.0.3/24"]  # another interface is fine


def test_rollback_of_earlier_set_when_later_fails() -> None:
    store = MemoryStore()
    sets = [rs("10.0.0.0/24"), rs("10.9.0.0/30")]
    one(store, sets, "c1")  # takes the only address of the second set
    with pytest.raises(IPAMExhausted, match=r"10.9.0.1-10.9.0.2"):
        one(store, sets, "c2")
    assert store.get_by_id("c2", "eth0") == []
    assert sorted(map(str, store.reservations())) == ["10.0.0.2", "10.9.0.2"]


def test_rollback_when_store_fails() -> None:
    class Failing(MemoryStore):
        def reserve(self, container_id: str, ifname: str, ip: IPAddress, rangeset_id: str) -> bool:
            if rangeset_id == "1":
                raise OSError(28, "No space left on device")
            return super().reserve(container_id, ifname, ip, rangeset_id)

    store = Failing()
    with pytest.raises(OSError, match="No space"):
        one(store, [rs("10.0.0.0/24"), rs("fd00::/64")], "c1")
    assert store.reservations() == {}


def test_reclaim_when_exhausted_in_iteration_order() -> None:
    store = MemoryStore()
    sets = [rs("10.0.0.0/29")]  # .2 … .6
    for i in range(5):
        one(store, sets, f"old{i}")
    with store.lock():
        store.release_by_id("old2", "eth0")  # .4 free
    one(store, sets, "live")  # takes .4; last reserved is .4
    asked: list[tuple[str, Owner]] = []

    def reclaim(ip: IPAddress, owner: Owner) -> bool:
        asked.append((str(ip), owner))
        return owner[0] == "old1"  # dead; everybody else is alive

    assert one(store, sets, "new", reclaim=reclaim) == ["10.0.0.3/29"]
    assert asked == [
        ("10.0.0.5", ("old3", "eth0")),
        ("10.0.0.6", ("old4", "eth0")),
        ("10.0.0.2", ("old0", "eth0")),
        ("10.0.0.3", ("old1", "eth0")),
    ]
    assert store.owner(a("10.0.0.3")) == ("new", "eth0")
    assert store.get_by_id("old1", "eth0") == []
    # Nobody dead: still exhausted, and nothing released.
    with pytest.raises(IPAMExhausted):
        one(store, sets, "newer", reclaim=lambda ip, owner: False)
    assert len(store.reservations()) == 5


def test_reclaim_not_called_while_free_addresses_remain() -> None:
    store = MemoryStore()
    sets = [rs("10.0.0.0/24")]
    one(store, sets, "c1")

    def never(ip: IPAddress, owner: Owner) -> bool:
        raise AssertionError("called")

    assert one(store, sets, "c2", reclaim=never) == ["10.0.0.3/24"]


def test_reclaim_for_a_requested_ip() -> None:
    store = MemoryStore()
    sets = [rs("10.0.0.0/24")]
    one(store, sets, "stale", requested=[a("10.0.0.7")])
    assert one(
        store, sets, "c1", requested=[a("10.0.0.7")], reclaim=lambda ip, o: o == ("stale", "eth0")
    ) == ["10.0.0.7/24"]
    assert store.owner(a("10.0.0.7")) == ("c1", "eth0")


def test_allocate_takes_one_lock_and_nests_in_callers_lock() -> None:
    store = MemoryStore()
    sets = [rs("10.0.0.0/24"), rs("fd00::/64")]
    with store.lock():
        assert store.get_by_id("c1", "eth0") == []
        allocate(store, sets, "c1", "eth0")
    assert store.lock_count == 1


def test_mutation_without_lock_is_refused() -> None:
    store = MemoryStore()
    with pytest.raises(RuntimeError, match="without holding"):
        store.reserve("c1", "eth0", a("10.0.0.2"), "0")


def test_invalid_range_sets_rejected_before_locking() -> None:
    store = MemoryStore()
    with pytest.raises(ValueError, match="overlaps"):
        allocate(store, [rs("10.0.0.0/24"), rs("10.0.0.0/16")], "c1", "eth0")
    assert store.lock_count == 0


def test_free_count() -> None:
    store = MemoryStore()
    sets = [rs("10.0.0.0/29"), rs("fd00::/125")]
    assert free_count(store, sets) == [5, 6]
    one(store, sets, "c1")
    one(store, sets, "c2")
    assert free_count(store, sets) == [3, 4]
