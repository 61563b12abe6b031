"""One call run beside the caller's own work, in a thread, with its outcome collected later."""

from __future__ import annotations

import threading
from collections.abc import Callable


class Background:
    """Start `fn` in a thread now; `join()` waits for it and returns what it raised (None when
    it returned). Meant for calls that mostly wait on the kernel (libnftables and netlink
    release the GIL), so two of them overlap on any number of cores."""

    def __init__(self, fn: Callable[[], object], name: str = "cni-bridge-background") -> None:
        self._fn = fn
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._fn()
        except BaseException as exc:  # handed to whoever joins; a thread must not swallow it
            self._error = exc

    def join(self) -> BaseException | None:
        # A signal (Ctrl-C of an in-process plugin) must not end the wait early: the caller
        # rolls back right after, and must not do so while the call is still running.
        interrupted: BaseException | None = None
        while self._thread.is_alive():
            try:
                self._thread.join()
            except BaseException as exc:  # rare; re-raised once the call has ended
                interrupted = interrupted or exc
        if interrupted is not None:
            raise interrupted
        return self._error
