"""Pure rendering of cni-bridge's nftables layout as libnftables JSON, and the plans
that turn (model, what the kernel holds) into one transaction.

Layout (table ``inet cni_bridge``): the base chains and their rules are static and the
same for every network; a network and an attachment only ever add or delete set and
map elements, so ADD and DEL never create or delete rules in our table (a transaction
that deletes rules makes closing the netlink socket wait 12-23 ms).

- network elements (comment: the network name): its bridge in ``bridges``,
  ``isolated``, ``bridge_self`` and ``strict``; its subnets in ``masq4/6`` (ipMasq),
  its subnet pairs in ``same4/6`` (interval sets, so "same network" is one lookup) and
  (subnet, nonMasqueradeCIDRs entry) pairs in ``nomasq4/6`` (destinations that keep the
  source address, e.g. the cluster CIDR);
- attachment elements (comment: "<network> <tag> <owner>"): port mappings in the
  ``pub*`` maps keyed by (l4proto, port) or (host address, l4proto, port), and a claim
  of the host port in ``ports`` (see below).

Neither ADD nor DEL reads the port maps, which grow with the number of containers
(libnftables re-reads a whole set to list or `get` from it). Instead:
- the kernel refuses conflicts inside the ADD transaction: ``ports`` maps (nfproto,
  l4proto, port) of a mapping on every local address to the attachment's id, created
  with ``create`` (fails if the port is claimed at all); the mappings on specific host
  addresses share a marker (0) on the port, added with ``add`` (fails if an
  every-address claim holds another value). The specific-address maps are small and
  read, so a clash there is named before sending. Only when the transaction fails
  does ADD read everything, to name the owner or to see it is already in place;
- DEL deletes an every-address mapping as "add with its expected data, then delete":
  the add fails, and with it the whole transaction, if the key now belongs to
  another attachment (its claim holds another id), and a mapping already gone is
  simply re-added and deleted. A batch that fails falls back to reading everything.

A DNAT target is an address *and* a port. A map whose data is a concatenation
(``ipv4_addr . inet_service``) cannot be declared through JSON on nftables 1.0.6 (it
silently becomes a set and the dnat rule crashes the process), so each mapping is two
elements in two maps with the same key, one for the address and one for the port:
``dnat ip to K map @pub4_addr : K map @pub4_port``. Everything stays in JSON and one
batch can create the table and add elements.

The only rules we ever add or delete at run time are the accept rules in a foreign
table's forward chain with policy drop (comment ``cni-bridge:<network>``). They use
only ``iifname``/``oifname``, which iptables-nft can still parse (a native ``ct``
expression makes iptables-nft refuse the whole table, which would break Docker); the
precise filtering (replies, published ports and traffic from the bridge only) is done
in our own forward chain for the bridges in the ``strict`` set.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import itertools
import re
import zlib
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from cni_bridge.errors import INVALID_CONFIG, PORT_CONFLICT, CNIError
from cni_bridge.firewall.model import (
    PROTOCOLS,
    AttachmentFw,
    Element,
    ForeignView,
    IPAddress,
    IPNetwork,
    NetworkFw,
    PortMapping,
    Rule,
    TableView,
)

Json = dict[str, Any]

FAMILY = "inet"
TABLE = "cni_bridge"
LAYOUT = "v1"
FOREIGN_TAG = "cni-bridge:"  # + network name: comment of our rules in foreign chains
COMMENT_MAX = 127  # bytes; the kernel stores at most 128 including the NUL
MAX_PORTS = 4096  # host ports per attachment after expanding ranges
_TAG_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,47}")
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_IFNAME_RE = re.compile(r"[^\s/:]{1,15}")
PROTO_NUMBERS = {6: "tcp", 17: "udp", 132: "sctp"}

# ---------------------------------------------------------------- sets and maps

BRIDGES = "bridges"  # ifname: every bridge of ours
ISOLATED = "isolated"  # ifname: bridges whose traffic to/from other bridges is dropped
BRIDGE_SELF = "bridge_self"  # ifname . ifname: (br, br), routed traffic within one bridge
STRICT = "strict"  # ifname: bridges behind a foreign forward policy drop
MASQ = {4: "masq4", 6: "masq6"}  # subnets of networks with ipMasq
SAME = {4: "same4", 6: "same6"}  # (subnet, subnet) pairs of one network
NOMASQ = {4: "nomasq4", 6: "nomasq6"}  # (subnet, nonMasqueradeCIDRs entry) pairs
PORTS = "ports"  # nfproto . l4proto . port -> attachment id, or CLAIM_SPECIFIC
CLAIM_SPECIFIC = 0  # the marker of mappings on specific host addresses
MARKER_COMMENT = "* published on specific host addresses"  # "*": no network name


@dataclass(frozen=True)
class PubMaps:
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
    *MASQ.values(),
    *SAME.values(),
    *NOMASQ.values(),
)
PUB_MAPS = tuple(name for pm in PUB.values() for name in (pm.addr, pm.port))
ATTACHMENT_SETS = (*PUB_MAPS, PORTS)


def _set_decls() -> dict[str, Json]:
    decls: dict[str, Json] = {
        BRIDGES: {"type": "ifname"},
        ISOLATED: {"type": "ifname"},
        BRIDGE_SELF: {"type": ["ifname", "ifname"]},
        STRICT: {"type": "ifname"},
    }
    for fam, addr in _ADDR_TYPE.items():
        decls[MASQ[fam]] = {"type": addr, "flags": ["interval"]}
        decls[SAME[fam]] = {"type": [addr, addr], "flags": ["interval"]}
        decls[NOMASQ[fam]] = {"type": [addr, addr], "flags": ["interval"]}
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


def _meta(key: str) -> Json:
    return {"meta": {"key": key}}


def _pl(proto: str, fld: str) -> Json:
    return {"payload": {"protocol": proto, "field": fld}}


def _ct(key: str) -> Json:
    return {"ct": {"key": key}}


def _match(left: Json, right: Any, op: str = "==") -> Json:
    return {"match": {"op": op, "left": left, "right": right}}


def _prefix(net: IPNetwork) -> Json:
    return {"prefix": {"addr": str(net.network_address), "len": net.prefixlen}}


_COUNTER: Json = {"counter": None}
_ACCEPT: Json = {"accept": None}
_DROP: Json = {"drop": None}
_MASQ: Json = {"masquerade": None}
_DPORT = _pl("th", "dport")

# ---------------------------------------------------------------- static chains


@dataclass(frozen=True)
class Chain:
    name: str
    type: str
    hook: str
    prio: int
    rules: tuple[tuple[str, tuple[Json, ...]], ...]  # (comment, expr)


def _dnat_rule(fam: int, specific: bool) -> tuple[Json, ...]:
    l3 = _L3[fam]
    key: list[Json] = [_pl(l3, "daddr")] if specific else []
    key += [_meta("l4proto"), _DPORT]
    maps = PUB[(fam, specific)]
    concat = {"concat": key}
    return (
        _match(_meta("nfproto"), f"ipv{fam}"),
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
            (_match(_ct("status"), "dnat", "in"), _match(pair, f"@{SAME[fam]}"), _MASQ),
        ),
        (
            f"{LAYOUT} masq{fam}: ipMasq networks leaving their subnets, but to nonMasqueradeCIDRs",
            (
                _match(_pl(l3, "saddr"), f"@{MASQ[fam]}"),
                _match(_pl(l3, "daddr"), _prefix(multicast), "!="),
                _match(pair, f"@{SAME[fam]}", "!="),
                _match(pair, f"@{NOMASQ[fam]}", "!="),
                _MASQ,
            ),
        ),
    )


_JUMP_PUBLISH = (
    f"{LAYOUT} publish: port mappings to local addresses",
    (
        _match({"fib": {"result": "type", "flags": ["daddr"]}}, "local"),
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
                    _match(_meta("iifname"), "lo", "!="),
                    _match(_pl("ip", "daddr"), _prefix(ipaddress.ip_network("127.0.0.0/8"))),
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
            (f"{LAYOUT} dnat{fam}{'-hostip' if specific else ''}", _dnat_rule(fam, specific))
            for fam in (4, 6)
            for specific in (True, False)
        ),
    ),
    Chain("prerouting", "nat", "prerouting", -100, (_JUMP_PUBLISH,)),
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
                    _match(_meta("oifname"), f"@{BRIDGES}"),
                    _match(_pl("ip", "saddr"), _prefix(ipaddress.ip_network("127.0.0.0/8"))),
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
            (
                f"{LAYOUT} replies to our bridges",
                (
                    _match(_meta("oifname"), f"@{BRIDGES}"),
                    _match(_ct("state"), ["established", "related"], "in"),
                    _ACCEPT,
                ),
            ),
            (
                f"{LAYOUT} published ports",
                (
                    _match(_meta("oifname"), f"@{BRIDGES}"),
                    _match(_ct("status"), "dnat", "in"),
                    _ACCEPT,
                ),
            ),
            (
                f"{LAYOUT} within one bridge",
                (
                    _match({"concat": [_meta("iifname"), _meta("oifname")]}, f"@{BRIDGE_SELF}"),
                    _ACCEPT,
                ),
            ),
            (
                f"{LAYOUT} isolation: from an isolated bridge",
                (
                    _match(_meta("iifname"), f"@{ISOLATED}"),
                    _match(_meta("oifname"), f"@{BRIDGES}"),
                    _COUNTER,
                    _DROP,
                ),
            ),
            (
                f"{LAYOUT} isolation: to an isolated bridge",
                (
                    _match(_meta("iifname"), f"@{BRIDGES}"),
                    _match(_meta("oifname"), f"@{ISOLATED}"),
                    _COUNTER,
                    _DROP,
                ),
            ),
            (f"{LAYOUT} from our bridges", (_match(_meta("iifname"), f"@{BRIDGES}"), _ACCEPT)),
            (
                f"{LAYOUT} strict: the foreign forward policy drop, for the rest",
                (_match(_meta("oifname"), f"@{STRICT}"), _COUNTER, _DROP),
            ),
        ),
    ),
)
CHAINS = {c.name: c for c in STATIC_CHAINS}


def _obj(**kw: Any) -> Json:
    return {"family": FAMILY, "table": TABLE, **kw}


def render_table() -> Json:
    return {"add": {"table": {"family": FAMILY, "name": TABLE}}}


def render_set(name: str) -> Json:
    decl = SET_DECLS[name]
    kind = "map" if "map" in decl else "set"
    return {"add": {kind: _obj(name=name, **decl)}}


def render_chain(chain: Chain) -> list[Json]:
    """Declare the chain and (re)write its rules; flush makes it idempotent and race-free."""
    decl = _obj(name=chain.name)
    if chain.hook:
        decl.update(type=chain.type, hook=chain.hook, prio=chain.prio, policy="accept")
    cmds: list[Json] = [{"add": {"chain": decl}}, {"flush": {"chain": _obj(name=chain.name)}}]
    for comment, expr in chain.rules:
        rule = _obj(chain=chain.name, comment=comment, expr=list(expr))
        cmds.append({"add": {"rule": rule}})
    return cmds


def render_layout() -> list[Json]:
    """The whole static layout, as the first ADD on a host sends it."""
    cmds = [render_table(), *(render_set(n) for n in SET_DECLS)]
    for chain in STATIC_CHAINS:
        cmds += render_chain(chain)
    return cmds


# ---------------------------------------------------------------- validation


def validate(net: NetworkFw, att: AttachmentFw | None = None) -> None:
    """Reject what the element comments or nftables cannot carry."""
    if not _NAME_RE.fullmatch(net.name):
        raise CNIError(INVALID_CONFIG, f"network name {net.name!r} is not usable by the firewall")
    if not _IFNAME_RE.fullmatch(net.bridge) or len(net.bridge.encode()) > 15:
        raise CNIError(INVALID_CONFIG, f"invalid bridge name {net.bridge!r}")
    if att is None:
        return
    if not _TAG_RE.fullmatch(att.tag):
        raise CNIError(INVALID_CONFIG, f"invalid attachment tag {att.tag!r}")
    for pm in att.port_mappings:
        _validate_mapping(pm)
    if sum(pm.count for pm in att.port_mappings) > MAX_PORTS:
        raise CNIError(INVALID_CONFIG, f"more than {MAX_PORTS} host ports in port mappings")


def _validate_mapping(pm: PortMapping) -> None:
    def bad(why: str) -> CNIError:
        return CNIError(INVALID_CONFIG, f"invalid port mapping {pm.host_port}: {why}")

    if pm.protocol not in PROTOCOLS:
        raise bad(f"unsupported protocol {pm.protocol!r}")
    if not 0 < pm.host_port <= 65535 or not 0 < pm.container_port <= 65535:
        raise bad("ports must be 1-65535")
    if pm.host_port_end is not None:
        if not pm.host_port <= pm.host_port_end <= 65535:
            raise bad("hostPortEnd must be between hostPort and 65535")
        if pm.container_port + pm.count - 1 > 65535:
            raise bad("the container port range ends beyond 65535")


# ---------------------------------------------------------------- per-network elements


def _elem(key: Any, comment: str) -> Json:
    return {"elem": {"val": key, "comment": comment}}


def _add_elems(name: str, elems: Sequence[Any], verb: str = "add") -> Json:
    return {verb: {"element": _obj(name=name, elem=list(elems))}}


def _del_elems(name: str, keys: Sequence[Any]) -> Json:
    return {"delete": {"element": _obj(name=name, elem=list(keys))}}


def network_keys(net: NetworkFw, strict: bool) -> dict[str, list[Any]]:
    """Set name -> element keys (JSON) that the network owns."""
    br = net.bridge
    keys: dict[str, list[Any]] = {BRIDGES: [br], BRIDGE_SELF: [{"concat": [br, br]}]}
    if net.isolate:
        keys[ISOLATED] = [br]
    if strict:
        keys[STRICT] = [br]
    for fam in (4, 6):
        subnets = sorted({s for s in net.subnets if s.version == fam}, key=str)
        if not subnets:
            continue
        if net.ip_masq:
            keys[MASQ[fam]] = [_prefix(s) for s in subnets]
            # collapsed: overlapping entries would be refused by the interval set
            kept = sorted(
                ipaddress.collapse_addresses(n for n in net.non_masq if n.version == fam),  # type: ignore[type-var]
                key=str,
            )
            if kept:
                keys[NOMASQ[fam]] = [
                    {"concat": [_prefix(a), _prefix(b)]} for a, b in itertools.product(subnets, kept)
                ]
        keys[SAME[fam]] = [
            {"concat": [_prefix(a), _prefix(b)]} for a, b in itertools.product(subnets, subnets)
        ]
    return keys


def reads_for_add(net: NetworkFw, att: AttachmentFw, strict: bool) -> tuple[set[str], set[int]]:
    """What ADD's fast path must list: the per-network sets this network wants keys in (the
    others are only ever added to by their own networks), and the address families whose
    specific-address maps can clash with the attachment's mappings. Each listing is a
    libnftables call (~0.15 ms); a v4-only network publishing one port needs 7 of 12."""
    families = {entry.key.family for entry in expand_mappings(att)}
    return set(network_keys(net, strict)), families


# ---------------------------------------------------------------- per-attachment elements


@dataclass(frozen=True)
class PubKey:
    family: int
    protocol: str
    port: int
    host_ip: IPAddress | None  # None: any local address

    def json(self) -> Json:
        key: list[Any] = [str(self.host_ip)] if self.host_ip is not None else []
        return {"concat": [*key, self.protocol, self.port]}

    def native(self) -> str:
        return " . ".join(str(v) for v in self.json()["concat"])

    def claim_json(self) -> Json:
        return {"concat": [f"ipv{self.family}", self.protocol, self.port]}

    def claim_native(self) -> str:
        return f"ipv{self.family} . {self.protocol} . {self.port}"

    @property
    def port_id(self) -> tuple[int, str, int]:
        return (self.family, self.protocol, self.port)

    def maps(self) -> PubMaps:
        return PUB[(self.family, self.host_ip is not None)]

    def overlaps(self, other: PubKey) -> bool:
        return self.port_id == other.port_id and (
            self.host_ip is None or other.host_ip is None or self.host_ip == other.host_ip
        )

    def __str__(self) -> str:
        where = f" on {self.host_ip}" if self.host_ip is not None else ""
        return f"host port {self.protocol}/{self.port}{where}"


@dataclass(frozen=True)
class PubEntry:
    key: PubKey
    addr: IPAddress
    port: int

    def __str__(self) -> str:
        target = f"[{self.addr}]" if self.addr.version == 6 else str(self.addr)
        return f"{self.key} -> {target}:{self.port}"


_UNSAFE = re.compile(r'["\\\s]+')


def attachment_id(net: NetworkFw, att: AttachmentFw) -> int:
    """The value of the attachment's port claims: any 31-bit number but the marker."""
    return zlib.crc32(f"{net.name} {att.tag}".encode()) & 0x7FFFFFFF or 1


