"""The static part of cni-bridge's nftables ruleset, as libnftables JSON: one table, its sets
and maps, and base chains whose rules never change at run time.

Layout (table ``inet cni_bridge``): the base chains and their rules are the same for every
network; a network and an attachment only ever add or delete set and map elements, so ADD and
DEL never create or delete rules in our table (a transaction that deletes rules makes closing
the netlink socket wait 12-23 ms).

- network elements (comment: the network name, see elements.py): its bridge in ``bridges``,
  ``isolated``, ``bridge_self`` and ``strict``; its subnets in ``masq4/6`` (ipMasq), its subnet
  pairs in ``same4/6`` (interval sets, so "same network" is one lookup) and (subnet,
  nonMasqueradeCIDRs entry) pairs in ``nomasq4/6`` (destinations that keep the source address,
  e.g. the cluster CIDR);
- attachment elements (comment: "<network> <tag> <owner>"): port mappings in the ``pub*`` maps
  keyed by (l4proto, port) or (host address, l4proto, port), see ports.py, and a claim of the
  host port in ``ports``, see claims.py.

A DNAT target is an address *and* a port. A map whose data is a concatenation
(``ipv4_addr . inet_service``) cannot be declared through JSON on nftables 1.0.6 (it silently
becomes a set and the dnat rule crashes the process), so each mapping is two elements in two
maps with the same key, one for the address and one for the port:
``dnat ip to K map @pub4_addr : K map @pub4_port``. Everything stays in JSON and one batch can
create the table and add elements.

The layout is versioned by the comments of its rules (``v1 ...``): ADD compares them with
what the kernel holds and rewrites a chain that differs (layout_repairs).
"""

from __future__ import annotations

import ipaddress

from cni_bridge.firewall.model import IPNetwork, TableView
from cni_bridge.tuples import NamedTuple

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

Json = dict[str, "Any"]  # quoted: Any is for mypy only (no typing at run time, hints.py)

FAMILY = "inet"
TABLE = "cni_bridge"
LAYOUT = "v1"

# ---------------------------------------------------------------- sets and maps

BRIDGES = "bridges"  # ifname: every bridge of ours
ISOLATED = "isolated"  # ifname: bridges whose traffic to/from other bridges is dropped
BRIDGE_SELF = "bridge_self"  # ifname . ifname: (br, br), routed traffic within one bridge
STRICT = "strict"  # ifname: bridges behind a foreign forward policy drop
INTERNAL = "internal"  # ifname: bridges of internal networks (no way in or out but the bridge)
MASQ = {4: "masq4", 6: "masq6"}  # subnets of networks with ipMasq
SAME = {4: "same4", 6: "same6"}  # (subnet, subnet) pairs of one network
NOMASQ = {4: "nomasq4", 6: "nomasq6"}  # (subnet, nonMasqueradeCIDRs entry) pairs
DNS_ADDR = {4: "dnsaddr4", 6: "dnsaddr6"}  # gateways of containerDNS networks (name servers)
DNS_GW = {4: "dns4", 6: "dns6"}  # (bridge, gateway) of containerDNS networks
PORTS = "ports"  # nfproto . l4proto . port -> attachment id, or the marker (see claims.py)


# NamedTuples, not frozen dataclasses: the same immutable, hashable records, without the six
# methods a frozen dataclass compiles at import (~2.5 M instructions each of every cold exec).
class PubMaps(NamedTuple):
    addr: str
    port: str


# (address family, specific host address?) -> the two maps of that key type
PUB = {
    (4, False): PubMaps("pub4_addr", "pub4_port"),
    (4, True): PubMaps("pub4h_addr", "pub4h_port"),
    (6, False): PubMaps("pub6_addr", "pub6_port"),
    (6, True): PubMaps("pub6h_addr", "pub6h_port"),
}
_ADDR_TYPE = {4: "ipv4_addr", 6: "ipv6_addr"}
_L3 = {4: "ip", 6: "ip6"}
NETWORK_SETS = (
    BRIDGES,
    ISOLATED,
    BRIDGE_SELF,
    STRICT,
    INTERNAL,
    *MASQ.values(),
    *SAME.values(),
    *NOMASQ.values(),
    *DNS_ADDR.values(),
    *DNS_GW.values(),
)
PUB_MAPS = tuple(name for pm in PUB.values() for name in (pm.addr, pm.port))
ATTACHMENT_SETS = (*PUB_MAPS, PORTS)


