"""The relays of a held socket, docker-proxy's: what reaches the socket (what DNAT leaves, in
practice [::1]) is carried to the container's address and port, on the holder's loop (loop.py).

TCP: a connection to the target per accepted connection (given up after CONNECT_TIMEOUT),
bytes both ways, half-closes passed on; a side is not read while the other side has HIGH bytes
it has not taken yet, so a slow reader slows the writer instead of filling the holder. UDP: per
client address a connected socket to the target; its replies go back from the held socket to
that client; a flow idle for UDP_IDLE seconds is closed (docker-proxy's UDPConnTrackTimeout is
90 s). Relays never take the last loop.AGENT_RESERVE descriptors below the soft limit: past
that a TCP listener is paused (its clients wait in the listen queue) and a new UDP flow's
datagrams are dropped. The target is read when a connection or flow starts, so a retargeted socket serves new
clients at the new address.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import time
from collections.abc import Callable
from typing import Any

from cni_bridge.ports.loop import READ, SHORT_OF, WRITE, Loop, Timer
from cni_bridge.ports.model import Target

CONNECT_TIMEOUT = 10.0
CHUNK = 65536
HIGH = 4 * CHUNK  # bytes buffered one way before its source is no longer read
UDP_IDLE = 90.0
MAX_UDP_FLOWS = 1024
MAX_DATAGRAM = 65536
BATCH = 64  # accepts or datagrams per readiness, so one busy socket cannot starve the others
ACCEPT_RETRY = 1.0

TargetOf = Callable[[], Target | None]


def _family(target: Target) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in target.address else socket.AF_INET


class _Conn:
    """One relayed connection. socks[0] is the client's, socks[1] ours to the target; bufs[i]
    holds what socks[i] sent that the other has not taken; eof[i]: socks[i] sent its FIN;
    shut[i]: that FIN passed on (socks[i]'s writing side shut)."""

    __slots__ = ("bufs", "closed", "connected", "eof", "relay", "shut", "socks", "timer", "waits")

    def __init__(self, relay: TcpRelay, client: socket.socket, upstream: socket.socket) -> None:
        self.relay = relay
        self.socks = (client, upstream)
        self.bufs = (bytearray(), bytearray())
        self.eof = [False, False]
        self.shut = [False, False]
        self.connected = False
        self.closed = False
        self.waits = (lambda ready: self._ready(0, ready), lambda ready: self._ready(1, ready))
        self.timer: Timer | None = relay.loop.later(CONNECT_TIMEOUT, self.close)
        relay.loop.adopt(client)  # watched once connected
        relay.loop.watch(upstream, WRITE, self._connected, self.close)

    def _connected(self, _ready: int) -> None:
        if self.socks[1].getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
            self.close()
            return
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.connected = True
        self._update()

    def _ready(self, i: int, ready: int) -> None:
        if ready & READ:
            self._read(i)
        if ready & WRITE and not self.closed:
            self._write(i)
        if not self.closed:
            self._update()

    def _read(self, i: int) -> None:
        try:
            data = self.socks[i].recv(CHUNK)
        except BlockingIOError:
            return
        except OSError:
            self.close()
            return
        if data:
            self.bufs[i].extend(data)
        else:
            self.eof[i] = True
        self._write(1 - i)  # at once: most of the time the other side takes it all

    def _write(self, j: int) -> None:
        """Give socks[j] what the other side sent; pass its FIN on once all is given."""
        buf = self.bufs[1 - j]
        if buf:
            try:
                del buf[: self.socks[j].send(buf, socket.MSG_NOSIGNAL)]
            except BlockingIOError:
                return
            except OSError:
                self.close()
                return
        if not buf and self.eof[1 - j] and not self.shut[j]:
            self.shut[j] = True
            try:
                self.socks[j].shutdown(socket.SHUT_WR)
            except OSError:
                self.close()
                return
        if all(self.shut):  # both ways ended
            self.close()

    def _update(self) -> None:
        for i, sock in enumerate(self.socks):
            events = 0
            if not self.eof[i] and len(self.bufs[i]) < HIGH:
                events |= READ
            if self.bufs[1 - i]:
                events |= WRITE
            self.relay.loop.watch(sock, events, self.waits[i], self.close)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
        for sock in self.socks:
            self.relay.loop.close(sock)
        self.relay.conns.discard(self)


class TcpRelay:
    """A held TCP socket's relay; its connections end with it."""

    def __init__(self, loop: Loop, sock: socket.socket, target_of: TargetOf) -> None:
        self.loop = loop
        self.sock = sock
        self.target_of = target_of
        self.conns: set[_Conn] = set()
        loop.watch(sock, READ, self._accept)

    def _accept(self, _ready: int) -> None:
        for _ in range(BATCH):
            if not self.loop.has_room(2):
                # The agent's reserve (loop.AGENT_RESERVE) is not for relays: the clients wait
                # in the listen queue until connections end, as at EMFILE.
                self.loop.pause(self.sock, ACCEPT_RETRY, self._accept)
                return
            try:
                client, _ = self.sock.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in SHORT_OF:
                    self.loop.pause(self.sock, ACCEPT_RETRY, self._accept)
                    return
                continue  # that client's (ECONNABORTED and the like)
            target = self.target_of()
            if target is None:
                client.close()
                continue
            self._relay(client, target)

    def _relay(self, client: socket.socket, target: Target) -> None:
        try:
            upstream = socket.socket(_family(target), socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        except OSError:
            client.close()
            return
        client.setblocking(False)
        upstream.setblocking(False)
        err = upstream.connect_ex((target.address, target.port))
        if err not in (0, errno.EINPROGRESS):
            client.close()
            upstream.close()
            return
        self.conns.add(_Conn(self, client, upstream))

    def close(self) -> None:
        for conn in list(self.conns):
            conn.close()
        self.loop.close(self.sock)


class _Flow:
    __slots__ = ("client", "last", "sock")

    def __init__(self, client: Any, sock: socket.socket) -> None:
        self.client = client
        self.sock = sock
        self.last = time.monotonic()


class UdpRelay:
    """A held UDP socket's relay: one flow per client address."""

    def __init__(self, loop: Loop, sock: socket.socket, target_of: TargetOf) -> None:
        self.loop = loop
        self.sock = sock
        self.target_of = target_of
        self.flows: dict[Any, _Flow] = {}
        loop.watch(sock, READ, self._received)
        self.sweeper = loop.later(UDP_IDLE / 3, self._sweep)

    def _received(self, _ready: int) -> None:
        for _ in range(BATCH):
            try:
                data, client = self.sock.recvfrom(MAX_DATAGRAM)
            except BlockingIOError:
                return
            except OSError:
                continue
            flow = self.flows.get(client) or self._open(client)
            if flow is None:
                continue
            flow.last = time.monotonic()
            # A full buffer, or the target's ICMP: lost, as a datagram may be.
            with contextlib.suppress(OSError):
                flow.sock.send(data)

    def _open(self, client: Any) -> _Flow | None:
        target = self.target_of()
        if target is None or len(self.flows) >= MAX_UDP_FLOWS or not self.loop.has_room(1):
            return None
        try:
            sock = socket.socket(_family(target), socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        except OSError:
            return None
        try:
            sock.setblocking(False)
            sock.connect((target.address, target.port))
        except OSError:
            sock.close()
            return None
        flow = self.flows[client] = _Flow(client, sock)
        self.loop.watch(sock, READ, lambda _: self._reply(flow), lambda: self._end(flow))
        return flow

    def _reply(self, flow: _Flow) -> None:
        for _ in range(BATCH):
            try:
                data = flow.sock.recv(MAX_DATAGRAM)
            except BlockingIOError:
                return
            except OSError:
                continue  # ICMP port unreachable and the like: the client times out
            flow.last = time.monotonic()
            with contextlib.suppress(OSError):
                self.sock.sendto(data, flow.client)

    def _end(self, flow: _Flow) -> None:
        if self.flows.get(flow.client) is flow:
            del self.flows[flow.client]
        self.loop.close(flow.sock)

    def _sweep(self) -> None:
        cutoff = time.monotonic() - UDP_IDLE
        for flow in [f for f in self.flows.values() if f.last < cutoff]:
            self._end(flow)
        self.sweeper = self.loop.later(UDP_IDLE / 3, self._sweep)

    def close(self) -> None:
        self.sweeper.cancel()
        for flow in list(self.flows.values()):
            self._end(flow)
        self.loop.close(self.sock)
