"""The plans: pure functions that turn (model, what the kernel holds) into the one libnftables
transaction of an ADD, a DEL or a GC, and CHECK's messages. nft.py reads, calls these and
applies; nothing here does I/O or knows CNI error codes (it raises model.FirewallError).

Where the pieces live:
- layout.py: the table, its sets and maps, the static chains (never changed at run time);
- elements.py: element JSON and comments, reading back, a network's own elements;
- ports.py: port mappings as elements of the ``pub*`` maps;
- claims.py: how the kernel refuses a taken port without our reading the port maps, and
  DEL's add-then-delete guard (the most delicate part; docs/firewall-claims.md).

The only rules we ever add or delete at run time are the accept rules in a foreign table's
forward chain that blocks (comment ``cni-bridge:<network>``): which chains, and where in them,
is foreign.py's.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from cni_bridge.firewall import claims, foreign
from cni_bridge.firewall.elements import (
    add_elems,
    del_elems,
    describe,
    elem,
    network_keys,
    network_missing,
)
from cni_bridge.firewall.layout import (
    ATTACHMENT_SETS,
    BRIDGES,
    NETWORK_SETS,
    PORTS,
    PUB_MAPS,
    Json,
    layout_problems,
    layout_repairs,
)
from cni_bridge.firewall.model import (
    AttachmentFw,
    Element,
    ForeignView,
    InvalidConfig,
    NetworkFw,
    TableView,
)
from cni_bridge.firewall.ports import (
    PubEntry,
    attachment_add,
    conflict,
    expand_mappings,
    published,
    validate_mappings,
)

FOREIGN_TAG = foreign.FOREIGN_TAG
_TAG_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,47}")


def validate(net: NetworkFw, att: AttachmentFw | None = None) -> None:
    """Raises InvalidConfig for what the element comments or nftables cannot carry. The network
    and bridge names and the ports are domain.py's types, checked where they were made (the
    network name's bound is the comments' room)."""
    if att is None:
        return
    if not _TAG_RE.fullmatch(att.tag):
        raise InvalidConfig(f"invalid attachment tag {att.tag!r}")
    validate_mappings(att.port_mappings)


def reads_for_add(net: NetworkFw, att: AttachmentFw, strict: bool) -> tuple[set[str], set[int]]:
    """What ADD's fast path must list: the per-network sets this network wants keys in (the
    others are only ever added to by their own networks), and the address families whose
    specific-address maps can clash with the attachment's mappings. Each listing is a
    libnftables call (~0.15 ms); a v4-only network publishing one port needs 7 of 12."""
    families = {entry.key.family for entry in expand_mappings(att)}
    return set(network_keys(net, strict)), families


# ---------------------------------------------------------------- foreign forward chains


def foreign_rules(view: ForeignView, net: NetworkFw) -> list[Json]:
    """What the chain needs for the network (nothing when it does not block)."""
    return foreign.repairs(view, net.name, net.bridge)


def blocking(views: Sequence[ForeignView]) -> list[ForeignView]:
    return [fv for fv in views if fv.blocking]


def drifted(net: NetworkFw, view: TableView, foreign_views: Sequence[ForeignView]) -> bool:
    """What a verb's own read tells for free about changes behind our back: our table gone or
    incomplete, or a blocking foreign chain without the rules of a network that has its
    elements (a network's first ADD adds both at once). Then the whole host wants a sync."""
    if not view.exists or layout_repairs(view):
        return True
    known = any(el.comment == net.name for el in view.sets.get(BRIDGES, []))
    return known and bool(foreign_problems(net, foreign_views))


# ---------------------------------------------------------------- ADD


def plan_add(
    net: NetworkFw, att: AttachmentFw, view: TableView, foreign_views: Sequence[ForeignView]
) -> tuple[list[Json], list[PubEntry]]:
    """The one transaction of ADD, and the port mappings it publishes.

    With a complete view, raises PortConflict when another attachment publishes an
    overlapping host port and skips what is already in place; with a view that lacks the
    attachment sets' elements, every mapping is new and the kernel refuses the transaction
    on any conflict or duplicate (claims.py). Raises InvalidConfig when a subnet or bridge
    of the network is held by another network of ours."""
    validate(net, att)
    port_cmds, entries, _ = attachment_repairs(net, att, view)
    cmds = layout_repairs(view)
    cmds += network_repairs(net, view, bool(blocking(foreign_views)))
    cmds += port_cmds
    for fv in foreign_views:
        cmds += foreign_rules(fv, net)
    return cmds, entries


def network_repairs(net: NetworkFw, view: TableView, strict: bool) -> list[Json]:
    """The network's own elements that view lacks. Raises InvalidConfig when one is held by
    another network of ours."""
    cmds = []
    for name, missing in network_missing(net, view, strict).items():
        for key, holder in missing:
            if holder is not None:
                raise InvalidConfig(
                    f"{describe(name, key)} of network {net.name} is already used by "
                    f"cni-bridge network {holder.comment or '(unknown)'}"
                )
        cmds.append(add_elems(name, [elem(k, net.name) for k, _ in missing]))
    return cmds


def attachment_repairs(
    net: NetworkFw, att: AttachmentFw, view: TableView
) -> tuple[list[Json], list[PubEntry], list[PubEntry]]:
    """The attachment's port mappings and claims that view lacks: (commands, all its
    entries, the entries written). Raises PortConflict when another attachment in view
    publishes an overlapping host port."""
    me = (net.name, att.tag)
    entries = expand_mappings(att)
    existing = published(view)
    held = claims.held(view)
    for entry in entries:
        for other, el, _ in existing:
            if other is not None and (el.network, el.tag) != me and other.key.overlaps(entry.key):
                raise conflict(entry, other.key, el.owner)
        claims.refuse_claimed(entry, held, me)
    mine = {e.key: (e, el) for e, el, _ in existing if e is not None and (el.network, el.tag) == me}
    cmds: list[Json] = []
    todo = []
    for entry in entries:
        old = mine.get(entry.key)
        if old is None or old[0] != entry:
            if old is not None:  # same attachment, new target: replace it
                maps = entry.key.maps()
                cmds += [del_elems(maps.addr, [old[1].key]), del_elems(maps.port, [old[1].key])]
            todo.append(entry)
    cmds += claims.add_claims(net, att, entries, held)
    cmds += attachment_add(net, att, todo)
    return cmds, entries, todo


# ---------------------------------------------------------------- DEL and GC


def plan_del(
    net: NetworkFw,
    tags: set[str] | None,
    teardown: bool,
    view: TableView,
    foreign_views: Sequence[ForeignView],
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
            cmds.append(del_elems(name, gone))
    gone = claims.released(view, doomed)
    if gone:
        cmds.append(del_elems(PORTS, gone))
    if teardown:
        for name in NETWORK_SETS:
            gone = [el.key for el in view.sets.get(name, []) if el.comment == net.name]
            if gone:
                cmds.append(del_elems(name, gone))
        for fv in foreign_views:  # blocking or not any more: ours go with the network
            cmds += foreign.delete_rules(fv, net.name)
    return cmds


def plan_del_fast(net: NetworkFw, att: AttachmentFw, view: TableView) -> list[Json]:
    """DEL of one attachment without reading the every-address maps: each of its
    every-address mappings is added with the data it must have, then deleted (the guard of
    claims.py). view holds the specific-address maps, read in full."""
    entries = expand_mappings(att)
    cmds: list[Json] = []
    if any(e.key.host_ip is not None for e in entries):
        cmds += plan_del(net, {att.tag}, False, view, [])  # the specific maps: listed
    return cmds + claims.guarded_delete(net, att, entries, view)


def owned_tags(net: NetworkFw, view: TableView) -> set[str]:
    return {
        el.tag
        for name in ATTACHMENT_SETS
        for el in view.sets.get(name, [])
        if el.network == net.name and not (name == PORTS and claims.is_marker(el))
    }


# ---------------------------------------------------------------- CHECK


def check(
    net: NetworkFw, att: AttachmentFw, view: TableView, foreign_views: Sequence[ForeignView]
) -> list[str]:
    """Human messages of what ADD would have put in place and is not there."""
    validate(net, att)
    if not view.exists:
        return layout_problems(view)
    msgs = layout_problems(view)
    for name, missing in network_missing(net, view, bool(blocking(foreign_views))).items():
        msgs += [
            f"{describe(name, k)} of network {net.name} is missing from set {name}"
            for k, _ in missing
        ]
    me = (net.name, att.tag)
    present = {e for e, el, _ in published(view) if e is not None and (el.network, el.tag) == me}
    held = claims.held(view)
    for entry in expand_mappings(att):
        if entry not in present:
            msgs.append(f"port mapping {entry} is missing")
        problem = claims.claim_problem(net, att, entry, held)
        if problem is not None:
            msgs.append(problem)
    msgs += foreign_problems(net, foreign_views)
    return msgs


def foreign_problems(net: NetworkFw, views: Sequence[ForeignView]) -> list[str]:
    msgs = []
    for fv in blocking(views):
        if not foreign.ours(fv, net.name):
            msgs.append(
                f"forward chain {fv.chain} ({_why(fv)}) lacks the accept rules of network {net.name}"
            )
        elif foreign.misplaced(fv.rules, net.name):
            msgs.append(
                f"the accept rules of network {net.name} in forward chain {fv.chain} are not "
                "where the host's policy decides first"
            )
    return msgs


def _why(fv: ForeignView) -> str:
    return "policy drop" if fv.chain.policy == "drop" else "final drop/reject"