def attachment_comment(net: NetworkFw, att: AttachmentFw) -> str:
    # no quotes, backslashes or blanks in the owner: the native output of `get element`
    # is parsed, and the comment is split on blanks
    owner = _UNSAFE.sub("_", att.owner.strip())
    raw = f"{net.name} {att.tag} {owner}".encode()
    return raw[:COMMENT_MAX].decode(errors="ignore")


def expand_mappings(att: AttachmentFw) -> list[PubEntry]:
    """One entry per (address family, host port); the container's first address of a
    family is the target, as the reference portmap plugin does. A mapping whose host
    address has a family the container lacks publishes nothing."""
    first: dict[int, IPAddress] = {}
    for ip in att.ips:
        first.setdefault(ip.version, ip)
    entries: dict[PubKey, PubEntry] = {}
    for pm in att.port_mappings:
        if pm.host_ip is None:
            families = [4, 6]
            host_ip = None
        else:
            families = [pm.host_ip.version]
            host_ip = None if pm.host_ip.is_unspecified else pm.host_ip
        for fam in families:
            if fam not in first:
                continue
            for i in range(pm.count):
                key = PubKey(fam, pm.protocol, pm.host_port + i, host_ip)
                entry = PubEntry(key, first[fam], pm.container_port + i)
                for other in entries.values():
                    if other.key.overlaps(key) and other != entry:
                        raise CNIError(PORT_CONFLICT, f"{key} is mapped twice")
                entries[key] = entry
    return list(entries.values())


