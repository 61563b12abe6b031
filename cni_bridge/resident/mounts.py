"""A worker in its caller's mount namespace, and back: `keep_home`, `join_mounts`, `return_home`.

A caller from a fresh mount namespace (`ip netns exec`, `unshare -m`, rootless podman) is served
inside that namespace, so every path the engine opens means what it means to the caller. After
the request the worker goes back to the agent's own mount namespace (a descriptor of it and of
its root, kept from before the first request) and stays pooled, warm for the next caller.

What makes that safe: nothing loaded from a caller's mount namespace may serve another caller.
The worker therefore returns only when the request, while joined, left no trace that another
caller's request would use. Python code and native libraries are what could carry one caller's
files into another's request, and both are checked: no module imported (`sys.modules` as before
the join) and no new file mapped (`/proc/self/maps`: a library dlopen'ed, such as an xtables
extension libnftables loads to list a foreign rule, or anything mmap'ed). Then what Python
and the engine keep in memory from paths they read: no new entry in the import system's path
caches (`sys.path_importer_cache`; the directory listings its finders hold are dropped on return
anyway) nor in `linecache` (source lines a traceback or warning read), and no engine cache that
is filled from the filesystem changed (`PROCESS_CACHES`: the boot id, the libnftables context,
which reads `/etc/iproute2` when made; `tests/unit/test_mounts.py` fails when a module-level
cache is added without being listed). Descriptors, threads and the namespaces are checked after
every request anyway (`worker._fit`); what the request wrote to disk is the caller's, in its
namespace. A worker that fails any check leaves after answering, as every joined worker used to.
The reverse direction holds by construction: the worker leaves the agent's namespace for the
caller's before the engine runs, and the engine's per-request state (environment, umask,
logging) is set from the request.
"""

from __future__ import annotations

import ctypes
import errno
import importlib
import linecache
import os
import sys
import time

from cni_bridge.resident.admission import CLONE_NEWNS, Refused

# Module-level caches a request may fill from files it reads (module, attribute): a change
# while joined means the value came from a caller's mount namespace.
PROCESS_CACHES = (
    ("cni_bridge.state", "_BOOT_ID"),
    ("cni_bridge.firewall.nftcall", "_process_context"),
    ("pydantic.plugin._loader", "_plugins"),  # plugins found through installed distributions
)

# The program's own symbols, libc's among them: ctypes.util.find_library would import shutil,
# subprocess, tempfile, bz2 and lzma into the agent, and run `ldconfig -p` to find "libc.so.6".
_libc = ctypes.CDLL(None, use_errno=True)
_MISSING = object()


class _Imports:
    """First on sys.meta_path: notes every module the import system is asked to find (one not
    in sys.modules yet) and finds nothing itself. What a request imported is then what it
    asked for that sys.modules now has, without a copy of sys.modules before each request: that
    copy wrote the reference count of every module object, ~1.3 MiB of the agent's pages copied
    into every worker, the idle one's among them."""

    def __init__(self) -> None:
        self.names: list[str] | None = None  # None: before the first _Before (the agent's own)

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> None:
        if self.names is not None:
            self.names.append(fullname)

    def invalidate_caches(self) -> None:
        pass


_IMPORTS = _Imports()
sys.meta_path.insert(0, _IMPORTS)


class _Before:
    """What the worker held just before it joined a caller's mount namespace."""

    __slots__ = ("caches", "importers", "imports", "lines", "maps", "modules")

    def __init__(self) -> None:
        self.imports: list[str] = []
        _IMPORTS.names = self.imports  # what is imported from now on
        self.modules = len(sys.modules)
        self.maps = file_mappings()
        self.caches = cache_values()
        self.importers = frozenset(sys.path_importer_cache)
        self.lines = frozenset(linecache.cache)


# The caller's mount namespace this process joined (what it held before), until it returns.
JOINED: list[_Before] = []
# What the worker held as it said it was free (see settle): the state a join starts from.
_SETTLED: list[_Before] = []
# This worker's own mount namespace and root, as descriptors (see keep_home).
_HOME: list[int] = []


