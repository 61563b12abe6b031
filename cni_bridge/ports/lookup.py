"""Who holds a port: the sockets of /proc/net/{tcp,tcp6,udp,udp6} (this network namespace's)
that a bind of a HoldKey would collide with, and the processes whose descriptors are those
sockets (/proc/<pid>/fd/* -> "socket:[<inode>]"). Parsing is pure; reading is two functions.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterable

from cni_bridge.ports.model import HoldKey
from cni_bridge.tuples import NamedTuple

TCP_LISTEN = 0x0A


# A NamedTuple, not a frozen dataclass: an ADD that finds its port taken imports this module,
# and with a dataclass the exec'd plugin would import dataclasses and inspect for its answer.
class SockEntry(NamedTuple):
    address: str
    port: int
    state: int
    inode: int


def _hex_address(text: str) -> str:
    """/proc/net's address: the kernel's 32-bit words printed in host (little-endian) order."""
    raw = bytes.fromhex(text)
    fixed = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return str(ipaddress.ip_address(fixed))


def parse_proc_net(text: str) -> list[SockEntry]:
    """The rows of one /proc/net/{tcp,tcp6,udp,udp6} file."""
    out = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 10:
            continue
        try:
            addr, port = fields[1].split(":")
            out.append(SockEntry(_hex_address(addr), int(port, 16), int(fields[3], 16), int(fields[9])))
        except ValueError:
            continue
    return out


def _overlaps(entry_addr: str, entry_v6_file: bool, key: HoldKey) -> bool:
    ip = ipaddress.ip_address(entry_addr)
    if key.family == 4:
        if entry_v6_file:
            # A dual-stack [::] socket, or one on a v4-mapped address, takes IPv4 ports too.
            if ip.is_unspecified:
                return True
            mapped = getattr(ip, "ipv4_mapped", None)
            if mapped is None:
                return False
            ip = mapped
        return key.wildcard or ip.is_unspecified or str(ip) == key.address
    if not entry_v6_file:
        return False  # our IPv6 sockets are IPV6_V6ONLY
    return key.wildcard or ip.is_unspecified or ip == ipaddress.ip_address(key.address)


def colliding(key: HoldKey, tables: Iterable[tuple[bool, list[SockEntry]]]) -> list[int]:
    """Inodes of the sockets a bind of `key` collides with; tables are (is the v6 file, rows)
    of the key's protocol. TCP: listeners only (held sockets are bound with SO_REUSEADDR)."""
    inodes = []
    for v6, rows in tables:
        for e in rows:
            if e.port != key.port or e.inode == 0:
                continue
            if key.protocol == "tcp" and e.state != TCP_LISTEN:
                continue
            if _overlaps(e.address, v6, key):
                inodes.append(e.inode)
    return inodes


def read_tables(protocol: str, proc_net: str = "/proc/net") -> list[tuple[bool, list[SockEntry]]]:
    tables = []
    for v6, suffix in ((False, ""), (True, "6")):
        try:
            with open(f"{proc_net}/{protocol}{suffix}") as f:
                tables.append((v6, parse_proc_net(f.read())))
        except OSError:
            continue
    return tables


def processes(inodes: Iterable[int], proc: str = "/proc") -> list[tuple[int, str]]:
    """(pid, command name) of every process with a descriptor on one of the sockets."""
    return sorted({p for found in by_inode(inodes, proc).values() for p in found})


def by_inode(inodes: Iterable[int], proc: str = "/proc") -> dict[int, list[tuple[int, str]]]:
    """For each socket inode, the (pid, command name) of the processes with a descriptor on it:
    one walk over every process's descriptors (~90 ms on a busy host), whatever their number."""
    links = {f"socket:[{i}]": i for i in inodes}
    found: dict[int, list[tuple[int, str]]] = {}
    if not links:
        return found
    for entry in os.listdir(proc):
        if not entry.isdigit():
            continue
        fd_dir = f"{proc}/{entry}/fd"
        try:
            names = os.listdir(fd_dir)
        except OSError:
            continue
        mine = set()
        for fd in names:
            try:
                inode = links.get(os.readlink(f"{fd_dir}/{fd}"))
            except OSError:
                continue
            if inode is not None:
                mine.add(inode)
        if not mine:
            continue
        try:
            # Bytes: anyone names their process as they like, UTF-8 or not.
            with open(f"{proc}/{entry}/comm", "rb") as f:
                comm = f.read().strip().decode(errors="backslashreplace")
        except OSError:
            comm = "?"
        for inode in mine:
            found.setdefault(inode, []).append((int(entry), comm))
    return {inode: sorted(pids) for inode, pids in found.items()}


def describe(holders: list[tuple[int, str]]) -> str:
    if not holders:
        return "a socket whose process is not visible here"
    return ", ".join(f"pid {pid} ({comm})" for pid, comm in holders)


def holders_of(key: HoldKey) -> list[tuple[int, str]]:
    """The processes holding sockets that `key` collides with, in this network namespace."""
    return processes(colliding(key, read_tables(key.protocol)))


def holders_of_each(keys: Iterable[HoldKey]) -> dict[HoldKey, list[tuple[int, str]]]:
    """holders_of for several keys with one walk over the processes (the holder's loop names
    the holders of every port that just failed at once, not one walk per port)."""
    keys = list(keys)
    tables = {p: read_tables(p) for p in {k.protocol for k in keys}}
    inodes = {k: colliding(k, tables[k.protocol]) for k in keys}
    owners = by_inode({i for found in inodes.values() for i in found})
    return {k: sorted({p for i in found for p in owners.get(i, [])}) for k, found in inodes.items()}
