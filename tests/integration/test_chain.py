"""Chaining: our result is a valid prevResult for the reference plugins after us (issue 5)."""

from __future__ import annotations

import json
import os
import sys

import pytest

from tests.integration.harness import ROOT, Lab, run

pytestmark = [pytest.mark.integration, pytest.mark.plugin]


def client(lab: Lab, netconf: str, *args: str) -> tuple[int, str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        "PYTHONPATH": str(ROOT),
        "NETCONFPATH": netconf,
        "CNI_PATH": str(lab.cni_path),
        "CNI_CACHE_DIR": str(lab.tmp / "cache"),
        "CNI_BRIDGE_RESIDENT": lab.resident,
    }
    proc = run(["nsenter", f"--net={lab.host.path}", sys.executable, "-m", "cni_bridge.client", *args],
               check=False, env=env)
    return proc.returncode, proc.stdout.decode() + proc.stderr.decode()


@pytest.mark.skipif(not os.path.exists("/usr/lib/cni/tuning"), reason="containernetworking-plugins missing")
def test_tuning_bandwidth_firewall_after_us(lab: Lab) -> None:
    ours = lab.conf()
    ours.pop("cniVersion")
    ours.pop("name")
    conflist = {
        "cniVersion": "1.0.0",
        "name": ours["bridge"] + "chain",
        "plugins": [
            ours,
            {"type": "tuning", "sysctl": {"net.ipv4.conf.eth0.arp_ignore": "1"}},
            {"type": "bandwidth", "egressRate": 1000000, "egressBurst": 100000},
            {"type": "firewall", "backend": "iptables"},
        ],
    }
    netconf = lab.tmp / "net.d"
    netconf.mkdir()
    (netconf / "10-chain.conflist").write_text(json.dumps(conflist))
    c = lab.container()
    code, out = client(lab, str(netconf), "add", conflist["name"], c.path)
    assert code == 0, out
    result = json.loads(out)
    ip = result["ips"][0]["address"].split("/")[0]
    # Each reference plugin acted on what our result told it.
    assert c.exec("sysctl", "-n", "net.ipv4.conf.eth0.arp_ignore").stdout.strip() == b"1"
    host_veth = result["interfaces"][1]["name"]
    qdiscs = json.loads(run(["ip", "-n", lab.host.name, "-j", "link", "show"]).stdout)
    assert host_veth in [link["ifname"] for link in qdiscs]
    tc = run(["ip", "netns", "exec", lab.host.name, "tc", "qdisc", "show", "dev", host_veth]).stdout.decode()
    assert "ingress" in tc or "tbf" in tc, tc
    rules = lab.host.exec("iptables-save").stdout.decode()
    assert ip in rules and "CNI-FORWARD" in rules
    code, out = client(lab, str(netconf), "check", conflist["name"], c.path)
    assert code == 0, out
    code, out = client(lab, str(netconf), "del", conflist["name"], c.path)
    assert code == 0, out
    assert ip not in lab.host.exec("iptables-save").stdout.decode()
    assert [n for n in lab.host.links() if n.startswith("vcb")] == []
    assert lab.reservations(conflist["name"]) == []
