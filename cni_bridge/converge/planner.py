"""What the host lacks of the desired state, and the repairs that heal it. Pure.

The firewall repairs are the ADD planner's own pieces (rules.py: layout_repairs,
network_repairs, attachment_repairs, foreign_rules), applied to every recorded attachment
against one complete view, so they form one transaction that only adds what is missing. The
rest are steps for NetOps: a bridge missing or down, its gateway addresses, a host veth no longer
on its bridge (the bridge was deleted and is made again), the forwarding and route_localnet
sysctls, the macspoofchk and ipspoofchk guards.

Only live attachments are desired on the host: their host veth exists with its peer in another
namespace. One whose veth is gone is GC's (listed as stale, never re-created). A repair that
would take something from another owner (a port another attachment publishes, a subnet another
network holds) is not made: it is listed as blocked.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cni_bridge.converge.desired import Desired, Member, Network
from cni_bridge.converge.observe import IP6_FORWARD, IP_FORWARD, Observed, route_localnet
from cni_bridge.firewall import rules
from cni_bridge.firewall.layout import Json, layout_problems, layout_repairs
from cni_bridge.firewall.model import FirewallError, TableView
from cni_bridge.net.ops import HostLink

BRIDGE, ADDRESS, PORT, SYSCTL, MACSPOOF = "bridge", "address", "port", "sysctl", "macspoof"
IPSPOOF = "ipspoof"
# The order steps run in: a bridge before its addresses, ports and route_localnet.
_ORDER = {BRIDGE: 0, ADDRESS: 1, PORT: 2, SYSCTL: 3, MACSPOOF: 4, IPSPOOF: 5}


@dataclass(frozen=True)
class Step:
    kind: str  # BRIDGE, ADDRESS, PORT, SYSCTL, MACSPOOF or IPSPOOF
    what: str  # the drift, for people
    target: str  # the bridge, host veth or sysctl key
    args: tuple[Any, ...] = ()
    network: str = ""  # whose ("": the host's, every network's)


Note = tuple[str, str]  # (network or "" for the whole host, what differs)


@dataclass
class Plan:
    steps: list[Step] = field(default_factory=list)
    firewall: list[Json] = field(default_factory=list)  # one transaction
    firewall_notes: list[Note] = field(default_factory=list)  # what the transaction heals
    blocked: list[Note] = field(default_factory=list)  # drift a sync must not heal
    stale: list[str] = field(default_factory=list)  # recorded, container gone: for GC

    @property
    def notes(self) -> list[Note]:
        return [*self.firewall_notes, *((s.network, s.what) for s in self.steps), *self.blocked]

    @property
    def firewall_drift(self) -> list[str]:
        return [what for _, what in self.firewall_notes]

    @property
    def drift(self) -> list[str]:
        """Every difference between records and host, one line each."""
        return [what for _, what in self.notes]

    def drift_of(self, network: str) -> list[str]:
        """The differences that concern one network: its own and the host's."""
        return [what for net, what in self.notes if net in ("", network)]

    @property
    def empty(self) -> bool:
        return not self.steps and not self.firewall


def live(link: HostLink | None) -> bool:
    """A host veth whose peer is in another namespace: the container is there."""
    return link is not None and link.kind == "veth" and link.peer_netnsid is not None


def plan(desired: Desired, seen: Observed) -> Plan:
    out = Plan()
    active: list[tuple[Network, list[Member]]] = []
    for n in desired.networks:
        members = []
        for m in n.members:
            if live(seen.links.get(m.record.host_veth)):
                members.append(m)
            else:
                out.stale.append(
                    f"{m.fw.owner}: host veth {m.record.host_veth} is gone (run cni-bridge gc)"
                )
        if members:
            active.append((n, members))
            _net_steps(n, members, seen, out)
    _firewall(desired, active, seen, out)
    out.steps.sort(key=lambda s: _ORDER[s.kind])
    return out


# ---------------------------------------------------------------- links and sysctls


