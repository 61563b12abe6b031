"""Delete UDP conntrack entries by original destination port, over ctnetlink.

The same netlink path as the links (`net.netlink`: its socket and attribute encoding) rather
than pyroute2's NFCTSocket, whose import loads the whole pyroute2 package (see `net.netlink`
for the cost), on the ADD path of every UDP port mapping. Runs in the calling thread's network
namespace. The kernel filters the dump (CTA_FILTER, Linux >= 5.8); entries are checked again
here, so an older kernel that ignores the filter is fine. Every dump walks the whole
(host-wide) conntrack hash, ~10 ms with 256k buckets, so there is one dump per address family
for all ports (the kernel filters a dump only for one family).
"""

from __future__ import annotations

import errno
import socket
import struct
from collections.abc import Iterable

from cni_bridge.net.netlink import (
    NETLINK_NETFILTER,
    NLA_F_NESTED,
    NetlinkSocket,
    attr,
    attr_u8,
    attr_u32,
    attrs_of,
)

_CT_GET = 1 << 8 | 1  # NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_GET
_CT_DELETE = 1 << 8 | 2
_NFGEN = struct.Struct("=BBH")  # struct nfgenmsg (family, version, res_id)
# attribute types (linux/netfilter/nfnetlink_conntrack.h)
CTA_TUPLE_ORIG, CTA_ZONE, CTA_FILTER = 1, 18, 25
CTA_TUPLE_PROTO = 2
CTA_PROTO_NUM, CTA_PROTO_DST_PORT = 1, 3
CTA_FILTER_ORIG_FLAGS, CTA_FILTER_REPLY_FLAGS = 1, 2
_FILTER_PROTO_NUM, _FILTER_PROTO_DST_PORT = 1 << 3, 1 << 5
_UDP = 17


def _message(family: int, attrs: bytes) -> bytes:
    return _NFGEN.pack(family, 0, 0) + attrs


def _filter(port: int | None) -> bytes:
    proto = attr_u8(CTA_PROTO_NUM, _UDP)
    flags = _FILTER_PROTO_NUM
    if port is not None:
        proto += attr(CTA_PROTO_DST_PORT, struct.pack("!H", port))
        flags |= _FILTER_PROTO_DST_PORT
    tuple_attr = attr(CTA_TUPLE_ORIG | NLA_F_NESTED, attr(CTA_TUPLE_PROTO | NLA_F_NESTED, proto))
    filt = attr_u32(CTA_FILTER_ORIG_FLAGS, flags) + attr_u32(CTA_FILTER_REPLY_FLAGS, 0)
    return tuple_attr + attr(CTA_FILTER | NLA_F_NESTED, filt)


def _udp_dport(tuple_payload: bytes) -> int | None:
    proto = attrs_of(attrs_of(tuple_payload).get(CTA_TUPLE_PROTO) or b"")
    if proto.get(CTA_PROTO_NUM) == bytes([_UDP]) and CTA_PROTO_DST_PORT in proto:
        return int(struct.unpack("!H", proto[CTA_PROTO_DST_PORT])[0])
    return None


def delete_udp_dport(ports: Iterable[int], families: Iterable[int] = (4, 6)) -> int:
    """Delete the UDP conntrack entries of the IP versions in families whose original
    destination port is one of ports. Returns how many were deleted."""
    wanted = set(ports)
    if not wanted:
        return 0
    afs = [{4: socket.AF_INET, 6: socket.AF_INET6}[f] for f in sorted(set(families))]
    with NetlinkSocket.open(NETLINK_NETFILTER) as sock:
        victims: list[tuple[int, bytes]] = []
        filt = _filter(next(iter(wanted)) if len(wanted) == 1 else None)
        for af in afs:
            for reply in sock.dump(_CT_GET, _message(af, filt)):
                found = attrs_of(reply, _NFGEN.size)
                orig = found.get(CTA_TUPLE_ORIG)
                if orig is None or _udp_dport(orig) not in wanted:
                    continue
                key = attr(CTA_TUPLE_ORIG | NLA_F_NESTED, orig)
                if CTA_ZONE in found:
                    key += attr(CTA_ZONE, found[CTA_ZONE])
                victims.append((reply[0], key))  # the entry's nfgen family
        deleted = 0
        for fam, key in victims:
            try:
                sock.request(_CT_DELETE, _message(fam, key))
                deleted += 1
            except OSError as exc:
                if exc.errno != errno.ENOENT:  # gone meanwhile: fine
                    raise
        return deleted
