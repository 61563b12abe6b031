"""Chaining: our result is a valid prevResult for the reference plugins after us (issue 5)."""

from __future__ import annotations

import json
import os
import sys

import pytest

from tests.lab import http_get, run
from tests.lab.plugin import ROOT, PluginLab

pytestmark = [pytest.mark.integration, pytest.mark.plugin]


def write_chain(
    lab: PluginLab, version: str, suffix: str, after: list[dict[str, object]]
) -> tuple[str, str]:
    """A conflist of our plugin followed by `after`, in a NETCONFPATH directory of its own:
    (network name, that directory)."""
    ours = lab.conf()
    ours.pop("cniVersion")
    ours.pop("name")
    name = f"{ours['bridge']}{suffix}"
    conflist = {"cniVersion": version, "name": name, "plugins": [ours, *after]}
    netconf = lab.tmp / "net.d"
    netconf.mkdir()
    (netconf / "10-chain.conflist").write_text(json.dumps(conflist))
    return name, str(netconf)


def client(lab: PluginLab, netconf: str, *args: str) -> tuple[int, str]:
    return client_env(lab, netconf, None, *args)


@pytest.mark.skipif(not os.path.exists("/usr/lib/cni/tuning"), reason="containernetworking-plugins missing")
def test_tuning_bandwidth_firewall_after_us(lab: PluginLab) -> None:
    name, netconf = write_chain(lab, "1.0.0", "chain", [
        {"type": "tuning", "sysctl": {"net.ipv4.conf.eth0.arp_ignore": "1"}},
        {"type": "bandwidth", "egressRate": 1000000, "egressBurst": 100000},
        {"type": "firewall", "backend": "iptables"},
    ])
    c = lab.container()
    code, out = client(lab, netconf, "add", name, c.path)
    assert code == 0, out
    result = json.loads(out)
    ip = result["ips"][0]["address"].split("/")[0]
    # Each reference plugin acted on what our result told it.
    assert c.exec("sysctl", "-n", "net.ipv4.conf.eth0.arp_ignore").stdout.strip() == "1"
    host_veth = result["interfaces"][1]["name"]
    qdiscs = json.loads(run(["ip", "-n", lab.host.name, "-j", "link", "show"]).stdout)
    assert host_veth in [link["ifname"] for link in qdiscs]
    tc = lab.host.exec("tc", "qdisc", "show", "dev", host_veth).stdout
    assert "ingress" in tc or "tbf" in tc, tc
    rules = lab.host.exec("iptables-save").stdout
    assert ip in rules and "CNI-FORWARD" in rules
    code, out = client(lab, netconf, "check", name, c.path)
    assert code == 0, out
    code, out = client(lab, netconf, "del", name, c.path)
    assert code == 0, out
    assert ip not in lab.host.exec("iptables-save").stdout
    assert [n for n in lab.host.links() if n.startswith("vcb")] == []
    assert lab.reservations(name) == []


@pytest.mark.skipif(not os.path.exists("/usr/lib/cni/portmap"), reason="containernetworking-plugins missing")
def test_reference_portmap_after_us_keeps_working(lab: PluginLab) -> None:
    """The migration path the README promises: bridge -> cni-bridge, portmap kept as it was."""
    name, netconf = write_chain(lab, "0.4.0", "pm", [
        {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True},
    ])
    outside = lab.outside(lab.host)
    c = lab.container()
    www = lab.tmp / "www"
    www.mkdir()
    (www / "index.html").write_text("served by the container\n")
    code, out = client_env(lab, netconf, {"portMappings": [
        {"hostPort": 18081, "containerPort": 80, "protocol": "tcp"}]}, "add", name, c.path)
    assert code == 0, out
    httpd = lab.spawn(c, ["busybox", "httpd", "-f", "-p", "80", "-h", str(www)])
    try:
        got = http_get(outside, "http://192.0.2.1:18081/").strip()
        assert got == "served by the container", got
        assert "18081" in lab.host.exec("iptables-save").stdout
    finally:
        httpd.kill()
        httpd.wait()
    code, out = client_env(lab, netconf, None, "del", name, c.path)
    assert code == 0, out
    assert "18081" not in lab.host.exec("iptables-save").stdout
    assert lab.reservations(name) == []


def client_env(lab: PluginLab, netconf: str, cap: dict[str, object] | None, *args: str) -> tuple[int, str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        "PYTHONPATH": str(ROOT),
        "NETCONFPATH": netconf,
        "CNI_PATH": str(lab.cni_path),
        "CNI_CACHE_DIR": str(lab.tmp / "cache"),
        "CNI_BRIDGE_RESIDENT": lab.resident,
    }
    if cap is not None:
        env["CAP_ARGS"] = json.dumps(cap)
    proc = run(["nsenter", f"--net={lab.host.path}", sys.executable, "-m", "cni_bridge.libcni", *args],
               check=False, env=env)
    return proc.returncode, proc.stdout + proc.stderr
