"""Whole-file writes a crash cannot leave half done: the data goes to a file of its own, which
is then renamed (or linked) into place, so readers see the old content or the new, never part.

Nothing is fsynced: every caller's files (records, reservations, the client's result cache)
describe attachments that a power loss ends anyway, and fsync cost ~1 ms a write here.
Standard library only: the libcni client imports it.
"""

from __future__ import annotations

import os
import time

_O_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def write_new(path: str, data: bytes, mode: int = 0o600) -> None:
    """Create `path`, which must not exist (a symlink there is not followed), holding `data`.
    On failure nothing is left at `path`."""
    fd = os.open(path, _O_NEW, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    except BaseException:
        os.close(fd)
        os.unlink(path)
        raise
    os.close(fd)


def replace(path: str, data: bytes, tmp: str, mode: int = 0o600) -> None:
    """Put `data` at `path` with one rename from `tmp`, a name in the same directory that only
    this writer uses (a leftover there, from a writer that died, is removed first)."""
    remove(tmp)
    write_new(tmp, data, mode)
    try:
        os.replace(tmp, path)
    except BaseException:
        remove(tmp)
        raise


def remove(path: str) -> None:
    """Unlink `path` if it is there (contextlib.suppress would cost the client an import)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return


SET_ASIDE_MARK = ".set-aside-"


def set_aside(path: str, when: float) -> str:
    """Rename a file (or a directory) that cannot be trusted out of the way, in its own
    directory, so it is kept for an operator and never read as what it was meant to be:
    `<name>.set-aside-<UTC time>` (a counter follows when that name is taken). Returns the
    new path."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(when))
    base = f"{path}{SET_ASIDE_MARK}{stamp}"
    target, n = base, 0
    while os.path.lexists(target):
        n += 1
        target = f"{base}.{n}"
    os.rename(path, target)
    return target


def is_set_aside(name: str) -> bool:
    return SET_ASIDE_MARK in name
