from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network

import pytest

from cni_bridge.domain import IPAddress
from cni_bridge.ipam.ranges import (
    Range,
    allocatable_count,
    iter_candidates,
    range_for,
    range_set_str,
    validate_range_set,
    validate_range_sets,
)


def a(s: str) -> IPAddress:
    return ip_address(s)


def rng(
    subnet: str, start: str | None = None, end: str | None = None, gw: str | None = None
) -> Range:
    return Range(
        ip_network(subnet),
        None if start is None else a(start),
        None if end is None else a(end),
        None if gw is None else a(gw),
    )


def ips(rs: tuple[Range, ...], last: str | None = None) -> list[str]:
    return [str(ip) for _, ip in iter_candidates(rs, None if last is None else a(last))]


def test_ipv4_defaults_like_host_local() -> None:
    r = rng("10.0.0.0/24")
    assert r.range_start == IPv4Address("10.0.0.1")
    assert r.range_end == IPv4Address("10.0.0.254")
    assert r.gateway == IPv4Address("10.0.0.1")
    assert str(r) == "10.0.0.1-10.0.0.254"
    assert r.size() == 253  # .2 … .254


def test_ipv6_defaults_like_host_local() -> None:
    r = rng("fd00::/120")
    assert r.range_start == IPv6Address("fd00::1")
    assert r.range_end == IPv6Address("fd00::ff")  # IPv6 has no broadcast
    assert r.gateway == IPv6Address("fd00::1")
    assert r.size() == 254


def test_range_is_frozen_and_hashable() -> None:
    r = rng("10.0.0.0/24")
    with pytest.raises(AttributeError):
        r.gateway = a("10.0.0.9")  # type: ignore[misc]
    assert r == rng("10.0.0.0/24", "10.0.0.1", "10.0.0.254", "10.0.0.1")
    assert len({r, rng("10.0.0.0/24")}) == 1


def test_replace_and_make_validate_as_the_constructor_does() -> None:
    r = rng("10.0.0.0/24")
    moved = r._replace(range_start=a("10.0.0.10"))
    assert type(moved) is Range and moved == rng("10.0.0.0/24", "10.0.0.10")
    assert Range._make(tuple(moved)) == moved and type(Range._make(tuple(moved))) is Range
    with pytest.raises(ValueError, match="not in network"):
        r._replace(gateway=a("10.0.1.1"))
    with pytest.raises(ValueError, match="is after rangeEnd"):
        r._replace(range_start=a("10.0.0.254"), range_end=a("10.0.0.10"))
    with pytest.raises(ValueError, match="not the same address family"):
        Range._make((ip_network("10.0.0.0/24"), a("fd00::1"), None, None))
    assert Range._make((ip_network("10.0.0.0/24"),)) == r  # defaults filled in
    with pytest.raises(TypeError):
        r._replace(nope=1)


@pytest.mark.parametrize("subnet", ["10.0.0.0/31", "10.0.0.0/32", "fd00::/127", "fd00::/128"])
def test_too_small_networks_are_refused(subnet: str) -> None:
    with pytest.raises(ValueError, match="too small to allocate from"):
        rng(subnet)


