"""`ipspoofchk`: a container sends only from its own addresses. Pure rendering.

In the `bridge`-family table macspoofchk uses (macspoof.FAMILY/TABLE), on frames entering the
bridge from a guarded host veth, before the bridge forwards them or the host routes them:
- IPv4: the source must be one of the port's addresses (DHCP's 0.0.0.0 -> 67 is let through);
- ARP: the sender address must be one of them (0.0.0.0, an RFC 5227 probe, is let through);
- IPv6: the source must be one of them or the link-local address the kernel derives from the
  container's MAC (EUI-64); `::` only for duplicate address detection (a neighbour
  solicitation whose target is the port's own) and MLD reports, which the kernel sends before
  it has an address;
- a neighbour advertisement's target must be one of the port's addresses (it announces "that
  address is here": the spoof that matters on a link);
- VLAN-tagged frames are dropped: the checks could not see inside them (so ipspoofchk and
  vlanTrunk exclude each other, config.py).

Static rules in one chain for every port; per port only set elements: the port in PORTS and
(port . address) pairs in ALLOWED4/ALLOWED6/TARGETS6. Each element carries its attachment's
comment (elements.attachment_comment: "<network> <tag> <owner>"), so GC finds what is whose
without a record. ADD and DEL touch only elements.

TARGETS6 holds the IPv6 addresses again, keyed as a raw 128-bit integer: nftables 1.0.6 has no
`icmpv6 taddr`, reads the target as a raw payload, and cannot compare that with an ipv6_addr
set. Its JSON cannot declare such a set (`typeof`) either, so the layout is native nft text.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from typing import Any

from cni_bridge.domain import IPAddress

# The one bridge-family table of ours, shared with macspoofchk; re-exported.
from cni_bridge.firewall.macspoof import FAMILY as FAMILY
from cni_bridge.firewall.macspoof import TABLE as TABLE
from cni_bridge.firewall.model import Element

Json = dict[str, Any]

PORTS = "ipspoof_ports"
ALLOWED4 = "ipspoof_ip4"  # port . IPv4 source or ARP sender
ALLOWED6 = "ipspoof_ip6"  # port . IPv6 source
TARGETS6 = "ipspoof_nd6"  # port . ND target (raw 128 bits)
SETS = (PORTS, ALLOWED4, ALLOWED6, TARGETS6)
CHAIN = "ipspoofchk"
COMMENT = "v1 ipspoofchk"

_SET_DECLS = {
    PORTS: "type ifname;",
    ALLOWED4: "type ifname . ipv4_addr;",
    ALLOWED6: "type ifname . ipv6_addr;",
    TARGETS6: "typeof iifname . @th,64,128;",
}
# After `iifname @ports`: (what, the rest of the rule). The accepts end only this chain, so
# macspoofchk's chain still sees those frames.
_RULES = (
    ("tagged frames", "ether type { 8021q, 8021ad } drop"),
    ("dhcp", "ip saddr 0.0.0.0 udp sport 68 udp dport 67 accept"),
    ("ipv4 source", f"iifname . ip saddr != @{ALLOWED4} drop"),
    ("arp sender", f"arp saddr ip != 0.0.0.0 iifname . arp saddr ip != @{ALLOWED4} drop"),
    (
        "dad target",
        f"ip6 saddr :: icmpv6 type nd-neighbor-solicit iifname . @th,64,128 != @{TARGETS6} drop",
    ),
    (
        "unspecified source",
        "ip6 saddr :: icmpv6 type { nd-neighbor-solicit, mld-listener-report, "
        "mld2-listener-report } accept",
    ),
    ("ipv6 source", f"iifname . ip6 saddr != @{ALLOWED6} drop"),
    ("nd target", f"icmpv6 type nd-neighbor-advert iifname . @th,64,128 != @{TARGETS6} drop"),
)


def rule_comments() -> set[str]:
    return {f"{COMMENT}: {what}" for what, _ in _RULES}


def layout() -> str:
    """Idempotent and race-free, as one transaction: add (no-op when present), flush, rewrite."""
    where = f"{FAMILY} {TABLE}"
    lines = [f"add table {where}"]
    lines += [f"add set {where} {name} {{ {decl} }}" for name, decl in _SET_DECLS.items()]
    lines.append(
        f"add chain {where} {CHAIN} {{ type filter hook prerouting priority -300; policy accept; }}"
    )
    lines.append(f"flush chain {where} {CHAIN}")
    lines += [
        f'add rule {where} {CHAIN} iifname @{PORTS} {rule} comment "{COMMENT}: {what}"'
        for what, rule in _RULES
    ]
    return "\n".join(lines) + "\n"


def link_local(mac: str) -> ipaddress.IPv6Address:
    """The address the kernel gives an interface with this MAC (addrgenmode eui64, its default)."""
    b = bytearray(int(x, 16) for x in mac.split(":"))
    if len(b) != 6:
        raise ValueError(f"not a MAC address: {mac!r}")
    b[0] ^= 0x02
    iid = bytes(b[:3]) + b"\xff\xfe" + bytes(b[3:])
    return ipaddress.IPv6Address(b"\xfe\x80" + bytes(6) + iid)


def own_addresses(ips: Iterable[IPAddress], mac: str, ipv6_link_local: bool) -> list[IPAddress]:
    """What the port may send from: its addresses and, when its interface has IPv6 (an IPv6
    address or `ipv6LinkLocal`, as the ADD configures it), its link-local address."""
    out: list[IPAddress] = list(dict.fromkeys(ips))
    if mac and (ipv6_link_local or any(ip.version == 6 for ip in out)):
        ll = link_local(mac)
        if ll not in out:
            out.append(ll)
    return out


def _target(ip: ipaddress.IPv6Address) -> str:
    return f"0x{int(ip):032x}"


def keys(port: str, addrs: Sequence[IPAddress]) -> dict[str, list[Any]]:
    """Set -> the element keys (JSON) of one port, ports last."""
    out: dict[str, list[Any]] = {ALLOWED4: [], ALLOWED6: [], TARGETS6: []}
    for ip in addrs:
        if ip.version == 4:
            out[ALLOWED4].append({"concat": [port, str(ip)]})
        else:
            out[ALLOWED6].append({"concat": [port, str(ip)]})
            out[TARGETS6].append({"concat": [port, _target(ip)]})
    out[PORTS] = [port]
    return {name: ks for name, ks in out.items() if ks}


def _obj(**kw: Any) -> Json:
    return {"family": FAMILY, "table": TABLE, **kw}


def add(port: str, addrs: Sequence[IPAddress], comment: str) -> list[Json]:
    """The port's elements; the allowed pairs before the port, so no frame of it is dropped
    in between (they are one transaction anyway)."""
    return [
        {
            "add": {
                "element": _obj(
                    name=name, elem=[{"elem": {"val": k, "comment": comment}} for k in ks]
                )
            }
        }
        for name, ks in keys(port, addrs).items()
    ]


def delete(port: str, addrs: Sequence[IPAddress]) -> list[Json]:
    """Delete-if-present by key, without a read (nftables 1.0.6 has no `destroy`: adding an
    element that exists is a no-op, so add-then-delete never fails for a missing one)."""
    cmds: list[Json] = []
    for name, ks in keys(port, addrs).items():
        elem = _obj(name=name, elem=ks)
        cmds += [{"add": {"element": elem}}, {"delete": {"element": elem}}]
    return cmds


def delete_elements(found: dict[str, list[Element]]) -> list[Json]:
    return [
        {"delete": {"element": _obj(name=name, elem=[e.key for e in els])}}
        for name, els in found.items()
        if els
    ]


def of_port(sets: dict[str, list[Element]], port: str) -> dict[str, list[Element]]:
    """The elements of one port, whatever their addresses (a DEL without a record)."""
    return {name: [e for e in sets.get(name, []) if _port_of(e) == port] for name in SETS}


def stale(
    sets: dict[str, list[Element]], network: str, keep_tags: set[str]
) -> dict[str, list[Element]]:
    """The network's elements whose attachment is not kept (GC)."""
    return {
        name: [e for e in sets.get(name, []) if e.network == network and e.tag not in keep_tags]
        for name in SETS
    }


