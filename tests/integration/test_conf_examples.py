"""Every example in conf/ attaches a real container (issue 5: examples cannot go stale)."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Any

import pytest

from tests.lab.plugin import ROOT, PluginLab

pytestmark = [pytest.mark.integration, pytest.mark.plugin]

EXAMPLES = sorted((ROOT / "conf").glob("*.conflist"))


def our_plugin(path: Path) -> dict[str, Any]:
    conflist = json.loads(path.read_text())
    (plugin,) = [p for p in conflist["plugins"] if p["type"] == "cni-bridge"]
    return {"cniVersion": conflist["cniVersion"], "name": conflist["name"], **plugin}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_attaches_and_detaches(lab: PluginLab, path: Path) -> None:
    conf = our_plugin(path)
    conf["bridge"] = f"cx{lab.tag}"  # the example's own name could exist on a real host
    if conf["ipam"]["type"] == "host-local":
        conf["ipam"]["dataDir"] = str(lab.data_dir)
    c = lab.container()
    out = lab.add(conf, "example", c)
    want = [ip for ip in (out.get("ips") or [])]
    assert want, out
    for ip in want:
        addr = ipaddress.ip_interface(ip["address"])
        assert str(addr) in c.addrs("eth0")
        if conf["ipam"]["type"] == "host-local":
            ranges = conf["ipam"].get("ranges") or [[{"subnet": conf["ipam"]["subnet"]}]]
            assert any(addr.ip in ipaddress.ip_network(r[0]["subnet"]) for r in ranges)
    if conf.get("isDefaultGateway"):
        assert c.ip_json("route", "show", "default"), "default route missing"
    if conf.get("mtu"):
        assert c.ip_json("link", "show", "eth0")[0]["mtu"] == conf["mtu"]
    lab.delete(conf, "example", c.path)
    assert c.links() == ["lo"]
    assert lab.reservations(conf["name"]) == []
    assert [n for n in lab.host.links() if n.startswith("vcb")] == []


def test_delegated_ipam_runs_the_plugin_on_add_and_del(lab: PluginLab) -> None:
    conf = our_plugin(ROOT / "conf" / "60-delegated-ipam.conflist")
    conf["bridge"] = f"cx{lab.tag}"
    c = lab.container()
    out = lab.add(conf, "deleg", c)
    assert out["ips"][0]["address"] == "10.93.0.5/24"
    assert "10.93.0.5/24" in c.addrs("eth0")
    assert c.ip_json("route", "show", "default")[0]["gateway"] == "10.93.0.1"
    assert "10.93.0.1/24" in lab.host.addrs(conf["bridge"])  # isGateway from the delegate's result
    lab.delete(conf, "deleg", c.path)
    assert c.links() == ["lo"]
