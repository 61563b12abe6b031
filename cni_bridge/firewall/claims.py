"""Port claims: how the kernel itself refuses a host port that is taken, so that neither ADD
nor DEL has to read the port maps, which grow with the number of containers (libnftables
re-reads a whole set to list it or to `get` one element from it). See
docs/firewall-claims.md for worked examples.

The map ``ports`` (layout.py) holds one element per (nfproto, l4proto, host port) in use:

- a mapping on every local address *claims* its port: the element's data is the attachment's
  id (attachment_id: a hash of network and tag, never 0), its comment the attachment's. ADD
  writes it with ``create``, which fails if the key exists at all: the port is claimed by
  another attachment, or marked (below);
- mappings on specific host addresses share a *marker* on the port: data 0 (MARKER),
  comment MARKER_COMMENT (no network name: it belongs to no network, so no network's DEL by
  tag takes it). ADD writes it with ``add``, which is a no-op when the marker is there and
  fails when a claim holds another value. Two specific mappings on one address clash in their
  own maps (``create`` there); the specific-address maps are small, so ADD reads them and
  names the owner of a clash before sending.

Any failure fails the whole ADD transaction; only then does ADD read everything, to name the
owner, to see that the attachment is already in place, or to repair (a marker left by a crash
is deleted when a complete view shows that no specific mapping uses its port).

The DEL guard. A DEL of one attachment deletes its every-address mappings by key, without
reading them. A plain delete would be wrong when the key has meanwhile been taken by another
attachment (a repeated or stale DEL after the next container got the same port, even the
same IP). So each element is first *added with the data it must have*, then deleted, in one
transaction: the add is a no-op if the element is ours, re-creates it if it is already gone
(and the delete removes it again), and fails if the key holds another value, the claim
above all, whose data names the attachment. A failed batch changes nothing; DEL then reads
everything and deletes by tag (the comment), which is always right. The port's marker is
deleted the same guarded way once no other specific mapping of that port remains.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Hashable, Iterable, Sequence

from cni_bridge.firewall.elements import (
    add_elems,
    attachment_comment,
    canon,
    del_elems,
    elem,
    keys,
)
from cni_bridge.firewall.layout import PORTS, PUB, Json
from cni_bridge.firewall.model import AttachmentFw, Element, NetworkFw, TableView
from cni_bridge.firewall.ports import PortId, PubEntry, PubKey, conflict, protocol_name, pub_key

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

MARKER = 0  # the data of the claim shared by mappings on specific host addresses
MARKER_COMMENT = "* published on specific host addresses"  # "*": no network name

Claims = dict[Hashable, Element]  # canon(claim key) -> the element of `ports`, as read
Owner = tuple[str, str]  # (network, tag)


def attachment_id(net: NetworkFw, att: AttachmentFw) -> int:
    """The value of the attachment's port claims: any 31-bit number but the marker."""
    return zlib.crc32(f"{net.name} {att.tag}".encode()) & 0x7FFFFFFF or 1


def claim_key(port_id: PortId) -> Json:
    fam, proto, port = port_id
    return {"concat": [f"ipv{fam}", proto, port]}


def is_marker(el: Element) -> bool:
    return bool(el.data == MARKER)


def held(view: TableView) -> Claims:
    """The claims and markers in view (none when the view left `ports` out)."""
    return keys(view, PORTS)


def _claim_of(claims: Claims, port_id: PortId) -> Element | None:
    return claims.get(canon(claim_key(port_id)))


def _port_id(el: Element) -> PortId | None:
    parts = canon(el.key)
    if not isinstance(parts, tuple) or len(parts) != 3:
        return None
    nfproto, proto, port = parts
    fam = {"ipv4": 4, "ipv6": 6}.get(str(nfproto))
    return (fam, protocol_name(proto), int(port)) if fam is not None else None


def specific_port_ids(
    view: TableView, skip: Callable[[Element], bool] | None = None
) -> set[PortId]:
    """Ports published on some specific host address (elements for which skip(el) is
    true left out): the ports whose marker is still needed."""
    found = set()
    for fam in (4, 6):
        for el in view.sets.get(PUB[(fam, True)].addr, []):
            key = pub_key((fam, True), el.key)
            if key is not None and not (skip and skip(el)):
                found.add(key.port_id)
    return found