def attachment_add(net: NetworkFw, att: AttachmentFw, entries: Iterable[PubEntry]) -> list[Json]:
    comment = attachment_comment(net, att)
    by_maps: dict[PubMaps, list[PubEntry]] = {}
    for e in entries:
        by_maps.setdefault(e.key.maps(), []).append(e)
    cmds: list[Json] = []
    for maps, group in by_maps.items():
        # `create` on a specific address: the kernel refuses the same address twice
        verb = "create" if group[0].key.host_ip is not None else "add"
        addrs = [[_elem(e.key.json(), comment), str(e.addr)] for e in group]
        cmds.append(_add_elems(maps.addr, addrs, verb))
        cmds.append(_add_elems(maps.port, [[_elem(e.key.json(), comment), e.port] for e in group]))
    return cmds


# ---------------------------------------------------------------- reading back


def canon(value: Any, interval: bool = False) -> Hashable:
    """A comparable form of an element key as rendered or as listed by libnftables."""
    if isinstance(value, dict):
        if "concat" in value:
            return tuple(canon(v, interval) for v in value["concat"])
        if "prefix" in value:
            p = value["prefix"]
            return str(ipaddress.ip_network(f"{p['addr']}/{p['len']}", strict=False))
        if "range" in value:
            return ("range", *(canon(v) for v in value["range"]))
        if "elem" in value:
            return canon(value["elem"]["val"], interval)
    if isinstance(value, str) and interval:
        try:
            return str(ipaddress.ip_network(value))
        except ValueError:
            return value
    return value  # type: ignore[no-any-return]


