"""The holder's relays (ports/proxy.py) on its selector loop (ports/loop.py), over loopback
without root: the loop runs in the test's thread, the clients and the target in threads."""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from cni_bridge.ports import proxy
from cni_bridge.ports.loop import Loop
from cni_bridge.ports.model import Target
from cni_bridge.ports.proxy import TcpRelay, UdpRelay

TIMEOUT = 30.0


def spin(loop: Loop, done: Callable[[], bool], check: Callable[[], None] = lambda: None) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not done():
        assert time.monotonic() < deadline, "the relay did not finish"
        loop.run_once(0.02)
        check()


def background(fn: Callable[[], None]) -> list[BaseException]:
    """Run fn in a thread; what it raised lands in the list (with a None once it ended)."""
    out: list[BaseException | None] = []

    def run() -> None:
        try:
            fn()
        except BaseException as exc:  # reported to the test
            out.append(exc)
        out.append(None)

    threading.Thread(target=run, daemon=True).start()
    return out  # type: ignore[return-value]


def finished(*results: list[BaseException]) -> bool:
    return all(None in r for r in results)


def raised(*results: list[BaseException]) -> None:
    for r in results:
        errors = [e for e in r if e is not None]
        if errors:
            raise errors[0]


@pytest.fixture
def loop() -> Iterator[Loop]:
    lp = Loop(print)
    yield lp
    lp.shut()


def held(proto: str) -> socket.socket:
    """The held socket, as the holder binds it: [::1], any port."""
    sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
    sock.bind(("::1", 0))
    if proto == "tcp":
        sock.listen(128)
    sock.setblocking(False)
    return sock


def target_listener() -> tuple[socket.socket, Target]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    sock.settimeout(TIMEOUT)
    return sock, Target("127.0.0.1", sock.getsockname()[1])


def reader(held_sock: socket.socket, got: list[bytes]) -> Callable[[], None]:
    """A client that connects to the held socket and reads what comes until EOF into `got`."""

    def client() -> None:
        with socket.create_connection(held_sock.getsockname()[:2], timeout=TIMEOUT) as c:
            got.append(recv_all(c))

    return client


def recv_all(sock: socket.socket, slow: bool = False) -> bytes:
    got = bytearray()
    while data := sock.recv(4096 if slow else 65536):
        got += data
        if slow and len(got) % (256 * 1024) < 4096:
            time.sleep(0.01)
    return bytes(got)


def send_all_then_fin(sock: socket.socket, data: bytes) -> None:
    sock.sendall(data)
    sock.shutdown(socket.SHUT_WR)


def test_a_large_transfer_both_ways_to_slow_readers_is_held_back_not_buffered(loop: Loop) -> None:
    up, target = target_listener()
    sock = held("tcp")
    relay = TcpRelay(loop, sock, lambda: target)
    size = 8 << 20
    to_target, to_client = os.urandom(size), os.urandom(size)
    seen: dict[str, bytes] = {}

    def server() -> None:
        conn, _ = up.accept()
        with conn:
            conn.settimeout(TIMEOUT)
            sender = threading.Thread(target=send_all_then_fin, args=(conn, to_client))
            sender.start()
            seen["target"] = recv_all(conn, slow=True)
            sender.join()

    def client() -> None:
        with socket.create_connection(sock.getsockname()[:2], timeout=TIMEOUT) as c:
            sender = threading.Thread(target=send_all_then_fin, args=(c, to_target))
            sender.start()
            seen["client"] = recv_all(c, slow=True)
            sender.join()

    most = 0

    def buffered() -> None:  # what the relay keeps of either direction stays bounded
        nonlocal most
        for conn in relay.conns:
            most = max(most, *map(len, conn.bufs))

    results = background(server), background(client)
    spin(loop, lambda: finished(*results), buffered)
    raised(*results)
    assert hashlib.sha256(seen["target"]).digest() == hashlib.sha256(to_target).digest()
    assert hashlib.sha256(seen["client"]).digest() == hashlib.sha256(to_client).digest()
    assert 0 < most <= proxy.HIGH + proxy.CHUNK, most
    spin(loop, lambda: not relay.conns)  # both ways ended: the connection is let go
    relay.close()
    up.close()


def test_a_half_close_is_passed_on_and_the_answer_still_comes_back(loop: Loop) -> None:
    up, target = target_listener()
    sock = held("tcp")
    relay = TcpRelay(loop, sock, lambda: target)
    answer: list[bytes] = []

    def server() -> None:  # answers only once the client said it has nothing more to say
        conn, _ = up.accept()
        with conn:
            conn.settimeout(TIMEOUT)
            question = recv_all(conn)
            conn.sendall(b"you said " + question)

    def client() -> None:
        with socket.create_connection(sock.getsockname()[:2], timeout=TIMEOUT) as c:
            c.sendall(b"hello")
            c.shutdown(socket.SHUT_WR)
            answer.append(recv_all(c))

    results = background(server), background(client)
    spin(loop, lambda: finished(*results))
    raised(*results)
    assert answer == [b"you said hello"]
    relay.close()
    up.close()


