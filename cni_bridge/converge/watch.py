"""The agent's ruleset watch: a sync within seconds of any change to the host's ruleset.

A source in the agent's parent loop (resident/pool.py), not a process of its own: a resident
watch process cost ~13 MiB of private pages for a socket that is read a few times a minute. The
parent subscribes to the netlink group NFNLGRP_NFTABLES (nfgen.py), which announces every
committed nftables transaction, iptables-nft's included: `nft flush ruleset`, a firewalld reload
and `iptables -F` alike, and reads it without blocking when the socket is readable. Each
transaction ends with the process that committed it; the watch ignores the agent's own children
(its workers, its heals: alive, or reaped within RECENT seconds) and our plugin's program name,
waits for a burst of foreign commits to end (DEBOUNCE quiet, at most MAX_DELAY), then forks a
heal: a short-lived child that syncs every data dir in use, logs each drift it healed and exits
(the sync takes the networks' flocks and may take seconds, which the parent must never wait
for). It also heals at start and every RESYNC_EVERY seconds, for what no ruleset event announces
(a deleted bridge, a reset sysctl); one heal at a time, and after a heal at least as long a pause
(at most MAX_DELAY), however often others commit.

The agent holds a lock in its directory while it watches, with its pid in it: `status` tells from
it whether healing is automatic here, and a second agent's watch waits (tries again every
RETRY seconds) instead of competing.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import math
import os
import socket
import time

from cni_bridge.ports import lockfile
from cni_bridge.resident.duty import end_child, run_child

DEBOUNCE = 0.3  # seconds without a ruleset change before a sync
MAX_DELAY = 2.0  # a change is acted on within this long even if changes keep coming
RESYNC_EVERY = 60.0
RETRY = 1.0  # taking the lock (another agent's watch) or subscribing again after a failure
RECENT = 30.0  # a reaped child's commits still count as ours this long (read after its end)
PROGRAM = "cni-bridge"  # the committing process's name (comm) of our bundle, as exec'd
LOCK_PREFIX = "watch-"  # watch-<netns inode>.lock in the agent's directory


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


def duty(enabled: bool) -> Watch:
    return Watch(enabled=enabled and os.environ.get(WATCH_VAR, "1") != "0")


def _parent_of(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat", errors="replace") as f:  # any name
            stat = f.read()
    except OSError:
        return 0
    return int(stat[stat.rfind(")") + 2 :].split()[1])


class Watch:
    """The duty in the agent's parent (resident/duty.Duty): nothing here blocks."""

    def __init__(self, enabled: bool = True) -> None:
        self.stopping = not enabled
        self.pid = 0  # the heal running now
        self.lock = -1
        self.sock: socket.socket | None = None
        self.next_try = 0.0  # when to take the lock and subscribe (again)
        self.who: set[str] = set()  # the foreign committers since the last heal started
        self.burst = -1.0  # when the first of them committed (-1: none pending)
        self.quiet_at = 0.0  # DEBOUNCE after the last message of the burst
        self.healed = -math.inf  # the end of the last heal (-inf: the first heal is due)
        self.not_before = 0.0
        self.started = 0.0  # the running heal's start
        self.recent: dict[int, float] = {}  # the agent's children reaped lately -> when

    # ------------------------------------------------------------ the duty's interface

    def fds(self) -> tuple[int, ...]:
        return (self.sock.fileno(),) if self.sock is not None else ()

    def due_in(self) -> float:
        if self.stopping or self.pid:
            return math.inf  # a heal's end wakes the loop (SIGCHLD)
        now = time.monotonic()
        if self.sock is None:
            return max(0.0, self.next_try - now)
        return max(0.0, self._due() - now)

    def tick(self) -> None:
        if self.stopping or self.pid:
            return
        now = time.monotonic()
        if self.sock is None:
            if now >= self.next_try:
                self._start(now)
            return
        if now >= self._due():
            self._heal()

    def readable(self, fd: int) -> None:
        if self.sock is None:
            return
        try:
            who = self.drain(self.sock)
        except OSError as exc:  # never the agent's end: subscribe again
            _log(f"reading the ruleset's changes failed: {exc}")
            self._unsubscribe()
            return
        now = time.monotonic()
        if self.burst >= 0:
            self.quiet_at = now + DEBOUNCE  # a burst (a firewalld reload) is one change
        if who:
            self.who |= who
            if self.burst < 0:
                self.burst, self.quiet_at = now, now + DEBOUNCE

    def reaped(self, pid: int, status: int) -> bool:
        """Every child the agent reaps (its commits may still be unread); True for a heal."""
        now = time.monotonic()
        self.recent = {p: t for p, t in self.recent.items() if now - t < RECENT}
        self.recent[pid] = now
        if pid == 0 or pid != self.pid:
            return False
        self.pid = 0
        if not os.WIFEXITED(status) or os.WEXITSTATUS(status) != 0:
            _log(f"the heal {pid} ended with wait status {status}")
        self.healed = now
        # At most half of the time healing, however often a foreign program commits: what it
        # changes meanwhile is read (queued on the socket) and healed after the pause.
        self.not_before = now + min(now - self.started, MAX_DELAY)
        return True

    def forget(self) -> None:
        """In a process the agent forked: its copies of the socket and lock are not its own."""
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if self.lock >= 0:
            with contextlib.suppress(OSError):
                os.close(self.lock)
            self.lock = -1
        self.stopping = True

    def stop(self) -> None:
        self.stopping = True
        if self.pid:
            end_child(self.pid)
            self.pid = 0
        self._unsubscribe()
        if self.lock >= 0:
            path = lock_path()
            if path and lockfile.still_named(self.lock, path):
                with contextlib.suppress(OSError):
                    os.unlink(path)  # still held while it goes
            os.close(self.lock)
            self.lock = -1

    # ------------------------------------------------------------ what it does

    def ours(self, pid: int, name: str = "") -> bool:
        if name == PROGRAM:
            # Our plugin run in-process (no agent reached) or an operator's `cni-bridge sync`:
            # it writes what its records say, so there is nothing to heal; reacting to it made
            # every cold ADD cost a full sync, which at hundreds of attachments kept the
            # networks' locks held.
            return True
        if pid == 0:
            return False
        # The agent itself, its workers and heals (alive, or reaped since they committed).
        return pid == os.getpid() or pid in self.recent or _parent_of(pid) == os.getpid()

    def _due(self) -> float:
        due = min(self.burst + MAX_DELAY, self.quiet_at) if self.burst >= 0 else (
            self.healed + RESYNC_EVERY
        )
        return max(due, self.not_before)

    def _start(self, now: float) -> None:
        from cni_bridge.converge import nfgen

        self.next_try = now + RETRY
        if self.lock < 0:
            path = lock_path(create=True)
            if not path:
                _log("the agent's directory is not usable; not watching")
                self.next_try = now + RESYNC_EVERY
                return
            # A watch killed with its namespace (or its agent) leaves its lock file: the next
            # watch to start removes those nobody holds, as the holder and the agent do.
            lockfile.sweep(os.path.dirname(path), LOCK_PREFIX)
            lock = lockfile.take(path, lambda: False)  # another agent's watch: try again later
            if lock is None:
                return
            os.ftruncate(lock, 0)
            os.pwrite(lock, f"{os.getpid()}\n".encode(), 0)
            self.lock = lock
        try:
            self.sock = nfgen.subscribe()
        except OSError as exc:
            _log(f"cannot subscribe to the ruleset's changes: {exc}")
            self.next_try = now + RESYNC_EVERY
            return
        _log("watching the ruleset")
        # What changed while nobody watched (the agent's start, a lost subscription).
        self.burst = self.quiet_at = now
        self.who.add("(start)" if self.healed == -math.inf else "(not watched)")

    def _unsubscribe(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        self.next_try = time.monotonic() + RETRY

    def _heal(self) -> None:
        if not self.who:
            why = "periodic"
        elif self.who == {"(start)"}:
            why = "start"
        else:
            why = "ruleset changed by " + ", ".join(sorted(self.who))
        self.who = set()
        self.burst = -1.0
        self.started = time.monotonic()
        try:
            pid = os.fork()
        except OSError as exc:
            _log(f"cannot fork a heal: {exc}")
            self.healed = self.not_before = self.started  # the next periodic one
            return
        if pid == 0:
            run_child(lambda: heal(why), lambda trace: _log(f"failed:\n{trace}"))
        self.pid = pid

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
                if not self.ours(g.pid, g.name):
                    who.add(f"{g.name or '?'}[{g.pid}]")


# ---------------------------------------------------------------- a heal


def heal(why: str) -> None:
    from cni_bridge import datadirs
    from cni_bridge.commands.deps import real_deps
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
    took = (time.monotonic() - started) * 1000
    for line in report.healed:
        _log(f"healed ({why}): {line}")
    for line in report.errors + report.remaining:
        _log(f"not healed ({why}): {line}")
    if report.healed or report.errors:
        _log(f"sync after {why}: {len(report.healed)} repair(s) in {took:.0f} ms")
