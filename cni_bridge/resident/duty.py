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
import time
import traceback
from collections.abc import Callable
from typing import NoReturn, Protocol

STOP_WAIT = 2.0  # seconds a duty's child has to leave once told to, before SIGKILL
PR_SET_PDEATHSIG = 1


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


def run_child(work: Callable[[], None], failed: Callable[[str], None]) -> NoReturn:
    """The whole life of a child the agent forked for a duty, right after the fork: nothing of
    the agent's kept (detach_from_agent), ended with the agent (SIGTERM when it dies: an agent
    stopped or killed leaves none; gone at once if the agent already is), then `work`. Exits 0,
    or 1 after `failed` got the traceback; whatever `failed` does, it never returns into a copy
    of the agent's loop."""
    code = 1
    try:
        import ctypes

        agent = os.getppid()
        detach_from_agent()
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != agent:
            os._exit(0)
        work()
        code = 0
    except BaseException:
        with contextlib.suppress(BaseException):
            failed(traceback.format_exc())
    finally:
        os._exit(code)


def end_child(pid: int) -> None:
    """A duty's child told to leave (SIGTERM), given STOP_WAIT, then SIGKILL; reaped."""
    with contextlib.suppress(ProcessLookupError, ChildProcessError):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_WAIT
        while os.waitpid(pid, os.WNOHANG)[0] != pid:
            if time.monotonic() >= deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                break
            time.sleep(0.02)