def test_many_connections_at_once_each_get_their_own_answer(loop: Loop) -> None:
    up, target = target_listener()
    sock = held("tcp")
    relay = TcpRelay(loop, sock, lambda: target)
    clients = 60

    def echo(conn: socket.socket) -> None:
        with conn:
            conn.settimeout(TIMEOUT)
            conn.sendall(b"echo " + recv_all(conn))

    def server() -> None:
        for _ in range(clients):
            threading.Thread(target=echo, args=(up.accept()[0],), daemon=True).start()

    answers: dict[int, bytes] = {}

    def client(n: int) -> Callable[[], None]:
        def run() -> None:
            with socket.create_connection(sock.getsockname()[:2], timeout=TIMEOUT) as c:
                c.sendall(str(n).encode() * 1000)
                c.shutdown(socket.SHUT_WR)
                answers[n] = recv_all(c)

        return run

    results = [background(server), *(background(client(n)) for n in range(clients))]
    spin(loop, lambda: finished(*results))
    raised(*results)
    assert answers == {n: b"echo " + str(n).encode() * 1000 for n in range(clients)}
    relay.close()
    up.close()


def test_a_target_that_refuses_ends_the_client_connection(loop: Loop) -> None:
    up, target = target_listener()
    up.close()  # nothing listens there now
    sock = held("tcp")
    relay = TcpRelay(loop, sock, lambda: target)
    got: list[bytes] = []
    results = background(reader(sock, got))
    spin(loop, lambda: finished(results))
    raised(results)
    assert got == [b""] and not relay.conns
    relay.close()


def test_udp_replies_go_to_each_client_and_an_idle_flow_is_forgotten(
    loop: Loop, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(proxy, "UDP_IDLE", 0.3)
    target_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    target_sock.bind(("127.0.0.1", 0))
    target_sock.settimeout(TIMEOUT)
    target = Target("127.0.0.1", target_sock.getsockname()[1])
    sock = held("udp")
    relay = UdpRelay(loop, sock, lambda: target)
    senders: set[object] = set()

    def server() -> None:  # answers each datagram to whoever sent it
        for _ in range(4):
            data, addr = target_sock.recvfrom(65536)
            senders.add(addr)
            target_sock.sendto(b"re " + data, addr)

    answers: dict[str, list[bytes]] = {}

    def client(name: str) -> Callable[[], None]:
        def run() -> None:
            with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as c:
                c.settimeout(TIMEOUT)
                c.connect(sock.getsockname()[:2])
                for i in range(2):
                    c.send(f"{name}{i}".encode())
                    answers.setdefault(name, []).append(c.recv(65536))

        return run

    results = background(server), background(client("a")), background(client("b"))
    spin(loop, lambda: finished(*results))
    raised(*results)
    assert answers == {"a": [b"re a0", b"re a1"], "b": [b"re b0", b"re b1"]}
    assert len(senders) == 2  # one upstream socket per client address
    spin(loop, lambda: not relay.flows)
    relay.close()
    target_sock.close()


def test_a_target_that_does_not_answer_is_given_up_after_the_connect_timeout(
    loop: Loop, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A listener whose accept queue is full drops further SYNs: a connection to it stays in
    # progress, as to a container that is gone. The client's connection ends at the timeout.
    monkeypatch.setattr(proxy, "CONNECT_TIMEOUT", 0.5)
    up = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    up.bind(("127.0.0.1", 0))
    up.listen(0)
    target = Target("127.0.0.1", up.getsockname()[1])
    fillers: list[socket.socket] = []
    for _ in range(2):  # what the queue takes (backlog 0 takes one)
        f = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        f.setblocking(False)
        f.connect_ex((target.address, target.port))
        fillers.append(f)
    time.sleep(0.2)
    sock = held("tcp")
    relay = TcpRelay(loop, sock, lambda: target)
    got: list[bytes] = []
    results = background(reader(sock, got))
    spin(loop, lambda: bool(relay.conns) or finished(results))
    assert not next(iter(relay.conns)).connected  # in progress, not refused
    spin(loop, lambda: finished(results))
    raised(results)
    assert got == [b""] and not relay.conns
    relay.close()
    for f in fillers:
        f.close()
    up.close()
