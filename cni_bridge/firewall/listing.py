"""libnftables' JSON listings read into the views the plans work on (model.TableView,
ForeignView). Pure: nft.py lists, this parses.

A listing is the "nftables" array of one `list` command: objects keyed by their kind
("table", "chain", "set", "map", "rule"), each with its family and table.
"""

from __future__ import annotations

from collections.abc import Sequence

from cni_bridge.firewall import foreign
from cni_bridge.firewall.layout import FAMILY, TABLE, Json
from cni_bridge.firewall.model import Element, ForeignChain, ForeignView, Rule, TableView

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def is_ours(obj: Json) -> bool:
    return bool(obj.get("family") == FAMILY and obj.get("table") == TABLE)


def _element(raw: Any) -> Element:
    data = None
    if isinstance(raw, list):  # a map element: [key, data]
        raw, data = raw
    if isinstance(raw, dict) and "elem" in raw:
        inner = raw["elem"]
        return Element(inner["val"], data, str(inner.get("comment", "")))
    return Element(raw, data, "")


def _rule(obj: Json) -> Rule:
    return Rule(int(obj.get("handle", 0)), str(obj.get("comment", "")), list(obj.get("expr", [])))


def parse_table(listing: Sequence[Json], view: TableView | None = None) -> TableView:
    """Our table's objects in a listing (other tables' objects are skipped)."""
    view = view or TableView()
    for obj in listing:
        if "table" in obj and obj["table"].get("family") == FAMILY:
            view.exists = view.exists or obj["table"].get("name") == TABLE
        for kind in ("set", "map"):
            if kind in obj and is_ours(obj[kind]):
                s = obj[kind]
                view.sets[s["name"]] = [_element(e) for e in s.get("elem", [])]
        if "chain" in obj and is_ours(obj["chain"]):
            view.chains.setdefault(obj["chain"]["name"], [])
        if "rule" in obj and is_ours(obj["rule"]):
            view.chains.setdefault(obj["rule"]["chain"], []).append(_rule(obj["rule"]))
    return view


def parse_sets(listing: Sequence[Json], family: str, table: str) -> dict[str, list[Element]]:
    """The elements of another table of ours (the bridge-family one), by set."""
    return {
        s["name"]: [_element(e) for e in s.get("elem", [])]
        for obj in listing
        if (s := obj.get("set")) and s.get("family") == family and s.get("table") == table
    }


def parse_forward_chains(listing: Sequence[Json]) -> list[ForeignChain]:
    """Base chains of other tables hooked at forward, of the families that see routed
    traffic (a bridge-family forward filters frames)."""
    found = []
    for obj in listing:
        c = obj.get("chain")
        if not c or c.get("hook") != "forward" or c["family"] not in ("ip", "ip6", "inet"):
            continue
        if not is_ours(c):
            found.append(ForeignChain(c["family"], c["table"], c["name"], str(c.get("policy", "accept"))))
    return found


def parse_foreign_drop_chains(listing: Sequence[Json]) -> list[ForeignChain]:
    """Those of them with policy drop (the chain listing alone tells; a final reject needs
    the rules: parse_foreign_rules)."""
    return [c for c in parse_forward_chains(listing) if c.policy == "drop"]


def parse_foreign_rules(chain: ForeignChain, listing: Sequence[Json]) -> ForeignView:
    where = (chain.family, chain.table, chain.name)
    found = [
        _rule(o["rule"])
        for o in listing
        if "rule" in o and (o["rule"]["family"], o["rule"]["table"], o["rule"]["chain"]) == where
    ]
    return ForeignView(chain, found, foreign.blocks(chain.policy, found))


def parse_spoofchk(listing: Sequence[Json]) -> set[tuple[str, str]] | None:
    """macspoofchk's guards, (host veth, MAC), from a listing of its bridge table; None when
    its rule is missing (then no port is guarded)."""
    from cni_bridge.firewall import macspoof

    def mine(o: Json) -> bool:
        return bool(o.get("family") == macspoof.FAMILY and o.get("table") == macspoof.TABLE)

    ports: set[str] = set()
    allowed: set[tuple[str, str]] = set()
    rule = False
    for obj in listing:
        s = obj.get("set")
        if s and mine(s):
            for e in s.get("elem", []):
                val = _element(e).key
                if s["name"] == macspoof.PORTS and isinstance(val, str):
                    ports.add(val)
                elif s["name"] == macspoof.ALLOWED and isinstance(val, dict) and "concat" in val:
                    port, mac = val["concat"]
                    allowed.add((str(port), str(mac).lower()))
        r = obj.get("rule")
        if r and mine(r) and r.get("comment") == macspoof.RULE_COMMENT:
            rule = True
    return {pair for pair in allowed if pair[0] in ports} if rule else None


def parse_ipspoof(listing: Sequence[Json]) -> dict[str, list[Element]] | None:
    """ipspoofchk's elements by set, from a listing of the bridge table; None when its chain
    lacks one of its rules (then no port is guarded as it should be)."""
    from cni_bridge.firewall import ipspoof

    comments = {
        str(r.get("comment", ""))
        for obj in listing
        if (r := obj.get("rule"))
        and r.get("family") == ipspoof.FAMILY
        and r.get("table") == ipspoof.TABLE
        and r.get("chain") == ipspoof.CHAIN
    }
    if not ipspoof.rule_comments() <= comments:
        return None
    return parse_sets(listing, ipspoof.FAMILY, ipspoof.TABLE)
