"""The desired state: the networks and attachments the records describe.

Each network's data dir holds its config as of its latest ADD and one record per attachment
(state.py). Only attachments whose ADD finished (phase ready) are desired: one still being
added is its ADD's business, one that crashed half-way is GC's.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from cni_bridge.domain import IPInterface
from cni_bridge.errors import CNIError
from cni_bridge.firewall.model import AttachmentFw, NetworkFw
from cni_bridge.netconf import NetConf, load_netconf
from cni_bridge.state import PHASE_READY, STATE_DIR, Attachment, StateStore, unusable_files


@dataclass(frozen=True)
class Member:
    """An attachment the host should carry."""

    record: Attachment
    fw: AttachmentFw

    @property
    def publishes4(self) -> bool:
        return bool(self.fw.port_mappings) and any(ip.version == 4 for ip in self.fw.ips)


@dataclass(frozen=True)
class Network:
    name: str
    data_dir: str
    conf: NetConf
    fw: NetworkFw
    members: tuple[Member, ...]
    gateways: tuple[IPInterface, ...]  # the bridge's addresses (gateway mode)

    @property
    def bridge(self) -> str:
        return self.conf.bridge

    @property
    def families(self) -> set[int]:
        return {ip.version for m in self.members for ip in m.fw.ips}


@dataclass
class Desired:
    networks: list[Network] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)  # records it cannot read
    unconfigured: list[str] = field(default_factory=list)  # networks whose config it cannot read


def stores(data_dir: str, only: str | None = None) -> Iterator[tuple[str, StateStore]]:
    """The networks with records in a data dir (the one definition admin.py uses too)."""
    try:
        names = sorted(os.listdir(data_dir))
    except (FileNotFoundError, NotADirectoryError):
        return
    for name in names:
        if only and name != only:
            continue
        net_dir = os.path.join(data_dir, name)
        if os.path.isdir(os.path.join(net_dir, STATE_DIR)):
            yield name, StateStore(net_dir)


def unreadable_records(store: StateStore) -> list[str]:
    """The records that cannot be read and the files set aside earlier (state.py: what `ls`
    and `status` name too)."""
    out = []
    for u in unusable_files(os.path.dirname(store.dir)):
        out.append(f"{u.path} cannot be read: {u.reason}" if u.reason else f"{u.path} was set aside")
    return out


def _member(conf: NetConf, att: Attachment) -> Member | None:
    from cni_bridge.commands.common import record_fw

    try:
        _, fw = record_fw(conf, att)
    except (ValueError, TypeError, KeyError):
        return None
    return Member(att, fw)


def _gateways(conf: NetConf, members: Iterable[Member]) -> tuple[IPInterface, ...]:
    """The bridge addresses ADD gave it: each result's gateway with its address's prefix."""
    if not conf.gateway_mode:
        return ()
    found: list[IPInterface] = []
    for m in members:
        result = m.record.result if isinstance(m.record.result, dict) else {}
        for ip in result.get("ips", []) or []:
            try:
                if not ip.get("gateway"):
                    continue
                addr = ipaddress.ip_interface(ip["address"])
                gw = ipaddress.ip_interface(f"{ip['gateway']}/{addr.network.prefixlen}")
            except (AttributeError, KeyError, TypeError, ValueError):
                continue
            if gw not in found:
                found.append(gw)
    return tuple(found)


def load(data_dirs: Iterable[str], only: str | None = None) -> Desired:
    from cni_bridge.plan import network_fw, network_subnets

    desired = Desired()
    for data_dir in dict.fromkeys(data_dirs):
        for name, store in stores(data_dir, only):
            desired.unreadable += [f"network {name}: {u}" for u in unreadable_records(store)]
            raw = store.load_network()
            try:
                conf = load_netconf(raw) if raw is not None else None
            except CNIError:
                conf = None
            if conf is None:
                desired.unconfigured.append(f"network {name}: its saved config cannot be read")
                continue
            members = []
            for att in store.all():
                if att.phase != PHASE_READY:
                    continue
                m = _member(conf, att)
                if m is None:
                    desired.unreadable.append(
                        f"network {name}: record of {att.container_id}/{att.ifname} cannot be read"
                    )
                    continue
                members.append(m)
            addresses = [
                ipaddress.ip_interface(ip) for m in members for ip in m.record.ips
            ]
            fw = network_fw(conf, network_subnets(conf, addresses))
            desired.networks.append(
                Network(name, data_dir, conf, fw, tuple(members), _gateways(conf, members))
            )
    return desired
