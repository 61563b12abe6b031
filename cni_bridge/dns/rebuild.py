"""The name service from the attachment records, and the agent's supervision of the server.

After a reboot (`/run` is empty) or a crash of the server, `rebuild` writes every containerDNS
network's file again from what the records say (the network's config saved at its latest ADD,
each live attachment's addresses and names) and starts or reloads the server: the one function
an agent start, `cni-bridge sync` or an operator calls. `supervise` is the agent's cheap
periodic look: files and no server, start it.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Iterable

from cni_bridge.dns.aardvark import Aardvark, DNSServerError
from cni_bridge.dns.names import Entry, NetworkDNS, entry, render
from cni_bridge.dns.ops import upstream
from cni_bridge.domain import IPAddress, container_id_problem, dns_name_problem
from cni_bridge.errors import CNIError
from cni_bridge.ipam.disk import DiskStore
from cni_bridge.log import getLogger
from cni_bridge.netconf import NetConf, load_netconf
from cni_bridge.plan import dns_gateways
from cni_bridge.state import PHASE_READY, STATE_DIR, Attachment, StateStore, boot_id

log = getLogger(__name__)


def _live(att: Attachment) -> bool:
    """Ready, from this boot, and its host veth is in this namespace (it dies with its
    container's namespace); or its ADD is running right now: that ADD may have published its
    names already (it publishes before it writes "ready"), and a rebuild must not drop them."""
    if not att.dns_names or not att.ips:
        return False
    if att.add_in_progress():
        return True
    if att.phase != PHASE_READY or att.boot_id != boot_id():
        return False
    try:
        socket.if_nametoindex(att.host_veth)
    except OSError:
        return False
    return True


def _checked_entry(att: Attachment) -> Entry | None:
    """The record's line, by the rules ADD's names obey (a record is a file, read, not
    trusted: a space, comma or newline would break aardvark-dns's file, or add a line)."""
    if container_id_problem(att.container_id) is not None:
        log.warning("dns rebuild: record of container %r: not a container ID, left out",
                    att.container_id)
        return None
    names = [n.lower() for n in att.dns_names if dns_name_problem(n) is None]
    if len(names) < len(att.dns_names):
        log.warning("dns rebuild: container %s: names that are not DNS names left out",
                    att.container_id)
    return entry(att.container_id, att.ips, list(dict.fromkeys(names))) if names else None


def _gateways(att: Attachment) -> list[IPAddress]:
    ips = (att.result or {}).get("ips", [])
    out: list[IPAddress] = []
    for ip in ips if isinstance(ips, list) else []:
        try:
            out.append(ipaddress.ip_address(ip["gateway"]))
        except (TypeError, KeyError, ValueError):  # a record's result: read, not trusted
            continue
    return out


def network_file(conf: NetConf, records: Iterable[Attachment], upstream: Iterable[str]) -> str | None:
    """A network's file from its records; None when no live container has names."""
    live = [a for a in records if _live(a)]
    entries = [e for e in map(_checked_entry, live) if e is not None]
    if not entries or conf.container_dns is None:
        return None
    # As ADD listens: the config's gateways; a delegated IPAM's only from the results.
    listen = list(dns_gateways(conf))
    listen = listen or list(dict.fromkeys(g for a in live for g in _gateways(a)))
    if not listen:
        return None
    net = NetworkDNS(
        conf.name, tuple(listen), tuple(ipaddress.ip_address(u) for u in upstream)
    )
    return render(net, entries)


def _upstream(conf: NetConf) -> list[str]:
    return [str(a) for a in upstream(conf)]


def rebuild(data_dirs: Iterable[str] | None = None, server: Aardvark | None = None) -> list[str]:
    """Every containerDNS network of `data_dirs` (default: those in use, datadirs.py) as its
    records say, then the server started or reloaded (ended if no network is left). Files of
    networks kept elsewhere are left as they are. Returns what went wrong, one message per
    problem (empty: all done)."""
    from cni_bridge import datadirs

    server = server or Aardvark()
    if data_dirs is None:
        data_dirs = datadirs.in_use()
    problems: list[str] = []
    for data_dir in data_dirs:
        try:
            names = sorted(os.listdir(data_dir))
        except OSError:
            continue
        for name in names:
            net_dir = os.path.join(data_dir, name)
            if not os.path.isdir(os.path.join(net_dir, STATE_DIR)):
                continue
            snapshot = StateStore(net_dir).load_network()
            if not snapshot or not snapshot.get("containerDNS"):
                continue
            try:
                conf = load_netconf(snapshot)
            except CNIError as exc:
                problems.append(f"network {name}: {exc.msg}")
                continue
            store = DiskStore(conf.name, data_dir)
            with store.lock():  # as ADD and DEL edit the file: one writer per network
                text = network_file(conf, StateStore(store.dir).all(), _upstream(conf))
                with server.lock():
                    server.write(conf.name, text)
    with server.lock():
        try:
            server.reconcile()
        except DNSServerError as exc:
            problems.append(str(exc))
    for p in problems:
        log.warning("dns rebuild: %s", p)
    return problems


def supervise(server: Aardvark | None = None) -> str | None:
    """Starts the server if it has networks and is not running (it died, or was killed);
    what went wrong, if anything. Cheap when all is well: a directory listing and a pid check."""
    server = server or Aardvark()
    if not server.networks() or server.pid() is not None:
        return None
    with server.lock():
        try:
            server.reconcile()
        except DNSServerError as exc:
            log.warning("dns supervise: %s", exc)
            return str(exc)
    return None
