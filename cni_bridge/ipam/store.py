"""What the allocator needs from a reservation store, and an in-memory store for tests.

The protocol mirrors host-local's backend.Store. Every method is meant to be called while
holding lock(); lock() is re-entrant within one thread, so a caller may wrap allocate() (which
takes the lock itself) together with its own look-ups in one critical section.
"""

from __future__ import annotations

import _thread  # not threading: the two C primitives below are all a store needs
import time
from collections.abc import Callable

from cni_bridge.domain import IPAddress
from cni_bridge.hints import Protocol

TYPE_CHECKING = False
if TYPE_CHECKING:
    from contextlib import AbstractContextManager

Owner = tuple[str, str]
"""(container ID, interface name); the interface name is "" in files written by old
host-local versions that stored only the container ID."""

UNREADABLE: Owner = ("", "")
"""The owner of a reservation whose file holds garbage: it matches no attachment (container IDs
are never empty), so the address stays taken until DEL of the attachment whose record names it,
or a GC, releases it."""


class Store(Protocol):
    def lock(self) -> AbstractContextManager[None]:
        """Exclusive, blocking, re-entrant lock over the whole network's store."""
        ...

    def reserve(self, container_id: str, ifname: str, ip: IPAddress, rangeset_id: str) -> bool:
        """Record ip for (container_id, ifname); False if ip is already reserved. On success
        ip also becomes the range set's last reserved address."""
        ...

    def last_reserved_ip(self, rangeset_id: str) -> IPAddress | None: ...

    def release(self, ip: IPAddress) -> None:
        """Forget the reservation of ip; nothing happens if there is none."""
        ...

    def release_by_id(self, container_id: str, ifname: str) -> list[IPAddress]:
        """Release every address of (container_id, ifname); returns what was released."""
        ...

    def get_by_id(self, container_id: str, ifname: str) -> list[IPAddress]: ...

    def owner(self, ip: IPAddress) -> Owner | None: ...

    def reservations(self) -> dict[IPAddress, Owner]: ...

    def reserved_at(self, ip: IPAddress) -> float:
        """Wall-clock time (epoch seconds) the reservation was made; KeyError if none."""
        ...


class ReentrantLock:
    """A thread-level re-entrant guard, with hooks to take and drop an outer lock (flock)
    only on the outermost entry. Shared by the memory and disk stores."""

    def __init__(
        self,
        acquire: Callable[[], None] | None = None,
        release: Callable[[], None] | None = None,
    ) -> None:
        self._mutex = _thread.RLock()
        self._depth = 0
        self._owner: int | None = None
        self._acquire = acquire
        self._release = release

    def __call__(self) -> ReentrantLock:
        """`with lock():` (the state is the guard's own, so the guard is its context manager;
        not a contextlib.contextmanager: contextlib stays off the exec path)."""
        return self

    def __enter__(self) -> None:
        self._mutex.acquire()
        try:
            if self._depth == 0 and self._acquire is not None:
                self._acquire()
        except BaseException:
            self._mutex.release()
            raise
        self._depth += 1
        self._owner = _thread.get_ident()

    def __exit__(self, *exc: object) -> None:
        try:
            self._depth -= 1
            if self._depth == 0:
                self._owner = None
                if self._release is not None:
                    self._release()
        finally:
            self._mutex.release()

    def held(self) -> bool:
        return self._depth > 0 and self._owner == _thread.get_ident()

    def require(self, what: str) -> None:
        """Mutations outside the lock would race other plugin processes: fail loudly."""
        if not self.held():
            raise RuntimeError(f"{what} called without holding the IPAM store lock")


class MemoryStore:
    """Store kept in dictionaries; same semantics as the disk store. For tests."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._ips: dict[IPAddress, tuple[str, str, float]] = {}
        self._last: dict[str, IPAddress] = {}
        self._clock = clock
        self.lock_count = 0
        """How many times the lock was taken from outside (tests check one lock per call)."""
        self.lock = ReentrantLock(acquire=self._count)

    def _count(self) -> None:
        self.lock_count += 1

    def reserve(self, container_id: str, ifname: str, ip: IPAddress, rangeset_id: str) -> bool:
        self.lock.require("reserve")
        if ip in self._ips:
            return False
        self._ips[ip] = (container_id, ifname, self._clock())
        self._last[rangeset_id] = ip
        return True

    def last_reserved_ip(self, rangeset_id: str) -> IPAddress | None:
        return self._last.get(rangeset_id)

    def release(self, ip: IPAddress) -> None:
        self.lock.require("release")
        self._ips.pop(ip, None)

    def release_by_id(self, container_id: str, ifname: str) -> list[IPAddress]:
        self.lock.require("release_by_id")
        ips = self.get_by_id(container_id, ifname)
        for ip in ips:
            del self._ips[ip]
        return ips

    def get_by_id(self, container_id: str, ifname: str) -> list[IPAddress]:
        return [ip for ip, (c, i, _) in self._ips.items() if (c, i) == (container_id, ifname)]

    def owner(self, ip: IPAddress) -> Owner | None:
        entry = self._ips.get(ip)
        return None if entry is None else (entry[0], entry[1])

    def reservations(self) -> dict[IPAddress, Owner]:
        return {ip: (c, i) for ip, (c, i, _) in self._ips.items()}

    def reserved_at(self, ip: IPAddress) -> float:
        return self._ips[ip][2]
