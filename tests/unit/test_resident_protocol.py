"""Framing, policy, naming and the pure parts of the agent's client. No root, no namespaces."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from cni_bridge.resident import admission, client, naming, policy, protocol, spawn

ROOT = Path(__file__).resolve().parents[2]


def _request(**overrides: object) -> bytes:
    args: dict[str, object] = {
        "env": {"CNI_COMMAND": "ADD", "CNI_ARGS": "IgnoreUnknown=1", "PATH": "/bin"},
        "argv": ["ls", "--network", "n"],
        "umask": 0o022,
        "has_netns_fd": True,
        "identity": "v2|/usr/bin/python3|x",
    }
    args.update(overrides)
    return protocol.encode_request(**args)  # type: ignore[arg-type]


# --- frames -----------------------------------------------------------------------------------


def test_frame_round_trip() -> None:
    frame = protocol.encode_frame(protocol.EXEC, b"busy")
    assert protocol.decode_header(frame[: protocol.HEADER.size]) == (protocol.EXEC, 4)
    assert frame[protocol.HEADER.size :] == b"busy"
    assert protocol.encode_frame(protocol.GO) == b"CB\x03\x00\x00\x00\x00"


@pytest.mark.parametrize(
    "header",
    [
        b"XX\x02\x00\x00\x00\x00",  # magic
        b"CB\x09\x00\x00\x00\x00",  # unknown kind
        b"CB\x02\x00\x00\x00\x05",  # READY carries a u32
        b"CB\x03\x00\x00\x00\x01",  # GO carries nothing
        b"CB\x01\xff\xff\xff\xff",  # REQUEST beyond its bound
        b"CB\x02",  # short
    ],
)
def test_bad_headers_are_rejected(header: bytes) -> None:
    with pytest.raises(protocol.ProtocolError):
        protocol.decode_header(header)


def test_encode_frame_enforces_bounds() -> None:
    with pytest.raises(protocol.ProtocolError):
        protocol.encode_frame(protocol.GO, b"x")
    with pytest.raises(protocol.ProtocolError):
        protocol.encode_frame(protocol.EXEC, b"x" * (protocol.MAX_REASON + 1))
    with pytest.raises(protocol.ProtocolError):
        protocol.encode_frame(42)


# --- requests ---------------------------------------------------------------------------------


def test_request_round_trip_carries_the_whole_environment_and_argv() -> None:
    env = {"CNI_COMMAND": "ADD", "PATH": "/usr/bin", "SECRET_TOKEN": "s3cr3t"}
    request = protocol.decode_request(_request(env=env, umask=0o027))
    assert request.env == env  # the agent filters (policy.forwarded), not the framing
    assert request.argv == ["ls", "--network", "n"]
    assert request.umask == 0o027
    assert request.has_netns_fd is True and request.has_mntns_fd is False
    assert request.identity == "v2|/usr/bin/python3|x"
    assert protocol.fd_count(request) == protocol.STDIO_FDS + 1
    assert policy.forwarded(request.env) == {"CNI_COMMAND": "ADD", "PATH": "/usr/bin"}


def test_request_keeps_undecodable_bytes_and_empty_values() -> None:
    value = os.fsdecode(b"caf\xe9")  # not UTF-8: surrogate-escaped like os.environ does
    request = protocol.decode_request(
        _request(env={"CNI_ARGS": value, "CNI_PATH": ""}, has_netns_fd=False, argv=())
    )
    assert request.env == {"CNI_ARGS": value, "CNI_PATH": ""}
    assert request.argv == []
    assert protocol.fd_count(request) == protocol.STDIO_FDS


def test_request_rejects_what_cannot_travel() -> None:
    with pytest.raises(protocol.ProtocolError):
        _request(env={"CNI_ARGS": "a\0b"})
    with pytest.raises(protocol.ProtocolError):
        _request(env={"CNI_ARGS": "x" * protocol.MAX_ENV_BYTES})
    with pytest.raises(protocol.ProtocolError):
        _request(argv=["x" * protocol.MAX_ARGV_BYTES])


def _patched(payload: bytes, offset: int, data: bytes) -> bytes:
    return payload[:offset] + data + payload[offset + len(data) :]


@pytest.mark.parametrize(
    ("mangle", "reason"),
    [
        (lambda p: p[:5], "short"),
        (lambda p: _patched(p, 0, b"\x00\x00\x00\x04"), "unknown REQUEST flags"),
        (lambda p: _patched(p, 4, b"\x00\x00\x10\x00"), "bad umask"),
        (lambda p: _patched(p, 14, b"\x00\x01\x00\x00"), "do not add up"),
        (lambda p: p + b"x", "do not add up"),
        (lambda p: p.replace(b"PATH=/bin\0", b"PATH=/bin/"), "unterminated"),
    ],
)
def test_malformed_requests_are_rejected(mangle: Callable[[bytes], bytes], reason: str) -> None:
    payload = _request()
    bad = mangle(payload)
    assert bad != payload
    with pytest.raises(protocol.ProtocolError, match=reason):
        protocol.decode_request(bad)


def test_the_environment_is_read_as_libc_holds_it() -> None:
    with pytest.raises(protocol.ProtocolError):
        protocol.decode_env(b"CNI_A=1")
    assert protocol.decode_env(b"") == {}
    assert protocol.decode_env(b"CNI_A=x=y\0") == {"CNI_A": "x=y"}
    # Entries that are not NAME=value are skipped; the first of a repeated name wins.
    assert protocol.decode_env(b"junk\0=x\0A=1\0A=2\0") == {"A": "1"}


# --- the other frames -------------------------------------------------------------------------


def test_ready_result_and_version() -> None:
    assert protocol.decode_ready(protocol.encode_ready(1.5)) == 1.5
    assert protocol.decode_ready(protocol.encode_ready(policy.MAX_SECONDS)) == 0xFFFFFFFF / 1000
    assert protocol.decode_result(protocol.encode_result(-9)) == -9
    with pytest.raises(protocol.ProtocolError):
        protocol.decode_result(b"\x00\x00")
    with pytest.raises(protocol.ProtocolError):
        protocol.encode_result(2**31)
    assert protocol.request_version(b'{"cniVersion":"0.4.0"}') == "0.4.0"
    for bad in (b"not json", b"[1]", b'{"cniVersion":"1:2"}', b'{"cniVersion":7}'):
        assert protocol.request_version(bad) == ""


# --- socket I/O -------------------------------------------------------------------------------


def test_recv_frame_reassembles_a_frame_sent_byte_by_byte() -> None:
    a, b = socket.socketpair()
    frame = protocol.encode_frame(protocol.EXEC, b"slowly")

    def trickle() -> None:
        for i in range(len(frame)):
            a.send(frame[i : i + 1])
            time.sleep(0.001)

    writer = threading.Thread(target=trickle)
    writer.start()
    try:
        assert protocol.recv_frame(b, time.monotonic() + 10) == (protocol.EXEC, b"slowly")
    finally:
        writer.join()
        a.close()
        b.close()


def test_recv_frame_reports_a_closed_peer_and_a_passed_deadline() -> None:
    a, b = socket.socketpair()
    with a, b:
        a.sendall(protocol.encode_frame(protocol.EXEC, b"cut")[:-1])
        with pytest.raises(TimeoutError):
            protocol.recv_frame(b, time.monotonic() + 0.05)
    a, b = socket.socketpair()
    with a, b:
        a.sendall(b"CB")
        a.close()
        with pytest.raises(protocol.PeerClosed):
            protocol.recv_frame(b, time.monotonic() + 10)
    a, b = socket.socketpair()
    with a, b, pytest.raises(TimeoutError):
        protocol.recv_frame(b, time.monotonic() - 1)


# --- client configuration and naming ----------------------------------------------------------


def test_config_from_env() -> None:
    cfg = client.ClientConfig.from_env(
        {
            policy.MODE_VAR: "connect",
            policy.IDLE_VAR: "7.5",
            policy.READY_TIMEOUT_VAR: "-1",
            policy.LOG_VAR: "/var/log/x",
        }
    )
    assert cfg.mode == policy.MODE_CONNECT
    assert cfg.idle == 7.5
    assert cfg.ready_timeout == policy.DEFAULT_READY_TIMEOUT
    assert cfg.log_path == "/var/log/x"
    assert cfg.identity.startswith(f"v{protocol.PROTOCOL_VERSION}|")
    assert cfg.socket_path in ("", f"{naming.AGENT_DIR}/{naming.name_for(cfg.identity)}")
    for value, mode in [("0", "off"), (" Off ", "off"), ("1", "auto"), ("", "auto"), ("x", "auto")]:
        assert client.ClientConfig.from_env({policy.MODE_VAR: value}).mode == mode
    assert client.ClientConfig.from_env({}).mode == policy.MODE_AUTO
    with pytest.raises(ValueError):
        client.ClientConfig(mode="sometimes")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("", 7.0), ("2.5", 2.5), (" 3 ", 3.0), ("0", 0.0), ("-1", 7.0), ("nan", 7.0),
     ("inf", 7.0), ("1e10", 7.0), ("1_0", 7.0), ("0x10", 7.0), ("1e9", 1e9)],
)  # fmt: skip
def test_env_seconds_bounds(raw: str, expected: float) -> None:
    assert policy.env_seconds({"X": raw}, "X", 7.0) == expected
    assert policy.request_timeout({policy.TIMEOUT_VAR: raw}) == (
        expected if expected != 7.0 else policy.DEFAULT_TIMEOUT
    )


def test_what_the_agent_leaves_to_the_bundle() -> None:
    add = {"CNI_COMMAND": "ADD"}
    assert policy.bundle_reason([], add) == ""
    assert policy.bundle_reason([], {"CNI_COMMAND": "VERSION"}) == ""
    assert policy.bundle_reason(["ls"], add) == "operator command 'ls'"
    assert policy.bundle_reason([], {**add, policy.MODE_VAR: "no"}) == "CNI_BRIDGE_RESIDENT=no"
    assert policy.bundle_reason([], {**add, policy.MODE_VAR: "connect"}) == ""


def test_directives_the_launcher_passes_on() -> None:
    assert policy.plugin_directive({}) == ("", "", "")
    said = {policy.RELAY_VAR: policy.in_process("busy")}
    assert policy.plugin_directive(said) == (policy.IN_PROCESS, "", "busy")
    lost = {policy.RELAY_VAR: "lost:0.4.0:timeout", policy.TIMEOUT_VAR: "3"}
    assert policy.plugin_directive(lost) == (policy.LOST, "0.4.0", "no answer within 3s")
    closed = {policy.RELAY_VAR: "lost::closed"}
    assert policy.plugin_directive(closed) == (
        policy.LOST,
        "",
        "connection lost mid-request: peer closed",
    )
    # Set by hand or garbled: never a reason to run the request again.
    assert policy.plugin_directive({policy.RELAY_VAR: "x"})[0] == policy.LOST


def test_disabled_client_does_nothing(tmp_path: Path) -> None:
    netns = tmp_path / "never-opened"
    env = {policy.MODE_VAR: "0", "CNI_COMMAND": "ADD", "CNI_NETNS": str(netns)}
    assert client.try_resident(env, b"{}") is None


def test_names_depend_on_identity_and_protocol_version() -> None:
    a = naming.name_for("v2|/usr/bin/python3|1:2:3:4")
    assert a == naming.name_for("v2|/usr/bin/python3|1:2:3:4")
    assert a != naming.name_for("v2|/usr/bin/python3|1:2:3:5")
    netns = os.stat("/proc/self/ns/net").st_ino
    assert a == naming.name_for("v2|/usr/bin/python3|1:2:3:4", netns)
    assert a != naming.name_for("v2|/usr/bin/python3|1:2:3:4", netns + 1)  # one per netns
    assert re.fullmatch(rf"v2-[0-9a-f]{{16}}-{netns}\.sock", a)
    assert naming.lock_path("/d/" + a) == "/d/" + a[: -len(".sock")] + ".lock"


def test_the_launcher_header_is_generated_from_this_package() -> None:
    """build/launcher.c restates nothing: its constants come from naming.launcher_header,
    whose socket name is the one naming.name_for gives for the same identity."""
    identity = naming.frozen_identity("00ff")
    header = naming.launcher_header(identity)
    defines = dict(re.findall(r"^#define (\w+) (.+)$", header, re.MULTILINE))
    assert defines["AGENT_IDENTITY"] == '"v2|build:00ff"'
    netns = os.stat("/proc/self/ns/net").st_ino
    prefix = defines["AGENT_SOCKET_PREFIX"].strip('"')
    assert f"{prefix}{netns}.sock" == f"{naming.AGENT_DIR}/{naming.name_for(identity)}"
    assert defines["K_EXEC"] == str(protocol.EXEC)
    assert defines["REQUEST_HEAD"] == str(protocol._REQUEST_HEAD.size)
    assert defines["RELAY_VAR"] == f'"{policy.RELAY_VAR}"'
    source = (ROOT / "build" / "launcher.c").read_text()
    own = set(re.findall(r"^#define (\w+)", source, re.MULTILINE))
    assert own == {"_GNU_SOURCE", "ENGINE_NAME"}  # nothing restated by hand
    assert naming._c_string('a"b\\c\n') == '"a\\042b\\134c\\012"'
    for bad in ("", "XYZ", "00ff\n"):
        with pytest.raises(ValueError):
            naming.frozen_identity(bad)


def test_only_a_directory_of_roots_alone_is_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Anyone who can write where the socket lives could take its name first (callers would
    then all run in-process) or put a socket of their own there: such a directory is not used."""
    root = os.geteuid() == 0
    good = tmp_path / "agent"
    monkeypatch.setattr(naming, "AGENT_DIR", str(good))
    assert naming.agent_dir() == ""  # missing, not made
    assert naming.agent_dir(create=True) == (str(good) if root else "")
    assert good.is_dir() and good.stat().st_mode & 0o777 == 0o700
    assert naming.socket_path_for("x") == (f"{good}/{naming.name_for('x')}" if root else "")
    good.chmod(0o750)
    assert naming.agent_dir(create=True) == ""
    good.chmod(0o700)
    link = tmp_path / "link"
    link.symlink_to(good)
    monkeypatch.setattr(naming, "AGENT_DIR", str(link))
    assert naming.agent_dir(create=True) == ""
    if root:
        os.chown(good, 65534, 65534)
        monkeypatch.setattr(naming, "AGENT_DIR", str(good))
        assert naming.agent_dir(create=True) == ""


