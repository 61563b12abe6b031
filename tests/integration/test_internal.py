"""`"internal": true` (Docker's and podman's --internal): containers of the network reach each
other and the gateway address, nothing leaves or enters the bridge, nothing is masqueraded
(issue 15 item 3)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.lab import TEST_NET_1, ping
from tests.lab.nft import counter, ruleset
from tests.lab.plugin import PluginLab

pytestmark = [pytest.mark.integration, pytest.mark.plugin]


def _set_elements(lab: PluginLab, name: str) -> list[Any]:
    for obj in ruleset(lab.host):
        s = obj.get("set")
        if s and s["table"] == "cni_bridge" and s["name"] == name:
            return list(s.get("elem", []))
    return []


def test_internal_network_keeps_traffic_inside(lab: PluginLab) -> None:
    out = lab.outside(lab.host)
    # The outside knows the way back, so only the firewall can make a connection fail.
    out.ip("route", "add", "10.66.0.0/24", "via", TEST_NET_1[0])
    conf = lab.conf(internal=True)
    c1, c2 = lab.container(), lab.container()
    r1 = lab.add(conf, "int-one", c1)
    lab.add(conf, "int-two", c2)
    a1 = r1["ips"][0]["address"].split("/")[0]
    # No default route in the result or the container (Docker's internal networks have none).
    assert all(r["dst"] not in ("0.0.0.0/0", "::/0") for r in r1.get("routes", []))
    assert c1.ip_json("route", "show", "default") == []
    # Same network: flows, both ways, and the gateway address answers.
    lab.server(c2, "tcp", 8080)
    lab.server(out, "tcp", 8081)
    lab.server(c1, "tcp", 8082)
    peer = c2.addrs("eth0")[0].split("/")[0]
    assert lab.probe(c1, "tcp", peer, 8080) == a1
    assert ping(c1, "10.66.0.1")
    # Nothing leaves, even for a container that adds its own default route...
    c1.ip("route", "add", "default", "via", "10.66.0.1")
    assert lab.probe(c1, "tcp", TEST_NET_1[1], 8081) is None
    assert not ping(c1, TEST_NET_1[1])
    assert counter(lab.host, "cni_bridge", "forward", "v1 internal: out of") > 0
    # ...and nothing enters from outside.
    assert lab.probe(out, "tcp", a1, 8082) is None
    assert counter(lab.host, "cni_bridge", "forward", "v1 internal: into") > 0
    # No masquerade for its subnet; the bridge is in the internal set.
    assert _set_elements(lab, "masq4") == []
    assert conf["bridge"] in [e if isinstance(e, str) else e["elem"]["val"]
                              for e in _set_elements(lab, "internal")]
    # A normal network beside it still goes out.
    normal = lab.conf(name=f"n{lab.tag}", bridge=f"cn{lab.tag}",
                      ipam={**conf["ipam"], "ranges": [[{"subnet": "10.67.0.0/24"}]]})
    c3 = lab.container()
    lab.add(normal, "normal-one", c3)
    assert lab.probe(c3, "tcp", TEST_NET_1[1], 8081) == TEST_NET_1[0]  # masqueraded
    lab.delete(normal, "normal-one", c3.path)
    lab.delete(conf, "int-one", c1.path)
    lab.delete(conf, "int-two", c2.path)
    assert _set_elements(lab, "internal") == []


def test_internal_network_refuses_published_ports(lab: PluginLab) -> None:
    conf = lab.conf(internal=True, capabilities={"portMappings": True},
                    runtimeConfig={"portMappings": [{"hostPort": 8080, "containerPort": 80}]})
    c1 = lab.container()
    code, out = lab.plugin("ADD", conf, "int-ports", c1.path)
    assert code == 1 and out["code"] == 7, out
    assert "internal" in out["msg"]
    assert c1.links() == ["lo"]
    assert lab.reservations(conf["name"]) == []
