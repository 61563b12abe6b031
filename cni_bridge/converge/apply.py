"""Carries a plan out: the small side-effecting half of a sync.

Steps run in the plan's order (bridges before their addresses, ports and sysctls), then the
firewall's one transaction, then the macspoofchk and ipspoofchk guards (they name host veths that must be on
their bridge). Every repair is idempotent, so a repair that raced with an ADD or another sync
does no harm; each failure is reported and the rest still runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cni_bridge.converge.planner import (
    ADDRESS,
    BRIDGE,
    IPSPOOF,
    MACSPOOF,
    PORT,
    SYSCTL,
    Plan,
    Step,
)
from cni_bridge.domain import InterfaceName
from cni_bridge.errors import CNIError
from cni_bridge.firewall.ops import FirewallOps
from cni_bridge.net.ops import NetError, NetOps


@dataclass
class Applied:
    healed: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def _run(step: Step, fw: FirewallOps, net: NetOps) -> None:
    if step.kind == BRIDGE:
        mtu, vlan_filtering = step.args
        net.ensure_bridge(InterfaceName(step.target), mtu, vlan_filtering)
    elif step.kind == ADDRESS:
        net.ensure_bridge_addrs(InterfaceName(step.target), list(step.args), False)
    elif step.kind == PORT:
        bridge, hairpin = step.args
        net.attach_port(InterfaceName(step.target), InterfaceName(bridge), hairpin)
    elif step.kind == SYSCTL:
        net.set_sysctl(step.target, step.args[0])
    elif step.kind == MACSPOOF:
        fw.add_macspoof(step.target, step.args[0])
    elif step.kind == IPSPOOF:
        net_fw, att_fw, own, relayout = step.args
        fw.add_ipspoof(net_fw, att_fw, step.target, list(own), relayout=relayout)
    else:
        raise ValueError(f"unknown step {step.kind}")


def apply(p: Plan, fw: FirewallOps, net: NetOps) -> Applied:
    done = Applied()

    def attempt(step: Step) -> None:
        try:
            _run(step, fw, net)
            done.healed.append(step.what)
        except (NetError, CNIError, OSError) as exc:
            done.errors.append(f"{step.what}: not healed: {exc}")

    guards = (MACSPOOF, IPSPOOF)
    for step in p.steps:
        if step.kind not in guards:
            attempt(step)
    if p.firewall:
        try:
            fw.apply(p.firewall, "sync")
            done.healed += p.firewall_drift
        except CNIError as exc:
            done.errors.append(f"firewall: not healed: {exc.msg}: {exc.details}")
    for step in p.steps:
        if step.kind in guards:
            attempt(step)
    return done
