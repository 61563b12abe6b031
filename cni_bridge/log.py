"""The plugin's loggers: `logging` itself only once a record is written (or a file awaits them).

An exec'd plugin run as runtimes run it (no CNI_BRIDGE_LOG_FILE, stderr at WARNING) writes no
record on a call that succeeds, and importing `logging` (with re, traceback, string, threading,
weakref) was ~4 % of a cold ADD's instructions. So `setup_logging` of an exec'd plugin with no
log file only notes the configuration and the level below which nothing would come out; the
first record at or above that level imports logging, applies the configuration (the handlers,
levels and format it always had) and goes out through the real `logging.Logger` of the same
name. Where logging is already imported (the agent, the tests and their caplog, operator
commands that set their own loggers' levels) or a log file is named, `setup_logging` configures
logging at once and every call goes straight to it.

Every module on the plugin's paths takes its logger from here: `log = getLogger(__name__)`.
"""

from __future__ import annotations

import _thread
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    import logging
    from collections.abc import Mapping

DEBUG, INFO, WARNING, ERROR = 10, 20, 30, 40
# logging.getLevelName's names (logging._nameToLevel); anything else means "no level set".
_LEVELS = {"CRITICAL": 50, "FATAL": 50, "ERROR": 40, "WARN": 30, "WARNING": 30, "INFO": 20,
           "DEBUG": 10, "NOTSET": 0}
FORMAT = "%(asctime)s cni-bridge[%(process)d] %(levelname)s %(name)s: %(message)s"

# The root level of a configuration noted by setup_logging and not yet applied (stderr its one
# handler, at that level too), if one is. While it is pending, records below it are dropped:
# nothing would show them. A list, not a `global`: no file fills it (tests/unit/test_mounts.py).
_pending: list[int] = []
_apply_lock = _thread.allocate_lock()


class Logger:
    """The part of `logging.Logger` the plugin uses, %-style arguments as there. stacklevel=2:
    the records name the caller's line, not this module's."""

    __slots__ = ("_logger", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self._logger: logging.Logger | None = None

    def _real(self) -> logging.Logger:
        if _pending:
            _apply_pending()
        if self._logger is None:
            import logging

            self._logger = logging.getLogger(self.name)
        return self._logger

    def debug(self, msg: str, *args: object) -> None:
        if _shown(DEBUG):
            self._real().debug(msg, *args, stacklevel=2)

    def info(self, msg: str, *args: object) -> None:
        if _shown(INFO):
            self._real().info(msg, *args, stacklevel=2)

    def warning(self, msg: str, *args: object) -> None:
        if _shown(WARNING):
            self._real().warning(msg, *args, stacklevel=2)

    def error(self, msg: str, *args: object) -> None:
        if _shown(ERROR):
            self._real().error(msg, *args, stacklevel=2)

    def exception(self, msg: str, *args: object) -> None:
        """ERROR with the exception being handled, as logging.Logger.exception."""
        if _shown(ERROR):
            self._real().exception(msg, *args, stacklevel=2)


def _shown(level: int) -> bool:
    # Read once: another thread (background.py) may apply and clear it between a test of it
    # and an index into it.
    pending = _pending[:1]
    return not pending or pending[0] <= level


def getLogger(name: str) -> Logger:
    return Logger(name)


def setup_logging(env: Mapping[str, str], *, plugin: bool = True) -> None:
    """CNI_BRIDGE_LOG_LEVEL for everything. Unset: CNI_BRIDGE_LOG_FILE gets INFO and up (an
    operator who names a file wants the line each ADD/DEL/GC/sync writes, commands/report.py),
    and stderr WARNING and up for a plugin exec (runtimes show a plugin's stderr). Operator
    commands (`plugin=False`) leave stderr unlevelled, so that those that raise their own
    loggers to INFO (`kube`, `routes`) are heard there."""
    level = _LEVELS.get(env.get("CNI_BRIDGE_LOG_LEVEL", "").upper())
    stderr_level = (level if level is not None else WARNING) if plugin else None
    log_file = env.get("CNI_BRIDGE_LOG_FILE")
    _pending.clear()
    if stderr_level is not None and not log_file and "logging" not in sys.modules:
        _pending.append(stderr_level)  # the root's level too (_configure with no file)
        return
    _configure(stderr_level, level, log_file)


def _apply_pending() -> None:
    # Cleared once configured: a thread that logs meanwhile (background.py) waits for that here.
    with _apply_lock:
        if _pending:
            _configure(_pending[0], _pending[0], None)
            _pending.clear()


def _configure(stderr_level: int | None, level: int | None, log_file: str | None) -> None:
    """Replace the root logger's handlers with ours (basicConfig(force=True)). Deferred (see
    setup_logging), that happens at the first record: a root handler someone added after
    setup_logging and before that record is removed then, as it would have been had it been
    added before setup_logging. Nothing in the plugin adds one. Where logging is imported when
    setup_logging runs (the agent, the tests), nothing is deferred and later handlers stay."""
    import logging

    stderr = logging.StreamHandler(sys.stderr)
    if stderr_level is not None:
        stderr.setLevel(stderr_level)
    handlers: list[logging.Handler] = [stderr]
    if log_file:
        try:
            handlers.append(logging.FileHandler(log_file))
            handlers[-1].setLevel(level if level is not None else INFO)
        except OSError as exc:
            sys.stderr.write(f"cni-bridge: cannot log to {log_file}: {exc}\n")
    if level is None:
        level = INFO if len(handlers) > 1 else WARNING
    # force: a resident worker inherits its parent's handlers but must follow its caller's env.
    logging.basicConfig(force=True, level=level, format=FORMAT, handlers=handlers)
