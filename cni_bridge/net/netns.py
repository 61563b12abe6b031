"""Network namespaces and rtnetlink sockets bound to them.

Two rules shape this module:

* The process never stays in another network namespace. `entered()` joins a namespace from the
  calling thread only and always returns to the thread's original namespace; a failure to return
  ends the process (it would otherwise configure the wrong namespace from then on).
* A netlink socket stays bound to the namespace it was created in, so for the container we join
  the namespace just long enough to create the socket (about 0.1 ms) instead of forking a helper
  per socket as pyroute2's `IPRoute(netns=...)` does (about 9 ms).

The transport is our own (blocking `AF_NETLINK` socket, request/ack and dump loops); pyroute2 is
used for encoding requests and decoding address and route replies. Measured on the 2-core test
machine (median of 15 fresh processes, bytecode cached): `import pyroute2` 136 ms;
`from pyroute2.iproute.linux import IPRoute` 138 ms (the package `__init__` runs first anyway);
the same with the package `__init__` skipped 96 ms (it still needs asyncio); the three message
classes alone (`_import_messages`) ~23 ms.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import importlib.util
import os
import socket
import struct
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from cni_bridge.net.ops import NetError, NetnsUnavailable

CLONE_NEWNET = 0x40000000
_NS_GET_NSTYPE = 0xB703  # ioctl: _IO(0xb7, 0x3), kernel >= 4.11
_SELF_NETNS = "/proc/thread-self/ns/net"

NETLINK_ROUTE = 0
_SOL_NETLINK = 270
_NETLINK_CAP_ACK = 10
_NETLINK_EXT_ACK = 11
_NETLINK_GET_STRICT_CHK = 12

NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_DUMP_INTR = 0x10
NLM_F_ACK_TLVS = 0x200
NLM_F_DUMP = 0x300
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400

_NLMSG_HDR = struct.Struct("=IHHII")
_NLATTR_HDR = struct.Struct("=HH")
_NLMSGERR_ATTR_MSG = 1
_RECV_SIZE = 1 << 18
_DUMP_RETRIES = 5


def _import_messages() -> tuple[Any, Any, Any]:
    """Import pyroute2's rtnetlink message classes without running `pyroute2/__init__.py`.

    Importing any submodule runs the package `__init__` first, and pyroute2's pulls in ~370
    modules (NDB, asyncio, every socket family): `from pyroute2.iproute.linux import IPRoute`
    measured 145-180 ms, the same as `import pyroute2`. Registering the package as an empty
    module first (its `__path__` still points at the real directory) lets the message modules
    load alone. If someone asks the placeholder for a public name later (`from pyroute2 import
    IPRoute`), it runs the real `__init__` into itself first, so other users are unaffected.
    """
    if "pyroute2" not in sys.modules:
        spec = importlib.util.find_spec("pyroute2")
        if spec is None or spec.loader is None:
            raise ImportError("pyroute2 is not installed")
        package = importlib.util.module_from_spec(spec)
        loader = spec.loader

        def load_fully(name: str) -> Any:
            if name.startswith("__") and name not in ("__version__", "__all__"):
                raise AttributeError(name)  # probes by tools (__wrapped__, ...)
            # `from pyroute2 import config` asks for a submodule: import just that.
            if importlib.util.find_spec(f"pyroute2.{name}") is not None:
                return importlib.import_module(f"pyroute2.{name}")
            del package.__dict__["__getattr__"]
            loader.exec_module(package)
            return getattr(package, name)

        package.__dict__["__getattr__"] = load_fully
        sys.modules["pyroute2"] = package
    from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
    from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
    from pyroute2.netlink.rtnl.rtmsg import rtmsg

    return ifinfmsg, ifaddrmsg, rtmsg


ifinfmsg, ifaddrmsg, rtmsg = _import_messages()

# Replies we decode, by message type (RTM_NEWLINK, RTM_NEWADDR, RTM_NEWROUTE).
_DECODERS: dict[int, Any] = {16: ifinfmsg, 20: ifaddrmsg, 24: rtmsg}


# --- namespaces -----------------------------------------------------------------------------


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


@contextmanager
def entered(netns_fd: int) -> Iterator[None]:
    """Run the block with the calling thread inside the given network namespace.

    Only the calling thread moves. Keep the block short and free of unrelated work: anything
    opened inside (sockets, /proc/sys files) belongs to that namespace.
    """
    original = os.open(_SELF_NETNS, os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            _setns(netns_fd, CLONE_NEWNET)
        except OSError as exc:
            raise NetError(
                f"cannot enter network namespace: {exc.strerror}", errno=exc.errno
            ) from None
        try:
            yield
        finally:
            _return_or_die(original)
    finally:
        os.close(original)


@contextmanager
def netns_path_entered(path: str) -> Iterator[None]:
    fd = open_netns(path)
    try:
        with entered(fd):
            yield
    finally:
        os.close(fd)


# --- rtnetlink transport --------------------------------------------------------------------


class NetlinkError(OSError):
    """The kernel refused a request; `errno` is the kernel's, `strerror` includes its message."""


