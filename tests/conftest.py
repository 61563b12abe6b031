"""Leaks nothing: after every test, no process may be left in a network namespace a lab
created and deleted (tests/lab/procs.orphans), and at the end no process may still run this
checkout's built bundle that started during the run (an agent a test's plugin call started and
nobody ended). Such a process is killed by pid, named with the test after which it was found,
and fails the run. Processes that were running before the run are never touched."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.lab import procs

BUNDLE = Path(__file__).resolve().parent.parent / "dist" / "cni-bridge"
_LEAKS: list[str] = []


def _bundle_processes() -> dict[procs.Identity, str]:
    found: dict[procs.Identity, str] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            exe = os.readlink(f"/proc/{name}/exe")
        except OSError:
            continue
        ident = procs.identity(int(name))
        if exe.startswith(f"{BUNDLE}/") and ident is not None and int(ident[1]) >= _started():
            found[ident] = "this checkout's bundle"
    return found


def _started() -> int:
    """This run's start, in clock ticks since boot (as /proc/PID/stat's starttime)."""
    me = procs.identity(os.getpid())
    assert me is not None
    return int(me[1])


def _reap(found: dict[procs.Identity, str], when: str) -> None:
    for (pid, _), where in sorted(found.items()):
        _LEAKS.append(f"{when}: pid {pid} ({where}): {procs.command_line(pid)}")
    procs.kill(found)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Iterator[None]:
    yield
    if os.geteuid() == 0 and (found := procs.orphans()):
        _reap(found, f"after {item.nodeid}, in deleted namespace")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if os.geteuid() == 0 and (found := _bundle_processes()):
        _reap(found, "at the end of the run")
    if _LEAKS and session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _LEAKS:
        terminalreporter.section("processes left behind (killed)", red=True)
        for line in _LEAKS:
            terminalreporter.line(line)
