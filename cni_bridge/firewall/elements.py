"""Set and map elements of our table: their JSON, the comments that say whose they are, how
they read back, and the elements a network owns.

Every element carries its owner in its comment, so DEL and GC find what is theirs without
state of their own: "<network>" for a network's elements, "<network> <tag> <owner>" for an
attachment's (model.Element splits it). The comment is the only per-element text the
kernel keeps (COMMENT_MAX bytes).
"""

from __future__ import annotations

import ipaddress
import itertools
import re
from collections.abc import Hashable, Sequence

from cni_bridge.firewall.layout import (
    BRIDGE_SELF,
    BRIDGES,
    DNS_ADDR,
    DNS_GW,
    INTERNAL,
    INTERVAL_SETS,
    ISOLATED,
    MASQ,
    NOMASQ,
    SAME,
    STRICT,
    Json,
    obj,
    prefix,
)
from cni_bridge.firewall.model import AttachmentFw, Element, IPNetwork, NetworkFw, TableView

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

COMMENT_MAX = 127  # bytes; the kernel stores at most 128 including the NUL
_UNSAFE = re.compile(r'["\\\s]+')

# ---------------------------------------------------------------- writing


def elem(key: Any, comment: str) -> Json:
    return {"elem": {"val": key, "comment": comment}}


def add_elems(name: str, elems: Sequence[Any], verb: str = "add") -> Json:
    return {verb: {"element": obj(name=name, elem=list(elems))}}


def del_elems(name: str, keys: Sequence[Any]) -> Json:
    return {"delete": {"element": obj(name=name, elem=list(keys))}}


def attachment_comment(net: NetworkFw, att: AttachmentFw) -> str:
    # no quotes, backslashes or blanks in the owner: the native output of `get element`
    # is parsed, and the comment is split on blanks
    owner = _UNSAFE.sub("_", att.owner.strip())
    raw = f"{net.name} {att.tag} {owner}".encode()
    return raw[:COMMENT_MAX].decode(errors="ignore")


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


def net_str(value: Hashable) -> str:
    if isinstance(value, tuple):
        return " . ".join(net_str(v) for v in value)
    return str(value)


# ---------------------------------------------------------------- a network's elements


def network_keys(net: NetworkFw, strict: bool) -> dict[str, list[Any]]:
    """Set name -> element keys (JSON) that the network owns."""
    br = net.bridge
    keys: dict[str, list[Any]] = {BRIDGES: [br], BRIDGE_SELF: [{"concat": [br, br]}]}
    if net.isolate:
        keys[ISOLATED] = [br]
    if strict:
        keys[STRICT] = [br]
    if net.internal:
        keys[INTERNAL] = [br]
    for fam in (4, 6):
        subnets = sorted({s for s in net.subnets if s.version == fam}, key=str)
        if not subnets:
            continue
        if net.ip_masq and not net.internal:
            keys[MASQ[fam]] = [prefix(s) for s in subnets]
            # collapsed: overlapping entries would be refused by the interval set
            kept = sorted(
                ipaddress.collapse_addresses(n for n in net.non_masq if n.version == fam),  # type: ignore[type-var]
                key=str,
            )
            if kept:
                keys[NOMASQ[fam]] = [
                    {"concat": [prefix(a), prefix(b)]} for a, b in itertools.product(subnets, kept)
                ]
        keys[SAME[fam]] = [
            {"concat": [prefix(a), prefix(b)]} for a, b in itertools.product(subnets, subnets)
        ]
    for fam in (4, 6):
        gateways = sorted({str(g) for g in net.dns_gateways if g.version == fam})
        if gateways:
            keys[DNS_ADDR[fam]] = list(gateways)
            keys[DNS_GW[fam]] = [{"concat": [br, g]} for g in gateways]
    return keys


def network_missing(
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
    for name, wanted in network_keys(net._replace(subnets=subnets), strict).items():
        have = keys(view, name)
        for key in wanted:
            el = have.get(canon(key, name in INTERVAL_SETS))
            if el is None or el.comment != net.name:
                out.setdefault(name, []).append((key, el))
    return out


def describe(set_name: str, key: Any) -> str:
    """A network's element for humans: "bridge cni0", "subnet 10.88.0.0/16"."""
    value = canon(key, set_name in INTERVAL_SETS)
    if set_name in (*DNS_ADDR.values(), *DNS_GW.values()):
        return f"name server {net_str(value)}"
    kind = "bridge" if set_name in (BRIDGES, ISOLATED, STRICT, INTERNAL, BRIDGE_SELF) else "subnet"
    return f"{kind} {net_str(value)}"
