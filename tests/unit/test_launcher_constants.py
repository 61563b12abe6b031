"""The native launcher (build/launcher.c) restates constants of the Python thin client; this
keeps the two in step without compiling anything (the integration tests run the launcher)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cni_bridge import cli, limits
from cni_bridge.resident import client, protocol

SOURCE = (Path(__file__).resolve().parents[2] / "build" / "launcher.c").read_text()


def define(name: str) -> str:
    match = re.search(rf"^#define {name} (.+?)(?:\s*/\*.*\*/)?$", SOURCE, re.MULTILINE)
    assert match, f"#define {name} missing from launcher.c"
    return match.group(1).strip()


def number(name: str) -> float:
    # The launcher's numeric #defines are C constant expressions of literals (1 << 20, 0x1u).
    expr = define(name).rstrip("u")
    assert re.fullmatch(r"[0-9a-fx.e*<() ]+", expr), expr
    return float(eval(expr, {"__builtins__": {}}))


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("PROTOCOL_VERSION", protocol.PROTOCOL_VERSION),
        ("K_REQUEST", protocol.REQUEST),
        ("K_READY", protocol.READY),
        ("K_GO", protocol.GO),
        ("K_RESULT", protocol.RESULT),
        ("K_REFUSE", protocol.REFUSE),
        ("FLAG_NETNS_FD", protocol.FLAG_NETNS_FD),
        ("MAX_IDENTITY", protocol.MAX_IDENTITY),
        ("MAX_ENV_BYTES", protocol.MAX_ENV_BYTES),
        ("MAX_ENV_VARS", protocol.MAX_ENV_VARS),
        ("MAX_STDIN_BYTES", limits.MAX_STDIN_BYTES),
        ("MAX_STDOUT", protocol.MAX_STDOUT),
        ("MAX_STDERR", protocol.MAX_STDERR),
        ("MAX_REASON", protocol.MAX_REASON),
        ("HEADER_SIZE", protocol.HEADER.size),
        ("REQUEST_HEAD", protocol._REQUEST_HEAD.size),
        ("RESULT_HEAD", protocol._RESULT_HEAD.size),
        ("DEFAULT_READY_TIMEOUT", client.DEFAULT_READY_TIMEOUT),
        ("DEFAULT_TIMEOUT", client.DEFAULT_TIMEOUT),
        ("MAX_SECONDS", client.MAX_SECONDS),
    ],
)
def test_numbers_match_the_python_client(name: str, expected: float) -> None:
    assert number(name) == expected


def test_names_match() -> None:
    assert define("RELAY_FAILED_VAR") == f'"{cli.RELAY_FAILED_VAR}"'
    assert define("AGENT_DIR") == f'"{client.AGENT_DIR}"'
    assert 'AGENT_DIR "/v%d-%016llx-%llu.sock"' in SOURCE  # client.name_for, same shape


def test_the_verbs_the_launcher_relays_are_the_clients() -> None:
    verbs = re.search(r"verbs\[\] = \{([^}]*)\}", SOURCE)
    assert verbs
    assert set(re.findall(r'"([A-Z]+)"', verbs.group(1))) == set(cli.RESIDENT_VERBS)
    netns = re.search(r"static int netns_verb.*?\n\}", SOURCE, re.DOTALL)
    assert netns
    assert set(re.findall(r'"([A-Z]+)"', netns.group(0))) == set(client.NETNS_COMMANDS)
    off = re.search(r"off\[\] = \{([^}]*)\}", SOURCE)
    assert off
    offs = set(re.findall(r'"([a-z0-9]+)"', off.group(1)))
    assert offs == {k for k, v in client._MODES.items() if v == client.MODE_OFF}


def test_forwarded_variables_match() -> None:
    fwd = re.search(r"static int forwarded.*?\n\}", SOURCE, re.DOTALL)
    assert fwd
    names = set(re.findall(r'memcmp\(name, "([A-Z_]+)"', fwd.group(0)))
    assert names == {"CNI_"} | set(protocol.EXTRA_FORWARDED)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("", 7.0),
        ("2.5", 2.5),
        (" 3 ", 3.0),
        ("0", 0.0),
        ("-1", 7.0),
        ("nan", 7.0),
        ("inf", 7.0),
        ("1e10", 7.0),
        ("1_0", 7.0),
        ("0x10", 7.0),
        ("1e9", 1e9),
    ],
)
def test_env_seconds_bounds(raw: str, expected: float) -> None:
    assert client.env_seconds({"X": raw}, "X", 7.0) == expected
