"""The agent's side of the holder (holder.py): fork it at start, fork it again when it dies
(at most once a RESTART_DELAY), end it when the agent stops. The agent's parent stays
single-threaded and only forks, reaps and signals: nothing of the holder runs in it. A duty of
the agent's parent loop (resident/duty.Duty) with no descriptor of its own.
"""

from __future__ import annotations

import contextlib
import gc
import math
import os
import signal
import time
from collections.abc import Callable
from typing import NoReturn

RESTART_DELAY = 1.0
STOP_WAIT = 2.0


def _log(message: str) -> None:
    from cni_bridge.resident.worker import log

    log(f"ports: {message}")


def _holder() -> NoReturn:
    from cni_bridge.ports.holder import child_main

    child_main()


def _load_holder() -> None:
    """In the agent, before it forks the holder: the holder's modules become the agent's pages,
    shared (≈ 0.1 MiB more in the agent), not ≈ 2.5 MiB of copies in the holder (an import
    in a forked child writes to the import system's objects and pages the agent's arenas)."""
    try:
        import cni_bridge.ports.holder  # noqa: F401
    except Exception as exc:  # the holder then fails and says so; the agent serves on
        _log(f"cannot import the holder: {exc!r}")


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


class Supervisor:
    def __init__(
        self, child: Callable[[], NoReturn] = _holder, enabled: bool = True, label: str = "the holder"
    ) -> None:
        self.child = child
        self.label = label  # for the log: "<label> <pid> ended"
        self.pid = 0
        self.started = -math.inf
        self.stopping = not enabled  # a disabled supervisor never starts a holder

    def start(self) -> None:
        self.started = time.monotonic()
        if self.child is _holder:
            _load_holder()
        try:
            pid = os.fork()
        except OSError as exc:
            _log(f"cannot start {self.label}: {exc}")
            return
        if pid == 0:
            self.child()
        self.pid = pid

    def reaped(self, pid: int, status: int) -> bool:
        """Whether the child the agent reaped was the holder (restarted by tick)."""
        if pid == 0 or pid != self.pid:
            return False
        self.pid = 0
        if not self.stopping:
            _log(f"{self.label} {pid} ended (wait status {status}); starting another")
        return True

    def due_in(self) -> float:
        """Seconds until tick() has a holder to start (inf: none)."""
        if self.pid or self.stopping:
            return math.inf
        return max(0.0, self.started + RESTART_DELAY - time.monotonic())

    def tick(self) -> None:
        if self.due_in() == 0.0:
            self.start()

    def fds(self) -> tuple[int, ...]:
        return ()

    def readable(self, fd: int) -> None:
        pass

    def forget(self) -> None:
        """In another child of the agent: the holder is not its to stop."""
        self.pid = 0
        self.stopping = True

    def stop(self) -> None:
        self.stopping = True
        if not self.pid:
            return
        try:
            os.kill(self.pid, signal.SIGTERM)
            deadline = time.monotonic() + STOP_WAIT
            while time.monotonic() < deadline:
                if os.waitpid(self.pid, os.WNOHANG)[0] == self.pid:
                    self.pid = 0
                    return
                time.sleep(0.02)
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        self.pid = 0
