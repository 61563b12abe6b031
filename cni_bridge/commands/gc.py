"""GC (CNI 1.1): remove everything of this network that belongs to no valid attachment.

Covers what a record lists and what no record lists: reservations made by another plugin or by an
ADD killed before its record, and host veths on the bridge left by a crash. Continues past errors
and reports them together.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from cni_bridge.commands import report
from cni_bridge.commands.common import NetworkStores, bridge_mark
from cni_bridge.commands.deps import Deps
from cni_bridge.commands.teardown import teardown
from cni_bridge.domain import DomainError, InterfaceName
from cni_bridge.errors import CLEANUP_FAILED, INVALID_CONFIG, CNIError
from cni_bridge.netconf import NetConf
from cni_bridge.plan import network_fw, network_subnets
from cni_bridge.protocol.request import Request
from cni_bridge.state import HOST_VETH_PREFIX, attachment_tag, stand_in

VALID_KEYS = ("cni.dev/valid-attachments", "cni.dev/attachments")


def valid_attachments(config: Mapping[str, Any]) -> set[tuple[str, str]]:
    raw: Any = None
    for key in VALID_KEYS:
        if key in config:
            raw = config[key]
            break
    if raw is None:
        raw = []
    if not isinstance(raw, list):
        raise CNIError(INVALID_CONFIG, f"{VALID_KEYS[0]} must be a list")
    out: set[tuple[str, str]] = set()
    for item in raw:
        if not isinstance(item, dict) or not isinstance(item.get("containerID"), str):
            raise CNIError(INVALID_CONFIG, f"{VALID_KEYS[0]}: entries need containerID and ifname")
        out.add((item["containerID"], str(item.get("ifname", ""))))
    return out


def run(request: Request, conf: NetConf, env: Mapping[str, str], deps: Deps) -> None:
    errors = collect(conf, valid_attachments(request.config), deps, env, request.stdin)
    if errors:
        raise CNIError(CLEANUP_FAILED, "GC could not remove everything", "; ".join(errors))


def _is_valid(valid: set[tuple[str, str]], cid: str, ifname: str) -> bool:
    # Files written by old host-local versions name only the container.
    return (cid, ifname) in valid or (not ifname and any(c == cid for c, _ in valid))


def _link_exists(deps: Deps, name: str) -> bool:
    try:
        return deps.net.link_exists(InterfaceName(name))
    except DomainError:  # a name no link can have
        return False


def collect(
    conf: NetConf,
    valid: set[tuple[str, str]] | Callable[[NetworkStores], set[tuple[str, str]]],
    deps: Deps,
    env: Mapping[str, str],
    stdin: bytes,
    alive_tag: Callable[[str], bool] | None = None,
) -> list[str]:
    """`valid` may be a function of the stores, evaluated under the network's lock, so that
    what is judged valid and what is removed are decided on the same state. `alive_tag` keeps
    an attachment known only by the tag of its unreadable record (a manual GC judges it by its
    veth); without it, such an attachment stays only if the runtime's list names it."""
    import os

    stores = NetworkStores(conf, teardown=True)
    errors: list[str] = []
    if not os.path.isdir(stores.ipam.dir):
        return errors
    # For the one log line (commands/report.py): who -> what went, and what no record named.
    gone: dict[str, list[str]] = {}
    released: list[str] = []
    strays: list[str] = []
    with stores.lock():
        if callable(valid):
            valid = valid(stores)
        records, bad = stores.state.scan()
        # An ADD still running was started after the runtime drew up its list: never ours to
        # remove (a crashed one is: its process is gone).
        valid = valid | {a.key for a in records if a.add_in_progress()}
        valid_tags = {attachment_tag(conf.name, cid, ifname) for cid, ifname in valid}
        for rec in bad:
            # Set aside whatever it was: it is kept for the operator and never read again.
            stores.state.set_aside(rec)
            if rec.tag and rec.tag not in valid_tags and not (alive_tag and alive_tag(rec.tag)):
                errors.extend(teardown(conf, stores, stand_in(conf.name, rec.tag), deps, env, stdin))
            elif rec.tag:
                valid_tags.add(rec.tag)
        for att in records:
            if not _is_valid(valid, att.container_id, att.ifname):
                what = gone.setdefault(report.owner(att.network, att.container_id, att.ifname), [])
                errors.extend(teardown(conf, stores, att, deps, env, stdin, removed=what))
        if conf.ipam.type == "host-local":
            for ip, (cid, ifname) in stores.ipam.reservations().items():
                if not _is_valid(valid, cid, ifname):
                    try:
                        stores.ipam.release(ip)
                        released.append(str(ip))
                    except OSError as exc:
                        errors.append(f"release {ip}: {exc}")
        keep = {HOST_VETH_PREFIX + tag for tag in valid_tags}
        try:
            ports = deps.net.bridge_ports(conf.bridge)
        except Exception as exc:
            errors.append(f"list ports of {conf.bridge}: {exc}")
            ports = []
        for port in ports:
            if port.startswith(HOST_VETH_PREFIX) and port not in keep:
                try:
                    if deps.net.delete_link(port):
                        strays.append(port)
                except Exception as exc:
                    errors.append(f"delete {port}: {exc}")
        try:
            # Guards of host veths that are gone guard nothing (whoever's they were: the ADD
            # that makes a guard makes its veth first, and a DEL removes the guard first).
            errors.extend(deps.firewall.gc_macspoof(lambda p: _link_exists(deps, p)))
        except Exception as exc:
            errors.append(f"macspoofchk: {exc}")
        remaining = stores.state.all()
        fw_net = network_fw(conf, network_subnets(conf))
        # The runtime's list counts even without a record of ours (lost, unreadable): like
        # its veth above, a valid attachment keeps its elements, and the network its rules.
        keep_tags = {a.tag for a in remaining} | valid_tags
        try:
            # With nothing kept, this also removes the network's own rules and elements.
            errors.extend(deps.firewall.gc(fw_net, keep_tags))
        except Exception as exc:
            errors.append(f"firewall: {exc}")
        if not keep_tags and not remaining and not stores.ipam.reservations():
            try:  # nothing of the network is left: nor is the bridge made for it
                deps.net.remove_bridge(conf.bridge, bridge_mark(conf.name))
            except Exception as exc:
                errors.append(f"bridge {conf.bridge}: {exc}")
    report.collected(conf.name, gone, released, strays, errors)
    return errors
