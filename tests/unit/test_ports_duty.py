"""Held ports as a duty of the agent's loop (ports/duty.py), without root: real sockets on a
high port of loopback, the control socket and lock in a temporary directory, the agent's loop
played by calling the duty as pool.Server does (fds, readable, tick)."""

from __future__ import annotations

import contextlib
import json
import os
import select
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cni_bridge.ports import control, duty
from cni_bridge.ports.duty import HeldPorts
from cni_bridge.ports.records import Records

PORT = 18471


def _record(data: Path, tag: str, port: int) -> None:
    state = data / "net1" / ".cni-bridge"
    state.mkdir(parents=True, exist_ok=True)
    record = {
        "network": "net1", "container_id": tag, "ifname": "eth0", "host_veth": "lo",
        "phase": "ready", "ips": ["10.66.0.2/24"],
        "port_mappings": [{"hostPort": port, "containerPort": 80, "protocol": "tcp",
                           "hostIP": "127.0.0.1"}],
    }
    (state / f"{tag}.json").write_text(json.dumps(record))


@pytest.fixture
def ports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[HeldPorts]:
    paths = (str(tmp_path / "ports-1.sock"), str(tmp_path / "ports-1.lock"))
    monkeypatch.setattr(control, "paths", lambda netns_ino=None, create=False: paths)
    _record(tmp_path / "data", "c1", PORT)
    held = HeldPorts(records=lambda: Records(data_dirs=lambda: [str(tmp_path / "data")]))
    yield held
    held.stop()


def _bind(port: int) -> str:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError as exc:
            return os.strerror(exc.errno or 0)
    return "bound"


def _run(held: HeldPorts, until: Callable[[], bool], timeout: float = 10) -> None:
    """The agent's loop, for the duty alone."""
    deadline = time.monotonic() + timeout
    while not until():
        assert time.monotonic() < deadline
        held.tick()
        fds = held.fds()
        wait = min(held.due_in(), 0.05)
        if not fds:
            time.sleep(wait)
            continue
        for fd in select.select(fds, [], [], wait)[0]:
            held.readable(fd)


def _status(held: HeldPorts, path: str) -> dict[str, object]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as c:
        c.connect(path)
        c.send(json.dumps({"op": "status"}).encode())
        c.setblocking(False)
        answer: list[bytes] = []

        def answered() -> bool:
            try:
                answer.append(c.recv(control.MAX_MESSAGE))
            except BlockingIOError:
                return False
            return True

        _run(held, answered)
    out = json.loads(answer[0])
    assert isinstance(out, dict)
    return out


def test_the_agent_holds_the_ports_in_its_own_process(ports: HeldPorts) -> None:
    _run(ports, lambda: ports.holder is not None)
    assert _bind(PORT) == os.strerror(98)  # EADDRINUSE
    status = _status(ports, control.paths()[0])
    assert status["pid"] == os.getpid() and status["held"] == [f"tcp/{PORT} on 127.0.0.1"]
    ports.stop()
    assert _bind(PORT) == "bound" and not os.path.exists(control.paths()[0])


def test_a_failure_lets_every_port_go_and_holds_them_again(
    ports: HeldPorts, monkeypatch: pytest.MonkeyPatch
) -> None:
    _run(ports, lambda: ports.holder is not None)
    monkeypatch.setattr(duty, "RESTART_DELAY", 0.2)
    first = ports.holder
    assert first is not None

    def broken(most: float | None = None) -> None:
        raise RuntimeError("a bug in the holder")

    monkeypatch.setattr(first.loop, "run_once", broken)
    ports.readable(ports.fds()[0])  # the agent's loop goes on: nothing raised out of the duty
    assert ports.holder is None and _bind(PORT) == "bound"
    _run(ports, lambda: ports.holder is not None)
    assert ports.holder is not first and _bind(PORT) == os.strerror(98)


def test_a_forked_process_closes_its_copies_and_the_agent_keeps_holding(
    ports: HeldPorts,
) -> None:
    _run(ports, lambda: ports.holder is not None)
    assert ports.holder is not None
    held = {os.fstat(s.fileno()).st_ino for s in ports.holder.loop.owned}
    pid = os.fork()
    if pid == 0:  # what a worker does with the duties right after its fork
        ports.forget()
        left = set()
        for fd in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError):
                left.add(os.stat(f"/proc/self/fd/{fd}").st_ino)
        os._exit(1 if left & held else 0)
    assert os.waitpid(pid, 0)[1] == 0
    assert _bind(PORT) == os.strerror(98)
    assert _status(ports, control.paths()[0])["held"] == [f"tcp/{PORT} on 127.0.0.1"]


def test_a_second_agent_waits_for_the_lock(ports: HeldPorts, tmp_path: Path) -> None:
    _run(ports, lambda: ports.holder is not None)
    second = HeldPorts(records=lambda: Records(data_dirs=list))
    second.tick()
    assert second.holder is None and 0 < second.due_in() <= duty.LOCK_RETRY
    ports.stop()
    _run(second, lambda: second.holder is not None, timeout=duty.LOCK_RETRY + 5)
    second.stop()
