"""Framing and the pure parts of the resident client. No root, no namespaces."""

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

from cni_bridge.resident import admission, client, protocol

ROOT = Path(__file__).resolve().parents[2]


def _request(**overrides: object) -> bytes:
    args: dict[str, object] = {
        "env": {"CNI_COMMAND": "ADD", "CNI_ARGS": "IgnoreUnknown=1", "PATH": "/bin"},
        "stdin": b'{"cniVersion":"1.0.0"}',
        "umask": 0o022,
        "has_netns_fd": True,
        "identity": "v1|/usr/bin/python3|x",
    }
    args.update(overrides)
    return protocol.encode_request(**args)  # type: ignore[arg-type]


# --- frames -----------------------------------------------------------------------------------


def test_frame_round_trip() -> None:
    frame = protocol.encode_frame(protocol.REFUSE, b"busy")
    assert protocol.decode_header(frame[: protocol.HEADER.size]) == (protocol.REFUSE, 4)
    assert frame[protocol.HEADER.size :] == b"busy"
    assert protocol.encode_frame(protocol.GO) == b"CB\x03\x00\x00\x00\x00"


@pytest.mark.parametrize(
    "header",
    [
        b"XX\x02\x00\x00\x00\x00",  # magic
        b"CB\x09\x00\x00\x00\x00",  # unknown kind
        b"CB\x02\x00\x00\x00\x01",  # READY carries nothing
        b"CB\x01\xff\xff\xff\xff",  # REQUEST beyond its bound
        b"CB\x02",  # short
    ],
)
def test_bad_headers_are_rejected(header: bytes) -> None:
    with pytest.raises(protocol.ProtocolError):
        protocol.decode_header(header)


def test_encode_frame_enforces_bounds() -> None:
    with pytest.raises(protocol.ProtocolError):
        protocol.encode_frame(protocol.READY, b"x")
    with pytest.raises(protocol.ProtocolError):
        protocol.encode_frame(protocol.REFUSE, b"x" * (protocol.MAX_REASON + 1))
    with pytest.raises(protocol.ProtocolError):
        protocol.encode_frame(42)


# --- requests ---------------------------------------------------------------------------------


def test_request_round_trip_forwards_only_cni_and_allow_listed_variables() -> None:
    payload = _request(
        env={
            "CNI_COMMAND": "ADD",
            "CNI_NETNS": "/run/netns/x",
            "PATH": "/usr/bin",
            "HOME": "/root",
            "SECRET_TOKEN": "s3cr3t",
        },
        umask=0o027,
    )
    request = protocol.decode_request(payload)
    assert request.env == {"CNI_COMMAND": "ADD", "CNI_NETNS": "/run/netns/x", "PATH": "/usr/bin"}
    assert request.stdin == b'{"cniVersion":"1.0.0"}'
    assert request.umask == 0o027
    assert request.has_netns_fd is True
    assert request.identity == "v1|/usr/bin/python3|x"
    assert b"s3cr3t" not in payload


def test_request_keeps_undecodable_bytes_and_empty_values() -> None:
    value = os.fsdecode(b"caf\xe9")  # not UTF-8: surrogate-escaped like os.environ does
    request = protocol.decode_request(
        _request(env={"CNI_ARGS": value, "CNI_PATH": ""}, has_netns_fd=False, stdin=b"")
    )
    assert request.env == {"CNI_ARGS": value, "CNI_PATH": ""}
    assert request.has_netns_fd is False
    assert request.stdin == b""


def test_request_rejects_variables_that_cannot_travel() -> None:
    with pytest.raises(protocol.ProtocolError):
        _request(env={"CNI_ARGS": "a\0b"})
    with pytest.raises(protocol.ProtocolError):
        _request(env={f"CNI_X{i}": "v" for i in range(protocol.MAX_ENV_VARS + 1)})
    with pytest.raises(protocol.ProtocolError):
        _request(env={"CNI_ARGS": "x" * protocol.MAX_ENV_BYTES})
    with pytest.raises(protocol.ProtocolError):
        _request(stdin=b"x" * (protocol.MAX_STDIN + 1))


def _patched(payload: bytes, offset: int, data: bytes) -> bytes:
    return payload[:offset] + data + payload[offset + len(data) :]


