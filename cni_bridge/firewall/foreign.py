"""Our accept rules in other tables' forward chains: which chains need them and where they go.
Pure: listing.py parses, rules.py plans with these.

A forward base chain of another table (iptables-nft's `ip filter FORWARD`, firewalld's
`inet firewalld filter_FORWARD`, an admin's own) ends the routed traffic of our bridges when
it *blocks*: policy drop (Docker, a hardened host), or policy accept with final unconditional
drop/reject rules (firewalld: `... jump filter_FORWARD_ZONES; ct state invalid drop; reject
with icmpx admin-prohibited`). Such a chain gets two rules per network, `iifname <bridge>
accept` and `oifname <bridge> accept` (comment FOREIGN_TAG + network), placed where the host's
own policy still decides first:

- right after the jump to DOCKER-USER when the chain has one: Docker's contract is that
  DOCKER-USER decides first, so an operator's drop there still applies to our containers;
- else right before the chain's final unconditional drop/reject rules (and the log or counter
  rules that go with them): everything the host decides explicitly comes first;
- else (policy drop) at the end of the chain, for the same reason.

They use only `iifname`/`oifname`, which iptables-nft can still parse (a native `ct`
expression makes iptables-nft refuse the whole table, which would break Docker); the precise
filtering (replies, published ports and traffic from the bridge only) is done in our own forward
chain for the bridges in the `strict` set (layout.py).
"""

from __future__ import annotations

from collections.abc import Sequence

from cni_bridge.firewall.model import ForeignView, Rule

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

FOREIGN_TAG = "cni-bridge:"  # + network name: the comment of our rules in foreign chains
DOCKER_USER = "DOCKER-USER"
# Expressions a catch-all rule may hold besides its verdict: none of them matches anything.
_QUIET = frozenset({"counter", "log", "drop", "reject"})
_BLOCKING = frozenset({"drop", "reject"})


def _catch_all(rule: Rule) -> bool:
    return bool(rule.expr) and all(set(e) <= _QUIET for e in rule.expr)


def final_block(rules: Sequence[Rule]) -> list[Rule]:
    """The chain's trailing run of unconditional rules when it ends in a drop or reject (our
    own rules aside): the catch-all our rules must come before. Empty when it does not."""
    tail: list[Rule] = []
    for rule in reversed(rules):
        if rule.comment.startswith(FOREIGN_TAG) or not _catch_all(rule):
            break
        tail.insert(0, rule)
    if not any(_BLOCKING & set(e) for r in tail for e in r.expr):
        return []
    return tail


def blocks(policy: str, rules: Sequence[Rule]) -> bool:
    return policy == "drop" or bool(final_block(rules))


def _jumps_to(rule: Rule, target: str) -> bool:
    return any(
        isinstance(v, dict) and v.get("target") == target
        for e in rule.expr
        for k, v in e.items()
        if k in ("jump", "goto")
    )


def placement(rules: Sequence[Rule]) -> tuple[str, int | None]:
    """How to write our rules into the chain: ("add", handle) after that rule, ("insert",
    handle) before it, or ("add", None) at the end."""
    for rule in rules:
        if _jumps_to(rule, DOCKER_USER):
            return "add", rule.handle
    tail = final_block(rules)
    if tail:
        return "insert", tail[0].handle
    return "add", None


def misplaced(rules: Sequence[Rule], network: str) -> bool:
    """Our rules sit above the jump to DOCKER-USER, or below the final drop/reject: where the
    host's policy does not decide first, or where they do not work."""
    tag = FOREIGN_TAG + network
    index = {id(r): i for i, r in enumerate(rules)}
    ours = [index[id(r)] for r in rules if r.comment == tag]
    if not ours:
        return False
    jump = next((index[id(r)] for r in rules if _jumps_to(r, DOCKER_USER)), None)
    if jump is not None and min(ours) < jump:
        return True
    tail = final_block(rules)
    return bool(tail) and max(ours) > index[id(tail[0])]


def ours(view: ForeignView, network: str) -> list[Rule]:
    return [r for r in view.rules if r.comment == FOREIGN_TAG + network]


def _where(view: ForeignView) -> dict[str, Any]:
    c = view.chain
    return {"family": c.family, "table": c.table, "chain": c.name}


def accept_rules(view: ForeignView, network: str, bridge: str) -> list[dict[str, Any]]:
    """The commands that write the network's two rules where they belong (placement)."""
    verb, handle = placement(view.rules)
    out = []
    for key in ("oifname", "iifname"):
        rule: dict[str, Any] = {
            **_where(view),
            "comment": FOREIGN_TAG + network,
            "expr": [
                {"match": {"op": "==", "left": {"meta": {"key": key}}, "right": bridge}},
                {"accept": None},
            ],
        }
        if handle is not None:
            rule["handle"] = handle
        out.append({verb: {"rule": rule}})
    return out


def delete_rules(view: ForeignView, network: str) -> list[dict[str, Any]]:
    return [{"delete": {"rule": {**_where(view), "handle": r.handle}}} for r in ours(view, network)]


def repairs(view: ForeignView, network: str, bridge: str) -> list[dict[str, Any]]:
    """What a blocking chain needs for the network: its rules, or them moved where they
    belong (written before this change: at the top, above Docker's DOCKER-USER jump)."""
    if not view.blocking:
        return []
    if not ours(view, network):
        return accept_rules(view, network, bridge)
    if misplaced(view.rules, network):
        rest = [r for r in view.rules if r.comment != FOREIGN_TAG + network]
        moved = ForeignView(view.chain, rest, view.blocking)
        return delete_rules(view, network) + accept_rules(moved, network, bridge)
    return []
