"""GC (CNI 1.1): remove everything of this network that belongs to no valid attachment.

Covers what a record lists and what no record lists: reservations made by another plugin or by an
ADD killed before its record, and host veths on the bridge left by a crash. Continues past errors
and reports them together.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from cni_bridge.commands import report
from cni_bridge.commands.common import NetworkStores
from cni_bridge.commands.deps import Deps
from cni_bridge.commands.teardown import teardown
from cni_bridge.config import NetConf
from cni_bridge.errors import CLEANUP_FAILED, INVALID_CONFIG, CNIError
from cni_bridge.plan import network_fw, network_subnets
from cni_bridge.protocol.request import Request
from cni_bridge.state import HOST_VETH_PREFIX, attachment_tag, host_veth_name

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


def collect(
    conf: NetConf,
    valid: set[tuple[str, str]] | Callable[[NetworkStores], set[tuple[str, str]]],
    deps: Deps,
    env: Mapping[str, str],
    stdin: bytes,
) -> list[str]:
    """`valid` may be a function of the stores, evaluated under the network's lock, so that
    what is judged valid and what is removed are decided on the same state."""
    import os

    stores = NetworkStores(conf)
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
        # An ADD still running was started after the runtime drew up its list: never ours to
        # remove (a crashed one is: its process is gone).
        valid = valid | {a.key for a in stores.state.all() if a.add_in_progress()}
        for att in stores.state.all():
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
        keep = {host_veth_name(conf.name, cid, ifname) for cid, ifname in valid}
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
        remaining = stores.state.all()
        fw_net = network_fw(conf, network_subnets(conf))
        # The runtime's list counts even without a record of ours (lost, unreadable): like
        # its veth above, a valid attachment keeps its elements, and the network its rules.
        keep_tags = {a.tag for a in remaining} | {
            attachment_tag(conf.name, cid, ifname) for cid, ifname in valid
        }
        try:
            # With nothing kept, this also removes the network's own rules and elements.
            errors.extend(deps.firewall.gc(fw_net, keep_tags))
        except Exception as exc:
            errors.append(f"firewall: {exc}")
    report.collected(conf.name, gone, released, strays, errors)
    return errors