def keep_home() -> None:
    """Keep descriptors of this process's mount namespace and root, so that it can come back
    after serving a caller from another one. A pooled worker calls this before its first
    request (close-on-exec: helpers the engine execs do not get them)."""
    if _HOME:
        return
    mnt = os.open("/proc/self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    root = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    _HOME[:] = [mnt, root]


def threads(settle: float = 2.0) -> int:
    """How many threads this process has, as the kernel counts them (/proc/self/task):
    `threading.active_count()` does not see those started with `_thread` (background.py). A
    joined thread is still there for its last instants (joins return once its call has ended,
    before the OS thread exits), so a count above one is read again for up to `settle` seconds
    before it stands: long enough for a thread that ended to be scheduled on a busy node; only
    a thread really left running costs the wait (its worker leaves, after the answer)."""
    deadline = 0.0
    while True:
        count = len(os.listdir("/proc/self/task"))
        if count == 1:
            return count
        now = time.monotonic()
        if not deadline:
            deadline = now + settle
        elif now >= deadline:
            return count
        time.sleep(0.001)


def settle() -> None:
    """Note what the worker holds now, as it is about to say it is free: reading it (mostly
    /proc/self/maps, ~0.8 ms) then costs no caller any time. Nothing loads between then and the
    next request's join_mounts but the request's admission, in the agent's own namespace."""
    _SETTLED[:] = [_Before()]


def join_mounts(mntns_fd: int) -> None:
    """Enter the caller's mount namespace unless this process is in it already. setns needs a
    single-threaded process (CAP_SYS_ADMIN, CAP_SYS_CHROOT): a worker between requests is one."""
    if os.stat(f"/proc/self/fd/{mntns_fd}").st_ino == os.stat("/proc/self/ns/mnt").st_ino:
        return
    if threads() != 1:
        raise Refused("cannot join the caller's mount namespace: threads are running")
    before = _SETTLED.pop() if _SETTLED else _Before()
    if _libc.setns(mntns_fd, CLONE_NEWNS) != 0:
        err = ctypes.get_errno()
        raise Refused(f"cannot join the caller's mount namespace: {os.strerror(err)}")
    JOINED.append(before)
    os.chdir("/")  # setns moved root and cwd to the namespace's root; cwd is "/" as ever


def return_home() -> str:
    """After a request: back to the worker's own mount namespace. "" when the worker did not
    join one or is back and may serve another caller; otherwise why it may not (it must
    leave)."""
    if not JOINED:
        return ""
    if not _HOME:
        return "it kept no descriptor of its own mount namespace"
    if threads() != 1:
        return "threads are running"
    mnt, root = _HOME
    if not _setns_settled(mnt):
        return f"setns back failed: {os.strerror(ctypes.get_errno())}"
    try:
        os.fchdir(root)
        os.chroot(".")
        os.chdir("/")
    except OSError as exc:
        return f"cannot restore its root: {exc}"
    if os.stat("/proc/self/ns/mnt").st_ino != os.fstat(mnt).st_ino:
        return "it is not back in its own mount namespace"
    importlib.invalidate_caches()  # directory listings read in the caller's namespace
    trace = traces(JOINED[0])
    if trace:
        return "while in a caller's mount namespace it " + "; ".join(trace)
    JOINED.clear()
    return ""


def _setns_settled(fd: int) -> bool:
    """setns, again for a moment while a thread the request joined is still leaving the kernel
    (it shares our fs_struct until it has: EINVAL)."""
    for _ in range(100):
        if _libc.setns(fd, CLONE_NEWNS) == 0:
            return True
        if ctypes.get_errno() != errno.EINVAL:
            return False
        time.sleep(0.001)
    return False


def traces(before: _Before) -> list[str]:
    """What the request left in this process that came, or may have come, from the files it
    saw: see the module's docstring."""
    out = []
    modules = sorted({name for name in before.imports if name in sys.modules})
    if modules:
        out.append(f"imported {', '.join(modules[:10])}")
    elif len(sys.modules) != before.modules:  # set there by hand, not imported
        out.append(f"changed sys.modules ({before.modules} -> {len(sys.modules)} entries)")
    maps = file_mappings() - before.maps
    if maps:
        out.append(f"mapped {len(maps)} new file(s) (device, inode {sorted(maps)[:5]})")
    caches = [f"{m}.{a}" for (m, a), v in cache_values().items() if v is not before.caches[(m, a)]]
    if caches:
        out.append(f"filled {', '.join(caches)}")
    importers = frozenset(sys.path_importer_cache) - before.importers
    if importers:
        out.append(f"looked for modules in {', '.join(sorted(importers)[:5])}")
    lines = frozenset(linecache.cache) - before.lines
    if lines:
        out.append(f"read source lines of {', '.join(sorted(lines)[:5])}")
    return out


def file_mappings() -> frozenset[tuple[str, int]]:
    """(device, inode) of every file mapped into this process."""
    found = set()
    with open("/proc/self/maps", "rb") as f:
        for line in f:
            fields = line.split(None, 5)
            if len(fields) >= 5 and fields[4] != b"0":
                found.add((fields[3].decode(), int(fields[4])))
    return frozenset(found)


def cache_values() -> dict[tuple[str, str], object]:
    values = {}
    for module, attr in PROCESS_CACHES:
        loaded = sys.modules.get(module)
        values[(module, attr)] = _MISSING if loaded is None else getattr(loaded, attr, _MISSING)
    return values
