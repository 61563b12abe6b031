"""PyInstaller run-time hook: multiprocessing support without importing it on every start.

The stock hook (pyi_rth_multiprocessing) imports multiprocessing unconditionally, which every
exec of the plugin would pay for. multiprocessing only re-executes the frozen binary for the
'spawn'/'forkserver' start methods and for its resource tracker, and those children are
recognisable from argv alone, so only then is the stock logic needed.
"""

import sys

_HELPER_PREFIXES = (
    "from multiprocessing.resource_tracker import main",
    "from multiprocessing.forkserver import main",
    "import sys; from multiprocessing.forkserver import main",
)


def _helper_command(argv: list[str]) -> str | None:
    if "-c" not in argv:
        return None
    index = argv.index("-c") + 1
    if index < len(argv) and argv[index].startswith(_HELPER_PREFIXES):
        return argv[index]
    return None


def _pyi_rthook_lazy_multiprocessing() -> None:
    argv = sys.argv
    helper = _helper_command(argv)
    is_spawn_child = len(argv) >= 2 and argv[1] == "--multiprocessing-fork"
    if helper is None and not is_spawn_child:
        return
    import multiprocessing
    import multiprocessing.spawn

    # As the stock hook: keep spawn from trying to re-read __main__ from the frozen script.
    multiprocessing.process.ORIGINAL_DIR = None  # type: ignore[attr-defined]
    if helper is not None:
        exec(helper)
        sys.exit()
    kwds: dict[str, int | None] = {}
    for arg in argv[2:]:
        name, value = arg.split("=")
        kwds[name] = None if value == "None" else int(value)
    multiprocessing.spawn.spawn_main(**kwds)  # type: ignore[arg-type]
    sys.exit()


_pyi_rthook_lazy_multiprocessing()
del _pyi_rthook_lazy_multiprocessing