def keys(view: TableView, set_name: str) -> dict[Hashable, Element]:
    interval = set_name in INTERVAL_SETS
    return {canon(e.key, interval): e for e in view.sets.get(set_name, [])}


def _pub_key(maps_key: tuple[int, bool], raw: Any) -> PubKey | None:
    fam, specific = maps_key
    parts = raw.get("concat") if isinstance(raw, dict) else None
    if not isinstance(parts, list) or len(parts) != (3 if specific else 2):
        return None
    try:
        host_ip = ipaddress.ip_address(parts[0]) if specific else None
        proto = parts[-2]
        proto = PROTO_NUMBERS.get(proto, str(proto)) if isinstance(proto, int) else proto
        return PubKey(fam, proto, int(parts[-1]), host_ip)
    except (ValueError, TypeError):
        return None


def published(view: TableView) -> list[tuple[PubEntry | None, Element, Element | None]]:
    """(entry, addr element, port element) for every element of the pub*_addr maps."""
    out = []
    for maps_key, maps in PUB.items():
        ports = keys(view, maps.port)
        for el in view.sets.get(maps.addr, []):
            key = _pub_key(maps_key, el.key)
            port_el = ports.get(canon(el.key))
            entry = None
            if key is not None and port_el is not None:
                try:
                    entry = PubEntry(key, ipaddress.ip_address(el.data), int(port_el.data))
                except (ValueError, TypeError):
                    entry = None
            out.append((entry, el, port_el))
    return out


