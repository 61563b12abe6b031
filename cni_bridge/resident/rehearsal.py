"""A fresh worker's dry run: what an ADD and a DEL touch, with no effect on the host.

A worker forked from the agent shares the agent's pages until it writes them, and CPython
writes to every object it touches (reference counts), so a fresh worker's first request used to
pay ~1500 copy-on-write page faults (17 ms instead of 10.5 ms for an ADD here) that every later
request of the same worker does not. The pool therefore runs `rehearse()` in each new worker
after `engine.prepare()` and before the worker tells the parent it is free: the first real
request finds those pages already copied, and the fork's cost falls while no caller waits.

What it touches, as a request would: the engine's entry path with an ADD that its first step
refuses (a network namespace, and a data dir, that cannot exist), a representative ADD request
read and its config validated (`protocol.request`, `config`), ADD's plan and the firewall transaction it would send built
(`plan`, `firewall.rules`) and DEL's, the result rendered in every version and encoded as the
engine encodes it, an attachment record encoded, the boot id read (filling `state`'s cache in
the agent's own mount namespace, not a caller's: `mounts.PROCESS_CACHES`), the capabilities
check, and the kernel's state read: our nftables table listed as ADD lists it and the host's
links, addresses and routes dumped over netlink. Nothing is written: no nftables command but
listings, no netlink request but dumps and gets, no file. `tests/integration/test_rehearsal.py`
checks the ruleset, links, addresses, routes and data dir are unchanged by an agent that started
and rehearsed. A failure is logged and the worker serves anyway (it only starts colder).
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
from collections.abc import Callable
from typing import Any

from cni_bridge.resident.running import log

# A representative request: every feature whose code ADD runs for a typical network (gateway,
# masquerade, a published port, both families).
CONTAINER_ID = "cni-bridge-rehearsal"
CONFIG: dict[str, Any] = {
    "cniVersion": "1.1.0",
    "name": "cni-bridge-rehearsal",
    "type": "cni-bridge",
    "bridge": "cbrehearsal0",
    "isGateway": True,
    "isDefaultGateway": True,
    "ipMasq": True,
    "capabilities": {"portMappings": True},
    "runtimeConfig": {
        "portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}],
    },
    "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "10.254.254.0/24"}], [{"subnet": "fd00:cb:cb::/64"}]],
    },
}


def rehearse(light: bool = False) -> None:
    """Run every step (`light`: the pure ones, LIGHT); a step that fails is logged and the
    others still run."""
    before = _descriptors()
    steps = [(name, step) for name, step in _STEPS if not light or name in LIGHT]
    failed = [name for name, step in steps if not _step(step)]
    if failed:
        log(f"rehearsal: {', '.join(failed)} failed (the worker only starts colder)")
    if _descriptors() != before:  # a step must close what it opens
        log(f"rehearsal: descriptors {sorted(before)} -> {sorted(_descriptors())}")


def _step(step: Callable[[], None]) -> bool:
    try:
        step()
    except Exception as exc:  # never fatal: a rehearsal only warms
        log(f"rehearsal step {step.__name__}: {type(exc).__name__}: {exc}")
        return False
    return True


def _descriptors() -> frozenset[str]:
    return frozenset(os.listdir("/proc/self/fd"))


def _request_and_plan() -> None:
    from cni_bridge.background import Background
    from cni_bridge.commands.report import guards
    from cni_bridge.firewall import rules
    from cni_bridge.firewall.model import TableView
    from cni_bridge.ipam.allocator import allocate
    from cni_bridge.ipam.store import MemoryStore
    from cni_bridge.netconf import load_netconf
    from cni_bridge.plan import build_plan, ipam_result_from, parse_add, render_result
    from cni_bridge.protocol.request import parse_request
    from cni_bridge.protocol.result import DNS
    from cni_bridge.protocol.versions import SUPPORTED_VERSIONS
    from cni_bridge.protocol.versions import dump as _dump
    from cni_bridge.state import Attachment

    env = {
        "CNI_COMMAND": "ADD",
        "CNI_CONTAINERID": CONTAINER_ID,
        "CNI_NETNS": "/proc/self/ns/net",
        "CNI_IFNAME": "eth0",
        "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=rehearsal",
        "CNI_PATH": "/opt/cni/bin",
    }
    request = parse_request(env, json.dumps(CONFIG).encode())
    conf = load_netconf(request.config)
    ask = parse_add(request, conf, env["CNI_NETNS"])
    gateways = [
        (ipaddress.ip_interface("10.254.254.2/24"), ipaddress.ip_address("10.254.254.1")),
        (ipaddress.ip_interface("fd00:cb:cb::2/64"), ipaddress.ip_address("fd00:cb:cb::1")),
    ]
    plan = build_plan(ask, conf, ipam_result_from(gateways, [], DNS()))
    view = TableView()
    rules.plan_add(plan.fw_net, plan.fw_att, view, [])
    rules.plan_del(plan.fw_net, {plan.fw_att.tag}, True, view, [])
    rules.plan_del_fast(plan.fw_net, plan.fw_att, view)
    mac = "02:00:00:00:00:01"
    result = render_result(plan, (conf.bridge, mac), (ask.host_veth, mac), ("eth0", mac, 1500))
    for version in SUPPORTED_VERSIONS:
        _dump(result.render(version))
    att = Attachment.new(conf.name, ask.container_id, ask.ifname, ask.sandbox)
    att.ips = [str(ip.address) for ip in plan.ips]
    att.result = result.render("1.1.0")
    json.dumps(att.to_json(), sort_keys=True)
    guards(conf)
    # host-local's allocation, over a store in memory.
    store = MemoryStore()
    with store.lock():
        allocate(store, conf.effective_range_sets(), CONTAINER_ID, "eth0", check_duplicate=False)
        store.release_by_id(CONTAINER_ID, "eth0")
    Background(lambda: None).join()  # ADD overlaps its firewall transaction in a thread


def _protocol() -> None:
    """The worker's side of the exchange: the request decoded, the policy's questions, the
    frames it sends."""
    from cni_bridge.resident import policy, protocol

    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": CONTAINER_ID, "PATH": "/usr/bin"}
    request = protocol.decode_request(
        protocol.encode_request(env, umask=0o022, identity="rehearsal", has_mntns_fd=True)
    )
    policy.bundle_reason(request.argv, request.env)
    policy.forwarded(request.env)
    protocol.encode_frame(protocol.READY, protocol.encode_ready(policy.request_timeout(env)))
    protocol.request_version(json.dumps(CONFIG).encode())
    protocol.encode_frame(protocol.RESULT, protocol.encode_result(0))


def _engine_refused_add() -> None:
    """The engine's whole entry path (logging set-up, request, config, capabilities, dispatch,
    the per-request dependencies, the error answer) with an ADD refused at its first step:
    its network namespace does not exist, and neither could its data dir (under /proc)."""
    from cni_bridge.engine import handle
    from cni_bridge.errors import INVALID_ENV

    conf = {**CONFIG, "ipam": {**CONFIG["ipam"], "dataDir": f"/proc/{CONTAINER_ID}/ipam"}}
    env = {
        "CNI_COMMAND": "ADD",
        "CNI_CONTAINERID": CONTAINER_ID,
        "CNI_NETNS": f"/proc/{CONTAINER_ID}/netns",
        "CNI_IFNAME": "eth0",
        "CNI_PATH": "/opt/cni/bin",
    }
    code, out = handle(env, json.dumps(conf).encode())
    if code != 1 or json.loads(out).get("code") != INVALID_ENV:
        raise RuntimeError(f"expected a refusal, got {code}: {out[:200]!r}")


def _host_reads() -> None:
    from cni_bridge import privileges
    from cni_bridge.state import boot_id, boot_time

    privileges.require()
    boot_id()
    boot_time()


def _firewall_reads() -> None:
    from cni_bridge.firewall import layout
    from cni_bridge.firewall.nft import Firewall
    from cni_bridge.firewall.nftcall import NftablesError

    fw = Firewall()
    fw.read()
    try:  # as ADD lists: the whole inet family without elements
        with fw._terse():
            fw._list("listing inet tables", {"ruleset": {"family": layout.FAMILY}})
    except NftablesError:
        pass


def _netlink_reads() -> None:
    from cni_bridge.net.netlink import NetlinkSocket
    from cni_bridge.net.rtnl import dump_links, get_link, host_addrs, host_routes

    with NetlinkSocket.open() as rt:
        dump_links(rt)
        get_link(rt, name="lo")
        for family in (socket.AF_INET, socket.AF_INET6):
            host_addrs(rt, family)
            host_routes(rt, family)


_STEPS: tuple[tuple[str, Callable[[], None]], ...] = (
    ("request and plan", _request_and_plan),
    ("a refused ADD", _engine_refused_add),
    ("protocol", _protocol),
    ("host reads", _host_reads),
    ("firewall reads", _firewall_reads),
    ("netlink reads", _netlink_reads),
)
# The steps of a light rehearsal (pool._renew): pure Python, and the pages of the next request's
# they write are most of those they write (~2.6 MiB for ~620 fewer faults in the next ADD).
LIGHT = ("request and plan", "protocol")
