"""Delete UDP conntrack entries by original destination port, over ctnetlink.

A few dozen lines of standard-library netlink instead of pyroute2's conntrack module,
whose import costs ~140 ms (it loads the whole pyroute2 package). Runs in the calling
thread's network namespace. The kernel filters the dump (CTA_FILTER, Linux >= 5.8);
entries are checked again here, so an older kernel that ignores the filter is fine.
Every dump walks the whole (host-wide) conntrack hash, ~10 ms with 256k buckets, so
there is one dump per address family for all ports (the kernel filters a dump only
for one family).
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Iterable, Iterator

NETLINK_NETFILTER = 12
_CT_GET = 1 << 8 | 1  # NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_GET
_CT_DELETE = 1 << 8 | 2
_F_REQUEST, _F_ACK, _F_DUMP = 0x1, 0x4, 0x300
_MSG_ERROR, _MSG_DONE = 2, 3
_NESTED = 0x8000
# attribute types (linux/netfilter/nfnetlink_conntrack.h)
CTA_TUPLE_ORIG, CTA_ZONE, CTA_FILTER = 1, 18, 25
CTA_TUPLE_PROTO = 2
CTA_PROTO_NUM, CTA_PROTO_DST_PORT = 1, 3
CTA_FILTER_ORIG_FLAGS, CTA_FILTER_REPLY_FLAGS = 1, 2
_FILTER_PROTO_NUM, _FILTER_PROTO_DST_PORT = 1 << 3, 1 << 5
_UDP = 17


def _attr(kind: int, payload: bytes) -> bytes:
    size = 4 + len(payload)
    return struct.pack("=HH", size, kind) + payload + b"\0" * (-size % 4)


def _attrs(buf: bytes) -> Iterator[tuple[int, bytes]]:
    pos = 0
    while pos + 4 <= len(buf):
        size, kind = struct.unpack_from("=HH", buf, pos)
        if size < 4:
            return
        yield kind & 0x3FFF, buf[pos + 4 : pos + size]
        pos += (size + 3) & ~3


def _message(kind: int, flags: int, seq: int, family: int, attrs: bytes) -> bytes:
    body = struct.pack("=BBH", family, 0, 0) + attrs
    return struct.pack("=IHHII", 16 + len(body), kind, flags, seq, 0) + body


def _filter(port: int | None) -> bytes:
    proto = _attr(CTA_PROTO_NUM, bytes([_UDP]))
    flags = _FILTER_PROTO_NUM
    if port is not None:
        proto += _attr(CTA_PROTO_DST_PORT, struct.pack("!H", port))
        flags |= _FILTER_PROTO_DST_PORT
    tuple_attr = _attr(CTA_TUPLE_ORIG | _NESTED, _attr(CTA_TUPLE_PROTO | _NESTED, proto))
    filt = _attr(CTA_FILTER_ORIG_FLAGS, struct.pack("=I", flags))
    filt += _attr(CTA_FILTER_REPLY_FLAGS, struct.pack("=I", 0))
    return tuple_attr + _attr(CTA_FILTER | _NESTED, filt)


def _udp_dport(tuple_payload: bytes) -> int | None:
    for kind, value in _attrs(tuple_payload):
        if kind != CTA_TUPLE_PROTO:
            continue
        proto = dict(_attrs(value))
        if proto.get(CTA_PROTO_NUM) == bytes([_UDP]) and CTA_PROTO_DST_PORT in proto:
            return int(struct.unpack("!H", proto[CTA_PROTO_DST_PORT])[0])
    return None


class _Socket:
    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        self.sock.bind((0, 0))
        self.seq = 0

    def close(self) -> None:
        self.sock.close()

    def request(self, kind: int, flags: int, family: int, attrs: bytes) -> list[tuple[int, bytes]]:
        """Send one request; return (nfgen family, attributes) of the replies until its end."""
        self.seq += 1
        self.sock.send(_message(kind, flags | _F_REQUEST, self.seq, family, attrs))
        replies: list[tuple[int, bytes]] = []
        while True:
            data = self.sock.recv(1 << 20)
            pos = 0
            while pos + 16 <= len(data):
                size, mtype, _flags, seq, _pid = struct.unpack_from("=IHHII", data, pos)
                if size < 16:
                    raise OSError(errno.EPROTO, "malformed netlink message")
                payload = data[pos + 16 : pos + size]
                pos += (size + 3) & ~3
                if seq != self.seq:
                    continue
                if mtype == _MSG_DONE:
                    return replies
                if mtype == _MSG_ERROR:
                    code = -struct.unpack_from("=i", payload)[0]
                    if code:
                        raise OSError(code, os.strerror(code))
                    return replies  # the ACK of a non-dump request
                replies.append((payload[0], payload[4:]))
            if not flags & _F_DUMP and not flags & _F_ACK:
                return replies


def delete_udp_dport(ports: Iterable[int], families: Iterable[int] = (4, 6)) -> int:
    """Delete the UDP conntrack entries of the IP versions in families whose original
    destination port is one of ports. Returns how many were deleted."""
    wanted = set(ports)
    if not wanted:
        return 0
    afs = [{4: socket.AF_INET, 6: socket.AF_INET6}[f] for f in sorted(set(families))]
    sock = _Socket()
    try:
        victims: list[tuple[int, bytes]] = []
        filt = _filter(next(iter(wanted)) if len(wanted) == 1 else None)
        for af in afs:
            for fam, attrs in sock.request(_CT_GET, _F_DUMP, af, filt):
                found = dict(_attrs(attrs))
                orig = found.get(CTA_TUPLE_ORIG)
                if orig is None or _udp_dport(orig) not in wanted:
                    continue
                key = _attr(CTA_TUPLE_ORIG | _NESTED, orig)
                if CTA_ZONE in found:
                    key += _attr(CTA_ZONE, found[CTA_ZONE])
                victims.append((fam, key))
        deleted = 0
        for fam, key in victims:
            try:
                sock.request(_CT_DELETE, _F_ACK, fam, key)
                deleted += 1
            except OSError as exc:
                if exc.errno != errno.ENOENT:  # gone meanwhile: fine
                    raise
        return deleted
    finally:
        sock.close()