def _claim_port_id(el: Element) -> tuple[int, str, int] | None:
    parts = canon(el.key)
    if not isinstance(parts, tuple) or len(parts) != 3:
        return None
    nfproto, proto, port = parts
    proto = PROTO_NUMBERS.get(proto, str(proto)) if isinstance(proto, int) else proto
    fam = {"ipv4": 4, "ipv6": 6}.get(str(nfproto))
    return (fam, str(proto), int(port)) if fam is not None else None


def _specific_port_ids(view: TableView, skip: Any = None) -> set[tuple[int, str, int]]:
    """Ports published on some specific host address (elements for which skip(el) is
    true left out)."""
    found = set()
    for fam in (4, 6):
        for el in view.sets.get(PUB[(fam, True)].addr, []):
            key = _pub_key((fam, True), el.key)
            if key is not None and not (skip and skip(el)):
                found.add(key.port_id)
    return found


# ---------------------------------------------------------------- plans


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


def _network_missing(
    net: NetworkFw, view: TableView, strict: bool
) -> dict[str, list[tuple[Any, Element | None]]]:
    """Set -> (key, element owned by another network or None) for keys not ours yet.

    Subnets the network already holds count too, so that subnets learnt one ADD at a
    time (static IPAM) still pair up as "same network"."""
    held: list[IPNetwork] = []
    for fam in (4, 6):
        for same in view.sets.get(SAME[fam], []):
            pair = canon(same.key, True)
            if same.comment == net.name and isinstance(pair, tuple):
                held += [ipaddress.ip_network(str(p)) for p in pair]
    subnets = list(dict.fromkeys([*net.subnets, *held]))
    out: dict[str, list[tuple[Any, Element | None]]] = {}
    for name, wanted in network_keys(dataclasses.replace(net, subnets=subnets), strict).items():
        have = keys(view, name)
        for key in wanted:
            el = have.get(canon(key, name in INTERVAL_SETS))
            if el is None or el.comment != net.name:
                out.setdefault(name, []).append((key, el))
    return out


