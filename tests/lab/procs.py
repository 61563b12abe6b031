"""Processes of a lab: found by namespace identity, told apart by start time, killed by pid.

Never by name: only processes living in namespaces the lab created (a warm resident a plugin
started there, a test server) or started by the lab itself are ever signalled, and a pid the
kernel reused for an unrelated process no longer matches its recorded start time.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from tests.lab import netns
from tests.lab.netns import Netns

Identity = tuple[int, str]  # (pid, start time in clock ticks since boot)


def _stat_fields(pid: int) -> list[str] | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: fields start after the last ')'.
    return stat.rsplit(")", 1)[1].split()


def identity(pid: int) -> Identity | None:
    fields = _stat_fields(pid)
    return None if fields is None else (pid, fields[19])


def alive(ident: Identity) -> bool:
    """Still the same process, and running (a zombie has done all it will)."""
    fields = _stat_fields(ident[0])
    return fields is not None and fields[19] == ident[1] and fields[0] != "Z"


def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


NsIdentity = tuple[int, int]  # a namespace's nsfs (device, inode)

# Every network namespace a lab of this process created, by nsfs identity: a process still in
# one after the lab deleted its name is one the lab missed (see `orphans`).
CREATED: dict[NsIdentity, str] = {}


def in_netns(namespaces: Sequence[Netns]) -> dict[Identity, Netns]:
    """Processes whose network namespace is one of `namespaces` (matched by nsfs identity)."""
    return in_identities({ident: ns for ns in namespaces if (ident := ns.identity()) is not None})


def in_identities(wanted: dict[NsIdentity, Netns]) -> dict[Identity, Netns]:
    """Processes whose network namespace has one of these nsfs identities: also after the
    namespace lost its name, for as long as a process keeps it alive."""
    found: dict[Identity, Netns] = {}
    if not wanted:
        return found
    for pid in _pids():
        if pid == os.getpid():
            continue
        try:
            st = os.stat(f"/proc/{pid}/ns/net")
        except OSError:
            continue
        ns = wanted.get((st.st_dev, st.st_ino))
        if ns is not None and (proc := identity(pid)) is not None:
            found[proc] = ns
    return found


def with_descendants(roots: Iterable[int]) -> set[Identity]:
    """The processes and all their descendants (a runtime's containers live deeper)."""
    children: dict[int, list[int]] = {}
    for pid in _pids():
        fields = _stat_fields(pid)
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(pid)
    found = set(roots)
    stack = list(found)
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    found.discard(os.getpid())
    return {ident for pid in found if (ident := identity(pid)) is not None}


def kill(victims: Iterable[Identity], *, grace: float = 0.0, timeout: float = 5.0) -> list[int]:
    """SIGTERM and `grace` seconds to exit when grace > 0, then SIGKILL; the pids still alive
    after `timeout` more seconds (none, unless something is stuck in the kernel)."""
    left = {v for v in victims if alive(v)}
    steps = ([(signal.SIGTERM, grace)] if grace > 0 else []) + [(signal.SIGKILL, timeout)]
    for sig, wait in steps:
        for pid, _ in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while left and time.monotonic() < deadline:
            time.sleep(0.05)
            left = {v for v in left if alive(v)}
        if not left:
            break
    return sorted(pid for pid, _ in left)


def peak_rss_kib(pid: int) -> int | None:
    """VmHWM of a live process (its peak resident set), or None when it is gone."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def orphans() -> dict[Identity, str]:
    """Processes in a network namespace a lab created and has since deleted: started inside it
    after the lab's last look (an agent a late plugin call spawned), they keep it alive."""
    named = {ident for ns in netns.named() if (ident := ns.identity()) is not None}
    gone = {ident: Netns(name) for ident, name in CREATED.items() if ident not in named}
    found = in_identities(gone)
    # A deleted namespace nobody is in is freed, and the kernel may give its nsfs inode to a
    # namespace made later (another test's): forgotten now, a process of that one is never
    # taken for one left in this (seen: a process another test was ending, reported as left
    # in a namespace of test_nodes deleted tests before).
    inhabited = {ns.name for ns in found.values()}
    for ident, ns in gone.items():
        if ns.name not in inhabited:
            CREATED.pop(ident, None)
    return {proc: ns.name for proc, ns in found.items()}


def children(pid: int) -> set[int]:
    """The pids of `pid`'s living children (and zombies), from the kernel's per-thread lists."""
    out: set[int] = set()
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            out.update(int(c) for c in f.read().split())
    return out


def zombie_children(parent: int) -> list[int]:
    """The children of `parent` that have exited and wait to be reaped."""
    return [
        pid
        for pid in _pids()
        if (fields := _stat_fields(pid)) is not None and fields[0] == "Z" and int(fields[1]) == parent
    ]


def command_line(pid: int) -> str:
    """Its argv joined by spaces; "" once it is gone."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""
