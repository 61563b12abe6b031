"""The node agent as the benchmark sees it from outside: found, measured, started, stopped.

The agent is whatever `cni-bridge serve` process lives in the benchmark's host namespace (the
plugin starts it there on first use, or the benchmark starts it as the systemd unit would), with
all its descendants (pooled workers, any helper it forks). Found by namespace identity and
command line, never by process name alone, and only inside namespaces the benchmark created.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from tests.lab import procs
from tests.lab.netns import Netns

Json = dict[str, Any]


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def _ppid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def agents(host: Netns) -> list[int]:
    """The top `cni-bridge serve` processes in `host` (normally one)."""
    found = [ident[0] for ident in procs.in_netns([host]) if "serve" in _cmdline(ident[0])]
    tops = set(found)
    return sorted(p for p in found if _ppid(p) not in tops)


def group(host: Netns) -> list[int]:
    """The agents of `host` and all their descendants."""
    return sorted(pid for pid, _ in procs.with_descendants(agents(host)))


def _rollup(pid: int) -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
            key, _, rest = line.partition(":")
            if rest.strip().endswith("kB"):
                out[key] = int(rest.split()[0])
    except OSError:
        pass
    return out


def pss_kib(pid: int) -> int | None:
    """Proportional set size: a shared page counts 1/n in each of its n sharers, so the sum over
    the agent and its workers is what they cost together (RSS would count shared pages n times)."""
    return _rollup(pid).get("Pss")


def rss_kib(pid: int) -> int | None:
    """All the process's resident pages, shared or not: unlike PSS or private pages it does not
    move when a worker that shares its pages comes or goes, so it shows the agent's own growth."""
    return _rollup(pid).get("Rss")


def _status_field(pid: int, key: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _fd_targets(pid: int) -> list[str]:
    out = []
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                out.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
    return out


def _ns_links(pid: int) -> list[str]:
    out = []
    with contextlib.suppress(OSError):
        for kind in sorted(os.listdir(f"/proc/{pid}/ns")):
            with contextlib.suppress(OSError):
                out.append(os.readlink(f"/proc/{pid}/ns/{kind}"))
    return out


def snapshot(host: Netns) -> Json:
    """What the agent holds now: processes, threads, fds, PSS and namespaces (its own and its
    workers' /proc/PID/ns/* plus namespace descriptors they keep open)."""
    pids = group(host)
    tops = agents(host)
    fds: list[str] = []
    namespaces: set[str] = set()
    threads = pss = 0
    per_pid: Json = {}
    for pid in pids:
        targets = _fd_targets(pid)
        fds += targets
        links = _ns_links(pid)
        namespaces.update(links)
        namespaces.update(t for t in targets if t.split(":", 1)[0] in _NS_KINDS)
        t = _status_field(pid, "Threads") or 0
        p = pss_kib(pid) or 0
        r = rss_kib(pid) or 0
        threads += t
        pss += p
        per_pid[str(pid)] = {"role": "agent" if pid in tops else "descendant", "fds": len(targets),
                             "threads": t, "pss_kib": p, "rss_kib": r}
    return {
        "agents": len(tops),
        "processes": len(pids),
        "threads": threads,
        "fds": len(fds),
        "fd_kinds": _kinds(fds),
        "pss_kib": pss,
        "agent_rss_kib": sum(v["rss_kib"] for v in per_pid.values() if v["role"] == "agent"),
        "namespaces": len(namespaces),
        "namespace_ids": sorted(namespaces),
        "per_pid": per_pid,
    }


_NS_KINDS = {"mnt", "net", "user", "pid", "uts", "ipc", "cgroup", "time"}


def _kinds(targets: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in targets:
        kind = t.split(":", 1)[0] if ":" in t and not t.startswith("/") else (
            "file" if t.startswith("/") else t)
        out[kind] = out.get(kind, 0) + 1
    return dict(sorted(out.items()))


def stop(host: Netns, grace: float = 5.0) -> None:
    """SIGTERM the agents of `host` (they finish running requests), SIGKILL what is left."""
    victims = procs.with_descendants(agents(host))
    procs.kill(victims, grace=grace)


def start_like_unit(host: Netns, binary: str, timeout: float = 10.0) -> subprocess.Popen[bytes]:
    """`<binary> serve --idle 0` the way build/cni-bridge.service's ExecStart runs it: root, a
    clean environment (systemd's default PATH only), stdin on /dev/null, logs to stderr (the
    journal there; discarded here). systemd is not running on this machine, so the benchmark
    plays its part, inside the host namespace. Returns once the agent listens."""
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
    proc = subprocess.Popen(
        host.command(binary, "serve", "--idle", "0"), env=env, stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, cwd="/",
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"`{binary} serve` exited with {proc.returncode} at start")
        if listening(host, proc.pid):
            return proc
        time.sleep(0.02)
    raise RuntimeError(f"`{binary} serve` did not listen within {timeout} s")


def listening(host: Netns, pid: int) -> bool:
    """Whether process `pid` (in `host`) holds a listening unix socket."""
    inodes = {t[len("socket:["):-1] for t in _fd_targets(pid) if t.startswith("socket:[")}
    if not inodes:
        return False
    try:
        table = Path(f"/proc/{pid}/net/unix").read_text().splitlines()[1:]
    except OSError:
        return False
    # Columns: Num RefCount Protocol Flags Type St Inode Path; flag 00010000 is __SO_ACCEPTCON.
    return any(
        len(cols) >= 7 and cols[6] in inodes and int(cols[3], 16) & 0x10000
        for cols in (line.split() for line in table)
    )
