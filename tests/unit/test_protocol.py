import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cni_bridge.cli import main
from cni_bridge.errors import CNIError
from cni_bridge.limits import MAX_STDIN_BYTES
from cni_bridge.protocol.request import parse_request
from cni_bridge.protocol.versions import REQUIRED_ENV, SUPPORTED_VERSIONS, require_verb_allowed
from cni_bridge.resident import protocol as resident_protocol

ROOT = Path(__file__).resolve().parents[2]
FULL_ENV = {
    "CNI_CONTAINERID": "abc123",
    "CNI_NETNS": "/run/netns/x",
    "CNI_IFNAME": "eth0",
    "CNI_PATH": "/opt/cni/bin",
}
CONF = b'{"cniVersion":"1.0.0","name":"n","type":"cni-bridge"}'


@pytest.mark.parametrize("verb", sorted(REQUIRED_ENV))
def test_each_required_var_is_enforced(verb: str) -> None:
    env = {"CNI_COMMAND": verb, **FULL_ENV}
    parse_request(env, CONF)
    for name in REQUIRED_ENV[verb]:
        broken = {k: v for k, v in env.items() if k != name}
        with pytest.raises(CNIError) as err:
            parse_request(broken, CONF)
        assert err.value.code == 4 and name in err.value.msg


def test_del_does_not_need_netns() -> None:
    env = {"CNI_COMMAND": "DEL", **FULL_ENV, "CNI_NETNS": ""}
    assert parse_request(env, CONF).netns == ""


@pytest.mark.parametrize("cid", ["../../etc", "a/b", "-lead", "", "x" * 2000, "a b", "a\nb", "abc\n", "caf\u00e9"])
def test_hostile_container_ids(cid: str) -> None:
    with pytest.raises(CNIError) as err:
        parse_request({"CNI_COMMAND": "ADD", **FULL_ENV, "CNI_CONTAINERID": cid}, CONF)
    assert err.value.code == 4


@pytest.mark.parametrize("ifname", ["", "a" * 16, ".", "..", "a/b", "a b", "a:b", "tab\t"])
def test_bad_ifnames(ifname: str) -> None:
    with pytest.raises(CNIError) as err:
        parse_request({"CNI_COMMAND": "ADD", **FULL_ENV, "CNI_IFNAME": ifname}, CONF)
    assert err.value.code == 4


def test_minimum_versions() -> None:
    require_verb_allowed("CHECK", "0.4.0")
    for verb, version in [("CHECK", "0.3.1"), ("GC", "1.0.0"), ("STATUS", "0.4.0")]:
        with pytest.raises(CNIError) as err:
            require_verb_allowed(verb, version)
        assert err.value.code == 1


def run_inproc(env: dict[str, str], stdin: bytes) -> tuple[int, dict[str, object]]:
    out = io.BytesIO()
    code = main([], environ={"CNI_BRIDGE_RESIDENT": "0", **env}, stdin=io.BytesIO(stdin), stdout=out)
    return code, json.loads(out.getvalue())


def test_version_answer() -> None:
    code, out = run_inproc({"CNI_COMMAND": "VERSION", "CNI_NETNS": "dummy"}, b'{"cniVersion":"0.4.0"}')
    assert code == 0
    assert out == {"cniVersion": "0.4.0", "supportedVersions": list(SUPPORTED_VERSIONS)}
    code, out = run_inproc({"CNI_COMMAND": "VERSION"}, b"")
    assert out["cniVersion"] == "1.1.0"


