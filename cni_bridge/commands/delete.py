"""DEL: remove everything the attachment owns. Idempotent; needs neither netns nor prevResult."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping

from cni_bridge.commands import report
from cni_bridge.commands.common import NetworkStores, mapping_records
from cni_bridge.commands.deps import Deps
from cni_bridge.commands.teardown import teardown
from cni_bridge.errors import CLEANUP_FAILED, CNIError
from cni_bridge.netconf import NetConf
from cni_bridge.plan import port_mapping
from cni_bridge.protocol.request import Request
from cni_bridge.state import Attachment


def run(request: Request, conf: NetConf, env: Mapping[str, str], deps: Deps) -> None:
    removed: list[str] = []
    errors = delete(request, conf, env, deps, removed)
    report.deleted(
        report.owner(conf.name, request.container_id, request.ifname), removed, errors
    )
    if errors:
        raise CNIError(CLEANUP_FAILED, "DEL could not remove everything", "; ".join(errors))


def delete(
    request: Request,
    conf: NetConf,
    env: Mapping[str, str],
    deps: Deps,
    removed: list[str] | None = None,
) -> list[str]:
    stores = NetworkStores(conf, teardown=True)
    if not os.path.isdir(stores.ipam.dir):
        # Nothing was ever reserved or recorded for this network here: do not create its
        # directory just to lock it. The deterministic names still find a stray veth or rules.
        att = _synthesized(request, conf, [])
        return teardown(conf, stores, att, deps, env, request.stdin, request.netns, removed)
    with stores.lock():
        recorded = stores.state.get(conf.name, request.container_id, request.ifname)
        if recorded is None or not recorded.recorded:
            # No record, or one set aside as unusable: the request, the deterministic names
            # and the reservations that name this attachment are what there is.
            ips = [
                str(ipaddress.ip_interface(ip))
                for ip in stores.ipam.get_by_id(request.container_id, request.ifname)
            ]
            recorded = _synthesized(request, conf, ips)
        return teardown(conf, stores, recorded, deps, env, request.stdin, request.netns, removed)


def _synthesized(request: Request, conf: NetConf, ips: list[str]) -> Attachment:
    """No record (made by another plugin, or before the record was written): what the request
    and the deterministic names tell us is all there is."""
    att = Attachment.new(conf.name, request.container_id, request.ifname, request.netns)
    att.recorded = False
    att.pid, att.pid_start = 0, ""
    att.bridge = conf.bridge
    att.ips = ips
    att.port_mappings = mapping_records(port_mapping(pm) for pm in conf.port_mappings())
    return att