def lookups(port: str, addrs: Sequence[IPAddress]) -> list[tuple[str, str]]:
    """CHECK: (what, a native `get element` command) per element ADD makes for the port, rather
    than a listing of the whole table (~0.3 s at 1000 ports, ~80 ms this way); `get` exists in
    the native syntax only."""
    out = []
    for name, ks in keys(port, addrs).items():
        for k in ks:
            text = " . ".join(f'"{v}"' if i == 0 else str(v) for i, v in enumerate(_parts(k)))
            out.append(
                (
                    f"ipspoofchk element {_show(k)} is missing from set {name}",
                    f"get element {FAMILY} {TABLE} {name} {{ {text} }}",
                )
            )
    return out


def _parts(key: Any) -> list[Any]:
    return list(key["concat"]) if isinstance(key, dict) and "concat" in key else [key]


def absent(sets: dict[str, list[Element]], port: str, addrs: Sequence[IPAddress]) -> bool:
    """Whether an element of the port is missing from a listing (a sync's check)."""
    have = {(name, _canon(e.key)) for name, els in sets.items() for e in els}
    return any(
        (name, _canon(k)) not in have for name, ks in keys(port, addrs).items() for k in ks
    )


def _canon(key: Any) -> Any:
    if isinstance(key, dict) and "concat" in key:
        return tuple(_canon(v) for v in key["concat"])
    if isinstance(key, str) and key.startswith("0x"):
        return int(key, 16)
    try:
        return ipaddress.ip_address(key)
    except ValueError:
        return key


def _port_of(e: Element) -> str:
    k = e.key
    return str(k["concat"][0]) if isinstance(k, dict) and "concat" in k else str(k)


def _show(key: Any) -> str:
    if isinstance(key, dict) and "concat" in key:
        parts = [
            str(ipaddress.IPv6Address(int(v, 16))) if str(v).startswith("0x") else str(v)
            for v in key["concat"]
        ]
        return " . ".join(parts)
    return str(key)
