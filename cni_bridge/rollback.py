"""Undo stack for ADD: every side effect registers its undo right after it succeeds."""

from __future__ import annotations

from collections.abc import Callable

from cni_bridge.log import getLogger

log = getLogger(__name__)


class Rollback:
    """Runs the registered undos in reverse order when ADD fails (`run`), or forgets them once it
    succeeded (`commit`).

    An undo that fails is logged and skipped; it never masks the original error.
    """

    def __init__(self) -> None:
        self._undos: list[tuple[str, Callable[[], object]]] = []

    def push(self, what: str, undo: Callable[[], object]) -> None:
        self._undos.append((what, undo))

    def commit(self) -> None:
        self._undos.clear()

    def run(self) -> list[str]:
        failures: list[str] = []
        while self._undos:
            what, undo = self._undos.pop()
            try:
                undo()
            except Exception as exc:  # best effort, reported below
                log.warning("rollback of %s failed: %s", what, exc)
                failures.append(f"{what}: {exc}")
        return failures

