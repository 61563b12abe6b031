"""The agent's clean-up of files left by agents killed with their namespace (resident/sweep.py)."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import pytest

from cni_bridge.ports import lockfile
from cni_bridge.resident import naming, spawn, sweep


@pytest.mark.parametrize(
    ("name", "ours"),
    [
        ("v2-3e7176557d927d03-4026532435.lock", True),
        ("v1-02b5841c3d1cea75-4026532500.lock", True),
        ("v12-0123456789abcdef-1.lock", True),
        ("v2-3e7176557d927d03-4026532435.sock", False),  # a socket goes with its lock only
        ("ports-4026532435.lock", False),  # the held-ports holder's (ports/lockfile.py)
        ("watch.4026532500", False),
        ("v2-3E7176557D927D03-4026532435.lock", False),
        ("v2-3e7176557d927d0-4026532435.lock", False),
        ("v-3e7176557d927d03-4026532435.lock", False),
        ("x2-3e7176557d927d03-4026532435.lock", False),
        ("v2-3e7176557d927d03-40265x2435.lock", False),
        ("v2-3e7176557d927d03-.lock", False),
        ("v2-3e7176557d927d03-4026532435-x.lock", False),
        ("v٢-3e7176557d927d03-4026532435.lock", False),  # a non-ASCII digit
    ],
)
def test_only_agent_lock_names_are_ours(name: str, ours: bool) -> None:
    assert naming.is_agent_lock(name) is ours


def test_names_the_agent_makes_are_ours() -> None:
    sock = naming.name_for("some identity", 4026532435)
    assert naming.is_agent_lock(naming.lock_path(sock))
    assert not naming.is_agent_lock(sock)


def test_unheld_pairs_go_held_ones_and_others_stay(tmp_path: Path) -> None:
    live = "v2-0123456789abcdef-11"
    held = os.open(tmp_path / f"{live}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(held, fcntl.LOCK_EX)
    others = ["ports-3.lock", "ports-3.sock", "watch.12", "v2-zz-1.lock", f"{live}.sock"]
    stale = ["v2-0123456789abcdef-12", "v1-fedcba9876543210-13"]
    for name in [*others, *(f"{s}.{ext}" for s in stale for ext in ("lock", "sock"))]:
        (tmp_path / name).write_text("")
    (tmp_path / "v2-0123456789abcdef-14.lock").write_text("")  # a clean exit's, before this
    try:
        assert lockfile.sweep_where(str(tmp_path), naming.is_agent_lock) == 3
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*others, f"{live}.lock"])
    finally:
        os.close(held)


def test_a_socket_outside_the_agent_directory_sweeps_nothing(tmp_path: Path) -> None:
    (tmp_path / "v2-0123456789abcdef-12.lock").write_text("")
    assert sweep.sweep(str(tmp_path / "v2-0123456789abcdef-11.sock")) == 0
    assert (tmp_path / "v2-0123456789abcdef-12.lock").exists()


def test_a_lock_removed_under_a_taker_is_taken_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sweep (or a leaving agent) removes the lock file it holds: a caller that opened the
    old file and locked it after must not believe it owns the name."""
    path = str(tmp_path / "v2-0123456789abcdef-11.lock")
    opened = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    os.unlink(path)  # as a sweep does between the caller's open and its flock
    real_open = os.open
    calls = []

    def open_once_removed(p: str, flags: int, mode: int = 0o777) -> int:
        calls.append(p)
        return os.dup(opened) if len(calls) == 1 else real_open(p, flags, mode)

    monkeypatch.setattr(os, "open", open_once_removed)
    try:
        fd = spawn._take_lock(path)
    finally:
        monkeypatch.undo()
        os.close(opened)
    assert fd is not None and len(calls) == 2
    assert os.fstat(fd).st_ino == os.stat(path).st_ino
    assert spawn._take_lock(path) is None  # held now
    os.close(fd)


def test_a_leaving_agent_removes_its_pair_unless_its_lock_was_replaced(tmp_path: Path) -> None:
    sock = str(tmp_path / "v2-0123456789abcdef-11.sock")
    lock = naming.lock_path(sock)
    fd = spawn._take_lock(lock)
    assert fd is not None
    Path(sock).write_text("")
    sweep.release(fd, sock)
    assert list(tmp_path.iterdir()) == []
    fd = spawn._take_lock(lock)
    assert fd is not None
    os.unlink(lock)
    Path(lock).write_text("")  # another agent's now, and so is the socket
    Path(sock).write_text("")
    sweep.release(fd, sock)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([Path(sock).name, Path(lock).name])


def test_a_file_that_cannot_be_removed_neither_ends_the_agent_nor_keeps_its_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "v2-0123456789abcdef-12.lock").write_text("")
    monkeypatch.setattr(naming, "agent_dir", lambda create=False: str(tmp_path))

    def read_only(path: str) -> None:
        raise OSError(30, "Read-only file system")

    with monkeypatch.context() as patched:
        patched.setattr(os, "unlink", read_only)
        assert sweep.sweep(str(tmp_path / "v2-0123456789abcdef-11.sock")) == 0
    assert sweep.sweep(str(tmp_path / "v2-0123456789abcdef-11.sock")) == 1
    assert list(tmp_path.iterdir()) == []
