"""Binding the socket of a HoldKey the way the holder holds it (and ADD's check tries it).

TCP: SO_REUSEADDR (a connection of an earlier holder in TIME_WAIT must not stop a new one) and
listen(), since a listener is what makes every other bind of the port fail, SO_REUSEADDR or
not. UDP: no SO_REUSEADDR, or a host program setting it could share the port. IPv6 sockets are
IPV6_V6ONLY (the IPv4 side has its own socket). A specific host address is bound with
IP_FREEBIND, so a hostIP that is not (yet) on the host is held as the firewall publishes it.
"""

from __future__ import annotations

import _socket  # not socket, on ADD's check: it builds enums of all its constants at import

from cni_bridge.ports.model import HoldKey

TYPE_CHECKING = False
if TYPE_CHECKING:
    import socket

IP_FREEBIND = 15  # <linux/in.h>
IPV6_FREEBIND = 78  # <linux/in6.h>
BACKLOG = 128


def bind(key: HoldKey, listen: bool) -> _socket.socket:
    """A socket bound as held; raises OSError (EADDRINUSE: someone holds the port). The bare
    C socket: ADD's check binds it and closes it (the holder takes `hold`)."""
    fam = _socket.AF_INET6 if key.family == 6 else _socket.AF_INET
    kind = _socket.SOCK_STREAM if key.protocol == "tcp" else _socket.SOCK_DGRAM
    sock = _socket.socket(fam, kind | _socket.SOCK_CLOEXEC)
    try:
        if fam == _socket.AF_INET6:
            sock.setsockopt(_socket.IPPROTO_IPV6, _socket.IPV6_V6ONLY, 1)
        if key.protocol == "tcp":
            sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
        if not key.wildcard:
            if fam == _socket.AF_INET6:
                sock.setsockopt(_socket.IPPROTO_IPV6, IPV6_FREEBIND, 1)
            else:
                sock.setsockopt(_socket.IPPROTO_IP, IP_FREEBIND, 1)
        sock.bind((key.address, key.port))
        if listen and key.protocol == "tcp":
            sock.listen(BACKLOG)
    except BaseException:
        sock.close()
        raise
    return sock


def hold(key: HoldKey) -> socket.socket:
    """The holder's socket: bound as held, listening (TCP), as a full `socket.socket`."""
    import socket

    return socket.socket(fileno=bind(key, listen=True).detach())
