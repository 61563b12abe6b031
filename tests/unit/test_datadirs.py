"""The data-dir registry is per network namespace: an agent acts only on the networks whose ADD
ran in its own namespace (/run is shared by all of them)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cni_bridge import datadirs
from cni_bridge.domain import DEFAULT_DATA_DIR


@pytest.fixture
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    reg = tmp_path / "reg"

    def fake_registry(create: bool) -> str:
        if create:
            reg.mkdir(exist_ok=True)
        return str(reg)

    monkeypatch.setattr(datadirs, "_registry", fake_registry)
    return reg


def test_each_namespace_sees_only_its_own(
    registry: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    monkeypatch.setattr(datadirs, "_netns_prefix", lambda: "111-")
    datadirs.register(str(a))
    monkeypatch.setattr(datadirs, "_netns_prefix", lambda: "222-")
    datadirs.register(str(b))
    assert datadirs.in_use() == sorted([DEFAULT_DATA_DIR, str(b)])
    monkeypatch.setattr(datadirs, "_netns_prefix", lambda: "111-")
    assert datadirs.in_use() == sorted([DEFAULT_DATA_DIR, str(a)])


def test_gone_directories_are_forgotten_by_any_namespace(
    registry: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.setattr(datadirs, "_netns_prefix", lambda: "111-")
    datadirs.register(str(gone))
    gone.rmdir()
    (entry,) = registry.iterdir()
    old = entry.stat().st_mtime - datadirs.FORGET_AFTER - 1
    os.utime(entry, (old, old))
    monkeypatch.setattr(datadirs, "_netns_prefix", lambda: "222-")
    assert datadirs.in_use() == [DEFAULT_DATA_DIR]
    assert list(registry.iterdir()) == []
