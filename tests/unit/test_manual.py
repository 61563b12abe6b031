"""The manual (cni_bridge/manual.py): --help and the committed man page come from the commands'
own parsers, and stay complete."""

from __future__ import annotations

import argparse
import io
import re
from contextlib import redirect_stdout
from pathlib import Path

import pytest

from cni_bridge import cli, manual

ROOT = Path(__file__).resolve().parents[2]


def test_the_committed_man_page_is_what_the_parsers_render() -> None:
    committed = (ROOT / "docs" / "cni-bridge.1").read_text()
    assert committed == manual.manpage(), (
        "docs/cni-bridge.1 no longer matches the parsers: `make man` "
        "(or .venv/bin/python -m cni_bridge.manual > docs/cni-bridge.1) and commit it"
    )


def test_every_command_cli_dispatches_is_in_the_manual() -> None:
    source = (ROOT / "cni_bridge" / "cli.py").read_text()
    dispatched = set(re.findall(r'cmd == "([a-z]+)"', source))
    for group in re.findall(r"cmd in \(([^)]*)\)", source):
        dispatched |= set(re.findall(r'"([a-z]+)"', group))
    dispatched -= {"help"}
    assert dispatched and dispatched == {name for name, _, _ in manual.COMMANDS}


def test_every_variable_the_code_reads_is_documented() -> None:
    texts = [p.read_text() for p in (ROOT / "cni_bridge").rglob("*.py")]
    texts.append((ROOT / "build" / "launcher.c").read_text())
    read = {v for t in texts for v in re.findall(r"CNI_BRIDGE_[A-Z_]+[A-Z]", t)}
    documented = {var for var, _, _ in manual.ENVIRONMENT}
    assert read - manual.INTERNAL_VARIABLES == documented, (
        "describe every CNI_BRIDGE_* variable in cni_bridge/manual.py ENVIRONMENT (or list it in "
        "INTERNAL_VARIABLES), then regenerate docs/cni-bridge.1"
    )


@pytest.mark.parametrize("name", [c for c, _, _ in manual.COMMANDS])
def test_every_option_is_described_with_its_default(name: str) -> None:
    p = manual.parser(name)
    page, text = manual.manpage(), manual.usage()
    for action in p._actions:
        if isinstance(action, argparse._HelpAction) or action.help is argparse.SUPPRESS:
            continue
        assert action.help, f"{name}: {action.dest} has no help"
        described = manual.expand(action, p.prog)
        if action.default not in (None, False, [], "") and action.option_strings:
            assert "default" in described.lower(), f"{name} {action.option_strings}"
        for flag in action.option_strings:
            assert flag in text and flag.replace("-", "\\-") in page
    # a command's own --help uses the same rule
    assert "(default: " in p.format_help() or name in ("routes", "client")


def test_help_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.operator_main(["--help"], {}) == 0
    out = capsys.readouterr().out
    assert "CNI_BRIDGE_LOG_FILE" in out and "cni-bridge sync" in out and "--heal-every" in out
    assert cli.operator_main(["help", "gc"], {}) == 0
    assert capsys.readouterr().out.startswith("usage: cni-bridge gc ")
    assert cli.operator_main(["help", "nope"], {}) == 2
    assert cli.operator_main(["nope"], {}) == 2
    assert "--help" in capsys.readouterr().err


def test_subcommand_help_exits_cleanly() -> None:
    buf = io.StringIO()
    with redirect_stdout(buf), pytest.raises(SystemExit) as exit_:
        cli.operator_main(["routes", "--help"], {})
    assert exit_.value.code == 0 and "--peers FILE" in buf.getvalue()
