"""`"internal": true` in the plan and the firewall's elements (issue 15 item 3)."""

from __future__ import annotations

import ipaddress

import pytest

from cni_bridge.errors import CNIError
from cni_bridge.firewall.elements import network_keys
from cni_bridge.firewall.layout import INTERNAL, MASQ
from tests.firewall_json import fw_net
from tests.unit.test_commands import World, netns, world

__all__ = ["netns", "world"]  # fixtures


def test_internal_has_no_default_route_and_no_ports(world: World) -> None:
    out = world.call("ADD", internal=True, capabilities={})
    assert out.get("routes", []) == []
    with pytest.raises(CNIError) as exc:
        world.call("ADD", cid="c2", internal=True)
    assert exc.value.code == 7 and "internal" in exc.value.msg
    assert [r.container_id for r in world.records()] == ["c1"]


def test_internal_elements() -> None:
    base = fw_net("n", "br0", [ipaddress.ip_network("10.0.0.0/24")], ip_masq=True)
    net = base._replace(internal=True)
    keys = network_keys(net, strict=False)
    assert keys[INTERNAL] == ["br0"] and MASQ[4] not in keys
    plain = network_keys(base, strict=False)
    assert INTERNAL not in plain and MASQ[4] in plain
