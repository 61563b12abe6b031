"""Whole-file writes (cni_bridge.atomic): what readers and a later writer find on disk."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cni_bridge import atomic


def test_replace_puts_the_new_content_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "rec"
    path.write_bytes(b"old")
    atomic.replace(str(path), b"new", str(tmp_path / "rec.tmp"))
    assert path.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rec"]
    assert path.stat().st_mode & 0o777 == 0o600


def test_a_dead_writers_leftover_is_replaced_and_a_link_there_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep")
    tmp = tmp_path / "rec.tmp"
    tmp.symlink_to(victim)
    atomic.replace(str(tmp_path / "rec"), b"data", str(tmp), mode=0o644)
    assert victim.read_bytes() == b"keep"
    assert (tmp_path / "rec").read_bytes() == b"data"
    assert (tmp_path / "rec").stat().st_mode & 0o777 == 0o644
    assert not tmp.exists() and not tmp.is_symlink()


def test_write_new_refuses_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"there")
    with pytest.raises(FileExistsError):
        atomic.write_new(str(path), b"other")
    assert path.read_bytes() == b"there"


def test_a_failed_rename_leaves_the_old_content_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "dir-in-the-way"
    target.mkdir()
    (target / "x").write_bytes(b"")  # a non-empty directory cannot be replaced by a file
    with pytest.raises(OSError):
        atomic.replace(str(target), b"data", str(tmp_path / "t.tmp"))
    assert sorted(os.listdir(tmp_path)) == ["dir-in-the-way"]


def test_remove_is_quiet_about_a_missing_file(tmp_path: Path) -> None:
    atomic.remove(str(tmp_path / "absent"))
    (tmp_path / "present").write_bytes(b"")
    atomic.remove(str(tmp_path / "present"))
    assert list(tmp_path.iterdir()) == []
