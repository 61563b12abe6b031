"""ADD, DEL and CHECK heal the host when their own firewall read saw it drift.

The check costs nothing on the common path: the verb's firewall read already tells whether our
table is missing or incomplete, or a blocking foreign chain lacks the network's accept rules
(rules.drifted). Only then is the whole host synced, every data dir in use, after the verb's own
work (its answer does not change; the heal is logged). What the verb's read cannot see (another
network's elements deleted one by one, a deleted bridge) is the agent's watch's, or sync's.
"""

from __future__ import annotations

import _socket
import time

from cni_bridge.commands.deps import Deps
from cni_bridge.log import getLogger
from cni_bridge.netconf import NetConf
from cni_bridge.protocol.request import Request
from cni_bridge.state import HOST_VETH_PREFIX, host_veth_name

log = getLogger(__name__)


def others_present(mine: str) -> bool:
    """Whether an attachment of ours other than `mine` (its host veth) exists here: without
    one, a missing table is simply a host's first ADD (or its last DEL), nothing to heal."""
    return any(
        name.startswith(HOST_VETH_PREFIX) and name != mine for _, name in _socket.if_nameindex()
    )


def after_verb(conf: NetConf, deps: Deps, request: Request) -> None:
    fw = deps.firewall_if_used()
    if fw is None or not fw.drift_seen():
        return
    if not others_present(host_veth_name(conf.name, request.container_id, request.ifname)):
        return
    from cni_bridge import datadirs
    from cni_bridge.converge.sync import sync

    started = time.monotonic()
    try:
        report = sync([conf.ipam.data_dir, *datadirs.in_use()], deps)
    except Exception as exc:  # the verb's own outcome stands; sync can be run again
        log.warning("the ruleset changed behind our back and could not be healed: %s", exc)
        return
    took = (time.monotonic() - started) * 1000
    for line in report.healed:
        log.warning("healed drift: %s", line)
    for line in report.errors + report.remaining:
        log.warning("drift not healed: %s", line)
    log.info("sync after drift: %d repair(s) in %.1f ms", len(report.healed), took)
