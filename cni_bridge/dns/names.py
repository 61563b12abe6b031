"""The names a container gets and aardvark-dns's config file of one network. Pure.

aardvark-dns 1.4 reads one file per network, named after it: line 1 the comma-separated
addresses to listen on, optionally a space and comma-separated upstream servers for the
network's containers; then `<id> <ipv4,...> <ipv6,...> <name,...>` per container (an empty
column for a family it lacks). It matches names exactly (lower-cased), so both `name` and
`name.<domain>` are listed. A file it cannot parse ends the server at its next reload, so
every value written here has been checked.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

from cni_bridge.domain import MAX_DNS_NAME, IPAddress, dns_name_problem
from cni_bridge.tuples import NamedTuple

SHORT_ID = 12  # as Docker and podman shorten container IDs


# NamedTuples, not frozen dataclasses: the same immutable, hashable records, without the six
# methods a frozen dataclass compiles at import (~2.5 M instructions each of every cold exec).
class Entry(NamedTuple):
    """One container of a network: its ID, addresses and names."""

    id: str
    v4: tuple[str, ...]
    v6: tuple[str, ...]
    names: tuple[str, ...]

    def line(self) -> str:
        return f"{self.id} {','.join(self.v4)} {','.join(self.v6)} {','.join(self.names)}"

    @property
    def ips(self) -> set[str]:
        return {*self.v4, *self.v6}


class NetworkDNS(NamedTuple):  # a NamedTuple: see Entry
    """What a network's file says before its containers."""

    name: str
    listen: tuple[IPAddress, ...]
    upstream: tuple[IPAddress, ...]

    def header(self) -> str:
        line = ",".join(str(a) for a in self.listen)
        if self.upstream:
            line += " " + ",".join(str(a) for a in self.upstream)
        return line


def entry(container_id: str, ips: Iterable[str], names: Sequence[str]) -> Entry:
    """`ips` as records keep them (address/prefix or bare)."""
    addrs = [ipaddress.ip_interface(ip).ip for ip in ips]
    return Entry(
        id=container_id.lower(),
        v4=tuple(str(a) for a in addrs if a.version == 4),
        v6=tuple(str(a) for a in addrs if a.version == 6),
        names=tuple(names),
    )


def container_names(
    container_id: str, pod_name: str, aliases: Sequence[str], domain: str
) -> tuple[list[str], list[str]]:
    """(names, problems): the container name the runtime passed (K8S_POD_NAME), the aliases
    and the short ID, each bare and under `domain`; and what was left out, and why. An alias
    that is not a DNS name is the caller's error; an unusable pod name is only skipped."""
    bases: list[str] = []
    problems: list[str] = []
    bad_aliases = [a for a in aliases if dns_name_problem(a) is not None]
    if bad_aliases:
        problems.append(f"aliases {bad_aliases}: not DNS names")
    if pod_name and dns_name_problem(pod_name) is None:
        bases.append(pod_name)
    elif pod_name:
        problems.append(f"container name {pod_name!r}: not a DNS name, left out")
    bases += [a for a in aliases if a not in bad_aliases]
    short = container_id[:SHORT_ID]
    if dns_name_problem(short) is None:
        bases.append(short)
    names: list[str] = []
    for base in dict.fromkeys(b.lower() for b in bases):
        names.append(base)
        if domain and len(base) + 1 + len(domain) <= MAX_DNS_NAME:
            names.append(f"{base}.{domain}")
    return list(dict.fromkeys(names)), problems


def render(net: NetworkDNS, entries: Sequence[Entry]) -> str:
    return "".join(f"{line}\n" for line in [net.header(), *(e.line() for e in entries)])


def parse_entries(text: str) -> list[Entry]:
    """The container lines of a file we wrote (line 1 is skipped; malformed lines dropped)."""
    out: list[Entry] = []
    for line in text.split("\n")[1:]:
        parts = line.split(" ")
        if len(parts) < 4 or not parts[0] or not parts[3]:
            continue
        out.append(
            Entry(
                id=parts[0],
                v4=tuple(filter(None, parts[1].split(","))),
                v6=tuple(filter(None, parts[2].split(","))),
                names=tuple(filter(None, parts[3].split(","))),
            )
        )
    return out


def parse_listen(text: str) -> list[IPAddress]:
    """The addresses line 1 of a file names."""
    first = text.split("\n", 1)[0].split(" ")[0]
    out: list[IPAddress] = []
    for part in filter(None, first.split(",")):
        try:
            out.append(ipaddress.ip_address(part))
        except ValueError:
            continue
    return out


def owned(e: Entry, container_id: str, ips: Iterable[str]) -> bool:
    """Whether `e` is this attachment's line. A container may have one line per interface on
    a network: only the lines that share an address with this attachment (or have none) are
    its own."""
    mine = {str(ipaddress.ip_interface(ip).ip) for ip in ips}
    return e.id == container_id.lower() and (not e.ips or bool(e.ips & mine))


def replaced(
    entries: Sequence[Entry], new: Entry | None, container_id: str, ips: Iterable[str]
) -> list[Entry]:
    """`entries` without the attachment's earlier line(s), plus `new`."""
    ips = list(ips)
    kept = [e for e in entries if not owned(e, container_id, ips)]
    return kept + ([new] if new is not None else [])


def resolvers(resolv_conf: str) -> list[IPAddress]:
    """The nameserver lines of a resolv.conf that aardvark-dns can take (no scoped addresses)."""
    out: list[IPAddress] = []
    for line in resolv_conf.splitlines():
        parts = line.split("#", 1)[0].split(";", 1)[0].split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            try:
                ip = ipaddress.ip_address(parts[1])
            except ValueError:
                continue
            # "fe80::1%eth0": Python takes the scope, aardvark-dns 1.4 cannot parse it (and a
            # file it cannot parse ends the server).
            if getattr(ip, "scope_id", None) is None:
                out.append(ip)
    return list(dict.fromkeys(out))
