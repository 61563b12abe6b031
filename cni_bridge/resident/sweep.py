"""Removing what agents killed with their network namespace left in AGENT_DIR.

An agent holds its lock (v<version>-<digest>-<netns inode>.lock, flock) for its whole life and
removes its socket and lock as it leaves; one killed (SIGKILL, its namespace deleted with every
process in it, a crash) leaves both, and a test run leaves hundreds. A starting agent removes
every such pair whose lock nobody holds, of any code and protocol version: taking the lock is
what proves its agent gone (a live agent, or one starting, holds it), and a taker checks that
the path still names the file it locked (spawn.claim), so removing a lock file is safe.
"""

from __future__ import annotations

import contextlib
import os

from cni_bridge.ports import lockfile
from cni_bridge.resident import naming


def sweep(socket_path: str) -> int:
    """Sweep the directory of an agent listening on `socket_path` if it is AGENT_DIR (an agent
    on another path, a test's, leaves its directory alone); how many pairs went."""
    directory = naming.agent_dir()
    if not directory or os.path.dirname(socket_path) != directory:
        return 0
    try:
        return lockfile.sweep_where(directory, naming.is_agent_lock)
    except OSError:  # a file we could not remove (read-only, immutable): never the agent's end
        return 0


def release(lock_fd: int, socket_path: str) -> None:
    """A leaving agent's socket and lock go while it still holds the lock, unless its lock file
    is no longer the one at that path (its directory was removed, as rootless podman does with
    a namespace's private /run): then neither name is its own any more."""
    lock = naming.lock_path(socket_path)
    if lockfile.still_named(lock_fd, lock):
        for path in (socket_path, lock):
            with contextlib.suppress(OSError):
                os.unlink(path)
    os.close(lock_fd)
