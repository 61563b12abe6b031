"""Network namespaces: open one safely, and run a block with the calling thread inside it.

The process never stays in another network namespace. `entered()` joins a namespace from the
calling thread only and always returns to the thread's original namespace; a failure to return
ends the process (it would otherwise configure the wrong namespace from then on). Sockets and
/proc/sys files opened inside belong to that namespace (see `netlink.NetlinkSocket.open_in`).
"""

from __future__ import annotations

import ctypes
import fcntl
import os

from cni_bridge.net.ops import NetError, NetnsUnavailable

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

CLONE_NEWNET = 0x40000000
_NS_GET_NSTYPE = 0xB703  # ioctl: _IO(0xb7, 0x3), kernel >= 4.11
_SELF_NETNS = "/proc/thread-self/ns/net"


def _load_setns() -> Any:
    setns = getattr(os, "setns", None)  # Python >= 3.12
    if setns is not None:
        return setns
    libc = ctypes.CDLL(None, use_errno=True)
    c_setns = libc.setns
    c_setns.argtypes = (ctypes.c_int, ctypes.c_int)
    c_setns.restype = ctypes.c_int

    def setns_ctypes(fd: int, nstype: int) -> None:
        if c_setns(fd, nstype) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))

    return setns_ctypes


_setns = _load_setns()


def open_netns(path: str) -> int:
    """Open a network namespace file; the caller closes the fd.

    Never creates anything. Raises NetnsUnavailable when the path is empty, missing, or names
    something other than a network namespace (e.g. the empty file left behind by a deleted
    `/run/netns/<name>` bind mount).
    """
    if not path:
        raise NetnsUnavailable(path, "no network namespace path given")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NetnsUnavailable(path, "does not exist") from None
    except OSError as exc:
        raise NetnsUnavailable(path, f"cannot be opened: {exc.strerror}") from None
    try:
        nstype = fcntl.ioctl(fd, _NS_GET_NSTYPE)
    except OSError:
        nstype = -1
    if nstype != CLONE_NEWNET:
        os.close(fd)
        raise NetnsUnavailable(path, "is not a network namespace")
    return fd


def _return_or_die(original: int) -> None:
    try:
        _setns(original, CLONE_NEWNET)
    except OSError as exc:  # pragma: no cover - needs a kernel refusing to let us back
        # Continuing would apply host configuration inside the container: stop instead.
        os.write(2, f"cni-bridge: cannot return to the original netns: {exc}\n".encode())
        os._exit(70)


class entered:
    """Run the block with the calling thread inside the given network namespace.

    Only the calling thread moves. Keep the block short and free of unrelated work: anything
    opened inside (sockets, /proc/sys files) belongs to that namespace. A class, not a
    contextlib.contextmanager: contextlib stays off the exec path (~5 M instructions).
    """

    __slots__ = ("_netns_fd", "_original")

    def __init__(self, netns_fd: int) -> None:
        self._netns_fd = netns_fd
        self._original = -1

    def __enter__(self) -> None:
        original = os.open(_SELF_NETNS, os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(self._netns_fd, CLONE_NEWNET)
        except OSError as exc:
            os.close(original)
            raise NetError(
                f"cannot enter network namespace: {exc.strerror}", errno=exc.errno
            ) from None
        except BaseException:
            os.close(original)
            raise
        self._original = original

    def __exit__(self, *exc: object) -> None:
        try:
            _return_or_die(self._original)
        finally:
            os.close(self._original)



_SO_NETNS_COOKIE = 71  # include/uapi/asm-generic/socket.h (Linux 5.14+)


def netns_cookie(netns_fd: int) -> int:
    """The namespace's cookie: a 64-bit number the kernel never gives to another namespace
    (inode numbers are reused as soon as a namespace is freed). 0 when the kernel has none."""
    import _socket  # not socket: its enums of every constant are built at import
    import struct

    try:
        with entered(netns_fd):
            sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_DGRAM)
        try:
            raw = sock.getsockopt(_socket.SOL_SOCKET, _SO_NETNS_COOKIE, 8)
        finally:
            sock.close()
    except (OSError, NetError):
        return 0
    return int(struct.unpack("=Q", raw)[0])


def netns_cookie_of(path: str) -> int:
    """netns_cookie of a namespace file; 0 when it cannot be read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return 0
    try:
        return netns_cookie(fd)
    finally:
        os.close(fd)
