"""Reading another process's /proc/<pid>/stat: its command name is whatever bytes it chose
(prctl PR_SET_NAME), and must never raise out of a liveness check."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from cni_bridge.converge.watch import _parent_of
from cni_bridge.dns.aardvark import _proc_alive
from cni_bridge.state import process_start

_NAMED = (
    "import ctypes, sys, time\n"
    "ctypes.CDLL(None).prctl(15, ctypes.c_char_p(b'evil\\xff\\xfe) 1 2'), 0, 0, 0)\n"
    "print('named', flush=True)\n"
    "time.sleep(60)\n"
)


@pytest.fixture
def oddly_named() -> Iterator[int]:
    proc = subprocess.Popen([sys.executable, "-c", _NAMED], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"named\n"
        with open(f"/proc/{proc.pid}/comm", "rb") as f:
            assert b"\xff" in f.read()  # the name took
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


def test_a_process_named_in_any_bytes_is_read(oddly_named: int) -> None:
    start = process_start(oddly_named)
    assert start.isdigit() and process_start(oddly_named) == start
    assert _proc_alive(oddly_named)
    assert _parent_of(oddly_named) == os.getpid()