def test_identity_changes_when_the_package_changes(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "sub" / "m.py").write_text("x = 1\n")
    before = naming._tree_sig(str(package))
    (package / "__pycache__").mkdir()
    (package / "__pycache__" / "m.cpython-311.pyc").write_bytes(b"ignored")
    assert naming._tree_sig(str(package)) == before
    (package / "sub" / "m.py").write_text("x = 22\n")
    assert naming._tree_sig(str(package)) != before


def test_netns_path_rules(tmp_path: Path) -> None:
    # Only ADD, DEL and CHECK name a namespace: VERSION with podman's "dummy", GC and STATUS
    # are served with CNI_NETNS as it is; containerd's second DEL has an empty one.
    assert admission.netns_path({"CNI_COMMAND": "VERSION", "CNI_NETNS": "dummy"}) == ""
    assert admission.netns_path({"CNI_COMMAND": "GC"}) == ""
    assert admission.netns_path({"CNI_COMMAND": "DEL", "CNI_NETNS": ""}) == ""
    assert admission.netns_path({"CNI_COMMAND": "DEL", "CNI_NETNS": "/x"}) == "/x"
    # Missing, or not a namespace: refused, so the caller runs in-process and reports it.
    regular = tmp_path / "file"
    regular.write_text("")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # O_PATH never blocks on it
    for bad in (tmp_path / "gone", regular, fifo, Path("/proc/self/ns/mnt")):
        with pytest.raises(admission.Refused):
            admission.open_netns_path(str(bad))
    fd = admission.open_netns_path("/proc/self/ns/net")
    assert fd >= 0
    os.close(fd)