def test_slash30_has_one_address() -> None:
    r = rng("10.0.0.0/30")
    assert (str(r.range_start), str(r.range_end), str(r.gateway)) == (
        "10.0.0.1",
        "10.0.0.2",
        "10.0.0.1",
    )
    assert r.size() == 1
    assert ips((r,)) == ["10.0.0.2"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("10.0.0.0/24", "10.0.1.5", None, None), "rangeStart 10.0.1.5 not in network 10.0.0.0/24"),
        (("10.0.0.0/24", None, "10.0.1.5", None), "rangeEnd 10.0.1.5 not in network"),
        (("10.0.0.0/24", None, None, "10.0.1.1"), "gateway 10.0.1.1 not in network"),
        (
            ("10.0.0.0/24", "10.0.0.50", "10.0.0.10", None),
            "rangeStart 10.0.0.50 is after rangeEnd 10.0.0.10",
        ),
        (("10.0.0.0/24", "fd00::1", None, None), "not the same address family"),
        (("10.0.0.0/24", None, None, "10.0.0.255"), "network or broadcast"),
        (("10.0.0.0/24", None, None, "10.0.0.0"), "network or broadcast"),
        (("10.0.0.0/24", "10.0.0.1", "10.0.0.1", None), "no address to hand out"),
        (("::ffff:10.0.0.0/120", None, None, None), "IPv4-mapped"),
    ],
)
def test_invalid_ranges_name_the_problem(
    args: tuple[str, str | None, str | None, str | None], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        rng(*args)


def test_mixed_families_in_one_set() -> None:
    with pytest.raises(ValueError, match="mixed address families"):
        validate_range_set((rng("10.0.0.0/24"), rng("fd00::/64")))


def test_overlap_inside_a_set() -> None:
    with pytest.raises(ValueError, match="overlap"):
        validate_range_set((rng("10.0.0.0/24"), rng("10.0.0.0/25")))
    # Same subnet, disjoint start/end: allowed, as in host-local.
    validate_range_set(
        (rng("10.0.0.0/24", "10.0.0.10", "10.0.0.20"), rng("10.0.0.0/24", "10.0.0.30", "10.0.0.40"))
    )


def test_overlap_across_sets_and_empty() -> None:
    with pytest.raises(ValueError, match="range set 0 overlaps with 1"):
        validate_range_sets([(rng("10.0.0.0/24"),), (rng("10.0.0.0/16"),)])
    with pytest.raises(ValueError, match="invalid range set 1: empty range set"):
        validate_range_sets([(rng("10.0.0.0/24"),), ()])
    with pytest.raises(ValueError, match="no IP ranges"):
        validate_range_sets([])
    validate_range_sets([(rng("10.0.0.0/24"),), (rng("fd00::/64"),)])


def test_iteration_skips_gateway_and_wraps_after_last_reserved() -> None:
    rs = (rng("10.0.0.0/29"),)  # .1 (gateway) … .6
    assert ips(rs) == ["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"]
    assert ips(rs, "10.0.0.4") == ["10.0.0.5", "10.0.0.6", "10.0.0.2", "10.0.0.3", "10.0.0.4"]
    assert ips(rs, "10.0.0.6") == ["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"]
    # A last address outside the set (range indexes changed) just restarts at the beginning.
    assert ips(rs, "192.168.0.1")[0] == "10.0.0.2"


def test_iteration_across_ranges_in_order() -> None:
    rs = (rng("10.0.0.0/24", "10.0.0.10", "10.0.0.11"), rng("10.0.1.0/24", "10.0.1.1", "10.0.1.3"))
    assert ips(rs) == ["10.0.0.10", "10.0.0.11", "10.0.1.2", "10.0.1.3"]
    assert ips(rs, "10.0.0.11") == ["10.0.1.2", "10.0.1.3", "10.0.0.10", "10.0.0.11"]
    assert ips(rs, "10.0.1.3") == ["10.0.0.10", "10.0.0.11", "10.0.1.2", "10.0.1.3"]
    assert [i for i, _ in iter_candidates(rs)] == [0, 0, 1, 1]
    assert range_set_str(rs) == "10.0.0.10-10.0.0.11,10.0.1.1-10.0.1.3"
    assert allocatable_count(rs) == 4


def test_explicit_range_never_yields_network_or_broadcast() -> None:
    rs = (rng("10.0.0.0/29", "10.0.0.0", "10.0.0.7", "10.0.0.3"),)
    assert ips(rs) == ["10.0.0.1", "10.0.0.2", "10.0.0.4", "10.0.0.5", "10.0.0.6"]
    assert allocatable_count(rs) == 5


def test_custom_gateway_outside_range() -> None:
    r = rng("10.0.0.0/24", "10.0.0.100", "10.0.0.102", "10.0.0.254")
    assert ips((r,)) == ["10.0.0.100", "10.0.0.101", "10.0.0.102"]


def test_ipv6_iteration_and_range_for() -> None:
    rs = (rng("fd00::/126"),)  # ::1 gateway, ::2, ::3
    assert ips(rs) == ["fd00::2", "fd00::3"]
    assert range_for(rs, a("fd00::3")) == 0
    assert range_for(rs, a("10.0.0.3")) is None
    assert rs[0].interface(a("fd00::3")).with_prefixlen == "fd00::3/126"
