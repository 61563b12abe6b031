"""Binding the socket of a HoldKey the way the holder holds it (and ADD's check tries it).

TCP: SO_REUSEADDR (a connection of an earlier holder in TIME_WAIT must not stop a new one) and
listen(), since a listener is what makes every other bind of the port fail, SO_REUSEADDR or
not. UDP: no SO_REUSEADDR, or a host program setting it could share the port. IPv6 sockets are
IPV6_V6ONLY (the IPv4 side has its own socket). A specific host address is bound with
IP_FREEBIND, so a hostIP that is not (yet) on the host is held as the firewall publishes it.
"""

from __future__ import annotations

import socket

from cni_bridge.ports.model import HoldKey

IP_FREEBIND = 15  # <linux/in.h>
IPV6_FREEBIND = 78  # <linux/in6.h>
BACKLOG = 128


def bind(key: HoldKey, listen: bool) -> socket.socket:
    """A socket bound as held; raises OSError (EADDRINUSE: someone holds the port)."""
    fam = socket.AF_INET6 if key.family == 6 else socket.AF_INET
    kind = socket.SOCK_STREAM if key.protocol == "tcp" else socket.SOCK_DGRAM
    sock = socket.socket(fam, kind | socket.SOCK_CLOEXEC)
    try:
        if fam == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if key.protocol == "tcp":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if not key.wildcard:
            if fam == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, IPV6_FREEBIND, 1)
            else:
                sock.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)
        sock.bind((key.address, key.port))
        if listen and key.protocol == "tcp":
            sock.listen(BACKLOG)
    except BaseException:
        sock.close()
        raise
    return sock
