"""What a worker must not carry from one caller's mount namespace to another (resident/mounts.py)."""

from __future__ import annotations

import ast
import ctypes
import linecache
import subprocess
import sys
from pathlib import Path

from cni_bridge.resident import mounts

PACKAGE = Path(mounts.__file__).resolve().parents[1]
CACHE_DECORATORS = {"cache", "lru_cache", "cached_property"}


def _module_caches() -> set[tuple[str, str]]:
    """Every module-level name the package rebinds from a function (`global X`) and every
    function memoized by functools: the engine's per-process caches."""
    found: set[tuple[str, str]] = set()
    for path in PACKAGE.rglob("*.py"):
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Global):
                found.update((module, name) for name in node.names)
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                for deco in node.decorator_list:
                    target = deco.func if isinstance(deco, ast.Call) else deco
                    name = target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", "")
                    if name in CACHE_DECORATORS:
                        found.add((module, node.name))
    return found


def test_every_module_level_cache_is_checked_after_a_foreign_request() -> None:
    # A cache missing here could hold what one caller's files said and serve it to the next.
    assert _module_caches() <= set(mounts.PROCESS_CACHES)
    assert ("cni_bridge.state", "_BOOT_ID") in mounts.PROCESS_CACHES  # the scan sees them


def test_a_worker_fills_the_engines_caches_before_its_first_caller() -> None:
    # A cache a worker leaves empty is filled by its first request; from a fresh mount namespace
    # that retires the worker (a CI failure of test_resident_mounts: _BOOT_ID, in a worker
    # forked for a waiting caller, which runs prepare() but no rehearsal).
    code = (
        "import importlib\n"
        "from cni_bridge import engine\n"
        "from cni_bridge.resident import mounts\n"
        "engine.prepare()\n"
        "print(' '.join(f'{m}.{a}' for m, a in mounts.PROCESS_CACHES if m.startswith('cni_bridge.')"
        " and getattr(importlib.import_module(m), a) is None))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", out.stdout


def test_traces_name_what_a_request_loaded() -> None:
    before = mounts._Before()
    assert mounts.traces(before) == []
    sys.modules.pop("colorsys", None)
    with open("/proc/self/maps") as f:
        libanl_mapped = "libanl" in f.read()
    before = mounts._Before()
    import colorsys  # noqa: F401

    ctypes.CDLL("libanl.so.1")
    linecache.getline(mounts.__file__, 1)
    found = mounts.traces(before)
    assert any(t == "imported colorsys" for t in found), found
    assert libanl_mapped or any(t.startswith("mapped 1 new file") for t in found), found
    assert any(t.startswith("read source lines of ") for t in found), found


def test_file_mappings_include_the_interpreter() -> None:
    exe = Path(sys.executable).resolve().stat()
    maps = mounts.file_mappings()
    assert any(ino == exe.st_ino for _dev, ino in maps)


_THREADS_PROBE = """
import _thread, threading
from cni_bridge.background import Background
from cni_bridge.resident import mounts
assert mounts.threads(settle=0) == 1
release = _thread.allocate_lock()
release.acquire()
def leaked():
    with release:
        pass
_thread.start_new_thread(leaked, ())
assert threading.active_count() == 1  # what the checks used to count
assert mounts.threads(settle=0.01) == 2  # a thread a request left running is seen
release.release()
# A thread whose call has ended, or a joined Background job, is gone once its OS thread
# exits a moment later: the settle waits for that, and the worker stays reusable.
assert mounts.threads() == 1
for _ in range(200):
    assert Background(lambda: None).join() is None
    assert mounts.threads() == 1
print("ok")
"""


def test_threads_counts_those_started_with_thread_which_threading_does_not_see() -> None:
    """background.Background starts its thread with `_thread`: the worker's checks (join_mounts,
    return_home, worker._fit) must still see one that a request left running, and not one that
    was joined. In a fresh process, which has a single thread to start from."""
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", _THREADS_PROBE], cwd=root, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and done.stdout == "ok\n", done.stderr
