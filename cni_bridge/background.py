"""One call run beside the caller's own work, in a thread, with its outcome collected later.

`_thread`, not `threading`: the module, its imports and a Thread's bookkeeping cost an exec'd
ADD ~2 M instructions (~0.8 %, callgrind) for what one lock does here. Such a thread is not in
`threading.active_count()`, so the agent's checks for threads left running (resident/mounts.py
`threads`, used by worker.py) count the kernel's tasks in /proc/self/task instead. join() returns
once the call has ended, moments before the OS thread exits: those checks give a thread that
ended a moment to go.
"""

from __future__ import annotations

import _thread
from collections.abc import Callable


class Background:
    """Start `fn` in a thread now; `join()` waits for it and returns what it raised (None when
    it returned). Meant for calls that mostly wait on the kernel (libnftables and netlink
    release the GIL), so two of them overlap on any number of cores."""

    def __init__(self, fn: Callable[[], object]) -> None:
        self._fn = fn
        self._error: BaseException | None = None
        self._ended = False
        self._running = _thread.allocate_lock()  # held while fn runs
        self._running.acquire()
        _thread.start_new_thread(self._run, ())

    def _run(self) -> None:
        try:
            self._fn()
        except BaseException as exc:  # handed to whoever joins; a thread must not swallow it
            self._error = exc
        finally:
            self._ended = True
            self._running.release()

    def join(self) -> BaseException | None:
        # A signal (Ctrl-C of an in-process plugin) must not end the wait early: the caller
        # rolls back right after, and must not do so while the call is still running.
        interrupted: BaseException | None = None
        while not self._ended:
            try:
                with self._running:
                    pass
            except BaseException as exc:  # rare; re-raised once the call has ended
                interrupted = interrupted or exc
        if interrupted is not None:
            raise interrupted
        return self._error
