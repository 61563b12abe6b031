"""The agent's duty for the name service (resident/duty.Duty): rebuild from the records once it
listens, then look every SUPERVISE_EVERY seconds that the server runs while it has networks.

The look is cheap and runs in the agent's parent between polls: a directory listing and a pid
check. What takes long runs in a child the duty forks, as the ruleset watch's heals do: the
rebuild (every network's file written from the records, the server started or reloaded) and a
restart of a server that died (aardvark-dns run, then its pid file and its sockets waited for,
up to READY_TIMEOUT each, under its lock). Run in the parent, that restart paused every
connection the held ports relay, and every caller waiting for a worker, for up to seconds.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable

from cni_bridge.log import getLogger
from cni_bridge.resident.duty import end_child, run_child

log = getLogger(__name__)

SUPERVISE_EVERY = 5.0


def _needs_start() -> bool:
    """The server has networks and does not run (it died, or was killed)."""
    from cni_bridge.dns.aardvark import Aardvark

    server = Aardvark()
    return bool(server.networks()) and server.pid() is None


def _rebuild(data_dirs: tuple[str, ...] | None) -> Callable[[], None]:
    def run() -> None:
        from cni_bridge.dns import rebuild

        rebuild.rebuild(data_dirs)

    return run


def _supervise() -> None:
    from cni_bridge.dns import rebuild

    rebuild.supervise()


class DnsDuty:
    def __init__(
        self,
        data_dirs: tuple[str, ...] | None = None,
        enabled: bool = True,
        needs_start: Callable[[], bool] = _needs_start,
    ) -> None:
        self.data_dirs = data_dirs  # None: those in use (datadirs.py)
        self.needs_start = needs_start
        self.stopping = not enabled
        self.pid = 0  # the child rebuilding or restarting now
        self.next = 0.0  # the first look (the rebuild) as soon as the loop runs
        self.rebuilt = False

    # ------------------------------------------------------------ the duty's interface

    def tick(self) -> None:
        if self.stopping or self.pid:
            return
        now = time.monotonic()
        if now < self.next:
            return
        self.next = now + SUPERVISE_EVERY
        if not self.rebuilt:
            # Only once a child runs it: a fork refused for a moment (EAGAIN) must not lose
            # the rebuild after a boot, which nothing else would do until each network's ADD.
            self.rebuilt = self._fork(_rebuild(self.data_dirs), "rebuild")
            return
        try:
            needed = self.needs_start()
        except Exception as exc:  # never the agent's end: the plugin manages the server too
            log.warning("dns duty: %s", exc)
            return
        if needed:
            self._fork(_supervise, "restart")

    def due_in(self) -> float:
        if self.stopping or self.pid:
            return math.inf  # the child's end wakes the loop (SIGCHLD)
        return max(0.0, self.next - time.monotonic())

    def fds(self) -> tuple[int, ...]:
        return ()

    def readable(self, fd: int) -> None:
        pass

    def reaped(self, pid: int, status: int) -> bool:
        if pid == 0 or pid != self.pid:
            return False
        self.pid = 0
        if not os.WIFEXITED(status) or os.WEXITSTATUS(status) != 0:
            log.warning("dns duty: its child %d ended with wait status %d", pid, status)
        return True

    def forget(self) -> None:
        """In a process the agent forked: the duty is the agent's."""
        self.stopping = True
        self.pid = 0

    def stop(self) -> None:
        """As the watch stops its heal: SIGTERM, STOP_WAIT to leave, then SIGKILL (the child
        would get SIGTERM anyway when the agent exits). A rebuild cut short may leave a
        network's file rewritten without the server's reload; the next rebuild (the next
        agent's start) or the network's next ADD or DEL writes it again and reloads."""
        self.stopping = True
        if self.pid:
            end_child(self.pid)
            self.pid = 0

    # ------------------------------------------------------------ the child

    def _fork(self, work: Callable[[], None], what: str) -> bool:
        """Whether a child now runs `work`."""
        try:
            pid = os.fork()
        except OSError as exc:
            log.warning("dns duty: cannot fork its %s: %s", what, exc)
            return False
        if pid == 0:
            run_child(work, lambda trace: log.warning("dns duty: %s failed:\n%s", what, trace))
        self.pid = pid
        return True
