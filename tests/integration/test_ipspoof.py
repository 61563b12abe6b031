"""ipspoofchk with real packets: forged IPv4 sources, ARP senders, IPv6 sources and ND targets
from a container are dropped at its bridge port while its real traffic flows; DEL, GC and
CHECK see the per-port elements (issue 14 item 8)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from cni_bridge.firewall.ipspoof import link_local
from tests.lab import TEST_NET_1, Netns, ping
from tests.lab.nft import ruleset
from tests.lab.plugin import PluginLab
from tests.lab.traffic import PYTHON

pytestmark = [pytest.mark.integration, pytest.mark.plugin]

SETS = ("ipspoof_ports", "ipspoof_ip4", "ipspoof_ip6", "ipspoof_nd6")

# One Ethernet frame out of eth0, built by hand (no tool forges ARP/ND sender fields).
_SEND = r"""
import socket, struct, sys, ipaddress
kind, src_mac, a, b = sys.argv[1:5]
mac = lambda m: bytes.fromhex(m.replace(":", ""))
if kind == "arp":  # a request from `a` (the forged sender) asking who has `b`
    spa, tpa = ipaddress.IPv4Address(a).packed, ipaddress.IPv4Address(b).packed
    frame = (b"\xff" * 6 + mac(src_mac) + b"\x08\x06"
             + struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + mac(src_mac) + spa + bytes(6) + tpa)
else:  # an unsolicited, overriding neighbour advertisement from `a` saying `b` is here
    src, dst = ipaddress.IPv6Address(a).packed, ipaddress.IPv6Address("ff02::1").packed
    body = struct.pack("!BBHI", 136, 0, 0, 0x20000000) + ipaddress.IPv6Address(b).packed
    body += b"\x02\x01" + mac(src_mac)
    pseudo = src + dst + struct.pack("!I3xB", len(body), 58) + body
    s = sum(struct.unpack(f"!{len(pseudo) // 2}H", pseudo))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    body = body[:2] + struct.pack("!H", ~s & 0xFFFF) + body[4:]
    ip6 = struct.pack("!IHBB", 0x60000000, len(body), 58, 255) + src + dst
    frame = b"\x33\x33\x00\x00\x00\x01" + mac(src_mac) + b"\x86\xdd" + ip6 + body
sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
sock.bind(("eth0", 0))
sock.send(frame)
"""


def _send(ns: Netns, *args: str) -> None:
    ns.exec(PYTHON, "-c", _SEND, *args)


def _conf(lab: PluginLab, **over: Any) -> dict[str, Any]:
    ipam = {
        "type": "host-local",
        "ranges": [[{"subnet": "10.66.0.0/24"}], [{"subnet": "fd00:66::/64"}]],
        "dataDir": str(lab.data_dir),
    }
    return lab.conf(cniVersion="1.1.0", ipam=ipam, ipspoofchk=True, **over)


def _addr(result: dict[str, Any], version: int) -> str:
    return next(
        str(ip["address"]).split("/")[0]
        for ip in result["ips"]
        if (":" in ip["address"]) == (version == 6)
    )


def _neigh_mac(ns: Netns, addr: str) -> str:
    found = ns.ip_json("neigh", "show", addr, "dev", "eth0")
    return str(found[0].get("lladdr", "")) if found else ""


def _elements(lab: PluginLab) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {name: [] for name in SETS}
    for obj in ruleset(lab.host):
        s = obj.get("set")
        if s and s.get("family") == "bridge" and s["name"] in out:
            out[s["name"]] = list(s.get("elem", []))
    return out


def _ports_named(lab: PluginLab) -> str:
    return json.dumps(_elements(lab))


def test_forged_sources_are_dropped_and_real_traffic_flows(lab: PluginLab) -> None:
    conf = _conf(lab)
    outside = lab.outside(lab.host)
    c1, c2 = lab.container(), lab.container()
    r1, r2 = lab.add(conf, "ipspoof1", c1), lab.add(conf, "ipspoof2", c2)
    mac1 = r1["interfaces"][2]["mac"]
    v4_1, v4_2 = _addr(r1, 4), _addr(r2, 4)
    v6_1, v6_2 = _addr(r1, 6), _addr(r2, 6)
    # The kernel's link-local address is the one ipspoofchk derived from the MAC.
    ll_2 = [
        a["local"]
        for a in c2.ip_json("-6", "addr", "show", "dev", "eth0", "scope", "link")[0]["addr_info"]
        if "local" in a
    ]
    assert ll_2 == [str(link_local(r2["interfaces"][2]["mac"]))]
    # Real traffic: between the containers over both families and link-local, to the
    # gateway, and out of the host (masqueraded).
    assert ping(c1, v4_2) and ping(c1, v6_2) and ping(c2, v4_1)
    assert c1.exec("ping", "-6", "-c", "1", "-W", "2", f"{ll_2[0]}%eth0", check=False).returncode == 0
    assert ping(c1, "10.66.0.1") and ping(c2, "fd00:66::1")
    assert ping(c1, TEST_NET_1[1]) and ping(outside, TEST_NET_1[0])

    # A forged IPv4 source: c2 would answer it (it knows the address is at c1's MAC), so only
    # the drop at c1's port keeps the ping unanswered.
    c1.ip("addr", "add", "10.66.0.200/32", "dev", "eth0")
    c2.ip("neigh", "replace", "10.66.0.200", "lladdr", mac1, "dev", "eth0", "nud", "permanent")
    assert not ping_from(c1, "10.66.0.200", v4_2)
    # (c1's neighbour probes for c2 took that source too and were dropped: start afresh)
    c1.ip("addr", "del", "10.66.0.200/32", "dev", "eth0")
    c1.ip("neigh", "flush", "dev", "eth0")
    assert ping(c1, v4_2)

    # A forged IPv6 source, the same way.
    c1.ip("-6", "addr", "add", "fd00:66::200/128", "dev", "eth0", "nodad")
    c2.ip("-6", "neigh", "replace", "fd00:66::200", "lladdr", mac1, "dev", "eth0",
          "nud", "permanent")
    assert not ping_from(c1, "fd00:66::200", v6_2)
    c1.ip("-6", "addr", "del", "fd00:66::200/128", "dev", "eth0")
    c1.ip("-6", "neigh", "flush", "dev", "eth0")
    assert ping(c1, v6_2)

    # A forged ARP sender (c1 claims the gateway's address): c2's entry for the gateway would
    # take c1's MAC (locktime 0: any ARP from the gateway's address overrides it).
    c2.sysctl("net.ipv4.neigh.eth0.locktime", 0)
    assert ping(c2, "10.66.0.1")
    gw_mac = _neigh_mac(c2, "10.66.0.1")
    assert gw_mac and gw_mac != mac1
    _send(c1, "arp", mac1, "10.66.0.1", v4_2)
    assert _neigh_mac(c2, "10.66.0.1") == gw_mac
    # ... while c1's own ARP is let through (the same frame with its real sender address).
    c2.ip("neigh", "flush", "dev", "eth0")
    _send(c1, "arp", mac1, v4_1, v4_2)
    assert _neigh_mac(c2, v4_1) == mac1

    # A neighbour advertisement from c1's own address with the gateway's as its target.
    assert ping(c2, "fd00:66::1")
    gw6_mac = _neigh_mac(c2, "fd00:66::1")
    assert gw6_mac and gw6_mac != mac1
    _send(c1, "na", mac1, v6_1, "fd00:66::1")
    assert _neigh_mac(c2, "fd00:66::1") == gw6_mac
    # ... and one for its own address goes through.
    c2.ip("-6", "neigh", "replace", v6_1, "lladdr", "02:00:00:00:00:01", "dev", "eth0", "nud", "stale")
    _send(c1, "na", mac1, v6_1, v6_1)
    assert _neigh_mac(c2, v6_1) == mac1

    port1 = r1["interfaces"][1]["name"]
    assert port1 in _ports_named(lab)
    lab.delete(conf, "ipspoof1", c1.path)
    lab.delete(conf, "ipspoof2", c2.path)
    assert _elements(lab) == {name: [] for name in SETS}


def ping_from(ns: Netns, src: str, dst: str) -> bool:
    six = ["-6"] if ":" in dst else []
    return ns.exec("ping", *six, "-c", "1", "-W", "1", "-I", src, dst, check=False).returncode == 0


def test_check_notices_a_removed_element_and_gc_removes_the_dead(lab: PluginLab) -> None:
    conf = _conf(lab)
    c1, c2 = lab.container(), lab.container()
    r1, r2 = lab.add(conf, "keep", c1), lab.add(conf, "gone", c2)
    code, out = lab.plugin("CHECK", {**conf, "prevResult": r1}, "keep", c1.path)
    assert code == 0, out
    port1 = r1["interfaces"][1]["name"]
    lab.host.exec("nft", "delete", "element", "bridge", "cni_bridge", "ipspoof_ip4",
                  f"{{ {port1} . {_addr(r1, 4)} }}")
    code, out = lab.plugin("CHECK", {**conf, "prevResult": r1}, "keep", c1.path)
    assert code == 1 and out["code"] == 105, out
    assert f"{port1} . {_addr(r1, 4)}" in out["msg"] and "ipspoof_ip4" in out["msg"]

    # GC with only "keep" valid: the elements of "gone" go, those of "keep" stay.
    port2 = r2["interfaces"][1]["name"]
    gc = {**conf, "cni.dev/valid-attachments": [{"containerID": "keep", "ifname": "eth0"}]}
    code, out = lab.plugin("GC", gc)
    assert code == 0, out
    left = _ports_named(lab)
    assert port2 not in left and port1 in left
    code, out = lab.plugin("GC", {**conf, "cni.dev/valid-attachments": []})
    assert code == 0, out
    assert _elements(lab) == {name: [] for name in SETS}


def test_del_without_a_record_still_removes_the_elements(lab: PluginLab) -> None:
    conf = _conf(lab)
    c1, c2 = lab.container(), lab.container()
    r1 = lab.add(conf, "lost", c1)
    r2 = lab.add(conf, "kept", c2)
    records = list((lab.data_dir / conf["name"] / ".cni-bridge").glob("*.json"))
    assert len(records) == 2
    port1, port2 = r1["interfaces"][1]["name"], r2["interfaces"][1]["name"]
    (lost,) = [r for r in records if json.loads(r.read_text())["container_id"] == "lost"]
    lost.unlink()  # the record (and with it the MAC the link-local derives from) is gone
    lab.delete(conf, "lost", c1.path)
    left = _ports_named(lab)
    assert port1 not in left and port2 in left
    lab.delete(conf, "kept", c2.path)
    assert _elements(lab) == {name: [] for name in SETS}


def test_sync_brings_the_guard_back_after_a_flush(lab: PluginLab) -> None:
    conf = _conf(lab)
    c1, c2 = lab.container(), lab.container()
    r1, r2 = lab.add(conf, "s1", c1), lab.add(conf, "s2", c2)
    before = _elements(lab)
    lab.host.exec("nft", "flush", "ruleset")  # a firewall reload: every guard is gone
    assert _elements(lab) == {name: [] for name in SETS}
    done = lab.cli("sync", "--data-dir", str(lab.data_dir))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "the ipspoofchk guard of" in done.stdout
    after = _elements(lab)
    assert {k: len(v) for k, v in after.items()} == {k: len(v) for k, v in before.items()}
    # and it drops again: c1 claims the gateway's address towards c2
    mac1, v4_2 = r1["interfaces"][2]["mac"], _addr(r2, 4)
    c2.sysctl("net.ipv4.neigh.eth0.locktime", 0)
    assert ping(c2, "10.66.0.1")
    gw_mac = _neigh_mac(c2, "10.66.0.1")
    _send(c1, "arp", mac1, "10.66.0.1", v4_2)
    assert _neigh_mac(c2, "10.66.0.1") == gw_mac
    done = lab.cli("sync", "--data-dir", str(lab.data_dir), "--dry-run")
    assert done.returncode == 0, done.stdout  # nothing left to heal
