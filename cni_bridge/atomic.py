"""Whole-file writes a crash cannot leave half done: the data goes to a file of its own, which
is then renamed (or linked) into place, so readers see the old content or the new, never part.

Nothing is fsynced: every caller's files (records, reservations, the client's result cache)
describe attachments that a power loss ends anyway, and fsync cost ~1 ms a write here.
Standard library only: the libcni client imports it.
"""

from __future__ import annotations

import os

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
