"""Framing between the thin client and the resident server.

Standard library only, and only its cheapest modules (`struct`, `time`): every exec'd plugin
imports this. One exchange on one stream connection:

    client                         server
    REQUEST (+ netns fd) ───────▶  checks the peer and the request
                         ◀───────  READY            (or REFUSE: nothing ran, caller runs in-process)
    GO                   ───────▶  from here the request runs exactly once
                         ◀───────  RESULT (exit code, stderr, stdout)

The client sends GO only if READY came in time, and never falls back in-process after sending
it; the server runs a request only after reading GO. So a request runs at most once and a
fallback can only follow a request that did not run.

A frame is `b"CB" | kind (1 byte) | payload length (4 bytes, big endian) | payload`; every
length is bounded before anything is allocated.
"""

import os
import struct
import time

from cni_bridge.limits import MAX_STDIN_BYTES

# Annotations naming what is imported below are strings, without `from __future__ import
# annotations`: on the thin path every import counts (that one is ~0.15 ms).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from _socket import socket
    from collections.abc import Mapping

PROTOCOL_VERSION = 1

REQUEST = 1
READY = 2
GO = 3
RESULT = 4
REFUSE = 5
KIND_NAMES = {REQUEST: "REQUEST", READY: "READY", GO: "GO", RESULT: "RESULT", REFUSE: "REFUSE"}

FLAG_NETNS_FD = 0x1  # the REQUEST carries the container netns as an SCM_RIGHTS descriptor
# ... and the caller's mount namespace, after the netns if both: the worker joins it, so paths
# mean what they mean to the caller (and opens CNI_NETNS itself there when no netns fd came).
FLAG_MNTNS_FD = 0x2
_FLAGS = FLAG_NETNS_FD | FLAG_MNTNS_FD

MAX_IDENTITY = 4096
MAX_ENV_BYTES = 64 * 1024
MAX_ENV_VARS = 256
MAX_STDIN = MAX_STDIN_BYTES + 1  # the readers' one byte over the bound (cli._read_stdin)
MAX_STDOUT = 8 * 1024 * 1024
MAX_STDERR = 64 * 1024
MAX_REASON = 4096

MAGIC = b"CB"
HEADER = struct.Struct(">2sBI")
_REQUEST_HEAD = struct.Struct(">IIHI")  # flags, umask, identity length, env length
_RESULT_HEAD = struct.Struct(">iI")  # exit code, stderr length

MAX_PAYLOAD = {
    REQUEST: _REQUEST_HEAD.size + MAX_IDENTITY + MAX_ENV_BYTES + MAX_STDIN,
    READY: 0,
    GO: 0,
    RESULT: _RESULT_HEAD.size + MAX_STDERR + MAX_STDOUT,
    REFUSE: MAX_REASON,
}

# Variables the client forwards besides CNI_*: what a library might consult in-process.
EXTRA_FORWARDED = frozenset({"PATH", "LANG", "LC_ALL", "TZ"})


class ProtocolError(Exception):
    """The peer sent something that is not a well-formed frame of this protocol."""


class PeerClosed(ProtocolError):
    """The connection ended before a whole frame arrived."""


def is_forwarded(name: str) -> bool:
    """Whether an environment variable travels with a request (and is replaced in the worker)."""
    return name.startswith("CNI_") or name in EXTRA_FORWARDED


def encode_frame(kind: int, payload: bytes = b"") -> bytes:
    if kind not in MAX_PAYLOAD:
        raise ProtocolError(f"unknown frame kind {kind}")
    if len(payload) > MAX_PAYLOAD[kind]:
        raise ProtocolError(f"{KIND_NAMES[kind]} payload of {len(payload)} bytes is too large")
    return HEADER.pack(MAGIC, kind, len(payload)) + payload


