"""The agent's ruleset watch: a sync within seconds of any change to the host's ruleset.

A child process the agent forks at start and restarts when it dies (ports/supervisor.py; the
agent's parent stays single-threaded and only forks, reaps and signals). It subscribes to the
netlink group NFNLGRP_NFTABLES (nfgen.py), which announces every committed nftables transaction,
iptables-nft's included: `nft flush ruleset`, a firewalld reload and `iptables -F` alike. Each
transaction ends with the new generation and the process that committed it; the watch ignores
its own commits (by generation: it notes the generation after its own sync) and those of the
agent's workers (the committing pid is a child of the agent), waits for a burst to end (DEBOUNCE
quiet, at most MAX_DELAY), then syncs every data dir in use and logs each drift it healed. It
also syncs at start and every RESYNC_EVERY seconds, for what no ruleset event announces (a
deleted bridge, a reset sysctl).

It holds a lock in the agent's directory for its life, with its pid in it: `status` tells from
it whether healing is automatic here, and a second agent's watch waits instead of competing.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import select
import signal
import socket
import time
import traceback
from typing import NoReturn

from cni_bridge.ports import lockfile
from cni_bridge.ports.supervisor import Supervisor

DEBOUNCE = 0.3  # seconds without a ruleset change before a sync
MAX_DELAY = 2.0  # a change is acted on within this long even if changes keep coming
RESYNC_EVERY = 60.0
PROGRAM = "cni-bridge"  # the committing process's name (comm) of our bundle, as exec'd
LOCK_PREFIX = "watch-"  # watch-<netns inode>.lock in the agent's directory
PR_SET_PDEATHSIG = 1


def _log(message: str) -> None:
    from cni_bridge.resident.worker import log

    log(f"watch: {message}")


def lock_path(create: bool = False) -> str:
    from cni_bridge.resident.naming import agent_dir

    directory = agent_dir(create)
    return directory and f"{directory}/{LOCK_PREFIX}{os.stat('/proc/self/ns/net').st_ino}.lock"


def watcher_pid() -> int:
    """The pid of the watch of this network namespace, 0 when none runs."""
    path = lock_path()
    if not path:
        return 0
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return 0
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return 0  # nobody holds it
    except BlockingIOError:
        try:
            return int(os.read(fd, 32).strip() or 0)
        except ValueError:
            return 0
    finally:
        os.close(fd)


def healing() -> str:
    pid = watcher_pid()
    if pid:
        return f"automatic: the agent's ruleset watch (pid {pid}) syncs within seconds of a change"
    return (
        "manual: no agent watches the ruleset here; run `cni-bridge sync` after a firewall "
        "reload (ADD, DEL and CHECK heal what their own read shows)"
    )


WATCH_VAR = "CNI_BRIDGE_WATCH"  # "0": the agent does not watch (healing is then manual)


def supervisor(enabled: bool) -> Supervisor:
    on = enabled and os.environ.get(WATCH_VAR, "1") != "0"
    return Supervisor(child_main, enabled=on, label="the ruleset watch")


# ---------------------------------------------------------------- the child


def child_main() -> NoReturn:
    """The watch process, right after the agent forked it; never returns."""
    code = 1
    try:
        import ctypes

        from cni_bridge.ports.holder import _detach_from_agent

        agent = os.getppid()
        _detach_from_agent()
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != agent:
            os._exit(0)
        code = Watch(agent).run()
    except BaseException:
        _log(f"failed:\n{traceback.format_exc()}")
    os._exit(code)


def _parent_of(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat", errors="replace") as f:  # any name
            stat = f.read()
    except OSError:
        return 0
    return int(stat[stat.rfind(")") + 2 :].split()[1])


class Watch:
    def __init__(self, agent: int) -> None:
        self.agent = agent
        self.own_gen = -1  # the generation after our own last sync

    def ours(self, gen_id: int, pid: int, name: str = "") -> bool:
        if gen_id == self.own_gen or pid in (os.getpid(), self.agent):
            return True
        if name == PROGRAM:
            # Our plugin run in-process (no agent reached) or an operator's `cni-bridge sync`:
            # it writes what its records say, so there is nothing to heal; reacting to it made
            # every cold ADD cost a full sync, which at hundreds of attachments kept this
            # process busy and the networks' locks held.
            return True
        return pid != 0 and _parent_of(pid) == self.agent  # a worker of our agent

    def run(self) -> int:
        from cni_bridge.converge import nfgen

        path = lock_path(create=True)
        if not path:
            _log("the agent's directory is not usable; not watching")
            time.sleep(RESYNC_EVERY)  # the supervisor would restart us at once
            return 1
        # A watch killed with its namespace (or its agent) leaves its lock file: the next watch
        # to start removes those nobody holds, as the holder and the agent do with theirs.
        lockfile.sweep(os.path.dirname(path), LOCK_PREFIX)
        # another agent's watch: wait for it to end (take() also re-checks the file is still
        # the one at the path, as a sweep may remove it meanwhile)
        lock = lockfile.take(path, lambda: True)
        if lock is None:  # never: keep_waiting always says yes
            return 1
        os.ftruncate(lock, 0)
        os.pwrite(lock, f"{os.getpid()}\n".encode(), 0)
        sock = nfgen.subscribe()
        _log("watching the ruleset")
        self.heal("start")
        last = time.monotonic()
        while True:
            if not select.select([sock], [], [], max(0.0, last + RESYNC_EVERY - time.monotonic()))[0]:
                self.heal("periodic")
                last = time.monotonic()
                continue
            first = time.monotonic()
            who = self.drain(sock)
            # A burst (a firewalld reload, a Docker restart) is one change: wait for it to end.
            while time.monotonic() - first < MAX_DELAY and select.select([sock], [], [], DEBOUNCE)[0]:
                who |= self.drain(sock)
            if who:
                healing = time.monotonic()
                self.heal("ruleset changed by " + ", ".join(sorted(who)))
                # At most half of the time healing, however often a foreign program commits:
                # what it changes meanwhile is seen (queued on the socket) after the pause.
                time.sleep(min(time.monotonic() - healing, MAX_DELAY))
                last = time.monotonic()

    def drain(self, sock: socket.socket) -> set[str]:
        """The foreign committers of the changes queued on the socket."""
        from cni_bridge.converge import nfgen

        who: set[str] = set()
        while True:
            try:
                buf = sock.recv(1 << 16)
            except BlockingIOError:
                return who
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:  # events lost: something changed
                    who.add("(events lost)")
                    continue
                raise
            gens, _ = nfgen.parse(buf)
            for g in gens:
                if not self.ours(g.id, g.pid, g.name):
                    who.add(f"{g.name or '?'}[{g.pid}]")

    def heal(self, why: str) -> None:
        from cni_bridge import datadirs
        from cni_bridge.commands.deps import real_deps
        from cni_bridge.converge import nfgen
        from cni_bridge.converge.sync import sync

        started = time.monotonic()
        deps = real_deps({})
        try:
            report = sync(datadirs.in_use(), deps)
        except Exception as exc:
            _log(f"sync after {why} failed: {exc}")
            return
        finally:
            deps.close()
        with contextlib.suppress(OSError):
            self.own_gen = nfgen.current()
        took = (time.monotonic() - started) * 1000
        for line in report.healed:
            _log(f"healed ({why}): {line}")
        for line in report.errors + report.remaining:
            _log(f"not healed ({why}): {line}")
        if report.healed or report.errors:
            _log(f"sync after {why}: {len(report.healed)} repair(s) in {took:.0f} ms")