@pytest.mark.parametrize(
    ("mangle", "reason"),
    [
        (lambda p: p[:5], "short"),
        (lambda p: _patched(p, 0, b"\x00\x00\x00\x04"), "unknown REQUEST flags"),
        (lambda p: _patched(p, 4, b"\x00\x00\x10\x00"), "bad umask"),
        (lambda p: _patched(p, 10, b"\x00\x01\x00\x00"), "overrun"),
        (lambda p: p.replace(b"PATH=/bin\0", b"HOME=/abc\0"), "not forwarded"),
        (lambda p: p.replace(b"PATH=/bin\0", b"CNI_ARGS=\0"), "duplicate"),
        (lambda p: p.replace(b"PATH=/bin\0", b"PATHx/bin\0"), "malformed"),
        (lambda p: p.replace(b"PATH=/bin\0", b"PATH=/bin/"), "unterminated"),
    ],
)
def test_malformed_requests_are_rejected(mangle: Callable[[bytes], bytes], reason: str) -> None:
    payload = _request()
    bad = mangle(payload)
    assert bad != payload
    with pytest.raises(protocol.ProtocolError, match=reason):
        protocol.decode_request(bad)


def test_env_blob_must_be_terminated() -> None:
    with pytest.raises(protocol.ProtocolError):
        protocol.decode_env(b"CNI_A=1")
    assert protocol.decode_env(b"") == {}
    assert protocol.decode_env(b"CNI_A=x=y\0") == {"CNI_A": "x=y"}


# --- results ----------------------------------------------------------------------------------


def test_result_round_trip() -> None:
    payload = protocol.encode_result(1, b'{"code":7}', b"log line\n")
    assert protocol.decode_result(payload) == (1, b'{"code":7}', b"log line\n")
    assert protocol.decode_result(protocol.encode_result(-9, b"", b"")) == (-9, b"", b"")


def test_result_keeps_the_end_of_long_stderr() -> None:
    err = b"a" * protocol.MAX_STDERR + b"the reason\n"
    _, _, got = protocol.decode_result(protocol.encode_result(1, b"", err))
    assert len(got) == protocol.MAX_STDERR
    assert got.endswith(b"the reason\n")


def test_bad_results_are_rejected() -> None:
    with pytest.raises(protocol.ProtocolError):
        protocol.decode_result(b"\x00\x00")
    with pytest.raises(protocol.ProtocolError):
        protocol.decode_result(b"\x00\x00\x00\x00\x00\x00\x00\x09abc")
    with pytest.raises(protocol.ProtocolError):
        protocol.encode_result(0, b"x" * (protocol.MAX_STDOUT + 1), b"")
    with pytest.raises(protocol.ProtocolError):
        protocol.encode_result(2**31, b"", b"")


# --- socket I/O -------------------------------------------------------------------------------


def test_recv_frame_reassembles_a_frame_sent_byte_by_byte() -> None:
    a, b = socket.socketpair()
    frame = protocol.encode_frame(protocol.REFUSE, b"slowly")

    def trickle() -> None:
        for i in range(len(frame)):
            a.send(frame[i : i + 1])
            time.sleep(0.001)

    writer = threading.Thread(target=trickle)
    writer.start()
    try:
        assert protocol.recv_frame(b, time.monotonic() + 10) == (protocol.REFUSE, b"slowly")
    finally:
        writer.join()
        a.close()
        b.close()


def test_recv_frame_reports_a_closed_peer_and_a_passed_deadline() -> None:
    a, b = socket.socketpair()
    with a, b:
        a.sendall(protocol.encode_frame(protocol.REFUSE, b"cut")[:-1])
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
            client.MODE_VAR: "connect",
            client.IDLE_VAR: "7.5",
            client.TIMEOUT_VAR: "nonsense",
            client.READY_TIMEOUT_VAR: "-1",
            client.LOG_VAR: "/var/log/x",
        }
    )
    assert cfg.mode == client.MODE_CONNECT
    assert cfg.idle == 7.5
    assert cfg.request_timeout == client.DEFAULT_TIMEOUT
    assert cfg.ready_timeout == client.DEFAULT_READY_TIMEOUT
    assert cfg.log_path == "/var/log/x"
    assert cfg.identity.startswith(f"v{protocol.PROTOCOL_VERSION}|")
    assert cfg.socket_path in ("", f"{client.AGENT_DIR}/{client.name_for(cfg.identity)}")
    for value, mode in [("0", "off"), ("off", "off"), ("1", "auto"), ("", "auto"), ("x", "auto")]:
        assert client.ClientConfig.from_env({client.MODE_VAR: value}).mode == mode
    assert client.ClientConfig.from_env({}).mode == client.MODE_AUTO
    with pytest.raises(ValueError):
        client.ClientConfig(mode="sometimes")


