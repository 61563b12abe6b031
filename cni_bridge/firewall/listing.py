"""libnftables' JSON listings read into the views the plans work on (model.TableView,
ForeignView). Pure: nft.py lists, this parses.

A listing is the "nftables" array of one `list` command: objects keyed by their kind
("table", "chain", "set", "map", "rule"), each with its family and table.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cni_bridge.firewall.layout import FAMILY, TABLE, Json
from cni_bridge.firewall.model import Element, ForeignChain, ForeignView, Rule, TableView


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


def parse_foreign_drop_chains(listing: Sequence[Json]) -> list[ForeignChain]:
    """Base chains of other tables hooked at forward with policy drop."""
    found = []
    for obj in listing:
        c = obj.get("chain")
        if not c or c.get("hook") != "forward" or c.get("policy") != "drop":
            continue
        if c["family"] not in ("ip", "ip6", "inet"):
            continue  # bridge-family forward filters frames, not routed traffic
        if not is_ours(c):
            found.append(ForeignChain(c["family"], c["table"], c["name"]))
    return found


def parse_foreign_rules(chain: ForeignChain, listing: Sequence[Json]) -> ForeignView:
    where = (chain.family, chain.table, chain.name)
    found = [
        _rule(o["rule"])
        for o in listing
        if "rule" in o and (o["rule"]["family"], o["rule"]["table"], o["rule"]["chain"]) == where
    ]
    return ForeignView(chain, found)