def _set_decls() -> dict[str, Json]:
    decls: dict[str, Json] = {
        BRIDGES: {"type": "ifname"},
        ISOLATED: {"type": "ifname"},
        BRIDGE_SELF: {"type": ["ifname", "ifname"]},
        STRICT: {"type": "ifname"},
        INTERNAL: {"type": "ifname"},
    }
    for fam, addr in _ADDR_TYPE.items():
        decls[MASQ[fam]] = {"type": addr, "flags": ["interval"]}
        decls[SAME[fam]] = {"type": [addr, addr], "flags": ["interval"]}
        decls[NOMASQ[fam]] = {"type": [addr, addr], "flags": ["interval"]}
        decls[DNS_ADDR[fam]] = {"type": addr}
        decls[DNS_GW[fam]] = {"type": ["ifname", addr]}
        for specific in (False, True):
            key: list[str] = [addr] if specific else []
            key += ["inet_proto", "inet_service"]
            maps = PUB[(fam, specific)]
            decls[maps.addr] = {"type": key, "map": addr}
            decls[maps.port] = {"type": key, "map": "inet_service"}
    decls[PORTS] = {"type": ["nf_proto", "inet_proto", "inet_service"], "map": "mark"}
    return decls


SET_DECLS = _set_decls()
INTERVAL_SETS = frozenset(n for n, d in SET_DECLS.items() if "interval" in d.get("flags", []))

# ---------------------------------------------------------------- expression helpers


def meta(key: str) -> Json:
    return {"meta": {"key": key}}


def _pl(proto: str, fld: str) -> Json:
    return {"payload": {"protocol": proto, "field": fld}}


def _ct(key: str) -> Json:
    return {"ct": {"key": key}}


def match(left: Json, right: Any, op: str = "==") -> Json:
    return {"match": {"op": op, "left": left, "right": right}}


def prefix(net: IPNetwork) -> Json:
    return {"prefix": {"addr": str(net.network_address), "len": net.prefixlen}}


_COUNTER: Json = {"counter": None}
ACCEPT: Json = {"accept": None}
_DROP: Json = {"drop": None}
_MASQ: Json = {"masquerade": None}
_DPORT = _pl("th", "dport")

# ---------------------------------------------------------------- static chains


class Chain(NamedTuple):  # a NamedTuple: see PubMaps
    name: str
    type: str
    hook: str
    prio: int
    rules: tuple[tuple[str, tuple[Json, ...]], ...]  # (comment, expr)


def _dnat_rule(fam: int, specific: bool) -> tuple[Json, ...]:
    l3 = _L3[fam]
    key: list[Json] = [_pl(l3, "daddr")] if specific else []
    key += [meta("l4proto"), _DPORT]
    maps = PUB[(fam, specific)]
    concat = {"concat": key}
    # [::1] is left to the socket the agent holds on the port (cni_bridge/ports): IPv6 has no
    # route_localnet, so a DNAT of ::1 to a container is dropped and the client hangs.
    not_lo: tuple[Json, ...] = (match(_pl("ip6", "daddr"), "::1", "!="),) if fam == 6 else ()
    return (
        match(meta("nfproto"), f"ipv{fam}"),
        *not_lo,
        {
            "dnat": {
                "family": l3,
                "addr": {"map": {"key": concat, "data": f"@{maps.addr}"}},
                "port": {"map": {"key": concat, "data": f"@{maps.port}"}},
            }
        },
    )


def _masq_rules(fam: int) -> tuple[tuple[str, tuple[Json, ...]], ...]:
    l3 = _L3[fam]
    pair = {"concat": [_pl(l3, "saddr"), _pl(l3, "daddr")]}
    multicast = ipaddress.ip_network("224.0.0.0/4" if fam == 4 else "ff00::/8")
    return (
        (
            f"{LAYOUT} hairpin{fam}: published port reached from the same network",
            (match(_ct("status"), "dnat", "in"), match(pair, f"@{SAME[fam]}"), _MASQ),
        ),
        (
            f"{LAYOUT} masq{fam}: ipMasq networks leaving their subnets, but to nonMasqueradeCIDRs",
            (
                match(_pl(l3, "saddr"), f"@{MASQ[fam]}"),
                match(_pl(l3, "daddr"), prefix(multicast), "!="),
                match(pair, f"@{SAME[fam]}", "!="),
                match(pair, f"@{NOMASQ[fam]}", "!="),
                _MASQ,
            ),
        ),
    )


