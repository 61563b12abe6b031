"""The host overlap check's pure decision (issue 14 item 5): what else holds a subnet."""

from __future__ import annotations

from ipaddress import ip_address, ip_interface, ip_network

from cni_bridge.net.plans import subnet_holder

GW = ip_interface("10.89.0.1/24")


def test_an_overlapping_address_on_another_link_is_named() -> None:
    addrs = [("lo", ip_interface("127.0.0.1/8")), ("cni-podman1", ip_interface("10.89.0.1/24"))]
    assert subnet_holder(GW, addrs, []) == "address 10.89.0.1/24 on cni-podman1"
    wider = [("eth0", ip_interface("10.0.0.5/8"))]
    assert subnet_holder(GW, wider, []) == "address 10.0.0.5/8 on eth0"


def test_an_overlapping_route_is_named_but_not_the_default_route() -> None:
    default = ("eth0", ip_network("0.0.0.0/0"), ip_address("192.0.2.254"))
    assert subnet_holder(GW, [], [default]) is None
    vpn = ("tun0", ip_network("10.89.0.0/16"), None)
    assert subnet_holder(GW, [], [default, vpn]) == "route 10.89.0.0/16 dev tun0"
    via = ("eth0", ip_network("10.89.0.128/25"), ip_address("192.0.2.2"))
    assert subnet_holder(GW, [], [via]) == "route 10.89.0.128/25 via 192.0.2.2 dev eth0"


def test_other_subnets_other_families_and_link_local_do_not_count() -> None:
    addrs = [("eth0", ip_interface("10.88.0.1/24")), ("eth0", ip_interface("fe80::1/64")),
             ("eth0", ip_interface("fd00::1/64"))]
    routes = [("eth0", ip_network("fe80::/64"), None), ("eth0", ip_network("10.90.0.0/16"), None)]
    assert subnet_holder(GW, addrs, routes) is None
    v6 = ip_interface("fd00:1::1/64")
    assert subnet_holder(v6, [("eth0", ip_interface("fe80::1/64"))],
                         [("eth0", ip_network("fe80::/64"), None)]) is None
    assert subnet_holder(v6, [("br9", ip_interface("fd00:1::9/48"))], []) == \
        "address fd00:1::9/48 on br9"