def decode_header(header: bytes) -> tuple[int, int]:
    """Return (kind, payload length) of a frame header, rejecting anything out of bounds."""
    if len(header) != HEADER.size:
        raise ProtocolError("short frame header")
    magic, kind, length = HEADER.unpack(header)
    if magic != MAGIC:
        raise ProtocolError("bad frame magic")
    limit = MAX_PAYLOAD.get(kind)
    if limit is None:
        raise ProtocolError(f"unknown frame kind {kind}")
    if length > limit:
        raise ProtocolError(f"{KIND_NAMES[kind]} payload of {length} bytes is too large")
    return kind, length


def encode_env(env: "Mapping[str, str]") -> bytes:
    """`NAME=value\\0` per variable, in the process environment's own byte encoding."""
    parts = []
    for name, value in env.items():
        key = os.fsencode(name)
        data = os.fsencode(value)
        if not key or b"=" in key or b"\0" in key or b"\0" in data:
            raise ProtocolError(f"environment variable {name!r} cannot be forwarded")
        parts.append(key + b"=" + data + b"\0")
    if len(parts) > MAX_ENV_VARS:
        raise ProtocolError("too many environment variables")
    blob = b"".join(parts)
    if len(blob) > MAX_ENV_BYTES:
        raise ProtocolError("environment too large")
    return blob


def decode_env(blob: bytes) -> dict[str, str]:
    if not blob:
        return {}
    if not blob.endswith(b"\0"):
        raise ProtocolError("unterminated environment")
    items = blob[:-1].split(b"\0")
    if len(items) > MAX_ENV_VARS:
        raise ProtocolError("too many environment variables")
    env: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition(b"=")
        if not sep or not key:
            raise ProtocolError("malformed environment entry")
        name = os.fsdecode(key)
        if name in env:
            raise ProtocolError(f"duplicate environment variable {name!r}")
        env[name] = os.fsdecode(value)
    return env


class Request:
    """A decoded REQUEST payload. The netns descriptor itself travels beside it (SCM_RIGHTS)."""

    __slots__ = ("env", "has_mntns_fd", "has_netns_fd", "identity", "stdin", "umask")

    def __init__(
        self,
        env: dict[str, str],
        stdin: bytes,
        *,
        umask: int,
        has_netns_fd: bool,
        identity: str,
        has_mntns_fd: bool = False,
    ) -> None:
        self.env = env
        self.stdin = stdin
        self.umask = umask
        self.has_netns_fd = has_netns_fd
        self.has_mntns_fd = has_mntns_fd
        self.identity = identity


def encode_request(
    env: "Mapping[str, str]",
    stdin: bytes,
    *,
    umask: int,
    has_netns_fd: bool,
    identity: str,
    has_mntns_fd: bool = False,
) -> bytes:
    """The REQUEST payload; only forwarded variables (`is_forwarded`) are sent."""
    env_blob = encode_env({k: v for k, v in env.items() if is_forwarded(k)})
    ident = identity.encode("utf-8", "surrogateescape")
    if len(ident) > MAX_IDENTITY:
        raise ProtocolError("identity too long")
    if len(stdin) > MAX_STDIN:
        raise ProtocolError(f"stdin of {len(stdin)} bytes is too large")
    flags = (FLAG_NETNS_FD if has_netns_fd else 0) | (FLAG_MNTNS_FD if has_mntns_fd else 0)
    head = _REQUEST_HEAD.pack(flags, umask & 0o777, len(ident), len(env_blob))
    return b"".join((head, ident, env_blob, stdin))


