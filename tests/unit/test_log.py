"""cni_bridge/log.py: the records, levels, format and destinations of `logging`, which an exec'd
plugin imports only once a record is written."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cni_bridge import log

ROOT = Path(__file__).resolve().parents[2]
LINE = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} cni-bridge\[\d+\] "


def _run(code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`code` in a fresh interpreter (logging not imported), after setup_logging(env)."""
    prelude = (
        "import sys\n"
        "from cni_bridge.log import getLogger, setup_logging\n"
        f"setup_logging({env or {}!r})\n"
        "log = getLogger('cni_bridge.x')\n"
        "def loaded(): return 'logging' in sys.modules\n"
    )
    return subprocess.run([sys.executable, "-c", prelude + code], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, check=True)


def test_a_record_below_the_level_imports_nothing_and_writes_nothing() -> None:
    proc = _run("log.debug('d'); log.info('i %s', 1); assert not loaded()")
    assert proc.stderr == ""


def test_the_first_record_written_configures_logging_as_before() -> None:
    proc = _run("log.info('i'); assert not loaded(); log.warning('w %s', 1); assert loaded()\n"
                "import logging; root = logging.getLogger()\n"
                "assert root.level == logging.WARNING, root.level\n"
                "assert [h.level for h in root.handlers] == [logging.WARNING], root.handlers\n"
                "getLogger('cni_bridge.y').error('e')\n")
    assert re.fullmatch(f"{LINE}WARNING cni_bridge.x: w 1\n{LINE}ERROR cni_bridge.y: e\n",
                        proc.stderr), proc.stderr


def test_the_level_of_the_environment_applies() -> None:
    proc = _run("log.debug('d'); assert not loaded(); log.info('i'); assert loaded()",
                {"CNI_BRIDGE_LOG_LEVEL": "info"})
    assert re.fullmatch(f"{LINE}INFO cni_bridge.x: i\n", proc.stderr), proc.stderr
    proc = _run("log.warning('w'); log.error('e')", {"CNI_BRIDGE_LOG_LEVEL": "ERROR"})
    assert re.fullmatch(f"{LINE}ERROR cni_bridge.x: e\n", proc.stderr), proc.stderr
    # An unknown name is no level, as with logging.getLevelName.
    proc = _run("log.info('i'); log.warning('w')", {"CNI_BRIDGE_LOG_LEVEL": "LOUD"})
    assert re.fullmatch(f"{LINE}WARNING cni_bridge.x: w\n", proc.stderr), proc.stderr


def test_exception_carries_the_traceback() -> None:
    proc = _run("try:\n    1 / 0\nexcept ZeroDivisionError:\n    log.exception('boom')\n")
    assert re.match(f"{LINE}ERROR cni_bridge.x: boom\nTraceback ", proc.stderr), proc.stderr
    assert proc.stderr.endswith("ZeroDivisionError: division by zero\n")


def test_a_log_file_is_configured_at_once(tmp_path: Path) -> None:
    path = tmp_path / "plugin.log"
    proc = _run("assert loaded(); log.debug('d'); log.info('i'); log.warning('w')",
                {"CNI_BRIDGE_LOG_FILE": str(path)})
    assert re.fullmatch(f"{LINE}WARNING cni_bridge.x: w\n", proc.stderr), proc.stderr
    assert re.fullmatch(f"{LINE}INFO cni_bridge.x: i\n{LINE}WARNING cni_bridge.x: w\n",
                        path.read_text())
    proc = _run("log.info('i')", {"CNI_BRIDGE_LOG_FILE": str(tmp_path / "none" / "x.log")})
    assert proc.stderr.startswith("cni-bridge: cannot log to "), proc.stderr


def test_with_logging_already_imported_it_is_configured_at_once() -> None:
    """The agent's workers and operator commands: logging is loaded, its loggers' levels rule."""
    proc = subprocess.run(
        [sys.executable, "-c",
         "import logging, sys\n"
         "from cni_bridge.log import getLogger, setup_logging\n"
         "setup_logging({}, plugin=False)\n"
         "assert logging.getLogger().handlers[0].level == logging.NOTSET\n"
         "logging.getLogger('cni_bridge').setLevel(logging.INFO)\n"
         "getLogger('cni_bridge.x').info('i')\n"
         "setup_logging({})\n"
         "assert logging.getLogger().handlers[0].level == logging.WARNING\n"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=True)
    assert re.fullmatch(f"{LINE}INFO cni_bridge.x: i\n", proc.stderr), proc.stderr


def test_records_reach_caplog_and_name_the_callers_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="cni_bridge")
    log.getLogger("cni_bridge.t").debug("x=%d", 3)
    (record,) = caplog.records
    assert (record.name, record.levelno, record.getMessage()) == ("cni_bridge.t", logging.DEBUG, "x=3")
    assert record.funcName == "test_records_reach_caplog_and_name_the_callers_line"
    assert record.pathname == __file__