def _new_socket() -> socket.socket:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE)
    try:
        # Errors carry the kernel's explanation, without echoing our whole request back.
        sock.setsockopt(_SOL_NETLINK, _NETLINK_EXT_ACK, 1)
        sock.setsockopt(_SOL_NETLINK, _NETLINK_CAP_ACK, 1)
        # Lets dumps be filtered by the kernel (addresses by ifindex, links by master).
        sock.setsockopt(_SOL_NETLINK, _NETLINK_GET_STRICT_CHK, 1)
    except OSError:
        pass  # old kernels: we filter in user space anyway
    sock.bind((0, 0))
    return sock


def _ext_ack_message(buf: bytes, offset: int, end: int) -> str:
    """The NLMSGERR_ATTR_MSG of an error message (after the errno and the echoed header)."""
    pos = offset + _NLMSG_HDR.size + 4 + _NLMSG_HDR.size
    while pos + _NLATTR_HDR.size <= end:
        length, kind = _NLATTR_HDR.unpack_from(buf, pos)
        if length < _NLATTR_HDR.size:
            break
        if kind & 0x3FFF == _NLMSGERR_ATTR_MSG:
            raw = buf[pos + _NLATTR_HDR.size : pos + length]
            return raw.split(b"\0", 1)[0].decode(errors="replace")
        pos += (length + 3) & ~3
    return ""


def _raise_for(code: int, buf: bytes, offset: int, end: int, flags: int) -> None:
    number = -code
    text = os.strerror(number)
    if flags & NLM_F_ACK_TLVS:
        detail = _ext_ack_message(buf, offset, end)
        if detail:
            text = f"{text} ({detail})"
    raise NetlinkError(number, text)


class Rtnl:
    """A blocking rtnetlink socket, bound to the namespace it was created in."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._seq = 0

    @classmethod
    def open(cls, netns_path: str | None = None) -> Rtnl:
        """A socket in the current namespace, or in the one at `netns_path`."""
        if netns_path is None:
            return cls(_new_socket())
        with netns_path_entered(netns_path):
            return cls(_new_socket())

    @classmethod
    def open_fd(cls, netns_fd: int) -> Rtnl:
        with entered(netns_fd):
            return cls(_new_socket())

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Rtnl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _send(self, msg: Any, msg_type: int, flags: int) -> int:
        self._seq += 1
        msg["header"]["type"] = msg_type
        msg["header"]["flags"] = flags
        msg["header"]["sequence_number"] = self._seq
        msg["header"]["pid"] = 0
        msg.reset()
        msg.encode()
        self._sock.send(msg.data)
        return self._seq

    def _replies(self, seq: int, dump: bool, decode: bool) -> tuple[list[Any], bool]:
        """Collect the replies to request `seq`; returns them and whether a dump was torn.

        With `decode`, replies are pyroute2 messages; without, the raw payloads (after the
        netlink header) for callers with a faster parser of their own.
        """
        replies: list[Any] = []
        interrupted = False
        while True:
            buf = self._sock.recv(_RECV_SIZE)
            offset = 0
            while offset + _NLMSG_HDR.size <= len(buf):
                length, msg_type, flags, msg_seq, _pid = _NLMSG_HDR.unpack_from(buf, offset)
                if length < _NLMSG_HDR.size:
                    raise NetlinkError(errno.EBADMSG, "malformed netlink message")
                end = offset + length
                if msg_seq == seq:
                    if flags & NLM_F_DUMP_INTR:
                        interrupted = True
                    if msg_type == NLMSG_ERROR:
                        (code,) = struct.unpack_from("=i", buf, offset + _NLMSG_HDR.size)
                        if code:
                            _raise_for(code, buf, offset, end, flags)
                        return replies, interrupted
                    if msg_type == NLMSG_DONE:
                        if dump and length >= _NLMSG_HDR.size + 4:
                            (code,) = struct.unpack_from("=i", buf, offset + _NLMSG_HDR.size)
                            if code < 0:
                                _raise_for(code, buf, offset, end, flags)
                        return replies, interrupted
                    if not decode:
                        replies.append(buf[offset + _NLMSG_HDR.size : end])
                    elif (decoder := _DECODERS.get(msg_type)) is not None:
                        reply = decoder(buf[offset:end])
                        reply.decode()
                        replies.append(reply)
                offset += (length + 3) & ~3

    def request(self, msg: Any, msg_type: int, flags: int = 0, *, decode: bool = True) -> list[Any]:
        """Send one request and wait for its acknowledgement; returns any replies before it."""
        seq = self._send(msg, msg_type, flags | NLM_F_REQUEST | NLM_F_ACK)
        return self._replies(seq, dump=False, decode=decode)[0]

    def dump(self, msg: Any, msg_type: int, *, decode: bool = True) -> list[Any]:
        """A whole-table dump, retried when the kernel reports it changed underneath us."""
        for _ in range(_DUMP_RETRIES):
            seq = self._send(msg, msg_type, NLM_F_REQUEST | NLM_F_DUMP)
            replies, interrupted = self._replies(seq, dump=True, decode=decode)
            if not interrupted:
                return replies
        raise NetlinkError(errno.EAGAIN, "netlink dump kept being interrupted")
