"""VERSION answered without the engine (cli -> protocol.versions.lean_version): the same bytes
as the engine's answer for every well-formed call, the engine's own error for the rest, and
nothing of the engine stack imported."""

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cni_bridge.cli import main
from cni_bridge.engine import handle
from cni_bridge.limits import MAX_CNI_ARGS, MAX_STDIN_BYTES
from cni_bridge.protocol.versions import SUPPORTED_VERSIONS, lean_version

ROOT = Path(__file__).resolve().parents[2]
VERSION = {"CNI_COMMAND": "VERSION", "CNI_NETNS": "dummy"}

ANSWERED = [
    b"",
    b"  \n",
    b'{"cniVersion":"0.4.0"}',
    b'{"cniVersion":"1.1.0","name":"n","type":"cni-bridge","ipam":{}}',
    b'{"cniVersion":"9.9.9"}',  # not ours: answered in our current version, as the engine does
    b'{"cniVersion":7}',
    b"{}",
    '{"cniVersion":"1.0.0","name":"caf\u00e9"}'.encode(),
    b" " * (MAX_STDIN_BYTES + 1),  # blank: no config, however long
]
REFUSED = [b"{not json", b"[1,2]", b'"1.0.0"', b"\xff\xfe{", b"[" * 100000, b"{}" + b" " * MAX_STDIN_BYTES]


@pytest.mark.parametrize("stdin", ANSWERED)
def test_lean_version_is_the_engines_answer(stdin: bytes) -> None:
    assert lean_version(VERSION, stdin) == handle(VERSION, stdin)[1]
    assert handle(VERSION, stdin)[0] == 0


@pytest.mark.parametrize("stdin", REFUSED)
def test_what_the_engine_refuses_is_left_to_it(stdin: bytes) -> None:
    assert lean_version(VERSION, stdin) is None
    assert handle(VERSION, stdin)[0] == 1


def test_an_oversized_cni_args_is_left_to_the_engine() -> None:
    env = {**VERSION, "CNI_ARGS": "x" * (MAX_CNI_ARGS + 1)}
    assert lean_version(env, b"") is None
    code, out = handle(env, b"")
    assert code == 1 and json.loads(out)["code"] == 4
    assert lean_version({**VERSION, "CNI_ARGS": "x" * MAX_CNI_ARGS}, b"") is not None


def test_other_verbs_are_not_answered() -> None:
    assert lean_version({"CNI_COMMAND": "ADD"}, b"{}") is None


@pytest.mark.parametrize("stdin", [b'{"cniVersion":"0.3.1"}', b"[1]"])
def test_the_plugin_answers_version_as_the_engine_does(stdin: bytes) -> None:
    out = io.BytesIO()
    code = main([], environ=VERSION, stdin=io.BytesIO(stdin), stdout=out)
    assert (code, out.getvalue()) == handle(VERSION, stdin)


def test_version_imports_no_engine() -> None:
    """As a runtime execs it: the engine, logging, dataclasses and typing stay out."""
    probe = (
        "import sys\n"
        "from cni_bridge.cli import main\n"
        "main([])\n"
        "heavy = {'cni_bridge.engine', 'logging', 'dataclasses', 'typing', 'inspect'}\n"
        "sys.stderr.write(repr(sorted(heavy & set(sys.modules))))\n"
    )
    env = {"PATH": os.environ["PATH"], "CNI_COMMAND": "VERSION", "CNI_BRIDGE_RESIDENT": "0"}
    proc = subprocess.run(
        [sys.executable, "-S", "-c", probe],
        input=b'{"cniVersion":"1.0.0"}',
        env=env,
        cwd=ROOT,
        capture_output=True,
        timeout=60,
    )
    assert json.loads(proc.stdout)["supportedVersions"] == list(SUPPORTED_VERSIONS)
    assert proc.stderr.decode().endswith("[]"), proc.stderr
