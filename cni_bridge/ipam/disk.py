"""The on-disk reservation store, in the reference host-local plugin's layout.

    <data_dir>/<network>/<ip>                  "<containerID>\\r\\n<ifname>"  (old files: "<id>")
    <data_dir>/<network>/last_reserved_ip.<N>  the last address handed out from range set N
    <data_dir>/<network>/lock                  flock(2)ed for the whole of every operation

Both plugins can share one directory: they take the same flock and read each other's files.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import time
from collections.abc import Collection, Iterator
from ipaddress import ip_address

from cni_bridge import atomic
from cni_bridge.domain import DEFAULT_DATA_DIR, IPAddress
from cni_bridge.ipam.store import UNREADABLE, Owner, ReentrantLock
from cni_bridge.log import getLogger

log = getLogger(__name__)
LAST_IP_PREFIX = "last_reserved_ip."
LOCK_NAME = "lock"
LINE_BREAK = "\r\n"
# Fixed temporary names are safe because they are only written under the flock, which
# host-local takes too; a leftover from a crash is simply replaced by the next writer.
_TMP_RESERVE = ".reserve.tmp"
_TMP_SUFFIX = ".tmp"

_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def check_path_component(what: str, value: str) -> None:
    """Refuse a value that would not stay one plain path component (or one line of a file)."""
    if not value or value in (".", "..") or "/" in value or "\0" in value:
        raise ValueError(f"invalid {what} {value!r}: must be a single path component")


def _check_field(what: str, value: str) -> None:
    check_path_component(what, value)
    if "\r" in value or "\n" in value or value != value.strip():
        raise ValueError(f"invalid {what} {value!r}: whitespace or line break")


def parse_owner(data: bytes) -> Owner:
    """Owner of a reservation file; host-local trims surrounding whitespace before matching.
    UNREADABLE for anything host-local cannot have written (not text, empty, a stray line
    break or control character): no attachment can be matched with it."""
    try:
        text = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        return UNREADABLE
    container_id, sep, ifname = text.partition(LINE_BREAK)
    owner = (container_id.strip(), ifname.strip()) if sep else (text, "")
    try:
        _check_field("container ID", owner[0])
        if sep:
            _check_field("interface name", owner[1])
    except ValueError:
        return UNREADABLE
    if not all(c.isprintable() for c in owner[0] + owner[1]):
        return UNREADABLE
    return owner


class StoreUnusable(Exception):
    """The store's directory or its lock file is not what it must be (a directory where the
    lock file belongs, a file where the directory belongs): nothing can be locked safely."""


def format_owner(container_id: str, ifname: str) -> bytes:
    return f"{container_id}{LINE_BREAK}{ifname}".encode()


class DiskStore:
    """Store over <data_dir>/<network>; see the module docstring for the layout."""

    def __init__(
        self, network: str, data_dir: str = DEFAULT_DATA_DIR, *, teardown: bool = False
    ) -> None:
        check_path_component("network name", network)
        self.network = network
        # An empty dataDir means the default, as in host-local.
        self.dir = os.path.join(data_dir or DEFAULT_DATA_DIR, network)
        # DEL and GC must never be blocked by bad state: with a directory in the lock file's
        # place they lock that directory instead (see _flock).
        self.teardown = teardown
        self._lock_fd: int | None = None
        self.lock = ReentrantLock(acquire=self._flock, release=self._unflock)

    # -- locking ---------------------------------------------------------------------------

    def _flock(self) -> None:
        try:
            os.makedirs(self.dir, mode=0o755, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise StoreUnusable(
                f"IPAM store {self.dir!r} is not a directory: move it away to use network "
                f"{self.network!r}"
            ) from None
        path = os.path.join(self.dir, LOCK_NAME)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | _O_CLOEXEC, 0o600)
        except IsADirectoryError:
            if not self.teardown:
                raise StoreUnusable(
                    f"{path!r} is a directory where the lock file of the IPAM store belongs "
                    "(host-local and cni-bridge lock it for every change): remove it"
                ) from None
            # Every one of our DELs and GCs locks the same directory (flock works on one), and
            # no ADD, ours or host-local's, gets past the directory: still one at a time.
            log.warning("%s is a directory, not a lock file: locking the directory; remove it "
                        "so that ADD works again", path)
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | _O_CLOEXEC)
        try:
            # Blocking; the kernel drops it if we die, so no stale-lock recovery is needed.
            fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        self._lock_fd = fd

    def _unflock(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)  # closing the only descriptor releases the flock

    # -- paths and files -------------------------------------------------------------------

    def _ip_path(self, ip: IPAddress) -> str:
        # str() of an ipaddress object is the same text as Go's net.IP.String() (RFC 5952
        # compressed, lower case) for every address a Range accepts.
        return os.path.join(self.dir, str(ip))

    def _last_path(self, rangeset_id: str) -> str:
        check_path_component("range set id", rangeset_id)
        return os.path.join(self.dir, LAST_IP_PREFIX + rangeset_id)

    def _read(self, path: str) -> bytes | None:
        try:
            fd = os.open(path, os.O_RDONLY | _O_NOFOLLOW | _O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # a symlink planted in the store is not ours to read
                return None
            raise
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            os.close(fd)
            return b""  # a directory in a file's place: read as garbage
        with os.fdopen(fd, "rb") as f:
            return f.read()

    def _write_tmp(self, name: str, data: bytes) -> str:
        tmp = os.path.join(self.dir, name)
        atomic.remove(tmp)  # a leftover of a writer that died
        atomic.write_new(tmp, data, 0o644)
        return tmp

    def _entries(self) -> Iterator[tuple[IPAddress, str]]:
        """(address, path) of every reservation file; other files (lock, last_reserved_ip.N,
        temporaries, anything an operator left) are ignored."""
        try:
            it = os.scandir(self.dir)
        except FileNotFoundError:
            return
        with it:
            for entry in it:
                try:
                    ip = ip_address(entry.name)
                except ValueError:
                    continue
                # Only the canonical spelling is ours: release() rebuilds the name from ip.
                # A directory there holds the address as surely as a file does (reserve()
                # cannot take it): listed, with an unreadable owner.
                if str(ip) == entry.name and (
                    entry.is_file(follow_symlinks=False) or entry.is_dir(follow_symlinks=False)
                ):
                    yield ip, entry.path

    def _owners(self) -> Iterator[tuple[IPAddress, Owner]]:
        for ip, path in self._entries():
            data = self._read(path)
            if data is not None:
                yield ip, parse_owner(data)

    # -- the Store protocol ----------------------------------------------------------------

    def reserve(self, container_id: str, ifname: str, ip: IPAddress, rangeset_id: str) -> bool:
        self.lock.require("reserve")
        _check_field("container ID", container_id)
        _check_field("interface name", ifname)
        last_path = self._last_path(rangeset_id)
        path = self._ip_path(ip)
        # Write the whole content under a temporary name, then link it into place: link(2)
        # fails with EEXIST exactly like O_EXCL, and a crash can never leave a reservation
        # file half written. Not fsynced: after a power loss every container is gone anyway
        # and the caller reclaims reservations older than the boot.
        tmp = self._write_tmp(_TMP_RESERVE, format_owner(container_id, ifname))
        try:
            os.link(tmp, path, follow_symlinks=False)
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)
        try:
            self._replace(last_path, str(ip).encode())
        except BaseException:
            os.unlink(path)
            raise
        return True

    def _replace(self, path: str, data: bytes) -> None:
        # Only last_reserved_ip.N, a round-robin hint: after a power loss an empty or older one
        # is harmless (read as "none"), so it is not fsynced (that cost 0.4 ms an ADD here).
        atomic.replace(path, data, os.path.join(self.dir, os.path.basename(path) + _TMP_SUFFIX), 0o644)

    def last_reserved_ip(self, rangeset_id: str) -> IPAddress | None:
        data = self._read(self._last_path(rangeset_id))
        if data is None:
            return None
        try:
            return ip_address(data.decode("ascii", errors="replace").strip())
        except ValueError:
            return None  # only a round-robin hint; host-local ignores a bad one too

    def release(self, ip: IPAddress) -> None:
        """Forget the reservation. A file whose owner cannot be read (garbage, a directory)
        is set aside instead of deleted: kept for the operator, named in a warning."""
        self.lock.require("release")
        path = self._ip_path(ip)
        try:
            if os.path.isdir(path) or self.owner(ip) == UNREADABLE:
                new = atomic.set_aside(path, time.time())
                log.warning("reservation file %s has no readable owner: set aside as %s, "
                            "so %s is free again", path, new, ip)
                return
            os.unlink(path)
        except FileNotFoundError:
            return

    def release_by_id(self, container_id: str, ifname: str) -> list[IPAddress]:
        self.lock.require("release_by_id")
        # Like host-local: files naming this interface; failing those, files written by old
        # versions that hold only the container ID.
        released: list[IPAddress] = []
        for match in ((container_id, ifname), (container_id, "")):
            for ip, owner in list(self._owners()):
                if owner == match:
                    self.release(ip)
                    released.append(ip)
            if released:
                break
        return released

    def get_by_id(self, container_id: str, ifname: str) -> list[IPAddress]:
        return [
            ip
            for ip, owner in self._owners()
            if owner in ((container_id, ifname), (container_id, ""))
        ]

    def has_other_owner(self, owner: Owner, exclude: Collection[IPAddress] = ()) -> bool:
        """Whether any reservation belongs to someone else; stops at the first one found, so
        it costs a few reads, not one per reservation. `exclude`: addresses the caller knows
        are the owner's (its record names them) even if their files became unreadable."""
        for ip, _ in self._entries():
            if ip in exclude:
                continue
            found = self.owner(ip)
            if found is not None and found not in (owner, (owner[0], "")):
                return True
        return False

    def owner(self, ip: IPAddress) -> Owner | None:
        """None when the address is free; UNREADABLE when its file holds no owner."""
        data = self._read(self._ip_path(ip))
        return None if data is None else parse_owner(data)

    def unreadable(self) -> list[str]:
        """Paths of the reservation files that hold no readable owner."""
        return [self._ip_path(ip) for ip, owner in self._owners() if owner == UNREADABLE]

    def reservations(self) -> dict[IPAddress, Owner]:
        return dict(self._owners())

    def reserved_at(self, ip: IPAddress) -> float:
        try:
            return os.stat(self._ip_path(ip), follow_symlinks=False).st_mtime
        except FileNotFoundError:
            raise KeyError(ip) from None