def foreign_rules(view: ForeignView, net: NetworkFw) -> list[Json]:
    c = view.chain
    base = {
        "family": c.family,
        "table": c.table,
        "chain": c.name,
        "comment": FOREIGN_TAG + net.name,
    }
    return [
        {"insert": {"rule": {**base, "expr": [_match(_meta(m), net.bridge), _ACCEPT]}}}
        for m in ("oifname", "iifname")
    ]


def ours_in(view: ForeignView, network: str) -> list[Rule]:
    return [r for r in view.rules if r.comment == FOREIGN_TAG + network]


def _conflict(entry: PubEntry, other: PubKey, owner: str) -> CNIError:
    where = ""
    if other.host_ip != entry.key.host_ip:
        where = f" on {other.host_ip or 'every local address'}"
    return CNIError(PORT_CONFLICT, f"{entry.key} is already published by {owner}{where}")


def plan_add(
    net: NetworkFw, att: AttachmentFw, view: TableView, foreign: Sequence[ForeignView]
) -> tuple[list[Json], list[PubEntry]]:
    """The one transaction of ADD, and the port mappings it publishes.

    With a complete view, raises CNIError(PORT_CONFLICT) when another attachment
    publishes an overlapping host port and skips what is already in place; with a view
    that lacks the attachment sets' elements, every mapping is new and the kernel
    refuses the transaction on any conflict or duplicate (see the module docstring).
    Raises CNIError(INVALID_CONFIG) when a subnet or bridge of the network is held by
    another network of ours."""
    validate(net, att)
    me = (net.name, att.tag)
    entries = expand_mappings(att)
    existing = published(view)
    claims = keys(view, PORTS)
    for entry in entries:
        for other, el, _ in existing:
            if other is not None and (el.network, el.tag) != me and other.key.overlaps(entry.key):
                raise _conflict(entry, other.key, el.owner)
        claim = claims.get(canon(entry.key.claim_json()))
        if claim is not None and claim.data != CLAIM_SPECIFIC and (claim.network, claim.tag) != me:
            # a claim whose map elements are gone: still refused, GC removes it
            raise _conflict(entry, PubKey(*entry.key.port_id, None), claim.owner)
    cmds = layout_repairs(view)
    for name, missing in _network_missing(net, view, bool(foreign)).items():
        for key, holder in missing:
            if holder is not None:
                raise CNIError(
                    INVALID_CONFIG,
                    f"{_describe(name, key)} of network {net.name} is already used by "
                    f"cni-bridge network {holder.comment or '(unknown)'}",
                )
        cmds.append(_add_elems(name, [_elem(k, net.name) for k, _ in missing]))
    mine = {e.key: (e, el) for e, el, _ in existing if e is not None and (el.network, el.tag) == me}
    todo, orphans, creates, markers = [], [], [], []
    comment = attachment_comment(net, att)
    for entry in entries:
        old = mine.get(entry.key)
        if old is None or old[0] != entry:
            if old is not None:  # same attachment, new target: replace it
                maps = entry.key.maps()
                cmds += [_del_elems(maps.addr, [old[1].key]), _del_elems(maps.port, [old[1].key])]
            todo.append(entry)
        claim = claims.get(canon(entry.key.claim_json()))
        if entry.key.host_ip is not None:
            if claim is None:
                markers.append([_elem(entry.key.claim_json(), MARKER_COMMENT), CLAIM_SPECIFIC])
        elif claim is None or claim.data == CLAIM_SPECIFIC:
            if claim is not None:  # a marker no specific mapping uses any more
                orphans.append(claim.key)
            creates.append([_elem(entry.key.claim_json(), comment), attachment_id(net, att)])
    if orphans:
        cmds.append(_del_elems(PORTS, orphans))
    if creates:
        cmds.append(_add_elems(PORTS, creates, "create"))
    if markers:
        cmds.append(_add_elems(PORTS, markers))
    cmds += attachment_add(net, att, todo)
    for fv in foreign:
        if not ours_in(fv, net.name):
            cmds += foreign_rules(fv, net)
    return cmds, entries


