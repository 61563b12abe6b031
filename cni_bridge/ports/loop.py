"""The holder's event loop (holder.py, proxy.py): non-blocking sockets on a selector and timers,
in one thread. Not asyncio: its modules and objects would be ~4 MiB more in the agent, for what
a selector and a heap of timers do. The agent's own loop polls the selector's descriptor and
runs `run_once(0)` when it is readable or a timer is due (duty.py).

A callback gets the events its socket is ready for. A callback watched with a `fault` (a
relayed connection's) that raises is logged and that fault called (the connection ends), as
asyncio's loop survives a task's exception; any other exception goes out of run_once (the
agent's duty then lets every socket go and starts again).

Every socket the loop has watched (or was given with `adopt`) stays known until `close`: a
process the agent forks closes them all (`forget`) without touching the selector, whose epoll
instance it shares with the agent.
"""

from __future__ import annotations

import errno
import heapq
import itertools
import math
import resource
import selectors
import signal
import socket
import time
import traceback
from collections.abc import Callable, Iterable

READ = selectors.EVENT_READ
WRITE = selectors.EVENT_WRITE
# accept() out of descriptors or memory: retried after a pause (as asyncio's server does), not
# at once, which would spin while the level-triggered listener stays readable.
SHORT_OF = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
# Descriptors the relays never take: the loop runs in the agent, whose table they share, and
# anyone on the host can open connections to [::1]:port. This many stay below the soft limit
# for the agent's own work (its listener, requests, workers' channels, DNS, records, logs).
AGENT_RESERVE = 256

Ready = Callable[[int], None]
Fault = Callable[[], None]


class Timer:
    __slots__ = ("callback", "cancelled", "when")

    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Loop:
    def __init__(self, log: Callable[[str], None]) -> None:
        self.selector = selectors.DefaultSelector()
        self.timers: list[tuple[float, int, Timer]] = []
        self.order = itertools.count()
        self.running = False
        self.log = log
        self.wakeup: tuple[socket.socket, socket.socket] | None = None
        self.owned: set[socket.socket] = set()  # open sockets of the loop's, watched or not

    # ------------------------------------------------------------------ descriptors

    def adopt(self, sock: socket.socket) -> None:
        """`sock` is the loop's to close (`close`, `shut`, `forget`), watched or not yet."""
        self.owned.add(sock)

    def watch(self, sock: socket.socket, events: int, ready: Ready, fault: Fault | None = None) -> None:
        """Call ready(events ready) while `sock` is ready for `events`; 0 stops watching it."""
        self.owned.add(sock)
        fd = sock.fileno()
        key = self.selector.get_map().get(fd)
        if not events:
            if key is not None:
                self.selector.unregister(fd)
        elif key is None:
            self.selector.register(fd, events, (ready, fault))
        elif key.events != events or key.data != (ready, fault):
            self.selector.modify(fd, events, (ready, fault))

    def has_room(self, more: int) -> bool:
        """Whether the loop may open `more` descriptors and leave AGENT_RESERVE to the agent
        (the loop's own are all in `owned`; the agent's other ones fit in the reserve)."""
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        return soft == resource.RLIM_INFINITY or len(self.owned) + more + AGENT_RESERVE <= soft

    def unwatch(self, sock: socket.socket) -> None:
        fd = sock.fileno()
        if fd >= 0 and fd in self.selector.get_map():
            self.selector.unregister(fd)

    def close(self, sock: socket.socket) -> None:
        """Stop watching `sock` and close it (a closed socket's number is soon another's)."""
        self.unwatch(sock)
        self.owned.discard(sock)
        sock.close()

    def pause(self, sock: socket.socket, seconds: float, ready: Ready) -> None:
        """Stop reading `sock` for a while (a listener whose accept() is short of descriptors)."""
        self.unwatch(sock)

        def resume() -> None:
            if sock.fileno() >= 0:
                self.watch(sock, READ, ready)

        self.later(seconds, resume)

    # ------------------------------------------------------------------ time and signals

    def later(self, delay: float, callback: Callable[[], None]) -> Timer:
        timer = Timer(time.monotonic() + delay, callback)
        heapq.heappush(self.timers, (timer.when, next(self.order), timer))
        return timer

    def stop(self) -> None:
        self.running = False

    def stop_on(self, signals: Iterable[signal.Signals]) -> None:
        """End run() on these signals: the handler only flags, the wakeup socket ends select()."""
        reader, writer = socket.socketpair()
        for s in (reader, writer):
            s.setblocking(False)
        self.wakeup = reader, writer
        signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
        for sig in signals:
            signal.signal(sig, lambda *_: self.stop())
        self.watch(reader, READ, lambda _: self._drain(reader))

    @staticmethod
    def _drain(reader: socket.socket) -> None:
        try:
            while reader.recv(256):
                pass
        except BlockingIOError:
            pass

    # ------------------------------------------------------------------ running

    def run(self) -> None:
        self.running = True
        while self.running:
            self.run_once()

    def run_once(self, most: float | None = None) -> None:
        """Wait for what is due (at most `most` seconds) and run it."""
        while self.timers and self.timers[0][2].cancelled:
            heapq.heappop(self.timers)
        timeout = most
        if self.timers:
            due = max(0.0, self.timers[0][0] - time.monotonic())
            timeout = due if timeout is None else min(due, timeout)
        for key, ready in self.selector.select(timeout):
            # An earlier callback of this round may have closed or rewatched this socket.
            now = self.selector.get_map().get(key.fd)
            if now is None or now.data != key.data or not ready & now.events:
                continue
            callback, fault = now.data
            if fault is None:
                callback(ready & now.events)
                continue
            try:
                callback(ready & now.events)
            except Exception:
                self.log(f"a relay failed:\n{traceback.format_exc()}")
                fault()
        now_t = time.monotonic()
        while self.timers and self.timers[0][0] <= now_t:
            timer = heapq.heappop(self.timers)[2]
            if not timer.cancelled:
                timer.callback()

    def next_due(self) -> float:
        """When the first timer is due (monotonic; inf: none)."""
        while self.timers and self.timers[0][2].cancelled:
            heapq.heappop(self.timers)
        return self.timers[0][0] if self.timers else math.inf

    def shut(self) -> None:
        """Close every socket of the loop's, then the selector."""
        if self.wakeup is not None:
            signal.set_wakeup_fd(-1)
            self.wakeup = None
        for sock in list(self.owned):
            self.close(sock)
        self.timers.clear()
        self.selector.close()

    def forget(self) -> None:
        """In a process forked from the loop's: close its copies of the loop's sockets and of
        the selector's descriptor. Nothing is unregistered: the epoll instance is the parent's
        too (closing a copy of a descriptor removes nothing from it)."""
        for sock in self.owned:
            sock.close()
        self.owned.clear()
        self.timers.clear()
        self.selector.close()  # epoll: closes the descriptor, unregisters nothing
