"""The relays of a held socket, docker-proxy's: what reaches the socket (what DNAT leaves, in
practice [::1]) is carried to the container's address and port.

TCP: a connection to the target per accepted connection, bytes both ways, half-closes passed
on. UDP: per client address a connected socket to the target; its replies go back from the
held socket to that client; a flow idle for UDP_IDLE seconds is closed (docker-proxy's
UDPConnTrackTimeout is 90 s). The target is read when a connection or flow starts, so a
retargeted socket serves new clients at the new address.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from typing import Any, cast

from cni_bridge.ports.model import Target

CONNECT_TIMEOUT = 10.0
CHUNK = 65536
UDP_IDLE = 90.0
MAX_UDP_FLOWS = 1024

TargetOf = Callable[[], Target | None]


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        writer.transport.abort()


class TcpRelay:
    """The accept callback of a held TCP socket; tracks its connections to end them with it."""

    def __init__(self, target_of: TargetOf) -> None:
        self.target_of = target_of
        self.tasks: set[asyncio.Task[None]] = set()

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        out: asyncio.StreamWriter | None = None
        try:
            target = self.target_of()
            if target is None:
                return
            try:
                in2, upstream = await asyncio.wait_for(
                    asyncio.open_connection(target.address, target.port), CONNECT_TIMEOUT
                )
            except (TimeoutError, OSError):
                return
            out = upstream
            await asyncio.gather(_pipe(reader, upstream), _pipe(in2, writer))
        finally:
            self.tasks.discard(task)
            for w in (writer, out):
                if w is not None:
                    w.close()

    def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()


class _Upstream(asyncio.DatagramProtocol):
    """One client's flow: the connected socket to the target."""

    def __init__(self, relay: UdpRelay, client: Any) -> None:
        self.relay = relay
        self.client = client
        self.transport: asyncio.DatagramTransport | None = None
        self.last = time.monotonic()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # The selector loop's datagram transport does not subclass DatagramTransport (3.11).
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.last = time.monotonic()
        if self.relay.transport is not None:
            self.relay.transport.sendto(data, self.client)

    def error_received(self, exc: Exception) -> None:
        pass  # ICMP port unreachable and the like: the client times out, as with no proxy

    def connection_lost(self, exc: Exception | None) -> None:
        self.relay.flows.pop(self.client, None)


class UdpRelay(asyncio.DatagramProtocol):
    """The protocol of a held UDP socket."""

    def __init__(self, target_of: TargetOf) -> None:
        self.target_of = target_of
        self.transport: asyncio.DatagramTransport | None = None
        self.flows: dict[Any, _Upstream] = {}
        self.pending: dict[Any, list[bytes]] = {}
        self.sweeper: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # The selector loop's datagram transport does not subclass DatagramTransport (3.11).
        self.transport = cast(asyncio.DatagramTransport, transport)
        self._schedule_sweep()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        flow = self.flows.get(addr)
        if flow is not None and flow.transport is not None:
            flow.last = time.monotonic()
            flow.transport.sendto(data)
            return
        if addr in self.pending:  # its flow is being opened
            self.pending[addr].append(data)
            return
        target = self.target_of()
        if target is None or len(self.flows) + len(self.pending) >= MAX_UDP_FLOWS:
            return
        self.pending[addr] = [data]
        asyncio.get_running_loop().create_task(self._open(addr, target))

    async def _open(self, addr: Any, target: Target) -> None:
        loop = asyncio.get_running_loop()
        fam = socket.AF_INET6 if ":" in target.address else socket.AF_INET
        try:
            transport, flow = await loop.create_datagram_endpoint(
                lambda: _Upstream(self, addr), remote_addr=(target.address, target.port), family=fam
            )
        except OSError:
            self.pending.pop(addr, None)
            return
        if self.transport is None:  # the held socket was closed meanwhile
            transport.close()
            return
        self.flows[addr] = flow
        for data in self.pending.pop(addr, []):
            transport.sendto(data)

    def _schedule_sweep(self) -> None:
        self.sweeper = asyncio.get_running_loop().call_later(UDP_IDLE / 3, self._sweep)

    def _sweep(self) -> None:
        cutoff = time.monotonic() - UDP_IDLE
        for flow in [f for f in self.flows.values() if f.last < cutoff]:
            if flow.transport is not None:
                flow.transport.close()
        self._schedule_sweep()

    def connection_lost(self, exc: Exception | None) -> None:
        self.close()

    def close(self) -> None:
        if self.sweeper is not None:
            self.sweeper.cancel()
        self.transport = None
        for flow in list(self.flows.values()):
            if flow.transport is not None:
                flow.transport.close()
        self.flows.clear()
        self.pending.clear()
