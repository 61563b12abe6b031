"""What the agent's parent loop (pool.Server) asks of a duty it runs besides serving requests:
held ports (ports/duty.py), the ruleset watch (converge/watch.py), the name service
(dns/agent.py).

The parent is single-threaded and never blocks (its workers setns into callers' mount
namespaces, which needs a single-threaded process, and every caller waits on its loop), so a
duty only forks, reaps, signals and reads descriptors that are ready; anything longer runs in a
child it forks.
"""

from __future__ import annotations

import contextlib
import gc
import math
import os
import signal
from typing import Protocol

STOP_WAIT = 2.0  # seconds a duty's child has to leave once told to, before SIGKILL


class Duty(Protocol):
    pid: int  # a child the duty runs now (0: none); the loop reaps while any runs

    def tick(self) -> None:
        """Do what is due now."""

    def due_in(self) -> float:
        """Seconds until tick() has something to do (inf: only after an event)."""

    def fds(self) -> tuple[int, ...]:
        """Descriptors the loop polls for the duty (readable() when one is)."""

    def readable(self, fd: int) -> None:
        """`fd` is readable: read what is there without blocking."""

    def reaped(self, pid: int, status: int) -> bool:
        """The loop reaped child `pid` (any child: each duty sees each); True if it was the
        duty's."""

    def forget(self) -> None:
        """In a process the agent forked: close the duty's descriptors, never act for it."""

    def stop(self) -> None:
        """The agent leaves: end the duty's children, release what it holds."""


class NoDuty:
    """A duty with nothing to do (one the agent does not run)."""

    pid = 0

    def tick(self) -> None:
        pass

    def due_in(self) -> float:
        return math.inf

    def fds(self) -> tuple[int, ...]:
        return ()

    def readable(self, fd: int) -> None:
        pass

    def reaped(self, pid: int, status: int) -> bool:
        return False

    def forget(self) -> None:
        pass

    def stop(self) -> None:
        pass


def detach_from_agent() -> None:
    """In a child the agent forked for a duty: nothing of the agent's but its log (stderr). Its
    objects are frozen first, so no collection ever closes a descriptor number this process
    reuses (nor walks, and copies, the agent's pages)."""
    gc.freeze()
    signal.set_wakeup_fd(-1)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2:
            with contextlib.suppress(OSError):
                os.close(fd)
