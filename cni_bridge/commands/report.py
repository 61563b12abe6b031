"""The one INFO line each ADD, DEL, GC and sync writes: what it created, removed or healed.

To the handlers engine.setup_logging configures (stderr and CNI_BRIDGE_LOG_FILE), never to
stdout, which carries only the CNI answer. One line per verb, so a log file reads as a history of
the node: `grep ' ADD \\| DEL \\| GC '`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from cni_bridge.log import getLogger

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from cni_bridge.netconf import NetConf

log = getLogger("cni_bridge.report")


def owner(network: str, container_id: str, ifname: str) -> str:
    from cni_bridge.plan import attachment_owner

    return attachment_owner(network, container_id, ifname)


def guards(conf: NetConf) -> list[str]:
    return [
        name
        for name, on in (("macspoofchk", conf.macspoofchk), ("ipspoofchk", conf.ipspoofchk))
        if on
    ]


def _ports(mappings: Iterable[dict[str, Any]]) -> str:
    out = []
    for pm in mappings:
        host = f"{pm.get('hostIP')}:" if pm.get("hostIP") else ""
        end = f"-{pm['hostPortEnd']}" if pm.get("hostPortEnd") else ""
        out.append(
            f"{host}{pm.get('hostPort')}{end}->{pm.get('containerPort')}/{pm.get('protocol', 'tcp')}"
        )
    return ", ".join(out)


def added(
    who: str,
    bridge: str,
    host_veth: str,
    ifname: str,
    sandbox: str,
    ips: Sequence[str],
    mappings: Sequence[dict[str, Any]],
    guards: Sequence[str],
) -> None:
    parts = [f"veth {host_veth} on bridge {bridge} ({ifname} in {sandbox})"]
    parts.append(f"addresses {', '.join(ips)}" if ips else "no address")
    if mappings:
        parts.append(f"ports {_ports(mappings)}")
    parts += [f"{g} guard" for g in guards]
    log.info("ADD %s: created %s", who, "; ".join(parts))


def removal(
    host_veth: str | None,
    ips: Sequence[str],
    mappings: Sequence[dict[str, Any]],
    guards: Sequence[str],
    recorded: bool,
    record_removed: bool,
) -> list[str]:
    """What one teardown removed, as phrases. host_veth None: the veth was already gone.
    Without a record (`recorded` False) the ports and guards were deleted only if present, so
    they are not claimed; the addresses then are those its reservations held."""
    parts = []
    if host_veth:
        parts.append(f"veth {host_veth}")
    if ips:
        parts.append(f"addresses {', '.join(ips)}")
    if recorded and mappings:
        parts.append(f"ports {_ports(mappings)}")
    if recorded:
        parts += [f"{g} guard" for g in guards]
    if record_removed:
        parts.append("record")
    return parts


def deleted(who: str, removed: Sequence[str], errors: Sequence[str]) -> None:
    what = "; ".join(removed) if removed else "nothing (already gone)"
    tail = f" ({len(errors)} step(s) failed)" if errors else ""
    log.info("DEL %s: removed %s%s", who, what, tail)


def collected(
    network: str,
    attachments: dict[str, list[str]],
    released: Sequence[str],
    stray_veths: Sequence[str],
    errors: Sequence[str],
) -> None:
    parts = [f"{who} ({'; '.join(what) or 'nothing left'})" for who, what in attachments.items()]
    if released:
        parts.append(f"unowned reservations {', '.join(released)}")
    if stray_veths:
        parts.append(f"stray veths {', '.join(stray_veths)}")
    what = "; ".join(parts) if parts else "nothing"
    tail = f" ({len(errors)} failure(s))" if errors else ""
    log.info("GC %s: removed %s%s", network, what, tail)


def synced(healed: Sequence[str], errors: Sequence[str], remaining: Sequence[str]) -> None:
    """A sync (`cni-bridge sync`, the agent after a ruleset change): every drift it healed, in
    one line; a sync that found nothing to do says so at DEBUG only (the agent runs it often)."""
    if not (healed or errors or remaining):
        log.debug("SYNC: nothing to heal")
        return
    what = "; ".join(healed) if healed else "nothing"
    tail = (
        f" ({len(errors)} failure(s), {len(remaining)} difference(s) left)"
        if errors or remaining
        else ""
    )
    log.info("SYNC: healed %s%s", what, tail)
