"""The agent's name-service duty (dns/agent.py): its long work runs in a child, never in the
agent's loop."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from cni_bridge.dns import agent
from cni_bridge.resident import duty as duty_mod


def wait_reaped(duty: agent.DnsDuty, timeout: float = 10.0) -> int:
    """Reap the duty's child as the agent's loop does; its exit status."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid, status = os.waitpid(duty.pid, os.WNOHANG)
        if pid:
            assert duty.reaped(pid, status)
            return os.WEXITSTATUS(status)
        time.sleep(0.01)
    raise AssertionError("the duty's child did not end")


@pytest.fixture
def marks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The rebuild and the restart each leave a file in the child, instead of their work."""

    def leave(name: str, sleep: float = 0.0) -> Callable[[], None]:
        def work() -> None:
            time.sleep(sleep)
            (tmp_path / f"{name}.{os.getpid()}").write_text("")

        return work

    monkeypatch.setattr(agent, "_rebuild", lambda data_dirs: leave("rebuild"))
    monkeypatch.setattr(agent, "_supervise", leave("restart"))
    return tmp_path


def done(tmp: Path, name: str) -> list[str]:
    return [p.name for p in tmp.iterdir() if p.name.startswith(name + ".")]


def test_the_rebuild_runs_once_in_a_child_then_only_what_is_needed(marks: Path) -> None:
    needed = [False]
    looks: list[float] = []

    def needs_start() -> bool:
        looks.append(time.monotonic())
        return needed[0]

    duty = agent.DnsDuty(needs_start=needs_start)
    duty.tick()
    child = duty.pid
    assert child and child != os.getpid() and duty.due_in() == float("inf")
    assert wait_reaped(duty) == 0 and duty.pid == 0
    assert done(marks, "rebuild") == [f"rebuild.{child}"]  # in the child, not here
    duty.tick()  # not due yet: no look
    assert duty.pid == 0 and not looks
    duty.next = 0.0
    duty.tick()  # due: the server runs, nothing to do
    assert duty.pid == 0 and len(looks) == 1 and 0 < duty.due_in() <= agent.SUPERVISE_EVERY
    needed[0] = True
    duty.next = 0.0
    duty.tick()
    assert duty.pid and wait_reaped(duty) == 0
    assert len(done(marks, "restart")) == 1 and len(done(marks, "rebuild")) == 1


def test_a_slow_restart_does_not_hold_the_loop(
    marks: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def slow() -> None:
        time.sleep(1.5)  # aardvark-dns started, its sockets waited for

    monkeypatch.setattr(agent, "_supervise", slow)
    duty = agent.DnsDuty(needs_start=lambda: True)
    duty.rebuilt = True
    started = time.monotonic()
    duty.tick()
    child = duty.pid
    assert time.monotonic() - started < 0.5 and child
    duty.next = 0.0
    duty.tick()  # one child at a time
    assert duty.pid == child
    assert wait_reaped(duty) == 0


def test_stop_ends_a_child_that_does_not_finish(
    marks: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(duty_mod, "STOP_WAIT", 0.2)
    monkeypatch.setattr(agent, "_supervise", lambda: time.sleep(60))
    duty = agent.DnsDuty(needs_start=lambda: True)
    duty.rebuilt = True
    duty.tick()
    child = duty.pid
    started = time.monotonic()
    duty.stop()
    assert time.monotonic() - started < 5 and duty.pid == 0
    with pytest.raises(ChildProcessError):
        os.waitpid(child, os.WNOHANG)  # reaped by stop()
    duty.tick()
    assert duty.pid == 0  # a stopped duty forks nothing


def test_a_disabled_or_forgotten_duty_does_nothing(marks: Path) -> None:
    forgotten = agent.DnsDuty()
    forgotten.forget()
    for duty in (agent.DnsDuty(enabled=False), forgotten):
        duty.tick()
        assert duty.pid == 0 and duty.due_in() == float("inf")
    assert not list(marks.iterdir())


def test_a_refused_fork_leaves_the_rebuild_due(
    marks: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_fork = os.fork

    def refused() -> int:
        raise BlockingIOError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(os, "fork", refused)
    duty = agent.DnsDuty(needs_start=lambda: False)
    duty.tick()
    assert duty.pid == 0 and not duty.rebuilt
    monkeypatch.setattr(os, "fork", real_fork)
    duty.next = 0.0
    duty.tick()
    assert duty.pid and wait_reaped(duty) == 0
    assert len(done(marks, "rebuild")) == 1


def test_a_failing_look_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    def broken() -> bool:
        raise OSError("no agent directory")

    duty = agent.DnsDuty(needs_start=broken)
    duty.rebuilt = True
    duty.tick()
    assert duty.pid == 0 and "no agent directory" in caplog.text
