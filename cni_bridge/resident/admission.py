"""Admission: whether the resident may run a caller's request, decided before READY.

The kernel's peer credentials and /proc say who the caller is; the request's own fields and the
descriptors it carried must agree with each other. Anything declined raises `Refused`: nothing
ran, and the caller is told to run the request through the bundle (EXEC).
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import struct
import time
from collections.abc import Mapping

from cni_bridge.resident import policy, protocol
from cni_bridge.tuples import NamedTuple

CAP_NET_ADMIN = 12
CAP_SYS_ADMIN = 21
REQUIRED_CAPS = (1 << CAP_NET_ADMIN) | (1 << CAP_SYS_ADMIN)
NS_GET_NSTYPE = 0xB703  # ioctl _IO(0xb7, 0x3)
CLONE_NEWNET = 0x40000000
CLONE_NEWNS = 0x00020000

_CRED = struct.Struct("iII")
_ANCBUF = socket.CMSG_SPACE(4 * 16)  # room to notice (and close) extra descriptors


class Refused(Exception):
    """The request is declined before it runs; the caller runs it through the bundle."""

def _same_file(a: str, b: str, *, missing: bool | None = None) -> bool:
    """Whether two paths name one file; `missing`: the answer if either cannot be stat'ed
    (None: raise the OSError)."""
    try:
        sa, sb = os.stat(a), os.stat(b)
    except OSError:
        if missing is None:
            raise
        return missing
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def effective_caps(pid: int | str) -> int:
    with open(f"/proc/{pid}/status", "rb") as status:
        for line in status:
            if line.startswith(b"CapEff:"):
                return int(line.split(b":", 1)[1], 16)
    raise OSError(errno.ENOENT, "no CapEff line")


def check_peer(conn: socket.socket) -> int:
    """Raise Refused unless the caller could do the same work in-process; return its pid.

    The kernel's peer credentials say who connected; /proc says where it runs. The caller must
    be root, share our network namespace (the host side of the work is done in ours) and user
    namespace, have the capabilities the work needs, and none we lack (a resident started by a
    weaker caller must not serve a stronger one). Its mount namespace may be any: see `admit`.
    """
    pid: int
    uid: int
    pid, uid, _gid = _CRED.unpack(
        conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CRED.size)
    )
    if uid != 0:
        raise Refused(f"caller uid {uid} is not root")
    if pid <= 0:
        raise Refused("caller is not visible in this pid namespace")
    try:
        for ns in ("net", "user"):
            if not _same_file(f"/proc/{pid}/ns/{ns}", f"/proc/self/ns/{ns}"):
                raise Refused(f"caller pid {pid} is in another {ns} namespace")
        caps = effective_caps(pid)
        own = effective_caps("self")
    except OSError as exc:
        raise Refused(f"cannot inspect caller pid {pid}: {exc}") from exc
    if caps & REQUIRED_CAPS != REQUIRED_CAPS:
        raise Refused(f"caller pid {pid} lacks CAP_NET_ADMIN or CAP_SYS_ADMIN")
    if caps & ~own:
        raise Refused(f"caller pid {pid} has capabilities this resident lacks")
    return pid


def open_ns(fd: int, kind: int, what: str) -> int:
    """A readable descriptor for the namespace of type `kind` behind a received one."""
    try:
        if os.fstat(fd).st_dev != os.stat("/proc/self/ns/net").st_dev:
            raise Refused(f"the {what} descriptor sent is not a namespace")
        real = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise Refused(f"cannot open the {what} namespace sent: {exc}") from exc
    try:
        actual = fcntl.ioctl(real, NS_GET_NSTYPE)
    except OSError as exc:
        os.close(real)
        raise Refused(f"cannot inspect the {what} namespace sent: {exc}") from exc
    if actual != kind:
        os.close(real)
        raise Refused(f"the namespace sent is not a {what} namespace")
    return real


def open_netns(fd: int) -> int:
    """A readable descriptor for the network namespace behind a received (O_PATH) one."""
    return open_ns(fd, CLONE_NEWNET, "network")


def netns_path(env: Mapping[str, str]) -> str:
    """The CNI_NETNS a request works in; "" for commands that take none (VERSION with
    podman's "dummy", GC, STATUS), whose CNI_NETNS travels as it is."""
    if env.get("CNI_COMMAND", "") not in policy.NETNS_COMMANDS:
        return ""
    return env.get("CNI_NETNS", "")


def open_netns_path(path: str) -> int:
    """CNI_NETNS opened where the caller sees it (in its mount namespace): a missing path or
    one that is no network namespace is left to the in-process path, which reports it."""
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError as exc:
        raise Refused(f"cannot open CNI_NETNS {path!r}: {exc}") from exc
    try:
        return open_netns(fd)
    finally:
        os.close(fd)


class Admitted(NamedTuple):
    """The descriptors a request may run with (-1: none); the worker closes them."""

    stdio: tuple[int, int, int]  # the caller's own stdin, stdout, stderr (closed with `fds`)
    netns_fd: int
    mntns_fd: int


def admit(request: protocol.Request, fds: list[int], identity: str, pid: int) -> Admitted:
    """Validate a decoded request against the descriptors it carried and the caller's pid.

    The caller's stdin, stdout and stderr come first. With the caller's mount namespace
    (FLAG_MNTNS_FD, last descriptor) the worker joins it, and a CNI_NETNS without its
    descriptor is opened there. Without it the caller must share ours, and CNI_NETNS must come
    as a descriptor (a path might name another file here). A namespace sent with a command that
    takes none (the launcher sends what CNI_NETNS opens to) is not used."""
    if request.identity != identity:
        raise Refused("the caller runs other code than this resident")
    if len(fds) != protocol.fd_count(request):
        raise Refused("descriptor flags and descriptors sent disagree")
    stdio = (fds[0], fds[1], fds[2])
    sent_netns = request.has_netns_fd and bool(netns_path(request.env))
    mntns_fd = -1
    if request.has_mntns_fd:
        mntns_fd = open_ns(fds[-1], CLONE_NEWNS, "mount")
        if not _same_file(f"/proc/self/fd/{mntns_fd}", f"/proc/{pid}/ns/mnt", missing=False):
            os.close(mntns_fd)
            raise Refused("the mount namespace sent is not the caller's")
    else:
        try:
            if not _same_file(f"/proc/{pid}/ns/mnt", "/proc/self/ns/mnt"):
                raise Refused(f"caller pid {pid} is in another mnt namespace")
        except OSError as exc:
            raise Refused(f"cannot inspect caller pid {pid}: {exc}") from exc
        if netns_path(request.env) and not sent_netns:
            raise Refused("CNI_NETNS sent without its descriptor")
    netns_fd = -1
    if sent_netns:
        try:
            netns_fd = open_netns(fds[protocol.STDIO_FDS])
        except Refused:
            if mntns_fd >= 0:
                os.close(mntns_fd)
            raise
    return Admitted(stdio, netns_fd, mntns_fd)


# --- reading the request ----------------------------------------------------------------------


def passed_fds(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    """The descriptors an SCM_RIGHTS message carried (the caller owns and closes them)."""
    fds: list[int] = []
    for level, kind, cdata in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            count = len(cdata) // 4
            fds.extend(struct.unpack(f"{count}i", cdata[: count * 4]))
    return fds


def _recv_with_fds(conn: socket.socket, size: int, deadline: float, fds: list[int]) -> bytes:
    buf = bytearray()
    while len(buf) < size:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("request not received in time")
        conn.settimeout(remaining)
        data, ancdata, flags, _ = conn.recvmsg(
            min(size - len(buf), 1 << 20), _ANCBUF, socket.MSG_CMSG_CLOEXEC
        )
        fds.extend(passed_fds(ancdata))
        if flags & socket.MSG_CTRUNC:
            raise protocol.ProtocolError("ancillary data truncated")
        if not data:
            raise protocol.PeerClosed("connection closed mid-request")
        buf += data
    return bytes(buf)


def receive_request(conn: socket.socket, deadline: float, fds: list[int]) -> protocol.Request:
    kind, length = protocol.decode_header(_recv_with_fds(conn, protocol.HEADER.size, deadline, fds))
    if kind != protocol.REQUEST:
        raise protocol.ProtocolError(f"expected REQUEST, got {protocol.KIND_NAMES[kind]}")
    return protocol.decode_request(_recv_with_fds(conn, length, deadline, fds))