def test_try_again_later_uses_the_request_version() -> None:
    code, out = policy.try_again_later("0.4.0", "test")
    assert code == 1
    assert out.startswith(b'{"cniVersion": "0.4.0", "code": 11,')
    _, out = policy.try_again_later("", "test")
    assert b'"cniVersion": "1.1.0", "code": 11' in out


def test_server_argv_runs_this_code() -> None:
    cfg = client.ClientConfig(idle=3.0, handler="x.y:z", identity="i")
    argv = spawn.server_argv(cfg)
    assert argv[:2] == [sys.executable, "-c"]
    assert argv[3] == str(ROOT)
    assert argv[4:] == ["--idle", "3.0", "--identity", "i", "--handler", "x.y:z"]
    env = dict(os.environ)
    try:
        os.environ.update(
            {"CNI_COMMAND": "ADD", "LISTEN_FDS": "2", "CNI_BRIDGE_RESIDENT_IDLE": "9"}
            | {policy.RELAY_VAR: "x", policy.LAUNCHER_VAR: "y"}
        )
        spawned = spawn.server_environ()
    finally:
        os.environ.clear()
        os.environ.update(env)
    assert not {"CNI_COMMAND", "LISTEN_FDS", policy.RELAY_VAR, policy.LAUNCHER_VAR} & set(spawned)
    assert spawned["CNI_BRIDGE_RESIDENT_IDLE"] == "9"


def test_client_import_stays_small() -> None:
    """The exec'd plugin imports the client first: no typing, socket, json, hashlib, subprocess."""
    code = (
        "import sys; before = set(sys.modules); "
        "from cni_bridge.resident.client import try_resident; "
        "print(' '.join(sorted(set(sys.modules) - before)))"
    )
    out = subprocess.run(
        [sys.executable, "-S", "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": str(ROOT)},
    ).stdout.split()
    heavy = {"typing", "socket", "json", "hashlib", "subprocess", "enum", "re", "selectors"}
    assert not heavy & set(out), out
    assert "cni_bridge.resident.client" in out