def test_a_request_the_launcher_lost_after_go_is_answered_never_run(capfd: pytest.CaptureFixture[str]) -> None:
    # build/launcher.c execs the bundle so after losing the agent mid-request: an ADD with a
    # valid config must come back as "try again later", in the request's version, unrun (the
    # version comes from the agent's RUNNING; without it, from stdin if still there).
    env = {"CNI_COMMAND": "ADD", **FULL_ENV, "CNI_BRIDGE_RELAY": "lost::closed"}
    code, out = run_inproc(env, b'{"cniVersion":"0.4.0","name":"n","type":"cni-bridge"}')
    assert code == 1
    assert out == {
        "cniVersion": "0.4.0",
        "code": 11,
        "msg": "the cni-bridge resident did not complete the request",
        "details": "connection lost mid-request: peer closed",
    }
    assert "connection lost" in capfd.readouterr().err
    env["CNI_BRIDGE_RELAY"] = "lost:1.0.0:timeout"
    code, out = run_inproc(env, b"")
    assert (code, out["cniVersion"], out["details"]) == (1, "1.0.0", "no answer within 120s")


def test_stdin_too_large() -> None:
    code, out = run_inproc({"CNI_COMMAND": "ADD", **FULL_ENV}, b" " * (2 << 20))
    assert code == 1 and out["code"] == 6


def test_the_agent_reads_what_the_readers_read() -> None:
    # The readers stop one byte over the bound; so does the agent's worker reading the
    # caller's stdin, so that the engine, not the transport, refuses it (error 6, as in-process).
    assert resident_protocol.MAX_STDIN == MAX_STDIN_BYTES + 1


def test_check_with_old_version_refused() -> None:
    code, out = run_inproc(
        {"CNI_COMMAND": "CHECK", **FULL_ENV}, b'{"cniVersion":"0.3.1","name":"n","type":"cni-bridge"}'
    )
    assert code == 1 and out["code"] == 1 and out["cniVersion"] == "0.3.1"


PROCESS_CASES = [
    ({"CNI_COMMAND": "ADD", **FULL_ENV}, b"{not json", 6),
    ({"CNI_COMMAND": "ADD", **FULL_ENV}, b'{"cniVersion":"7.0.0","name":"n","type":"cni-bridge"}', 1),
    ({"CNI_COMMAND": "ADD", **FULL_ENV}, b"[1,2]", 6),
    ({"CNI_COMMAND": "ADD", **FULL_ENV}, b"[" * 100000 + b"]" * 100000, 6),
    ({"CNI_COMMAND": "ADD", **FULL_ENV, "CNI_BRIDGE_LOG_LEVEL": "basic_format"}, b"{", 6),
    ({"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "x", "CNI_IFNAME": "eth0"}, CONF, 4),
    ({}, CONF, 4),
    ({"CNI_COMMAND": "FROB", **FULL_ENV}, CONF, 4),
    ({"CNI_COMMAND": "ADD", **FULL_ENV, "CNI_CONTAINERID": "../../../etc/passwd"}, CONF, 4),
    ({"CNI_COMMAND": "DEL", **FULL_ENV, "CNI_IFNAME": "x" * 40}, CONF, 4),
    (
        {"CNI_COMMAND": "ADD", **FULL_ENV},
        b'{"cniVersion":"1.0.0","name":"n","type":"cni-bridge","ipam":{"type":"host-local","subnet":"10.0.0.1/8"}}',
        7,
    ),
]


@pytest.mark.parametrize(("env", "stdin", "code"), PROCESS_CASES)
def test_real_process_answers_one_error_json(env: dict[str, str], stdin: bytes, code: int) -> None:
    """The entry point as a process: exactly one JSON object on stdout, no traceback."""
    clean = {"PATH": os.environ["PATH"], "CNI_BRIDGE_RESIDENT": "0", **env}
    proc = subprocess.run(
        [sys.executable, "-m", "cni_bridge"],
        input=stdin,
        env=clean,
        cwd=ROOT,
        capture_output=True,
        timeout=60,
    )
    assert proc.returncode != 0
    out = json.loads(proc.stdout)  # a single object: json.loads rejects trailing data
    assert set(out) == {"cniVersion", "code", "msg", "details"}
    assert out["code"] == code, out
    assert b"Traceback" not in proc.stdout and b"Traceback" not in proc.stderr
