"""Held ports as a duty of the agent's own loop (resident/duty.Duty): the holder (holder.py) and
its relays run on a selector (loop.py) whose descriptor the agent's loop polls, with no process
of their own. A holder process cost ~4-6 MiB of pages of its own (what a second Python process
writes of the agent's pages it shares), a tenth of the agent's budget, for a loop that is idle
nearly all the time.

What keeps the agent's loop from waiting on it: every socket is non-blocking, with a bound on
what is buffered per connection (proxy.py); a control client gets its answer at once or not at
all; the records are reread every RESCAN seconds, only those whose file changed (records.py);
the processes holding a port that cannot be held are looked up once, when it first fails (one
walk for all the ports found taken together); relays never take the last loop.AGENT_RESERVE
descriptors, which stay for the agent's own work.

What it cannot help: the relays move only while the agent's loop polls, so any blocking step of
that loop pauses every relayed connection (bytes wait in the kernel's buffers; nothing is lost).
The duties keep their steps short and run what takes long in a child (the watch's heals, the
name service's rebuild and restarts: dns/agent.py); the longest left are this duty's own rescan
(≈ 50 ms at 1000 records) and the one /proc walk above.

What a holder process gave that this keeps: an exception out of the holder's code (a bug) is
logged, every socket let go and the holder started again from the records RESTART_DELAY later,
as the agent restarted a holder that died; one holder per network namespace (the lock, retried
while another agent's holds it); the soft descriptor limit raised to the hard one (two
descriptors per published port and per relayed connection). Every process the agent forks closes
the holder's descriptors first (`forget`) and gets the soft limit back.
"""

from __future__ import annotations

import contextlib
import math
import os
import resource
import socket
import time
import traceback
from collections.abc import Callable

from cni_bridge.ports import control, lockfile
from cni_bridge.ports.holder import RESCAN, RETRY, Control, Holder
from cni_bridge.ports.records import Records

RESTART_DELAY = 1.0  # after a failure, before the holder starts again
LOCK_RETRY = 1.0  # another agent's holder has this namespace's lock


def _log(message: str) -> None:
    from cni_bridge.resident.worker import log

    log(f"ports: {message}")


class HeldPorts:
    pid = 0  # no child of its own

    def __init__(self, enabled: bool = True, records: Callable[[], Records] = Records) -> None:
        self.records = records  # the desired state's source (tests give their own)
        self.stopping = not enabled
        self.holder: Holder | None = None
        self.lock_fd = -1
        self.paths = ("", "")
        self.next_try = 0.0  # when to start (again)
        self.next_scan = math.inf
        self.limit: tuple[int, int] | None = None  # the soft and hard limits before raising

    # ------------------------------------------------------------ the duty's interface

    def fds(self) -> tuple[int, ...]:
        return (self.holder.loop.selector.fileno(),) if self.holder is not None else ()

    def due_in(self) -> float:
        if self.stopping:
            return math.inf
        now = time.monotonic()
        if self.holder is None:
            return max(0.0, self.next_try - now)
        return max(0.0, self.holder.loop.next_due() - now)

    def tick(self) -> None:
        if self.stopping:
            return
        if self.holder is None:
            if time.monotonic() >= self.next_try:
                self._guarded(self._start)
        elif self.holder.loop.next_due() <= time.monotonic():
            self._guarded(self._run_once)

    def readable(self, fd: int) -> None:
        if self.holder is not None:
            self._guarded(self._run_once)

    def reaped(self, pid: int, status: int) -> bool:
        return False

    def forget(self) -> None:
        """In a process the agent forked: its copies of the holder's descriptors are closed
        (the sockets stay the agent's), and the agent's soft descriptor limit is not its."""
        self.stopping = True
        if self.holder is not None:
            self.holder.loop.forget()
            self.holder = None
        if self.lock_fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.lock_fd)
            self.lock_fd = -1
        if self.limit is not None:
            with contextlib.suppress(OSError, ValueError):
                resource.setrlimit(resource.RLIMIT_NOFILE, self.limit)

    def stop(self) -> None:
        self.stopping = True
        self._let_go()

    # ------------------------------------------------------------ the holder

    def _guarded(self, step: Callable[[], None]) -> None:
        try:
            step()
        except Exception:
            _log(f"the holder failed, holding again in {RESTART_DELAY:g} s:\n"
                 f"{traceback.format_exc()}")
            self._let_go()
            self.next_try = time.monotonic() + RESTART_DELAY

    def _start(self) -> None:
        sock_path, lock_path = control.paths(create=True)
        if not sock_path:
            _log("no usable agent directory: ports are not held")
            self.stopping = True
            return
        fd = lockfile.take(lock_path, lambda: False)
        if fd is None:  # another agent's holder (one leaving, or a second agent)
            self.next_try = time.monotonic() + LOCK_RETRY
            return
        self.lock_fd, self.paths = fd, (sock_path, lock_path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(sock_path)  # a previous holder's, killed: we hold the lock now
        swept = lockfile.sweep(os.path.dirname(sock_path), control.PREFIX)
        if swept:
            _log(f"removed the files of {swept} holder(s) gone with their namespace")
        self._raise_limit()
        holder = self.holder = Holder(self.records())
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        holder.loop.adopt(listener)
        listener.bind(sock_path)
        listener.listen(64)
        listener.setblocking(False)
        holder.want.scan_all()
        holder.apply()  # before any answer: a status or an ADD sees the records' sockets held
        Control(holder, listener)
        self.next_scan = time.monotonic() + RESCAN
        holder.loop.later(0, self._tick)
        _log("holding published ports")

    def _run_once(self) -> None:
        assert self.holder is not None
        self.holder.loop.run_once(0)

    def _tick(self) -> None:
        """Rescan every RESCAN seconds; in between, retry what could not be held."""
        holder = self.holder
        assert holder is not None
        now = time.monotonic()
        if now >= self.next_scan:
            holder.want.scan_all()
            self.next_scan = now + RESCAN
            holder.apply()
        elif holder.failed:
            holder.apply(list(holder.failed))
        wait = RETRY if holder.failed else self.next_scan - now
        holder.loop.later(max(0.1, min(wait, RESCAN)), self._tick)

    def _raise_limit(self) -> None:
        # Two descriptors per published port and per relayed connection: the soft limit
        # (often 1024) would cap a host at a few hundred published ports.
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard:
            with contextlib.suppress(OSError, ValueError):
                resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
                self.limit = (soft, hard)

    def _let_go(self) -> None:
        """Every socket closed (the ports free), the control socket and the lock removed."""
        if self.holder is not None:
            holder, self.holder = self.holder, None
            with contextlib.suppress(Exception):
                holder.close()
            holder.loop.shut()
        if self.lock_fd >= 0:
            fd, self.lock_fd = self.lock_fd, -1
            lockfile.release(fd, self.paths[1], self.paths[0])
