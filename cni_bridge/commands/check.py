"""CHECK: the attachment still is what ADD reported (prevResult), in the kernel and on disk."""

from __future__ import annotations

from collections.abc import Mapping

from cni_bridge.commands.common import (
    NetworkStores,
    guarded_addresses,
    record_fw,
    sandbox_path,
)
from cni_bridge.commands.deps import Deps
from cni_bridge.domain import DomainError, InterfaceName
from cni_bridge.errors import CHECK_MISMATCH, INVALID_CONFIG, UNKNOWN_CONTAINER, CNIError
from cni_bridge.netconf import NetConf
from cni_bridge.protocol.request import Request
from cni_bridge.protocol.result import Interface, Result, parse_result
from cni_bridge.state import PHASE_READY


def run(request: Request, conf: NetConf, env: Mapping[str, str], deps: Deps) -> None:
    problems = check(request, conf, deps, sandbox_path(request, env))
    if problems:
        raise CNIError(CHECK_MISMATCH, "CHECK: " + "; ".join(problems))


def check(request: Request, conf: NetConf, deps: Deps, sandbox: str = "") -> list[str]:
    sandbox = sandbox or request.netns  # as ADD reported it (see sandbox_path)
    if conf.prev_result is None:
        raise CNIError(INVALID_CONFIG, "CHECK needs prevResult in the network config")
    prev = parse_result(conf.prev_result, conf.cni_version)
    stores = NetworkStores(conf)
    with stores.lock():
        att = stores.state.get(conf.name, request.container_id, request.ifname)
        reserved = set(stores.ipam.get_by_id(request.container_id, request.ifname))
    if att is None or att.phase != PHASE_READY:
        raise CNIError(
            UNKNOWN_CONTAINER,
            f"no attachment of container {request.container_id} interface {request.ifname} "
            f"on network {conf.name}",
        )
    problems: list[str] = []
    view = deps.net.container_view(request.netns, InterfaceName(request.ifname))
    if view is None:
        return [f"interface {request.ifname} is missing from {sandbox}"]
    expected = _container_iface(prev, request.ifname, sandbox)
    if expected is not None and expected.mac and expected.mac.lower() != view.mac.lower():
        problems.append(f"{request.ifname} has MAC {view.mac}, prevResult says {expected.mac}")
    have_addrs = {str(a) for a in view.addresses}
    have_routes = {(str(d), str(g) if g else "") for d, g in view.routes}
    for ip in prev.ips:
        if ip.interface is not None and prev.interfaces[ip.interface].name != request.ifname:
            continue
        if str(ip.address) not in have_addrs:
            problems.append(f"address {ip.address} is missing from {request.ifname}")
        if conf.ipam.type == "host-local" and ip.address.ip not in reserved:
            problems.append(f"address {ip.address.ip} is no longer reserved for this attachment")
    gws = {ip.address.version: ip.gateway for ip in prev.ips if ip.gateway is not None}
    for r in prev.routes:
        gw = r.gw if r.gw is not None else gws.get(r.dst.version)
        if (str(r.dst), str(gw) if gw else "") not in have_routes:
            problems.append(f"route {r.dst} via {gw or 'link'} is missing from {request.ifname}")
    try:
        host = deps.net.host_link(InterfaceName(att.host_veth))
    except DomainError:  # a record naming what the kernel cannot hold: there is no such veth
        host = None
    if host is None:
        problems.append(f"host veth {att.host_veth} is missing")
    else:
        bridge = deps.net.host_link(conf.bridge)
        if bridge is None or host.master != bridge.ifindex:
            problems.append(f"host veth {att.host_veth} is not attached to bridge {conf.bridge}")
    problems.extend(deps.firewall.check_attachment(*record_fw(conf, att)))
    if conf.ipspoofchk:
        problems.extend(deps.firewall.check_ipspoof(att.host_veth, guarded_addresses(conf, att)))
    if att.dns_names:
        problems.extend(deps.dns.check(att.network, att.container_id, att.ips, att.dns_names))
    return problems


def _container_iface(prev: Result, ifname: str, netns: str) -> Interface | None:
    for i in prev.interfaces:
        if i.name == ifname and (not i.sandbox or i.sandbox == netns):
            return i
    return None

