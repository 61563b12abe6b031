"""ADD/DEL/CHECK for real: bridge, veth, IPAM, routes, in throwaway namespaces (issue 3)."""

from __future__ import annotations

import concurrent.futures
import ipaddress
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.lab import Netns, ping, run
from tests.lab.plugin import PluginLab

pytestmark = [pytest.mark.integration, pytest.mark.plugin]

VERSIONS = ["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]


def addresses_of(result: dict[str, Any], version: str) -> list[str]:
    if version in ("0.1.0", "0.2.0"):
        return [result[k]["ip"] for k in ("ip4", "ip6") if k in result]
    return [ip["address"] for ip in result["ips"]]


@pytest.mark.parametrize("version", VERSIONS)
def test_two_containers_talk_across_the_bridge(lab: PluginLab, version: str) -> None:
    conf = lab.conf(cniVersion=version)
    c1, c2 = lab.container(), lab.container()
    r1 = lab.add(conf, "ctr-one", c1)
    r2 = lab.add(conf, "ctr-two", c2)
    a1, a2 = addresses_of(r1, version)[0], addresses_of(r2, version)[0]
    assert r1["cniVersion"] == version
    # The kernel agrees with the result.
    assert c1.addrs("eth0") == [a1] and c2.addrs("eth0") == [a2]
    bridge = lab.host.ip_json("-d", "link", "show", conf["bridge"])[0]
    assert bridge["linkinfo"]["info_kind"] == "bridge" and "UP" in bridge["flags"]
    assert "10.66.0.1/24" in lab.host.addrs(conf["bridge"])
    routes = c1.ip_json("route", "show", "default")
    assert routes and routes[0]["gateway"] == "10.66.0.1"
    ports = [link["ifname"] for link in lab.host.ip_json("link", "show", "master", conf["bridge"])]
    assert len(ports) == 2
    assert ping(c1, a2.split("/")[0]) and ping(c2, a1.split("/")[0])
    assert ping(c1, "10.66.0.1")
    if version not in ("0.1.0", "0.2.0"):
        ifaces = r1["interfaces"]
        assert ifaces[2] == {**ifaces[2], "name": "eth0", "sandbox": c1.path}
        assert r1["ips"][0]["interface"] == 2
    lab.delete(conf, "ctr-one", c1.path)
    # Not the last: the bridge stays, with the other container's port.
    assert len(lab.host.ip_json("link", "show", "master", conf["bridge"])) == 1
    lab.delete(conf, "ctr-two", c2.path)
    # The network's last DEL removes the bridge the plugin made (README: the bridge and the
    # subnet on the host).
    assert conf["bridge"] not in lab.host.links()
    assert lab.reservations(conf["name"]) == []
    assert c1.links() == ["lo"]


def test_dual_stack(lab: PluginLab) -> None:
    conf = lab.conf(
        ipam={
            "type": "host-local",
            "ranges": [[{"subnet": "10.66.0.0/24"}], [{"subnet": "fd00:66::/64"}]],
            "dataDir": str(lab.data_dir),
        }
    )
    c1, c2 = lab.container(), lab.container()
    r1 = lab.add(conf, "d1", c1)
    r2 = lab.add(conf, "d2", c2)
    assert [ip["address"] for ip in r1["ips"]] == ["10.66.0.2/24", "fd00:66::2/64"]
    assert "fd00:66::2/64" in c1.addrs("eth0")
    assert _addr_gen_mode(c1) == "eui64"
    assert {r["dst"] for r in r1["routes"]} == {"0.0.0.0/0", "::/0"}
    assert c1.ip_json("-6", "route", "show", "default")[0]["gateway"] == "fd00:66::1"
    assert ping(c1, r2["ips"][1]["address"].split("/")[0])
    assert ping(c1, "fd00:66::1")
    assert lab.host.exec("sysctl", "-n", "net.ipv6.conf.all.forwarding").stdout.strip() == "1"
    assert lab.host.exec("sysctl", "-n", "net.ipv4.ip_forward").stdout.strip() == "1"


def _inet6(c: Netns) -> list[str]:
    data = c.ip_json("-6", "addr", "show", "dev", "eth0")
    return [a["local"] for d in data for a in d.get("addr_info", [])]


def _addr_gen_mode(c: Netns) -> str:
    (link,) = c.ip_json("-d", "link", "show", "dev", "eth0")
    return str(link.get("inet6_addr_gen_mode"))


def test_no_ipv6_link_local_on_an_ipv4_only_container_interface_unless_asked(lab: PluginLab) -> None:
    c_default, c_kept = lab.container(), lab.container()
    lab.add(lab.conf(), "v4only", c_default)
    lab.add(lab.conf(ipv6LinkLocal=True), "v4ll", c_kept)
    assert _addr_gen_mode(c_default) == "none"
    assert _inet6(c_default) == []  # no link-local address: no DAD, MLD or RS flooding the bridge
    assert _addr_gen_mode(c_kept) == "eui64"
    assert [a for a in _inet6(c_kept) if a.startswith("fe80:")]
    for c in (c_default, c_kept):  # set through netlink now, as the reference sets it
        assert c.exec("sysctl", "-n", "net.ipv4.conf.eth0.arp_notify").stdout.strip() == "1"


def test_thirty_concurrent_adds_get_distinct_addresses(lab: PluginLab) -> None:
    conf = lab.conf()
    containers = [lab.container() for _ in range(30)]

    def one(i: int) -> tuple[int, object]:
        return lab.plugin("ADD", conf, f"par{i}", containers[i].path)

    with concurrent.futures.ThreadPoolExecutor(max_workers=30) as pool:
        results = list(pool.map(one, range(30)))
    assert all(code == 0 for code, _ in results), [out for code, out in results if code]
    addrs = [out["ips"][0]["address"] for _, out in results]  # type: ignore[index]
    assert len(set(addrs)) == 30
    kernel = [c.addrs("eth0")[0] for c in containers]
    assert sorted(kernel) == sorted(addrs)
    assert len(lab.reservations(conf["name"])) == 30
    with concurrent.futures.ThreadPoolExecutor(max_workers=30) as pool:
        dels = list(pool.map(lambda i: lab.plugin("DEL", conf, f"par{i}", containers[i].path), range(30)))
    assert all(code == 0 for code, _ in dels)
    assert lab.reservations(conf["name"]) == []
    assert conf["bridge"] not in lab.host.links()  # gone with the last of the 30 DELs


def test_del_without_netns_twice(lab: PluginLab) -> None:
    conf = lab.conf()
    c = lab.container()
    lab.add(conf, "gone", c)
    lab.remove([c])
    lab.delete(conf, "gone", "")
    lab.delete(conf, "gone", "")
    lab.delete(conf, "gone", c.path)  # a path that no longer exists is fine too
    assert lab.reservations(conf["name"]) == []
    assert [n for n in lab.host.links() if n.startswith("vcb")] == []


def test_late_failure_leaves_nothing(lab: PluginLab) -> None:
    conf = lab.conf(capabilities={"ips": True})
    c1, c2 = lab.container(), lab.container()
    lab.add(conf, "first", c1)
    taken = dict(conf, runtimeConfig={"ips": ["10.66.0.2/24"]})
    code, out = lab.plugin("ADD", taken, "second", c2.path)
    assert code != 0 and out["code"] == 102 and "first" in out["msg"]
    assert c2.links() == ["lo"]
    assert len([n for n in lab.host.links() if n.startswith("vcb")]) == 1
    assert lab.reservations(conf["name"]) == ["10.66.0.2"]


def test_existing_interface_in_container_is_an_error(lab: PluginLab) -> None:
    conf = lab.conf()
    c = lab.container()
    c.exec("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "other0")
    code, out = lab.plugin("ADD", conf, "dup", c.path)
    assert code != 0 and out["code"] == 103
    assert lab.reservations(conf["name"]) == []
    assert [n for n in lab.host.links() if n.startswith("vcb")] == []


def test_missing_netns_is_a_clear_error(lab: PluginLab) -> None:
    conf = lab.conf()
    code, out = lab.plugin("ADD", conf, "nons", "/run/netns/does-not-exist-cbL")
    assert code != 0 and out["code"] == 4 and "CNI_NETNS" in out["msg"]
    assert lab.reservations(conf["name"]) == []


def test_reference_host_local_store_is_honoured(lab: PluginLab) -> None:
    """A node switching from the reference plugins keeps its reservations."""
    conf = lab.conf()
    ref_conf = {"cniVersion": "1.0.0", "name": conf["name"], "type": "bridge", "ipam": conf["ipam"]}
    env = lab.env("ADD", "refctr", "/proc/self/ns/net")
    proc = subprocess.run(["/usr/lib/cni/host-local"], input=json.dumps(ref_conf).encode(),
                          env=env, capture_output=True, timeout=30)
    assert proc.returncode == 0, proc.stdout
    ref_ip = json.loads(proc.stdout)["ips"][0]["address"]
    assert ref_ip == "10.66.0.2/24"
    c = lab.container()
    ours = lab.add(conf, "ourctr", c)
    assert ours["ips"][0]["address"] == "10.66.0.3/24"
    lab.delete(conf, "ourctr", c.path)
    assert lab.reservations(conf["name"]) == ["10.66.0.2"]


def test_check_detects_divergence(lab: PluginLab) -> None:
    conf = lab.conf()
    c = lab.container()
    out = lab.add(conf, "chk", c)
    code, err = lab.plugin("CHECK", dict(conf, prevResult=out), "chk", c.path)
    assert code == 0, err
    c.exec("ip", "addr", "flush", "dev", "eth0")
    code, err = lab.plugin("CHECK", dict(conf, prevResult=out), "chk", c.path)
    assert code != 0 and "10.66.0.2/24" in err["msg"]


def test_mtu_mac_and_static_ip(lab: PluginLab) -> None:
    conf = lab.conf(mtu=1400, capabilities={"ips": True, "mac": True},
                    runtimeConfig={"ips": ["10.66.0.77/24"], "mac": "0a:58:0a:42:00:4d"})
    c = lab.container()
    out = lab.add(conf, "static", c, extra={"CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAME=x"})
    assert out["ips"][0]["address"] == "10.66.0.77/24"
    link = c.ip_json("link", "show", "eth0")[0]
    assert link["mtu"] == 1400 and link["address"] == "0a:58:0a:42:00:4d"
    assert out["interfaces"][2]["mac"] == "0a:58:0a:42:00:4d"
    assert ipaddress.ip_interface(c.addrs("eth0")[0]) == ipaddress.ip_interface("10.66.0.77/24")


def test_resident_mode_really_uses_the_resident(lab: PluginLab) -> None:
    """In the resident pass of `make test`, the requests must be served by a warm resident in
    the host namespace, not silently in-process."""
    if lab.resident != "1":
        pytest.skip("in-process pass")
    conf = lab.conf()
    c1, c2 = lab.container(), lab.container()
    lab.add(conf, "warm1", c1)  # starts the resident
    lab.add(conf, "warm2", c2)
    pids = run(["ip", "netns", "pids", lab.host.name]).stdout.split()
    cmdlines = [Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") for pid in pids]
    assert any(b"serve" in b" ".join(argv) for argv in cmdlines), cmdlines


def test_macspoofchk_drops_frames_from_another_mac(lab: PluginLab) -> None:
    conf = lab.conf(macspoofchk=True)
    c1, c2 = lab.container(), lab.container()
    r1 = lab.add(conf, "spoof1", c1)
    r2 = lab.add(conf, "spoof2", c2)
    peer = r2["ips"][0]["address"].split("/")[0]
    assert ping(c1, peer)
    rules = lab.host.exec("nft", "-j", "list", "table", "bridge", "cni_bridge").stdout
    assert r1["interfaces"][2]["mac"] in rules and r1["interfaces"][1]["name"] in rules
    # Same container, another source MAC: its frames never reach the bridge.
    c1.exec("ip", "link", "set", "eth0", "address", "0a:58:0a:42:99:99")
    c1.exec("ip", "neigh", "flush", "all")
    assert not ping(c1, peer)
    assert ping(c2, "10.66.0.1")  # the other container is untouched
    lab.delete(conf, "spoof1", c1.path)
    lab.delete(conf, "spoof2", c2.path)
    left = lab.host.exec("nft", "-j", "list", "table", "bridge", "cni_bridge").stdout
    assert r1["interfaces"][2]["mac"] not in left and r2["interfaces"][2]["mac"] not in left
    assert r1["interfaces"][1]["name"] not in left
