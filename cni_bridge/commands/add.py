"""ADD: bridge, veth into the container, addresses and routes, firewall; all or nothing.

One flow: the request is read once (plan.parse_add), IPAM answers, plan.build_plan decides
everything, then the effects run from that frozen plan, each registering its undo right after
it is made: IPAM -> bridge -> veth -> container addresses/routes (beside the firewall) ->
macspoofchk, ipspoofchk -> ready.

The attachment record is written where crash safety needs it, and nowhere else:
1. before any kernel change (after IPAM, in the same lock hold): what the kernel is about to
   hold (names, addresses, ports) is then found by a DEL or GC after a crash. With a delegated
   IPAM plugin it is written before the plugin runs too, since only our record leads a GC to a
   lease held outside our store; host-local's reservation files name their owner themselves.
2. with macspoofchk or ipspoofchk, the container's MAC before its guards are made (they are
   keyed by it: ipspoofchk allows the link-local address derived from it);
3. ready, with the result: CHECK, GC and a repeated ADD tell a live attachment by it.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Mapping

from cni_bridge.background import Background
from cni_bridge.commands import report
from cni_bridge.commands.common import (
    NetworkStores,
    bridge_mark,
    guarded_addresses,
    last_in_network,
    mapping_records,
    sandbox_path,
)
from cni_bridge.commands.deps import Deps
from cni_bridge.commands.teardown import release_ipam, teardown
from cni_bridge.domain import IPAddress
from cni_bridge.errors import (
    INTERFACE_EXISTS,
    INVALID_CONFIG,
    INVALID_ENV,
    IO_FAILURE,
    TRY_AGAIN_LATER,
    CNIError,
)
from cni_bridge.log import getLogger
from cni_bridge.net.netns import netns_cookie_of
from cni_bridge.netconf import NetConf
from cni_bridge.plan import (
    AddPlan,
    AddRequest,
    build_plan,
    ipam_result_from,
    parse_add,
    parse_resolv_conf,
    render_result,
)
from cni_bridge.ports.model import runtime_holds_ports
from cni_bridge.protocol.request import Request
from cni_bridge.protocol.result import DNS, Result, parse_result
from cni_bridge.rollback import Rollback
from cni_bridge.state import PHASE_READY, Attachment, boot_id, boot_time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

log = getLogger(__name__)


def run(request: Request, conf: NetConf, env: Mapping[str, str], deps: Deps) -> dict[str, Any]:
    return add(request, conf, env, deps).render(conf.cni_version)


def check_netns(path: str) -> int:
    """Before any change: the namespace must exist and be a namespace file (nsfs). Returns its
    inode, which names the namespace for as long as it lives."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise CNIError(INVALID_ENV, f"CNI_NETNS {path!r} is not usable: {exc.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        raise CNIError(INVALID_ENV, f"CNI_NETNS {path!r} is a directory, not a network namespace")
    return st.st_ino


def make_reclaim(conf: NetConf, stores: NetworkStores) -> Any:
    """Addresses from an earlier boot whose attachment cannot be alive any more may be reused
    when a pool runs dry. Never the address of an attachment whose namespace still exists."""
    this_boot = boot_id()
    booted_at = boot_time()

    def reclaim(ip: IPAddress, owner: tuple[str, str]) -> bool:
        try:
            if stores.ipam.reserved_at(ip) >= booted_at:
                return False
        except (KeyError, OSError):
            return False
        cid, ifname = owner
        rec = stores.state.get(conf.name, cid, ifname) if ifname else None
        if rec is not None:
            if rec.boot_id == this_boot:
                return False
            if rec.netns and os.path.exists(rec.netns):
                return False
            stores.state.remove(rec)
        return True

    return reclaim


def ipam_add(
    request: Request,
    ask: AddRequest,
    conf: NetConf,
    env: Mapping[str, str],
    stores: NetworkStores,
) -> Result:
    """Addresses for the attachment: built-in host-local, or the configured IPAM plugin."""
    if conf.ipam.type == "host-local":
        from cni_bridge.ipam.allocator import allocate

        allocations = allocate(
            stores.ipam,
            conf.effective_range_sets(),
            ask.container_id,
            ask.ifname,
            requested=list(ask.requested_ips),
            reclaim=make_reclaim(conf, stores),
            # The record lookup before this (same lock hold) already settled whether the
            # attachment holds addresses; host-local's check would read every reservation.
            check_duplicate=False,
        )
        dns = DNS()
        if conf.ipam.resolv_conf:
            try:
                with open(conf.ipam.resolv_conf) as f:
                    dns = parse_resolv_conf(f.read())
            except OSError as exc:
                raise CNIError(
                    IO_FAILURE, f"ipam.resolvConf {conf.ipam.resolv_conf!r}: {exc.strerror}"
                ) from None
        return ipam_result_from(
            [(a.address, a.gateway) for a in allocations],
            [(r.dst, r.gw) for r in conf.ipam.routes],
            dns,
        )
    if conf.ipam.type:
        from cni_bridge.ipam.delegate import exec_plugin

        out = exec_plugin(conf.ipam.type, "ADD", env, request.stdin, ":".join(request.path))
        return parse_result(out, conf.cni_version)
    return Result()  # no IPAM: a layer-2 attachment, as the reference allows


def add(request: Request, conf: NetConf, env: Mapping[str, str], deps: Deps) -> Result:
    netns_inode = check_netns(request.netns)
    # The record and the result name the namespace as the runtime does (not a resident
    # worker's descriptor path, which dies with the worker).
    ask = parse_add(request, conf, sandbox_path(request, env))
    runtime_holds = runtime_holds_ports(request.args)
    if ask.port_mappings:  # before any change: a port a host program holds is refused
        deps.ports.check(ask.port_mappings, runtime_holds)
    stores = NetworkStores(conf)
    att = Attachment.new(conf.name, ask.container_id, ask.ifname, ask.sandbox)
    att.netns_inode = netns_inode
    att.netns_cookie = netns_cookie_of(request.netns)
    att.bridge = conf.bridge
    att.mac = ask.mac or ""
    att.port_mappings = mapping_records(ask.port_mappings)
    att.runtime_holds_ports = runtime_holds
    att.dns_names = list(ask.dns_names)
    delegated = conf.ipam.type not in ("", "host-local")

    rollback = Rollback()
    try:
        if ask.port_mappings:  # undone last, once the record is gone: the holder lets go
            rollback.push("held ports", lambda: deps.ports.changed(stores.ipam.dir, att.tag))
        deps.hook("record")
        with stores.lock():
            existing = stores.state.get(conf.name, ask.container_id, ask.ifname)
            if existing is not None:
                _clear_previous(conf, stores, existing, deps, env, request)
            stores.state.save_network(network_snapshot(request.config))
            if delegated:
                stores.state.put(att)
            rollback.push("record", lambda: _locked(stores, lambda: stores.state.remove(att)))
            # Same lock hold: one flock per ADD for the record and the addresses. The undo goes
            # first: a delegated plugin may have handed out a lease even if we fail afterwards.
            rollback.push(
                "ipam",
                lambda: _locked(stores, lambda: release_ipam(conf, stores, att, env, request.stdin)),
            )
            deps.hook("ipam")
            ipam_result = ipam_add(request, ask, conf, env, stores)
            att.ips = [str(ip.address) for ip in ipam_result.ips]
            stores.state.put(att)  # write 1: before any kernel change
        # Where the agent's duties find this network's records (its watch heals, its DNS
        # rebuild and held ports read them): every network's, delegated IPAM or not (the
        # records live in conf.ipam.data_dir either way), with or without ports or DNS.
        from cni_bridge import datadirs

        datadirs.register(conf.ipam.data_dir)
        plan = build_plan(ask, conf, ipam_result, _dns_upstream(conf))
        if plan.bridge_addrs:
            # Before the firewall and the datapath change anything: a refusal leaves nothing.
            deps.net.check_subnets_free(conf.bridge, list(plan.bridge_addrs))
        deps.hook("firewall")
        # Not under the network lock: the transaction is atomic, the kernel refuses port
        # conflicts inside it, and the network's shared elements cannot be removed meanwhile,
        # since a DEL decides "last attachment" under the lock and sees our record.
        # It needs nothing from the datapath (the addresses come from IPAM, the host veth name
        # is derived), so it runs beside it: both mostly wait on the kernel, and ~3 ms of an
        # ADD's ~10 overlap. Its undo is registered only once it is known to have happened.
        fw_job = Background(lambda: deps.firewall.add_attachment(plan.fw_net, plan.fw_att))
        datapath_done = False

        def if_last(undo: Callable[[], object]) -> Callable[[], None]:
            # What the network shares (its bridge, the gateway addresses) goes with the ADD
            # that made it only when no other attachment has come meanwhile; decided under
            # the lock, where every other ADD of the network has written its record first.
            def run() -> None:
                with stores.lock():
                    if last_in_network(stores, att):
                        undo()

            return run

        try:
            result = _datapath(conf, deps, plan, rollback, if_last)
            datapath_done = True
        finally:
            fw_error = fw_job.join()
            if fw_error is None:
                rollback.push("firewall", lambda: _fw_undo(stores, deps, att, plan))
            elif not datapath_done:  # the datapath's error is the one reported: log this one
                log.warning("firewall also failed: %s", fw_error)
        if fw_error is not None:
            raise fw_error

        if plan.dns_net is not None and plan.dns_entry is not None:
            deps.hook("dns")
            # Registered first: a publish that fails half-way may have written the file.
            rollback.push(
                "dns",
                lambda: _locked(
                    stores, lambda: deps.dns.withdraw(conf.name, ask.container_id, att.ips)
                ),
            )
            with stores.lock(), dns_errors():
                deps.dns.publish(plan.dns_net, plan.dns_entry)

        if conf.macspoofchk or conf.ipspoofchk:
            att.mac = result.interfaces[2].mac
            with stores.lock():
                stores.state.put(att)  # write 2: the guards' key, before the guards
        if conf.macspoofchk:
            deps.firewall.add_macspoof(ask.host_veth, att.mac)
            rollback.push("macspoofchk", lambda: deps.firewall.del_macspoof(ask.host_veth, att.mac))
        if conf.ipspoofchk:
            own = guarded_addresses(conf, att)
            deps.firewall.add_ipspoof(plan.fw_net, plan.fw_att, ask.host_veth, own)
            rollback.push("ipspoofchk", lambda: deps.firewall.del_ipspoof(ask.host_veth, own))

        deps.hook("ready")
        att.result = result.render("1.1.0")
        att.phase = PHASE_READY
        with stores.lock():
            stores.state.put(att)  # write 3: ready
        if ask.port_mappings:  # the agent's holder takes the ports, or the ADD fails
            deps.ports.hold(stores.ipam.dir, att.tag)
        rollback.commit()
    except BaseException:
        rollback.run()
        raise
    report.added(
        plan.fw_att.owner,
        conf.bridge,
        ask.host_veth,
        ask.ifname,
        ask.sandbox,
        att.ips,
        att.port_mappings,
        report.guards(conf),
    )
    return result


def _clear_previous(
    conf: NetConf,
    stores: NetworkStores,
    existing: Attachment,
    deps: Deps,
    env: Mapping[str, str],
    request: Request,
) -> None:
    """A record of this attachment already exists (the caller holds the network lock)."""
    if existing.add_in_progress():
        raise CNIError(
            TRY_AGAIN_LATER,
            f"an ADD of container {request.container_id} interface {request.ifname} is still "
            f"running (pid {existing.pid})",
        )
    if existing.phase == PHASE_READY and existing.boot_id == boot_id():
        raise CNIError(
            INTERFACE_EXISTS,
            f"container {request.container_id} interface {request.ifname} is already "
            f"attached to network {conf.name}; DEL it first",
        )
    # An ADD that died half-way, or an attachment from before a reboot: clear what it left
    # before starting again, and do not forget what could not be cleared.
    errors = teardown(conf, stores, existing, deps, env, request.stdin, request.netns)
    if errors:
        raise CNIError(
            TRY_AGAIN_LATER,
            "could not clear the remains of an earlier ADD of this attachment",
            "; ".join(errors),
        )


def _datapath(
    conf: NetConf,
    deps: Deps,
    plan: AddPlan,
    rollback: Rollback,
    if_last: Callable[[Callable[[], object]], Callable[[], None]],
) -> Result:
    net, ask = deps.net, plan.ask
    deps.hook("bridge")
    mark = bridge_mark(conf.name)
    bridge = net.ensure_bridge(conf.bridge, conf.mtu, bool(conf.vlan or conf.vlan_trunk), mark)
    if bridge.created:
        rollback.push("bridge", if_last(lambda: net.remove_bridge(conf.bridge, mark)))
    if plan.bridge_addrs:
        added = net.ensure_bridge_addrs(conf.bridge, list(plan.bridge_addrs), conf.force_address)
        if added and not bridge.created:  # on a bridge of ours they go with it
            rollback.push("gateway addresses",
                          if_last(lambda: net.del_bridge_addrs(conf.bridge, added)))
    fams = plan.families
    if fams:
        net.set_forwarding(4 in fams, 6 in fams)
    if plan.publishes and 4 in fams:
        # 127.0.0.1:<hostPort> is DNATed out of the bridge; the firewall guards the other side.
        net.set_route_localnet(conf.bridge)

    deps.hook("veth")
    host, cont = net.create_veth(
        ask.netns,
        ask.ifname,
        ask.host_veth,
        conf.bridge,
        mtu=conf.mtu,
        container_mac=ask.mac,
        # A container reaching its own published port needs its packets sent back out of the
        # port they came in on.
        hairpin=conf.hairpin_mode or plan.publishes,
        promisc=conf.promisc_mode,
        port_isolation=conf.port_isolation,
        vlan=conf.vlan,
        vlan_trunk=conf.vlan_trunk or None,
    )
    rollback.push("veth", lambda: net.delete_link(ask.host_veth))

    deps.hook("container")
    net.configure_container(
        ask.netns,
        ask.ifname,
        plan.container_addrs,
        plan.kernel_routes(),
        enable_dad=conf.enabledad,
        ipv6=conf.ipv6_link_local or any(a.version == 6 for a in plan.container_addrs),
    )
    return render_result(plan, (bridge.name, bridge.mac), (host.name, host.mac), (cont.name, cont.mac, cont.mtu))


def _dns_upstream(conf: NetConf) -> list[IPAddress]:
    if conf.container_dns is None:
        return []
    from cni_bridge.dns.ops import upstream

    return upstream(conf)


class dns_errors:
    """containerDNS's failures as CNI errors. A class, not a contextlib.contextmanager:
    contextlib stays off the exec path."""

    __slots__ = ()

    def __enter__(self) -> None:
        pass

    def __exit__(self, typ: object, exc: BaseException | None, tb: object) -> None:
        if exc is None:
            return
        from cni_bridge.dns.aardvark import DNSServerError, DNSServerMissing

        if isinstance(exc, DNSServerMissing):
            raise CNIError(INVALID_CONFIG, str(exc)) from None
        if isinstance(exc, DNSServerError):
            raise CNIError(IO_FAILURE, f"containerDNS: {exc}") from None


def network_snapshot(config: Mapping[str, Any]) -> dict[str, Any]:
    """The network's own config, without what belongs to one request."""
    skip = {"runtimeConfig", "prevResult", "args"}
    return {k: v for k, v in config.items() if k not in skip and not k.startswith("cni.dev/")}


def _locked(stores: NetworkStores, fn: Any) -> None:
    with stores.lock():
        fn()


def _fw_undo(stores: NetworkStores, deps: Deps, att: Attachment, plan: AddPlan) -> None:
    with stores.lock():
        last = last_in_network(stores, att)
        deps.firewall.del_attachment(plan.fw_net, plan.fw_att, last)