def _describe(set_name: str, key: Any) -> str:
    value = canon(key, set_name in INTERVAL_SETS)
    kind = "bridge" if set_name in (BRIDGES, ISOLATED, STRICT, BRIDGE_SELF) else "subnet"
    return f"{kind} {net_str(value)}"


def net_str(value: Hashable) -> str:
    if isinstance(value, tuple):
        return " . ".join(net_str(v) for v in value)
    return str(value)


def plan_del(
    net: NetworkFw,
    tags: set[str] | None,
    teardown: bool,
    view: TableView,
    foreign: Sequence[ForeignView],
) -> list[Json]:
    """Delete the elements of the given attachment tags of this network (all of its
    attachments when tags is None), and when teardown, the network's own elements and
    its rules in foreign chains. Only what the view holds is deleted: DEL is idempotent.
    A view may be partial: the elements of the attachment and every specific-address
    mapping are enough."""

    def doomed(el: Element) -> bool:
        return el.network == net.name and (tags is None or el.tag in tags)

    cmds: list[Json] = []
    for name in PUB_MAPS:
        gone = [el.key for el in view.sets.get(name, []) if doomed(el)]
        if gone:
            cmds.append(_del_elems(name, gone))
    still_specific = _specific_port_ids(view, skip=doomed)
    gone = [
        el.key
        for el in view.sets.get(PORTS, [])
        if (doomed(el) if el.data != CLAIM_SPECIFIC else _claim_port_id(el) not in still_specific)
    ]
    if gone:
        cmds.append(_del_elems(PORTS, gone))
    if teardown:
        for name in NETWORK_SETS:
            gone = [el.key for el in view.sets.get(name, []) if el.comment == net.name]
            if gone:
                cmds.append(_del_elems(name, gone))
        for fv in foreign:
            c = fv.chain
            for r in ours_in(fv, net.name):
                obj = {"family": c.family, "table": c.table, "chain": c.name, "handle": r.handle}
                cmds.append({"delete": {"rule": obj}})
    return cmds


