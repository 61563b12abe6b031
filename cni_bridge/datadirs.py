"""The data directories in use: where the agent's duties find every network's records.

host-local's default (domain.DEFAULT_DATA_DIR) always; a network with its own `ipam.dataDir`
is registered by its ADD as a file AGENT_DIR/data-dirs/<sha256 of the path, 16 hex> holding the
path (root's directory alone, tmpfs: forgotten at reboot, when no attachment survives either).
One file per directory, made once: no lock, no rewrite of a shared file.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time

from cni_bridge.domain import DEFAULT_DATA_DIR
from cni_bridge.resident.naming import agent_dir

REGISTRY = "data-dirs"
FORGET_AFTER = 60.0  # a registered directory gone this long is dropped from the registry


def _registry(create: bool) -> str:
    base = agent_dir(create)
    if not base:
        return ""
    path = os.path.join(base, REGISTRY)
    if create:
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, 0o700)
    return path


def register(data_dir: str) -> None:
    data_dir = os.path.abspath(data_dir)
    if data_dir == DEFAULT_DATA_DIR:
        return
    name = hashlib.sha256(data_dir.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    reg = _registry(create=False)
    if reg and os.path.exists(os.path.join(reg, name)):
        return
    reg = _registry(create=True)
    if not reg:
        return
    tmp = os.path.join(reg, f".{name}.{os.getpid()}")
    try:
        with open(tmp, "w") as f:
            f.write(data_dir)
        os.replace(tmp, os.path.join(reg, name))
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def in_use() -> list[str]:
    """Every data directory to look in (those gone for a while are dropped)."""
    dirs = {DEFAULT_DATA_DIR}
    reg = _registry(create=False)
    try:
        names = os.listdir(reg) if reg else []
    except OSError:
        names = []
    now = time.time()
    for name in names:
        if name.startswith("."):
            continue
        path = os.path.join(reg, name)
        try:
            with open(path) as f:
                data_dir = f.read()
            if os.path.isdir(data_dir):
                dirs.add(data_dir)
            elif now - os.stat(path).st_mtime > FORGET_AFTER:
                os.unlink(path)
        except OSError:
            continue
    return sorted(dirs)
