"""Connections of a burst that wait a moment for a worker to come free instead of a fork each.

A fresh fork costs the parent the fork and the worker ~2700 minor faults (its page tables and
the copy-on-write of what its request touches): a burst of 20 ADDs through an agent with no
free worker forked 20 workers, ~54000 faults, on a 2-core machine that runs the ADDs
themselves at the same time. Once as many requests run as the machine has cores (and one
more, for those waiting on a lock or the kernel), a connection that finds no free worker waits
up to WAIT seconds for one (a worker frees within a request's time, tens of milliseconds) and
is then handed to the first that does; only one that waited that long gets a fork, so a
request that holds its worker long (a slow delegated IPAM plugin, a lock held elsewhere) never
holds up the others more than WAIT. The caller has not had READY meanwhile: WAIT stays far
below its READY timeout (policy, 1 s). Measured here (20 parallel ADDs through the bundle's
agent, a warm pool, load ~5): 7 workers instead of 20, ~950 faults per ADD instead of ~2500.
"""

from __future__ import annotations

import contextlib
import os
import socket

WAIT = 0.4  # seconds a connection may wait for a free worker before it gets a fork


def busy_limit() -> int:
    """Requests running at once beyond which a new one waits for a free worker."""
    return (os.cpu_count() or 1) + 1


class Waiting:
    """Accepted connections waiting for a free worker, oldest first."""

    def __init__(self, limit: int | None = None, wait: float = WAIT) -> None:
        self.limit = busy_limit() if limit is None else limit
        self.wait = wait
        self._queue: list[tuple[float, socket.socket]] = []

    def __bool__(self) -> bool:
        return bool(self._queue)

    def should_wait(self, busy: int) -> bool:
        return busy >= self.limit

    def add(self, conn: socket.socket, now: float) -> None:
        self._queue.append((now + self.wait, conn))

    def pop(self) -> socket.socket:
        return self._queue.pop(0)[1]

    def expired(self, now: float) -> list[socket.socket]:
        """Those that waited WAIT: each gets a fork."""
        gone = [conn for deadline, conn in self._queue if deadline <= now]
        self._queue = [(d, c) for d, c in self._queue if d > now]
        return gone

    def due_in(self, now: float) -> float:
        return min((d - now for d, _ in self._queue), default=float("inf"))

    def close_all(self) -> None:
        """The agent stops: they have had no READY and run in-process."""
        for _, conn in self._queue:
            with contextlib.suppress(OSError):
                conn.close()
        self._queue = []