def plan_del_fast(net: NetworkFw, att: AttachmentFw, view: TableView) -> list[Json]:
    """DEL of one attachment without reading the every-address maps: each of its
    every-address mappings is added with the data it must have, then deleted (see the
    module docstring). view holds the specific-address maps, read in full."""
    entries = expand_mappings(att)
    cmds: list[Json] = []
    guarded: dict[str, list[list[Any]]] = {}  # set -> [key, the data it must have]
    for entry in entries:
        if entry.key.host_ip is None:
            k, maps = entry.key.json(), entry.key.maps()
            guarded.setdefault(PORTS, []).append([entry.key.claim_json(), attachment_id(net, att)])
            guarded.setdefault(maps.addr, []).append([k, str(entry.addr)])
            guarded.setdefault(maps.port, []).append([k, entry.port])
    specific = {e.key.port_id for e in entries if e.key.host_ip is not None}
    if specific:
        cmds += plan_del(net, {att.tag}, False, view, [])  # the specific maps: listed
        me = (net.name, att.tag)
        still = _specific_port_ids(view, skip=lambda el: (el.network, el.tag) == me)
        for port_id in sorted(specific - still):  # the port's marker, if no other needs it
            marker = [PubKey(*port_id, None).claim_json(), CLAIM_SPECIFIC]
            guarded.setdefault(PORTS, []).append(marker)
    for name, elems in guarded.items():
        cmds += [_add_elems(name, elems), _del_elems(name, [key for key, _ in elems])]
    return cmds


def owned_tags(net: NetworkFw, view: TableView) -> set[str]:
    return {
        el.tag
        for name in ATTACHMENT_SETS
        for el in view.sets.get(name, [])
        if el.network == net.name and not (name == PORTS and el.data == CLAIM_SPECIFIC)
    }


def check(
    net: NetworkFw, att: AttachmentFw, view: TableView, foreign: Sequence[ForeignView]
) -> list[str]:
    """Human messages of what ADD would have put in place and is not there."""
    validate(net, att)
    if not view.exists:
        return layout_problems(view)
    msgs = layout_problems(view)
    for name, missing in _network_missing(net, view, bool(foreign)).items():
        msgs += [
            f"{_describe(name, k)} of network {net.name} is missing from set {name}"
            for k, _ in missing
        ]
    me = (net.name, att.tag)
    present = {e for e, el, _ in published(view) if e is not None and (el.network, el.tag) == me}
    claims = keys(view, PORTS)
    for entry in expand_mappings(att):
        if entry not in present:
            msgs.append(f"port mapping {entry} is missing")
        claim = claims.get(canon(entry.key.claim_json()))
        want = attachment_id(net, att) if entry.key.host_ip is None else CLAIM_SPECIFIC
        if claim is None or claim.data != want:
            msgs.append(f"the claim of {entry.key} is missing from map {PORTS}")
    for fv in foreign:
        if not ours_in(fv, net.name):
            msgs.append(
                f"forward chain {fv.chain} (policy drop) lacks the accept rules of network {net.name}"
            )
    return msgs
