"""`macspoofchk`: frames from a container must carry its own MAC. Pure rendering.

As the reference bridge plugin does, in a `bridge`-family table of our own, but with elements
instead of a chain per container: a set of guarded host veths and a set of the (veth, MAC)
pairs allowed through them; one static rule drops the rest. ADD and DEL touch only elements.
"""

from __future__ import annotations

from typing import Any

Json = dict[str, Any]

FAMILY = "bridge"
TABLE = "cni_bridge"
PORTS = "spoofchk_ports"
ALLOWED = "spoofchk_allowed"
CHAIN = "spoofchk"
RULE_COMMENT = "v1 macspoofchk: frames from a guarded port must carry its container's MAC"


def _obj(**kw: Any) -> Json:
    return {"family": FAMILY, "table": TABLE, **kw}


def layout() -> list[Json]:
    """Idempotent and race-free: add (no-op when present), flush and rewrite the one rule."""
    return [
        {"add": {"table": {"family": FAMILY, "name": TABLE}}},
        {"add": {"set": _obj(name=PORTS, type="ifname")}},
        {"add": {"set": _obj(name=ALLOWED, type=["ifname", "ether_addr"])}},
        {
            "add": {
                "chain": _obj(
                    name=CHAIN, type="filter", hook="prerouting", prio=-300, policy="accept"
                )
            }
        },
        {"flush": {"chain": _obj(name=CHAIN)}},
        {
            "add": {
                "rule": _obj(
                    chain=CHAIN,
                    comment=RULE_COMMENT,
                    expr=[
                        {
                            "match": {
                                "op": "==",
                                "left": {"meta": {"key": "iifname"}},
                                "right": f"@{PORTS}",
                            }
                        },
                        {
                            "match": {
                                "op": "!=",
                                "left": {
                                    "concat": [
                                        {"meta": {"key": "iifname"}},
                                        {"payload": {"protocol": "ether", "field": "saddr"}},
                                    ]
                                },
                                "right": f"@{ALLOWED}",
                            }
                        },
                        {"drop": None},
                    ],
                )
            }
        },
    ]


def _elements(port: str, mac: str) -> tuple[Json, Json]:
    return (
        _obj(name=PORTS, elem=[port]),
        _obj(name=ALLOWED, elem=[{"concat": [port, mac.lower()]}]),
    )


def add(port: str, mac: str, with_layout: bool) -> list[Json]:
    ports, allowed = _elements(port, mac)
    # The allowed pair goes in before the port is guarded: no frame of it is ever dropped.
    cmds = layout() if with_layout else []
    return [*cmds, {"add": {"element": allowed}}, {"add": {"element": ports}}]


def delete(port: str, mac: str) -> list[Json]:
    """Delete-if-present in one transaction (nftables 1.0.6 has no `destroy`): adding an
    element that exists is a no-op, so add-then-delete never fails for a missing one."""
    ports, allowed = _elements(port, mac)
    cmds: list[Json] = [{"add": {"table": {"family": FAMILY, "name": TABLE}}}]
    cmds += [
        {"add": {"set": _obj(name=PORTS, type="ifname")}},
        {"add": {"set": _obj(name=ALLOWED, type=["ifname", "ether_addr"])}},
    ]
    for elem in (ports, allowed):
        cmds += [{"add": {"element": elem}}, {"delete": {"element": elem}}]
    return cmds


def guarded(listing: list[Json]) -> tuple[set[str], list[tuple[str, str]]]:
    """(guarded ports, allowed (port, MAC) pairs) in a `list table bridge cni_bridge`."""
    ports: set[str] = set()
    allowed: list[tuple[str, str]] = []
    for obj in listing:
        s = obj.get("set")
        if not s or s.get("family") != FAMILY or s.get("table") != TABLE:
            continue
        for el in s.get("elem", []):
            if isinstance(el, dict) and "elem" in el:  # an element with a comment or timeout
                el = el["elem"]["val"]
            if s.get("name") == PORTS and isinstance(el, str):
                ports.add(el)
            elif s.get("name") == ALLOWED and isinstance(el, dict) and "concat" in el:
                port, mac = el["concat"]
                allowed.append((str(port), str(mac)))
    return ports, allowed


def delete_ports(ports: set[str], allowed: list[tuple[str, str]]) -> list[Json]:
    """Unguard `ports` and delete the `allowed` pairs: elements just listed, so plain deletes
    (the transaction fails if one went meanwhile, and the caller reads again)."""
    cmds: list[Json] = [
        {"delete": {"element": _obj(name=ALLOWED, elem=[{"concat": [port, mac]}])}}
        for port, mac in allowed
    ]
    if ports:
        cmds.append({"delete": {"element": _obj(name=PORTS, elem=sorted(ports))}})
    return cmds
