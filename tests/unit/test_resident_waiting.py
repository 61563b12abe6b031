"""A burst's connections wait for a free worker, briefly (resident/waiting.py)."""

from __future__ import annotations

import socket

from cni_bridge.resident.waiting import Waiting, busy_limit


def test_connections_wait_in_order_until_their_deadline() -> None:
    waiting = Waiting(limit=3, wait=0.5)
    assert not waiting.should_wait(2) and waiting.should_wait(3)
    pairs = [socket.socketpair() for _ in range(3)]
    try:
        for i, (a, _) in enumerate(pairs):
            waiting.add(a, now=10.0 + i * 0.2)
        assert waiting and waiting.due_in(10.0) == 0.5
        assert waiting.pop() is pairs[0][0]  # oldest first
        assert waiting.expired(10.6) == []
        assert waiting.expired(10.7) == [pairs[1][0]]  # waited 0.5 s: gets a fork
        assert abs(waiting.due_in(10.7) - 0.2) < 1e-9  # the third, added at 10.4
        waiting.close_all()
        assert not waiting and pairs[2][0].fileno() == -1
        assert waiting.due_in(11.0) == float("inf")
    finally:
        for a, b in pairs:
            a.close()
            b.close()


def test_the_limit_is_one_more_than_the_cores() -> None:
    assert busy_limit() >= 2
    assert Waiting().limit == busy_limit()
