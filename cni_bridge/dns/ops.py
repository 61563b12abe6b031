"""What ADD and DEL do to the name service, behind a Protocol (unit tests pass a fake).

The caller holds the network's lock, so one network's file is edited by one process at a time;
the server is reconciled under the host-wide lock of aardvark.py.
"""

from __future__ import annotations

from collections.abc import Sequence

from cni_bridge.dns.aardvark import Aardvark
from cni_bridge.dns.names import (
    Entry,
    NetworkDNS,
    owned,
    parse_entries,
    render,
    replaced,
    resolvers,
)
from cni_bridge.domain import IPAddress
from cni_bridge.hints import Protocol
from cni_bridge.netconf import NetConf

RESOLV_CONF = "/etc/resolv.conf"


def upstream(conf: NetConf) -> list[IPAddress]:
    """Where containerDNS forwards the names it does not know: `upstream`, else the resolvers
    of /etc/resolv.conf as this process sees it (Docker's embedded DNS reads the host's file
    the same way). Written into the network's file (aardvark-dns's network-scoped servers), so
    what counts is the plugin's view, not the mount namespace the server happens to run in."""
    if conf.container_dns is None:
        return []
    if conf.container_dns.upstream:
        return list(conf.container_dns.upstream)
    try:
        with open(RESOLV_CONF) as f:
            return resolvers(f.read())
    except OSError:
        return []


class DnsOps(Protocol):
    def publish(self, net: NetworkDNS, entry: Entry) -> None:
        """The container's names answer once this returns."""

    def withdraw(self, network: str, container_id: str, ips: Sequence[str]) -> None:
        """The container's names on the network are gone once this returns."""

    def check(
        self, network: str, container_id: str, ips: Sequence[str], names: Sequence[str]
    ) -> list[str]:
        """CHECK: what is not as ADD left it (messages)."""


class AardvarkOps:
    def __init__(self, server: Aardvark | None = None) -> None:
        self.server = server or Aardvark()

    def publish(self, net: NetworkDNS, entry: Entry) -> None:
        old = parse_entries(self.server.read(net.name) or "")
        # Line 1 always as the network's config says now (gateways, upstream).
        text = render(net, replaced(old, entry, entry.id, entry.ips))
        with self.server.lock():
            self.server.write(net.name, text)
            self.server.reconcile(must=net.listen)

    def withdraw(self, network: str, container_id: str, ips: Sequence[str]) -> None:
        text = self.server.read(network)
        if text is None:
            return
        left = replaced(parse_entries(text), None, container_id, ips)
        header = text.split("\n", 1)[0]
        with self.server.lock():
            # A network whose last container left has no file: nothing listens for it.
            self.server.write(network, "".join(f"{x}\n" for x in [header, *(e.line() for e in left)]) if left else None)
            # Not started here if it is not running: DEL must not fail for want of a server
            # (the next ADD or the agent starts it).
            self.server.reconcile(start=False)

    def check(
        self, network: str, container_id: str, ips: Sequence[str], names: Sequence[str]
    ) -> list[str]:
        text = self.server.read(network)
        where = self.server.path(network)
        problems: list[str] = []
        mine = [e for e in parse_entries(text or "") if owned(e, container_id, ips)]
        if text is None:
            problems.append(f"containerDNS: {where} is missing")
        elif not mine:
            problems.append(f"containerDNS: {where} has no entry for container {container_id}")
        else:
            lost = [n for n in names if not any(n in e.names for e in mine)]
            if lost:
                problems.append(f"containerDNS: names {lost} are missing from {where}")
        if self.server.pid() is None:
            problems.append(f"containerDNS: aardvark-dns is not running for {self.server.dir}")
        return problems