def _dnat_comment(fam: int, specific: bool) -> str:
    # The comment names the rule's version: a host with the older dnat6 (::1 included) gets
    # the chain rewritten by layout_repairs.
    return f"{LAYOUT} dnat{fam}{'-hostip' if specific else ''}{' not ::1' if fam == 6 else ''}"


def _dns_rule(fam: int) -> tuple[str, tuple[Json, ...]]:
    # aardvark-dns answers whoever asks with the names of the network whose gateway received
    # the query, and forwards any other name: only the network's own bridge (and the host
    # itself) may ask its name server, not another bridge, nor the host's LAN (the host routes
    # to its bridges, so anyone there could otherwise use it as a resolver).
    l3 = _L3[fam]
    return (
        f"{LAYOUT} dns{fam}: a network's name server answers its own bridge and the host only",
        (
            match(meta("iifname"), "lo", "!="),
            match(meta("l4proto"), {"set": ["udp", "tcp"]}),
            match(_DPORT, 53),
            match(_pl(l3, "daddr"), f"@{DNS_ADDR[fam]}"),
            match({"concat": [meta("iifname"), _pl(l3, "daddr")]}, f"@{DNS_GW[fam]}", "!="),
            _COUNTER,
            _DROP,
        ),
    )


_JUMP_PUBLISH = (
    f"{LAYOUT} publish: port mappings to local addresses",
    (
        match({"fib": {"result": "type", "flags": ["daddr"]}}, "local"),
        {"jump": {"target": "publish"}},
    ),
)

# Order matters: a chain is declared before the rules that jump to it.
STATIC_CHAINS: tuple[Chain, ...] = (
    Chain(
        "guard",
        "filter",
        "prerouting",
        -300,
        (
            (
                f"{LAYOUT} guard: 127.0.0.0/8 from off the host (CVE-2020-8558)",
                (
                    match(meta("iifname"), "lo", "!="),
                    match(_pl("ip", "daddr"), prefix(ipaddress.ip_network("127.0.0.0/8"))),
                    _COUNTER,
                    _DROP,
                ),
            ),
        ),
    ),
    Chain(
        "publish",
        "",
        "",
        0,
        tuple(
            (_dnat_comment(fam, specific), _dnat_rule(fam, specific))
            for fam in (4, 6)
            for specific in (True, False)
        ),
    ),
    Chain("prerouting", "nat", "prerouting", -100, (_JUMP_PUBLISH,)),
    Chain("input", "filter", "input", 0, (_dns_rule(4), _dns_rule(6))),
    Chain("output", "nat", "output", -100, (_JUMP_PUBLISH,)),
    Chain(
        "postrouting",
        "nat",
        "postrouting",
        100,
        (
            (
                f"{LAYOUT} localhost: 127.0.0.0/8 to a published port",
                (
                    match(meta("oifname"), f"@{BRIDGES}"),
                    match(_pl("ip", "saddr"), prefix(ipaddress.ip_network("127.0.0.0/8"))),
                    _MASQ,
                ),
            ),
            *_masq_rules(4),
            *_masq_rules(6),
        ),
    ),
    Chain(
        "forward",
        "filter",
        "forward",
        0,
        (
            # First: not even replies or published ports cross an internal bridge's edge.
            (
                f"{LAYOUT} internal: out of an internal bridge",
                (
                    match(meta("iifname"), f"@{INTERNAL}"),
                    match({"concat": [meta("iifname"), meta("oifname")]}, f"@{BRIDGE_SELF}", "!="),
                    _COUNTER,
                    _DROP,
                ),
            ),
            (
                f"{LAYOUT} internal: into an internal bridge",
                (
                    match(meta("oifname"), f"@{INTERNAL}"),
                    match({"concat": [meta("iifname"), meta("oifname")]}, f"@{BRIDGE_SELF}", "!="),
                    _COUNTER,
                    _DROP,
                ),
            ),
            (
                f"{LAYOUT} replies to our bridges",
                (
                    match(meta("oifname"), f"@{BRIDGES}"),
                    match(_ct("state"), ["established", "related"], "in"),
                    ACCEPT,
                ),
            ),
            (
                f"{LAYOUT} published ports",
                (
                    match(meta("oifname"), f"@{BRIDGES}"),
                    match(_ct("status"), "dnat", "in"),
                    ACCEPT,
                ),
            ),
            (
                f"{LAYOUT} within one bridge",
                (
                    match({"concat": [meta("iifname"), meta("oifname")]}, f"@{BRIDGE_SELF}"),
                    ACCEPT,
                ),
            ),
            (
                f"{LAYOUT} isolation: from an isolated bridge",
                (
                    match(meta("iifname"), f"@{ISOLATED}"),
                    match(meta("oifname"), f"@{BRIDGES}"),
                    _COUNTER,
                    _DROP,
                ),
            ),
            (
                f"{LAYOUT} isolation: to an isolated bridge",
                (
                    match(meta("iifname"), f"@{BRIDGES}"),
                    match(meta("oifname"), f"@{ISOLATED}"),
                    _COUNTER,
                    _DROP,
                ),
            ),
            (f"{LAYOUT} from our bridges", (match(meta("iifname"), f"@{BRIDGES}"), ACCEPT)),
            (
                f"{LAYOUT} strict: the foreign forward policy drop, for the rest",
                (match(meta("oifname"), f"@{STRICT}"), _COUNTER, _DROP),
            ),
        ),
    ),
)
def obj(**kw: Any) -> Json:
    return {"family": FAMILY, "table": TABLE, **kw}


