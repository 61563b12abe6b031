"""The agent's listener out of descriptors (resident/pool.py _accept): a pause, not a spin."""

from __future__ import annotations

import errno
import select
import socket
from pathlib import Path

import pytest

from cni_bridge.resident import pool
from cni_bridge.resident.worker import Engine


class Starved(socket.socket):
    def accept(self) -> tuple[socket.socket, object]:
        raise OSError(errno.EMFILE, "Too many open files")


def test_accept_out_of_descriptors_pauses_the_listener(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Relayed connections (anyone's, to [::1]:port) share the agent's descriptor table. At
    # EMFILE the queued connection keeps the level-triggered listener readable: returning to
    # the poll spun the loop, a log line each turn, and ADD/DEL went unserved.
    lines: list[str] = []
    monkeypatch.setattr(pool, "log", lines.append)
    listener = Starved(socket.AF_UNIX, socket.SOCK_STREAM)
    caller = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(str(tmp_path / "agent.sock"))
        listener.listen(8)
        listener.setblocking(False)
        caller.connect(str(tmp_path / "agent.sock"))  # queued: the listener stays readable
        server = pool.Server(listener, Engine(lambda *_: (0, b"")), identity="x", fingerprint="x")
        poller = server._poller = select.poll()
        poller.register(listener, select.POLLIN)
        assert poller.poll(0)
        server._accept()
        assert poller.poll(0) == []  # out of the poll for a while: no spin
        assert len(lines) == 1 and "accepting again" in lines[0]
    finally:
        caller.close()
        listener.close()
