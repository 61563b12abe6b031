"""The nftables ruleset generation and change events, over netlink (NETLINK_NETFILTER).
Standard library only.

Every committed nftables transaction (iptables-nft's included) bumps the ruleset generation
and is announced on the multicast group NFNLGRP_NFTABLES: its objects, then one NFT_MSG_NEWGEN
carrying the new generation (NFTA_GEN_ID) and the committing process (NFTA_GEN_PROC_PID,
NFTA_GEN_PROC_NAME). NFT_MSG_GETGEN asks for the current generation.
"""

from __future__ import annotations

import os
import socket
import struct
from dataclasses import dataclass

NETLINK_NETFILTER = 12
SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
NFNLGRP_NFTABLES = 7
NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_NEWGEN, NFT_MSG_GETGEN = 15, 16
NFTA_GEN_ID, NFTA_GEN_PROC_PID, NFTA_GEN_PROC_NAME = 1, 2, 3
NLM_F_REQUEST = 1
NLMSG_ERROR, NLMSG_DONE = 2, 3
_HDR = struct.Struct("=IHHII")  # nlmsghdr
_NFGEN = struct.Struct("=BBH")  # nfgenmsg: family, version, res_id (big endian)
_ATTR = struct.Struct("=HH")


@dataclass(frozen=True)
class Generation:
    id: int
    pid: int  # the committing process (0 when the kernel did not say)
    name: str


def _attrs(data: bytes) -> dict[int, bytes]:
    out = {}
    pos = 0
    while pos + _ATTR.size <= len(data):
        length, kind = _ATTR.unpack_from(data, pos)
        if length < _ATTR.size:
            break
        out[kind & 0x3FFF] = data[pos + _ATTR.size : pos + length]
        pos += (length + 3) & ~3
    return out


def parse(buf: bytes) -> tuple[list[Generation], int]:
    """The generations announced in a buffer of netlink messages, and how many messages it
    held (every one of them is a ruleset change or part of one)."""
    gens = []
    count = 0
    pos = 0
    while pos + _HDR.size <= len(buf):
        length, kind, _, _, _ = _HDR.unpack_from(buf, pos)
        if length < _HDR.size:
            break
        count += 1
        if kind == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWGEN:
            a = _attrs(buf[pos + _HDR.size + _NFGEN.size : pos + length])
            gen = struct.unpack(">I", a[NFTA_GEN_ID])[0] if NFTA_GEN_ID in a else 0
            pid = struct.unpack(">I", a[NFTA_GEN_PROC_PID])[0] if NFTA_GEN_PROC_PID in a else 0
            name = a.get(NFTA_GEN_PROC_NAME, b"").rstrip(b"\0").decode(errors="replace")
            gens.append(Generation(gen, pid, name))
        pos += (length + 3) & ~3
    return gens, count


def current() -> int:
    """The ruleset generation now (one request, ~50 µs)."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_NETFILTER) as s:
        s.bind((0, 0))
        s.settimeout(2.0)
        body = _NFGEN.pack(socket.AF_UNSPEC, 0, 0)
        kind = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETGEN
        s.send(_HDR.pack(_HDR.size + len(body), kind, NLM_F_REQUEST, 1, 0) + body)
        while True:
            buf = s.recv(65536)
            gens, _ = parse(buf)
            if gens:
                return gens[0].id
            _, kind, _, _, _ = _HDR.unpack_from(buf, 0)
            if kind == NLMSG_ERROR:
                (err,) = struct.unpack_from("=i", buf, _HDR.size)
                if err:
                    raise OSError(-err, os.strerror(-err))


def subscribe() -> socket.socket:
    """A non-blocking socket that receives every ruleset change of this network namespace."""
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_NETFILTER)
    try:
        s.bind((0, 0))
        s.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, NFNLGRP_NFTABLES)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        s.setblocking(False)
    except BaseException:
        s.close()
        raise
    return s
