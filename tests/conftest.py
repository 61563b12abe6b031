"""Leaks nothing: after every test, no process of this run may be left in a network namespace a
lab created and deleted (tests/lab/procs.orphans), and at the end no process of this run may
still run this checkout's built bundle (an agent a test's plugin call started and nobody
ended). Such a process is killed by pid, named with the test after which it was found, and
fails the run.

"Of this run": the run makes itself a child subreaper (prctl PR_SET_CHILD_SUBREAPER), so what
its tests start stays among its descendants even when it daemonizes (an agent forks away from
the plugin that started it). Nothing else is ever touched: other checkouts' tests run on this
machine too, and a namespace's nsfs inode is reused once it is freed. Between tests the run
reaps the zombies of what was handed to it that way, as init would (inside a test it does not:
a test may still wait for a child of its own)."""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.lab import procs

BUNDLE = Path(__file__).resolve().parent.parent / "dist" / "cni-bridge"
_LEAKS: list[str] = []
PR_SET_CHILD_SUBREAPER = 36  # linux/prctl.h


def pytest_sessionstart(session: pytest.Session) -> None:
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def _ours(found: dict[procs.Identity, str]) -> dict[procs.Identity, str]:
    if not found:
        return found
    mine = procs.with_descendants([os.getpid()])
    return {ident: where for ident, where in found.items() if ident in mine}


def _bundle_processes() -> dict[procs.Identity, str]:
    """This run's processes that run this checkout's bundle."""
    found: dict[procs.Identity, str] = {}
    for ident in procs.with_descendants([os.getpid()]):
        try:
            exe = os.readlink(f"/proc/{ident[0]}/exe")
        except OSError:
            continue
        if exe.startswith(f"{BUNDLE}/"):
            found[ident] = "this checkout's bundle"
    return found


def _reap(found: dict[procs.Identity, str], when: str) -> None:
    for (pid, _), where in sorted(found.items()):
        _LEAKS.append(f"{when}: pid {pid} ({where}): {procs.command_line(pid)}")
    procs.kill(found)


def _reap_zombies() -> None:
    for pid in procs.zombie_children(os.getpid()):
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Iterator[None]:
    yield
    _reap_zombies()
    if os.geteuid() == 0 and (found := _ours(procs.orphans())):
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