# ---------------------------------------------------------------- ADD


def refuse_claimed(entry: PubEntry, claims: Claims, me: Owner) -> None:
    """Raises PortConflict when another attachment claims the entry's port. A claim whose
    map elements are gone is still refused: GC removes it."""
    claim = _claim_of(claims, entry.key.port_id)
    if claim is not None and not is_marker(claim) and (claim.network, claim.tag) != me:
        raise conflict(entry, PubKey(*entry.key.port_id, None), claim.owner)


def add_claims(
    net: NetworkFw, att: AttachmentFw, entries: Iterable[PubEntry], claims: Claims
) -> list[Json]:
    """The claims and markers of ADD that `claims` lacks (with a view that left `ports`
    out, all of them: the kernel refuses what is taken). The caller has refused conflicts
    first (refuse_claimed, and the overlaps with specific mappings)."""
    orphans: list[Any] = []
    creates: list[list[Any]] = []
    markers: list[list[Any]] = []
    comment = attachment_comment(net, att)
    for entry in entries:
        key = claim_key(entry.key.port_id)
        claim = _claim_of(claims, entry.key.port_id)
        if entry.key.host_ip is not None:
            if claim is None:
                markers.append([elem(key, MARKER_COMMENT), MARKER])
        elif claim is None or is_marker(claim):
            if claim is not None:  # a marker no specific mapping uses any more
                orphans.append(claim.key)
            creates.append([elem(key, comment), attachment_id(net, att)])
    cmds: list[Json] = []
    if orphans:
        cmds.append(del_elems(PORTS, orphans))
    if creates:
        cmds.append(add_elems(PORTS, creates, "create"))
    if markers:
        cmds.append(add_elems(PORTS, markers))
    return cmds


def claim_problem(
    net: NetworkFw, att: AttachmentFw, entry: PubEntry, claims: Claims
) -> str | None:
    """CHECK: the message when the entry's claim (or marker) is not what ADD wrote."""
    claim = _claim_of(claims, entry.key.port_id)
    want = attachment_id(net, att) if entry.key.host_ip is None else MARKER
    if claim is None or claim.data != want:
        return f"the claim of {entry.key} is missing from map {PORTS}"
    return None


# ---------------------------------------------------------------- DEL


def released(view: TableView, doomed: Callable[[Element], bool]) -> list[Any]:
    """Keys of `ports` to delete with the doomed elements: their claims, and the markers
    of ports no remaining specific mapping uses."""
    still_specific = specific_port_ids(view, skip=doomed)
    return [
        el.key
        for el in view.sets.get(PORTS, [])
        if (doomed(el) if not is_marker(el) else _port_id(el) not in still_specific)
    ]


def guarded_delete(
    net: NetworkFw, att: AttachmentFw, entries: Sequence[PubEntry], view: TableView
) -> list[Json]:
    """The add-then-delete of DEL's fast path (see the module docstring) for the
    attachment's every-address mappings and their claims, and for the markers of its
    specific ports that no other specific mapping in view (the specific maps, read in
    full) still needs."""
    guarded: dict[str, list[list[Any]]] = {}  # set -> [key, the data it must have]
    for entry in entries:
        if entry.key.host_ip is None:
            k, maps = entry.key.json(), entry.key.maps()
            claim = [claim_key(entry.key.port_id), attachment_id(net, att)]
            guarded.setdefault(PORTS, []).append(claim)
            guarded.setdefault(maps.addr, []).append([k, str(entry.addr)])
            guarded.setdefault(maps.port, []).append([k, entry.port])
    specific = {e.key.port_id for e in entries if e.key.host_ip is not None}
    if specific:
        me = (net.name, att.tag)
        still = specific_port_ids(view, skip=lambda el: (el.network, el.tag) == me)
        for port_id in sorted(specific - still):  # the port's marker, if no other needs it
            guarded.setdefault(PORTS, []).append([claim_key(port_id), MARKER])
    cmds: list[Json] = []
    for name, elems in guarded.items():
        cmds += [add_elems(name, elems), del_elems(name, [key for key, _ in elems])]
    return cmds
