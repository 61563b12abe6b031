"""What the agent's parent loop (pool.Server) asks of a duty it runs besides serving requests:
the ports holder's supervisor (ports/supervisor.py), the ruleset watch (converge/watch.py).

The parent is single-threaded and never blocks (its workers setns into callers' mount
namespaces, which needs a single-threaded process, and every caller waits on its loop), so a
duty only forks, reaps, signals and reads descriptors that are ready; anything longer runs in a
child it forks.
"""

from __future__ import annotations

from typing import Protocol


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
