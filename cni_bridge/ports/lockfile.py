"""The holder's lock and control socket files in the agent directory, and their clean-up.

One holder per network namespace: it holds ports-<netns inode>.lock (flock) for its life and
listens on ports-<netns inode>.sock. A holder that ends removes both; one that was killed
(a crashed agent, a test's namespace removed with everything in it) leaves them, and the next
holder to start sweeps every pair whose lock nobody holds. Removing a lock file is safe
because a taker checks, once it holds the lock, that the path still names the file it locked
(else it locked a removed file, and tries again).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Callable

POLL = 0.2


def still_named(fd: int, path: str) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


def take(path: str, keep_waiting: Callable[[], bool]) -> int | None:
    """The lock at `path`, waiting while another holds it; None when keep_waiting() says no."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not keep_waiting():
                    os.close(fd)
                    return None
                time.sleep(POLL)
        if still_named(fd, path):
            return fd
        os.close(fd)  # the one before us removed it as it left: lock the new one


def release(fd: int, lock_path: str, sock_path: str) -> None:
    """Remove the socket and the lock (still held while they go), then let go."""
    try:
        for path in (sock_path, lock_path):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
    finally:
        os.close(fd)  # let go even when a file could not be removed


def sweep(directory: str, prefix: str) -> int:
    """Remove <prefix><n>.{lock,sock} pairs whose lock nobody holds; how many."""
    return sweep_where(directory, lambda name: name.startswith(prefix) and name.endswith(".lock"))


def sweep_where(directory: str, is_lock: Callable[[str], bool]) -> int:
    """Remove the <name>.lock files that `is_lock` names and nobody holds, each with its
    <name>.sock; how many. A lock is taken before anything goes, so a live owner's files stay."""
    swept = 0
    try:
        names = os.listdir(directory)
    except OSError:
        return 0
    for name in names:
        if not (name.endswith(".lock") and is_lock(name)):
            continue
        lock_path = os.path.join(directory, name)
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)  # a live holder's
            continue
        if not still_named(fd, lock_path):
            os.close(fd)
            continue
        try:
            release(fd, lock_path, lock_path[: -len(".lock")] + ".sock")
        except OSError:  # not removable (read-only, immutable): the next one may be
            continue
        swept += 1
    return swept