def decode_request(payload: bytes) -> Request:
    if len(payload) < _REQUEST_HEAD.size:
        raise ProtocolError("short REQUEST")
    flags, umask, ident_len, env_len = _REQUEST_HEAD.unpack_from(payload)
    if flags & ~_FLAGS:
        raise ProtocolError(f"unknown REQUEST flags {flags:#x}")
    if umask & ~0o777:
        raise ProtocolError("bad umask")
    if ident_len > MAX_IDENTITY or env_len > MAX_ENV_BYTES:
        raise ProtocolError("REQUEST field too large")
    start = _REQUEST_HEAD.size
    if start + ident_len + env_len > len(payload):
        raise ProtocolError("REQUEST fields overrun the payload")
    ident = payload[start : start + ident_len].decode("utf-8", "surrogateescape")
    env = decode_env(payload[start + ident_len : start + ident_len + env_len])
    stdin = payload[start + ident_len + env_len :]
    if len(stdin) > MAX_STDIN:
        raise ProtocolError("stdin too large")
    if any(not is_forwarded(name) for name in env):
        raise ProtocolError("REQUEST carries a variable that is not forwarded")
    return Request(
        env,
        stdin,
        umask=umask,
        has_netns_fd=bool(flags & FLAG_NETNS_FD),
        has_mntns_fd=bool(flags & FLAG_MNTNS_FD),
        identity=ident,
    )


def encode_result(exit_code: int, stdout: bytes, stderr: bytes) -> bytes:
    """The RESULT payload. Over-long stderr keeps its end (the last lines explain a failure)."""
    if not -(2**31) <= exit_code < 2**31:
        raise ProtocolError("exit code out of range")
    if len(stdout) > MAX_STDOUT:
        raise ProtocolError(f"stdout of {len(stdout)} bytes is too large")
    if len(stderr) > MAX_STDERR:
        stderr = stderr[-MAX_STDERR:]
    return _RESULT_HEAD.pack(exit_code, len(stderr)) + stderr + stdout


def decode_result(payload: bytes) -> tuple[int, bytes, bytes]:
    """Return (exit code, stdout, stderr)."""
    if len(payload) < _RESULT_HEAD.size:
        raise ProtocolError("short RESULT")
    exit_code, err_len = _RESULT_HEAD.unpack_from(payload)
    start = _RESULT_HEAD.size
    if err_len > MAX_STDERR or start + err_len > len(payload):
        raise ProtocolError("RESULT stderr overruns the payload")
    stderr = payload[start : start + err_len]
    stdout = payload[start + err_len :]
    if len(stdout) > MAX_STDOUT:
        raise ProtocolError("stdout too large")
    return exit_code, stdout, stderr


# --- blocking socket I/O with an absolute deadline (time.monotonic) ---------------------------


def _arm(sock: "socket", deadline: float) -> None:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError("deadline passed")
    sock.settimeout(remaining)


def send_all(sock: "socket", data: bytes, deadline: float) -> None:
    view = memoryview(data)
    while view:
        _arm(sock, deadline)
        sent = sock.send(view)
        view = view[sent:]


def recv_exact(sock: "socket", size: int, deadline: float) -> bytes:
    buf = bytearray(size)
    view = memoryview(buf)
    got = 0
    while got < size:
        _arm(sock, deadline)
        n = sock.recv_into(view[got:])
        if n == 0:
            raise PeerClosed(f"connection closed after {got} of {size} bytes")
        got += n
    return bytes(buf)


def recv_frame(sock: "socket", deadline: float) -> tuple[int, bytes]:
    """Read one whole frame; raises PeerClosed, ProtocolError, TimeoutError or OSError."""
    kind, length = decode_header(recv_exact(sock, HEADER.size, deadline))
    payload = recv_exact(sock, length, deadline) if length else b""
    return kind, payload


def error_reply(stdin: bytes, code: int, msg: str, details: str) -> bytes:
    """A CNI error object in the request's own cniVersion, for the few answers the resident
    path writes itself (json is imported only here: these paths are rare)."""
    import json

    version = "1.1.0"
    try:
        conf = json.loads(stdin)
        if isinstance(conf, dict) and isinstance(conf.get("cniVersion"), str):
            version = conf["cniVersion"]
    except (ValueError, RecursionError):  # the caller's stdin: anything may be in it
        pass
    error = {"cniVersion": version, "code": code, "msg": msg, "details": details}
    return json.dumps(error).encode() + b"\n"