def render_table() -> Json:
    return {"add": {"table": {"family": FAMILY, "name": TABLE}}}


def render_set(name: str) -> Json:
    decl = SET_DECLS[name]
    kind = "map" if "map" in decl else "set"
    return {"add": {kind: obj(name=name, **decl)}}


def render_chain(chain: Chain) -> list[Json]:
    """Declare the chain and (re)write its rules; flush makes it idempotent and race-free."""
    decl = obj(name=chain.name)
    if chain.hook:
        decl.update(type=chain.type, hook=chain.hook, prio=chain.prio, policy="accept")
    cmds: list[Json] = [{"add": {"chain": decl}}, {"flush": {"chain": obj(name=chain.name)}}]
    for comment, expr in chain.rules:
        rule = obj(chain=chain.name, comment=comment, expr=list(expr))
        cmds.append({"add": {"rule": rule}})
    return cmds


def render_layout() -> list[Json]:
    """The whole static layout, as the first ADD on a host sends it."""
    cmds = [render_table(), *(render_set(n) for n in SET_DECLS)]
    for chain in STATIC_CHAINS:
        cmds += render_chain(chain)
    return cmds



def layout_repairs(view: TableView) -> list[Json]:
    """Commands that bring the static layout to what this version expects."""
    if not view.exists:
        return render_layout()
    cmds = [render_set(n) for n in SET_DECLS if n not in view.sets]
    for chain in STATIC_CHAINS:
        have = [r.comment for r in view.chains.get(chain.name, [])]
        if chain.name not in view.chains or have != [c for c, _ in chain.rules]:
            cmds += render_chain(chain)
    return cmds


def layout_problems(view: TableView) -> list[str]:
    if not view.exists:
        return [f"nftables table {FAMILY} {TABLE} is missing"]
    msgs = [
        f"set {n} is missing from table {FAMILY} {TABLE}" for n in SET_DECLS if n not in view.sets
    ]
    for chain in STATIC_CHAINS:
        if chain.name not in view.chains:
            msgs.append(f"chain {chain.name} is missing from table {FAMILY} {TABLE}")
        elif [r.comment for r in view.chains[chain.name]] != [c for c, _ in chain.rules]:
            msgs.append(
                f"chain {chain.name} of table {FAMILY} {TABLE} does not hold the expected rules"
            )
    return msgs
