"""Observations of a namespace's nftables ruleset (`nft -j list ruleset`)."""

from __future__ import annotations

import json
from typing import Any

from tests.lab.netns import Netns


def ruleset(ns: Netns) -> list[dict[str, Any]]:
    """The ruleset of `ns` as its list of objects (tables, chains, sets, rules...)."""
    out = ns.exec("nft", "-j", "list", "ruleset").stdout
    return list(json.loads(out)["nftables"]) if out.strip() else []


def comments(ns: Netns) -> list[str]:
    """Every element and rule comment in the ruleset of `ns`."""
    found: list[str] = []
    for obj in ruleset(ns):
        for kind in ("set", "map"):
            for el in obj.get(kind, {}).get("elem", []):
                el = el[0] if isinstance(el, list) else el
                if isinstance(el, dict) and "elem" in el and "comment" in el["elem"]:
                    found.append(el["elem"]["comment"])
        if "rule" in obj and "comment" in obj["rule"]:
            found.append(obj["rule"]["comment"])
    return found


def counter(ns: Netns, table: str, chain: str, comment_prefix: str) -> int:
    """Packets counted by the rule of table/chain whose comment starts with the prefix."""
    for obj in ruleset(ns):
        rule = obj.get("rule")
        if not rule or (rule["table"], rule["chain"]) != (table, chain):
            continue
        if not str(rule.get("comment", "")).startswith(comment_prefix):
            continue
        for expr in rule["expr"]:
            if "counter" in expr:
                return int(expr["counter"]["packets"])
    raise LookupError(f"no counted rule {comment_prefix!r} in {table}/{chain}")
