"""The data directories in use: where the agent's duties find every network's records.

host-local's default (domain.DEFAULT_DATA_DIR) always; a network with its own `ipam.dataDir`
is registered by its ADD as a file AGENT_DIR/data-dirs/<netns inode>-<sha256 of the path, 16 hex>
holding the path (root's directory alone, tmpfs: forgotten at reboot, when no attachment survives
either). One file per directory and network namespace, made once: no lock, no rewrite of a
shared file.

Per network namespace, like the agent's socket: /run is shared by every network namespace of
the host, and an agent (its sync, held ports, DNS) must act only on the networks whose ADD ran
in its own namespace, never rebuild another namespace's bridges or hold its ports here.
"""

from __future__ import annotations

import os
import time

from cni_bridge.digest import sha256_hex
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
        try:  # noqa: SIM105 - registered on every ADD: no contextlib on the exec'd path
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
    return path


def _netns_prefix() -> str:
    return f"{os.stat('/proc/self/ns/net').st_ino}-"


def register(data_dir: str) -> None:
    data_dir = os.path.abspath(data_dir)
    if data_dir == DEFAULT_DATA_DIR:
        return
    digest = sha256_hex(data_dir.encode("utf-8", "surrogateescape"))[:16]
    name = _netns_prefix() + digest
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
        try:  # noqa: SIM105
            os.unlink(tmp)
        except OSError:
            pass


def in_use() -> list[str]:
    """Every data directory an ADD in this network namespace used (those gone for a while
    are dropped)."""
    dirs = {DEFAULT_DATA_DIR}
    mine = _netns_prefix()
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
            if not os.path.isdir(data_dir):
                # Any namespace's entry may go once its directory has: nobody can need it.
                if now - os.stat(path).st_mtime > FORGET_AFTER:
                    os.unlink(path)
            elif name.startswith(mine):
                dirs.add(data_dir)
        except OSError:
            continue
    return sorted(dirs)
