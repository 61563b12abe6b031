"""Removing one attachment completely: shared by DEL, GC, a failed ADD and a stale record.

Best effort: every step runs even when an earlier one failed, absence is success, and the
failures are returned together. Works from the record and the deterministic names alone, so it
needs neither the container's namespace nor prevResult.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping

from cni_bridge.commands import report
from cni_bridge.commands.common import (
    NetworkStores,
    bridge_mark,
    guarded_addresses,
    last_in_network,
    record_fw,
)
from cni_bridge.commands.deps import Deps
from cni_bridge.domain import InterfaceName
from cni_bridge.ipam.store import UNREADABLE
from cni_bridge.log import getLogger
from cni_bridge.netconf import NetConf
from cni_bridge.state import Attachment

log = getLogger(__name__)


def release_ipam(
    conf: NetConf, stores: NetworkStores, att: Attachment, env: Mapping[str, str], stdin: bytes
) -> None:
    if not att.container_id:
        return  # known by its tag alone: GC releases what no valid attachment owns
    if conf.ipam.type == "host-local":
        owner = (att.container_id, att.ifname)
        if att.recorded and att.ips:
            # The record names the addresses: release those (if still ours, or if their file
            # became unreadable: the record says whose they are) rather than read every
            # reservation file as release_by_id must.
            for text in att.ips:
                ip = ipaddress.ip_interface(text).ip
                if stores.ipam.owner(ip) in (owner, (owner[0], ""), UNREADABLE):
                    stores.ipam.release(ip)
        else:
            stores.ipam.release_by_id(*owner)
    elif conf.ipam.type:
        from cni_bridge.ipam.delegate import exec_plugin

        child_env = dict(env)
        child_env["CNI_CONTAINERID"] = att.container_id
        child_env["CNI_IFNAME"] = att.ifname
        child_env["CNI_NETNS"] = att.netns if att.netns and os.path.exists(att.netns) else ""
        exec_plugin(conf.ipam.type, "DEL", child_env, stdin, child_env.get("CNI_PATH", ""))


def teardown(
    conf: NetConf,
    stores: NetworkStores,
    att: Attachment,
    deps: Deps,
    env: Mapping[str, str],
    stdin: bytes,
    netns: str = "",
    removed: list[str] | None = None,
) -> list[str]:
    """Removes everything `att` owns. The caller holds the network lock. What was removed is
    appended to `removed` as phrases (commands/report.py) for the verb's log line."""
    errors: list[str] = []
    veth_was_there: list[bool] = []
    fw_net, fw_att = record_fw(conf, att)

    def step(what: str, fn: object) -> None:
        try:
            fn()  # type: ignore[operator]
        except Exception as exc:  # best effort: report together
            log.warning("teardown %s of %s: %s", what, att.tag, exc)
            errors.append(f"{what}: {exc}")

    last = last_in_network(stores, att)
    step(
        "firewall",
        lambda: deps.firewall.del_attachment(
            fw_net, fw_att, last, thorough=not att.recorded
        ),
    )
    if att.dns_names or conf.container_dns is not None:
        step("dns", lambda: deps.dns.withdraw(att.network, att.container_id, att.ips))
    if (conf.macspoofchk and att.mac) or not att.recorded:
        # Without a record the MAC is unknown (and whether the guard was on): the guard's
        # elements are found by the port, whose name the tag derives.
        mac = att.mac if att.recorded else ""
        step("macspoofchk", lambda: deps.firewall.del_macspoof(att.host_veth, mac))
    if conf.ipspoofchk:
        # Without a record (or its MAC) the addresses are not all known: by port instead.
        thorough = not att.recorded or not att.mac
        step(
            "ipspoofchk",
            lambda: deps.firewall.del_ipspoof(
                att.host_veth, guarded_addresses(conf, att), thorough=thorough
            ),
        )
    step(
        "host veth",
        lambda: veth_was_there.append(deps.net.delete_link(InterfaceName(att.host_veth))),
    )
    if netns and os.path.exists(netns):
        step("container interface", lambda: deps.net.delete_container_link(netns, InterfaceName(att.ifname)))
    if last:
        # The network's last attachment: the bridge cni-bridge made for it goes (its gateway
        # addresses and connected routes with it), so the subnet is free on the host again.
        step("bridge", lambda: deps.net.remove_bridge(conf.bridge, bridge_mark(conf.name)))
    if conf.ipam.type != "host-local" or os.path.isdir(stores.ipam.dir):
        step("ipam", lambda: release_ipam(conf, stores, att, env, stdin))
    if not errors:
        # The record goes last: a teardown cut short is simply run again by the next DEL or GC.
        stores.state.remove(att)
    if removed is not None:
        removed += report.removal(
            att.host_veth if any(veth_was_there) else None,
            att.ips,
            att.port_mappings,
            report.guards(conf),
            att.recorded,
            att.recorded and not errors,
        )
    if att.port_mappings:  # the agent's holder lets the ports go (it rereads the record)
        deps.ports.changed(stores.ipam.dir, att.tag)
    return errors
