"""STATUS (CNI 1.1): can this plugin add attachments to this network right now?

50 when it cannot (every address of a range set taken, the data dir not writable, nftables
unusable), 51 when it can only with limited connectivity (a family of the network is disabled
on the host), success otherwise.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping

from cni_bridge.commands.common import NetworkStores
from cni_bridge.commands.deps import Deps
from cni_bridge.errors import STATUS_LIMITED, STATUS_UNAVAILABLE, CNIError
from cni_bridge.netconf import NetConf
from cni_bridge.protocol.request import Request


def problems(conf: NetConf, deps: Deps) -> tuple[list[str], list[str]]:
    """(reasons it cannot add, reasons its connectivity is limited)."""
    fatal: list[str] = []
    limited: list[str] = []
    if conf.ipam.type == "host-local":
        fatal.extend(_data_dir_problems(conf.ipam.data_dir))
        if not fatal:
            from cni_bridge.ipam.allocator import free_count
            from cni_bridge.ipam.ranges import range_set_str

            sets = conf.effective_range_sets()
            stores = NetworkStores(conf)
            if os.path.isdir(stores.ipam.dir):
                from cni_bridge.ipam.disk import StoreUnusable

                try:
                    counts = free_count(stores.ipam, sets)
                except StoreUnusable as exc:  # ADD would fail on it (code 5)
                    fatal.append(str(exc))
                    counts = []
                for rs, free in zip(sets, counts, strict=False):
                    if free <= 0:
                        fatal.append(f"no IP addresses available in range set {range_set_str(rs)}")
    fw_problem = deps.firewall.status()
    if fw_problem:
        fatal.append(f"nftables unusable: {fw_problem}")
    families = {r.subnet.version for rs in conf.effective_range_sets() for r in rs}
    if 6 in families and _ipv6_disabled():
        limited.append("IPv6 is disabled on this host: the network's IPv6 range cannot be used")
    return fatal, limited


def _data_dir_problems(data_dir: str) -> list[str]:
    probe = data_dir
    while not os.path.isdir(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    # Try for real: permission bits say nothing for root, and a read-only mount says nothing
    # in them at all.
    try:
        fd, path = tempfile.mkstemp(prefix=".cni-bridge-status-", dir=probe)
    except OSError as exc:
        return [f"data dir {data_dir} is not writable: {exc.strerror}"]
    os.close(fd)
    os.unlink(path)
    return []


def _ipv6_disabled() -> bool:
    try:
        with open("/proc/sys/net/ipv6/conf/all/disable_ipv6") as f:
            return f.read().strip() == "1"
    except OSError:
        return True


def run(request: Request, conf: NetConf, env: Mapping[str, str], deps: Deps) -> None:
    fatal, limited = problems(conf, deps)
    if fatal:
        raise CNIError(STATUS_UNAVAILABLE, "; ".join(fatal))
    if limited:
        raise CNIError(STATUS_LIMITED, "; ".join(limited))