def _net_steps(n: Network, members: Sequence[Member], seen: Observed, out: Plan) -> None:
    br = seen.links.get(n.bridge)
    conf = n.conf
    if br is None:
        out.steps.append(
            Step(BRIDGE, f"bridge {n.bridge} of network {n.name} is missing", n.bridge,
                 (conf.mtu, bool(conf.vlan or conf.vlan_trunk)), n.name)
        )  # fmt: skip
    elif br.kind != "bridge":
        out.blocked.append((n.name, f"{n.bridge} of network {n.name} is a {br.kind or 'device'}, not a bridge"))
        return
    elif not br.up:
        out.steps.append(
            Step(BRIDGE, f"bridge {n.bridge} of network {n.name} is down", n.bridge,
                 (conf.mtu, bool(conf.vlan or conf.vlan_trunk)), n.name)
        )  # fmt: skip
    have = seen.addrs.get(n.bridge, [])
    missing = tuple(g for g in n.gateways if g not in have)
    if missing:
        what = ", ".join(str(g) for g in missing)
        out.steps.append(Step(ADDRESS, f"bridge {n.bridge} lacks gateway address {what}", n.bridge, missing, n.name))
    publishes = any(m.fw.port_mappings for m in members)
    for m in members:
        veth = seen.links[m.record.host_veth]
        if br is None or veth is None or veth.master != br.ifindex:
            hairpin = conf.hairpin_mode or bool(m.fw.port_mappings)
            out.steps.append(
                Step(PORT, f"host veth {m.record.host_veth} of {m.fw.owner} is not on bridge {n.bridge}",
                     m.record.host_veth, (n.bridge, hairpin), n.name)
            )  # fmt: skip
    families = n.families
    wants = []
    if 4 in families:
        wants.append((IP_FORWARD, "IPv4 forwarding is off"))
    if 6 in families:
        wants.append((IP6_FORWARD, "IPv6 forwarding is off"))
    if publishes and any(m.publishes4 for m in members):
        wants.append((route_localnet(n.bridge), f"route_localnet is off on bridge {n.bridge}"))
    for key, why in wants:
        if seen.sysctls.get(key) != "1" and not any(s.target == key for s in out.steps):
            out.steps.append(Step(SYSCTL, why, key, ("1",), n.name))
    if conf.macspoofchk:
        guards = seen.fw.spoofchk or set()
        for m in members:
            mac = m.record.mac.lower()
            if mac and (m.record.host_veth, mac) not in guards:
                out.steps.append(
                    Step(MACSPOOF, f"the macspoofchk guard of {m.fw.owner} is missing",
                         m.record.host_veth, (mac,), n.name)
                )  # fmt: skip
    if conf.ipspoofchk:
        _ipspoof_steps(n, members, seen, out)


def _ipspoof_steps(n: Network, members: Sequence[Member], seen: Observed, out: Plan) -> None:
    from cni_bridge.commands.common import guarded_addresses
    from cni_bridge.firewall import ipspoof

    have = seen.fw.ipspoof  # None: the chain or one of its rules is gone
    for m in members:
        own = guarded_addresses(n.conf, m.record)
        if have is None or ipspoof.absent(have, m.record.host_veth, own):
            # The first repair rewrites the static chain, when it was found incomplete.
            relayout = have is None and not any(s.kind == IPSPOOF for s in out.steps)
            out.steps.append(
                Step(IPSPOOF, f"the ipspoofchk guard of {m.fw.owner} is missing",
                     m.record.host_veth, (n.fw, m.fw, tuple(own), relayout))
            )  # fmt: skip


# ---------------------------------------------------------------- the firewall


def _guarded_bridges(desired: Desired, seen: Observed) -> list[str]:
    """Our bridges with route_localnet on: the 127.0.0.0/8 guard must be there."""
    return sorted(
        {n.bridge for n in desired.networks if seen.sysctls.get(route_localnet(n.bridge)) == "1"}
    )


def _firewall(
    desired: Desired, active: Sequence[tuple[Network, list[Member]]], seen: Observed, out: Plan
) -> None:
    table = seen.fw.table
    guarded = _guarded_bridges(desired, seen)
    if not active and not guarded:
        return
    cmds = layout_repairs(table)
    problems = layout_problems(table)
    if guarded and (not table.exists or "guard" not in table.chains):
        problems.append(
            "the 127.0.0.0/8 guard is missing while route_localnet is on for "
            + ", ".join(guarded)
        )
    out.firewall_notes += [("", p) for p in problems]
    strict = bool(rules.blocking(seen.fw.foreign))
    for n, members in active:
        try:
            net_cmds = rules.network_repairs(n.fw, table, strict)
        except FirewallError as exc:
            out.blocked.append((n.name, f"network {n.name}: {exc}"))
            continue
        if net_cmds and table.exists:
            count = sum(len(c["add"]["element"]["elem"]) for c in net_cmds)
            out.firewall_notes.append((n.name, f"network {n.name}: {count} element(s) missing from its sets"))
        cmds += net_cmds
        for m in members:
            cmds += _attachment(n, m, table, out)
        for fv in seen.fw.foreign:
            cmds += rules.foreign_rules(fv, n.fw)
        out.firewall_notes += [(n.name, p) for p in rules.foreign_problems(n.fw, seen.fw.foreign)]
    if cmds and not out.firewall_notes:
        out.firewall_notes.append(("", "elements of our table are missing"))
    out.firewall = cmds


def _attachment(n: Network, m: Member, table: TableView, out: Plan) -> list[Json]:
    try:
        rules.validate(n.fw, m.fw)
        cmds, _, todo = rules.attachment_repairs(n.fw, m.fw, table)
    except FirewallError as exc:
        out.blocked.append((n.name, f"{m.fw.owner}: {exc}"))
        return []
    if todo and table.exists:
        ports = ", ".join(str(e.key) for e in todo)
        out.firewall_notes.append((n.name, f"{m.fw.owner}: published port(s) missing: {ports}"))
    elif cmds and table.exists:
        out.firewall_notes.append((n.name, f"{m.fw.owner}: the claims of its host ports are missing"))
    return cmds