def test_disabled_client_does_nothing(tmp_path: Path) -> None:
    netns = tmp_path / "never-opened"
    env = {client.MODE_VAR: "0", "CNI_COMMAND": "ADD", "CNI_NETNS": str(netns)}
    assert client.try_resident(env, b"{}") is None


def test_names_depend_on_identity_and_protocol_version() -> None:
    a = client.name_for("v1|/usr/bin/python3|1:2:3:4")
    assert a == client.name_for("v1|/usr/bin/python3|1:2:3:4")
    assert a != client.name_for("v1|/usr/bin/python3|1:2:3:5")
    netns = os.stat("/proc/self/ns/net").st_ino
    assert a == client.name_for("v1|/usr/bin/python3|1:2:3:4", netns)
    assert a != client.name_for("v1|/usr/bin/python3|1:2:3:4", netns + 1)  # one per netns
    assert re.fullmatch(rf"v1-[0-9a-f]{{16}}-{netns}\.sock", a)
    assert client.lock_path("/d/" + a) == "/d/" + a[: -len(".sock")] + ".lock"


def test_only_a_directory_of_roots_alone_is_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Anyone who can write where the socket lives could take its name first (callers would
    then all run in-process) or put a socket of their own there: such a directory is not used."""
    root = os.geteuid() == 0
    good = tmp_path / "agent"
    monkeypatch.setattr(client, "AGENT_DIR", str(good))
    assert client.agent_dir() == ""  # missing, not made
    assert client.agent_dir(create=True) == (str(good) if root else "")
    assert good.is_dir() and good.stat().st_mode & 0o777 == 0o700
    assert client.socket_path_for("x") == (f"{good}/{client.name_for('x')}" if root else "")
    good.chmod(0o750)
    assert client.agent_dir(create=True) == ""
    good.chmod(0o700)
    link = tmp_path / "link"
    link.symlink_to(good)
    monkeypatch.setattr(client, "AGENT_DIR", str(link))
    assert client.agent_dir(create=True) == ""
    if root:
        os.chown(good, 65534, 65534)
        monkeypatch.setattr(client, "AGENT_DIR", str(good))
        assert client.agent_dir(create=True) == ""


def test_identity_changes_when_the_package_changes(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "sub" / "m.py").write_text("x = 1\n")
    before = client._tree_sig(str(package))
    (package / "__pycache__").mkdir()
    (package / "__pycache__" / "m.cpython-311.pyc").write_bytes(b"ignored")
    assert client._tree_sig(str(package)) == before
    (package / "sub" / "m.py").write_text("x = 22\n")
    assert client._tree_sig(str(package)) != before


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
    code, out = client.try_again_later(b'{"cniVersion":"0.4.0"}', "test")
    assert code == 1
    assert out.startswith(b'{"cniVersion": "0.4.0", "code": 11,')
    _, out = client.try_again_later(b"not json", "test")
    assert b'"code": 11' in out


def test_server_argv_runs_this_code() -> None:
    cfg = client.ClientConfig(idle=3.0, handler="x.y:z", identity="i")
    argv = client.server_argv(cfg)
    assert argv[:2] == [sys.executable, "-c"]
    assert argv[3] == str(ROOT)
    assert argv[4:] == ["--idle", "3.0", "--identity", "i", "--handler", "x.y:z"]
    env = dict(os.environ)
    try:
        os.environ.update(
            {"CNI_COMMAND": "ADD", "LISTEN_FDS": "2", "CNI_BRIDGE_RESIDENT_IDLE": "9"}
        )
        spawned = client.server_environ()
    finally:
        os.environ.clear()
        os.environ.update(env)
    assert "CNI_COMMAND" not in spawned and "LISTEN_FDS" not in spawned
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
