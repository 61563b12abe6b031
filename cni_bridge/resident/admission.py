"""Admission: whether the resident may run a caller's request, decided before READY.

The kernel's peer credentials and /proc say who the caller is; the request's own fields and the
descriptors it carried must agree with each other. Anything declined raises `Refused`: nothing
ran, and the client runs the request in-process.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import struct
import time

from cni_bridge.resident import client, protocol

CAP_NET_ADMIN = 12
CAP_SYS_ADMIN = 21
REQUIRED_CAPS = (1 << CAP_NET_ADMIN) | (1 << CAP_SYS_ADMIN)
NS_GET_NSTYPE = 0xB703  # ioctl _IO(0xb7, 0x3)
CLONE_NEWNET = 0x40000000

_CRED = struct.Struct("iII")
_ANCBUF = socket.CMSG_SPACE(4 * _CRED.size)  # room to notice (and close) extra descriptors


class Refused(Exception):
    """The request is declined before it runs; the client runs it in-process."""



def _same_file(a: str, b: str) -> bool:
    sa, sb = os.stat(a), os.stat(b)
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def effective_caps(pid: int | str) -> int:
    with open(f"/proc/{pid}/status", "rb") as status:
        for line in status:
            if line.startswith(b"CapEff:"):
                return int(line.split(b":", 1)[1], 16)
    raise OSError(errno.ENOENT, "no CapEff line")


def check_peer(conn: socket.socket) -> None:
    """Raise Refused unless the caller could do the same work in-process, in the same place.

    The abstract name already confines callers to this network namespace; this checks it
    again from /proc, and that the caller is root, shares our mount namespace (the engine's
    files: IPAM store, state, locks) and user namespace, has the capabilities the work needs,
    and none we lack (a resident started by a weaker caller must not serve a stronger one).
    """
    pid, uid, _gid = _CRED.unpack(
        conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CRED.size)
    )
    if uid != 0:
        raise Refused(f"caller uid {uid} is not root")
    if pid <= 0:
        raise Refused("caller is not visible in this pid namespace")
    try:
        for ns in ("net", "mnt", "user"):
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


def open_netns(fd: int) -> int:
    """A readable descriptor for the network namespace behind a received (O_PATH) one."""
    try:
        if os.fstat(fd).st_dev != os.stat("/proc/self/ns/net").st_dev:
            raise Refused("the descriptor sent is not a namespace")
        real = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise Refused(f"cannot open the namespace sent: {exc}") from exc
    try:
        kind = fcntl.ioctl(real, NS_GET_NSTYPE)
    except OSError as exc:
        os.close(real)
        raise Refused(f"cannot inspect the namespace sent: {exc}") from exc
    if kind != CLONE_NEWNET:
        os.close(real)
        raise Refused("the namespace sent is not a network namespace")
    return real


def admit(request: protocol.Request, fds: list[int], identity: str) -> int:
    """Validate a decoded request; return the netns descriptor for the engine (-1: none)."""
    if request.identity != identity:
        raise Refused("the caller runs other code than this resident")
    if len(fds) > 1:
        raise Refused("more than one descriptor sent")
    if request.has_netns_fd != bool(fds):
        raise Refused("descriptor flag and descriptors sent disagree")
    takes_netns = request.env.get("CNI_COMMAND", "") in client.NETNS_COMMANDS
    if not fds:
        # A path alone might name another file here than for the caller; it must come as a fd.
        if takes_netns and request.env.get("CNI_NETNS"):
            raise Refused("CNI_NETNS sent without its descriptor")
        return -1
    if not takes_netns:
        raise Refused("a namespace sent for a command that takes none")
    return open_netns(fds[0])



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


