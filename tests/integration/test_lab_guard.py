"""The leak guard's look (tests/lab/procs.orphans, run after every test by tests/conftest.py)."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.lab import netns, procs

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root and network namespaces"),
]


def test_a_process_left_in_a_deleted_namespace_is_found_and_a_freed_one_forgotten() -> None:
    tag = f"hG{os.getpid()}"
    kept, freed = netns.add([f"{tag}-kept", f"{tag}-freed"])
    for ns in (kept, freed):
        ident = ns.identity()
        assert ident is not None
        procs.CREATED[ident] = ns.name
    freed_ident = freed.identity()
    sleeper = subprocess.Popen(kept.command("sleep", "60"), stdin=subprocess.DEVNULL)
    try:
        netns.delete([kept, freed])
        found = procs.orphans()
        assert list(found.values()) == [kept.name]
        assert [pid for pid, _ in found] == [sleeper.pid]
        # Nobody was in the other one: freed, its inode may go to a later namespace.
        assert freed_ident not in procs.CREATED
        assert kept.name in procs.CREATED.values()
    finally:
        sleeper.kill()
        sleeper.wait()
        procs.orphans()  # now nobody is in either
        netns.delete([kept, freed])
    assert kept.name not in procs.CREATED.values()
