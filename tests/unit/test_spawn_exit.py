"""The plugin's exit after its answer (cli.run, resident/spawn.start_pending): the agent it
starts then never holds the runtime's stdout, and the exit code is always the answer's."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

from cni_bridge import cli

ROOT = Path(__file__).resolve().parents[2]


class _Exited(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def _exit(code: int) -> None:
    raise _Exited(code)


@pytest.mark.parametrize("error", [RuntimeError("bug"), KeyboardInterrupt(), OSError("fork")])
def test_the_exit_code_is_the_answers_whatever_starting_the_agent_raises(
    monkeypatch: pytest.MonkeyPatch, error: BaseException
) -> None:
    def start_pending() -> None:
        raise error

    # run() blocks a _hashlib not imported yet: undone after the test
    monkeypatch.setitem(sys.modules, "_hashlib", sys.modules.get("_hashlib"))
    monkeypatch.setattr(sys, "argv", ["cni-bridge"])
    monkeypatch.setattr(cli, "main", lambda: 7)
    monkeypatch.setattr(os, "_exit", _exit)
    monkeypatch.setitem(sys.modules, "logging", types.SimpleNamespace(shutdown=lambda: None))
    spawn = types.SimpleNamespace(start_pending=start_pending)
    monkeypatch.setitem(sys.modules, "cni_bridge.resident.spawn", spawn)
    import gc

    try:
        with pytest.raises(_Exited) as exited:
            cli.run()
    finally:
        gc.enable()
    assert exited.value.code == 7


_PROBE = """
import _socket, os, sys
from cni_bridge.resident import spawn
seen = sys.argv[1]
setsid = os.setsid
def noting_setsid():  # in the first child, right after the fork
    with open(seen, "w") as f:
        f.write(os.readlink("/proc/self/fd/1"))
    return setsid()
os.setsid = noting_setsid
sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
lock = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
spawn._start(lock, sock, ["/bin/true"], {}, "")
"""


def test_the_forked_children_let_go_of_the_callers_stdout_at_once(tmp_path: Path) -> None:
    """The runtime reads the plugin's stdout until EOF: the child forked at its exit holds it
    no longer than the fork itself, not until the grandchild is scheduled."""
    seen = tmp_path / "stdout"
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, str(seen)], cwd=ROOT, capture_output=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    deadline = time.monotonic() + 10
    while not (seen.exists() and seen.read_text()) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert seen.read_text() == "/dev/null"
