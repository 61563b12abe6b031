"""Framing between a caller (the native launcher, or the Python thin client) and the agent.

Standard library only, and only its cheapest modules (`struct`, `time`): every exec'd plugin
imports this. One exchange on one stream connection, in the manner of Mercurial's chg and its
command server: the caller sends what it is (argv, environment, umask, its standard descriptors
and namespaces) and nothing else; every decision is the agent's, in Python (`policy`).

    caller                                   agent
    REQUEST (+ fds 0-2, netns, mntns) ──────▶  checks the peer and the request
                                      ◀──────  READY (request timeout), or EXEC (a directive
                                               for the bundle: nothing ran, stdin is unread)
    GO                                ──────▶  from here the request runs exactly once:
                                      ◀──────  RUNNING (the request's cniVersion, once stdin
                                               is read) ... the engine writes fds 1 and 2 ...
                                      ◀──────  RESULT (exit code)

The caller sends GO only if READY came in time, and never runs the request elsewhere after
sending it: a lost agent then gives "try again later" (`policy.lost`). The agent runs a
request only after reading GO, and reads stdin only after GO, so a caller told EXEC (or one that
gave up waiting for READY) hands the bundle its stdin untouched. So a request runs at most once.

A frame is `b"CB" | kind (1 byte) | payload length (4 bytes, big endian) | payload`; every
length is bounded before anything is allocated. build/launcher.c gets these numbers from the
header `naming.launcher_header` generates at build time; nothing is restated by hand.
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
    from collections.abc import Mapping, Sequence

PROTOCOL_VERSION = 2

REQUEST = 1
READY = 2
GO = 3
RESULT = 4
EXEC = 5
RUNNING = 6
KIND_NAMES = {
    REQUEST: "REQUEST",
    READY: "READY",
    GO: "GO",
    RESULT: "RESULT",
    EXEC: "EXEC",
    RUNNING: "RUNNING",
}

# The REQUEST always carries the caller's stdin, stdout and stderr (SCM_RIGHTS, in that order);
# then the CNI_NETNS it opened (O_PATH), if it could; then its mount namespace, which the worker
# joins, so paths mean what they mean to the caller.
STDIO_FDS = 3
FLAG_NETNS_FD = 0x1
FLAG_MNTNS_FD = 0x2
_FLAGS = FLAG_NETNS_FD | FLAG_MNTNS_FD

MAX_IDENTITY = 4096
MAX_ARGV_BYTES = 64 * 1024
# The caller's whole environment travels (the agent filters it): Linux allows up to ~2 MiB of
# argv and environment together; a caller with more than this runs through the bundle.
MAX_ENV_BYTES = 512 * 1024
MAX_ENV_VARS = 8192
MAX_STDIN = MAX_STDIN_BYTES + 1  # the readers' one byte over the bound (cli._read_stdin)
MAX_STDOUT = 8 * 1024 * 1024
MAX_REASON = 4096
MAX_VERSION = 64

MAGIC = b"CB"
HEADER = struct.Struct(">2sBI")
_REQUEST_HEAD = struct.Struct(">IIHII")  # flags, umask, identity, argv and env lengths
_U32 = struct.Struct(">I")  # READY: request timeout in ms (0: none)
_I32 = struct.Struct(">i")  # RESULT: exit code

MAX_PAYLOAD = {
    REQUEST: _REQUEST_HEAD.size + MAX_IDENTITY + MAX_ARGV_BYTES + MAX_ENV_BYTES,
    READY: _U32.size,
    GO: 0,
    RESULT: _I32.size,
    EXEC: MAX_REASON,
    RUNNING: MAX_VERSION,
}
MAX_REPLY = max(MAX_PAYLOAD[k] for k in (READY, RESULT, EXEC, RUNNING))


class ProtocolError(Exception):
    """The peer sent something that is not a well-formed frame of this protocol."""


class PeerClosed(ProtocolError):
    """The connection ended before a whole frame arrived."""


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


def encode_strings(items: "Sequence[bytes]") -> bytes:
    """Each item NUL-terminated, as argv and environ are in memory."""
    if any(b"\0" in item for item in items):
        raise ProtocolError("a string with a NUL byte cannot travel")
    return b"".join(item + b"\0" for item in items)


def decode_strings(blob: bytes) -> list[bytes]:
    if not blob:
        return []
    if not blob.endswith(b"\0"):
        raise ProtocolError("unterminated string list")
    return blob[:-1].split(b"\0")


def encode_env(env: "Mapping[str, str]") -> bytes:
    return encode_strings([os.fsencode(k) + b"=" + os.fsencode(v) for k, v in env.items()])


def decode_env(blob: bytes) -> dict[str, str]:
    """The environment as the caller's libc had it: entries that are not NAME=value are
    skipped and the first of a repeated name wins, as CPython's os.environ does."""
    items = decode_strings(blob)
    if len(items) > MAX_ENV_VARS:
        raise ProtocolError("too many environment variables")
    env: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition(b"=")
        if sep and key:
            env.setdefault(os.fsdecode(key), os.fsdecode(value))
    return env


class Request:
    """A decoded REQUEST payload; its descriptors travel beside it (SCM_RIGHTS)."""

    __slots__ = ("argv", "env", "has_mntns_fd", "has_netns_fd", "identity", "umask")

    def __init__(
        self,
        env: dict[str, str],
        *,
        argv: "list[str] | None" = None,
        umask: int,
        identity: str,
        has_netns_fd: bool = False,
        has_mntns_fd: bool = False,
    ) -> None:
        self.env = env
        self.argv = argv or []
        self.umask = umask
        self.identity = identity
        self.has_netns_fd = has_netns_fd
        self.has_mntns_fd = has_mntns_fd


def encode_request(
    env: "Mapping[str, str]",
    *,
    umask: int,
    identity: str,
    argv: "Sequence[str]" = (),
    has_netns_fd: bool = False,
    has_mntns_fd: bool = False,
) -> bytes:
    """The REQUEST payload: what the launcher sends, built in Python (the thin client, tests)."""
    env_blob = encode_env(env)
    argv_blob = encode_strings([os.fsencode(a) for a in argv])
    ident = identity.encode("utf-8", "surrogateescape")
    if len(ident) > MAX_IDENTITY or len(argv_blob) > MAX_ARGV_BYTES:
        raise ProtocolError("identity or argv too long")
    if len(env_blob) > MAX_ENV_BYTES:
        raise ProtocolError("environment too large")
    flags = (FLAG_NETNS_FD if has_netns_fd else 0) | (FLAG_MNTNS_FD if has_mntns_fd else 0)
    head = _REQUEST_HEAD.pack(flags, umask & 0o777, len(ident), len(argv_blob), len(env_blob))
    return b"".join((head, ident, argv_blob, env_blob))


def decode_request(payload: bytes) -> Request:
    if len(payload) < _REQUEST_HEAD.size:
        raise ProtocolError("short REQUEST")
    flags, umask, ident_len, argv_len, env_len = _REQUEST_HEAD.unpack_from(payload)
    if flags & ~_FLAGS:
        raise ProtocolError(f"unknown REQUEST flags {flags:#x}")
    if umask & ~0o777:
        raise ProtocolError("bad umask")
    if ident_len > MAX_IDENTITY or argv_len > MAX_ARGV_BYTES or env_len > MAX_ENV_BYTES:
        raise ProtocolError("REQUEST field too large")
    start = _REQUEST_HEAD.size
    if start + ident_len + argv_len + env_len != len(payload):
        raise ProtocolError("REQUEST fields do not add up to the payload")
    ident = payload[start : start + ident_len].decode("utf-8", "surrogateescape")
    start += ident_len
    argv = [os.fsdecode(a) for a in decode_strings(payload[start : start + argv_len])]
    env = decode_env(payload[start + argv_len :])
    return Request(
        env,
        argv=argv,
        umask=umask,
        identity=ident,
        has_netns_fd=bool(flags & FLAG_NETNS_FD),
        has_mntns_fd=bool(flags & FLAG_MNTNS_FD),
    )


def fd_count(request: Request) -> int:
    """How many descriptors a well-formed REQUEST carries."""
    return STDIO_FDS + int(request.has_netns_fd) + int(request.has_mntns_fd)


def encode_ready(timeout: float) -> bytes:
    """READY's payload: how long the caller waits for RESULT after GO (0: forever)."""
    return _U32.pack(min(max(0, round(timeout * 1000)), 0xFFFFFFFF))


def decode_ready(payload: bytes) -> float:
    if len(payload) != _U32.size:
        raise ProtocolError("bad READY")
    return float(_U32.unpack(payload)[0]) / 1000


def encode_result(exit_code: int) -> bytes:
    if not -(2**31) <= exit_code < 2**31:
        raise ProtocolError("exit code out of range")
    return _I32.pack(exit_code)


def decode_result(payload: bytes) -> int:
    if len(payload) != _I32.size:
        raise ProtocolError("bad RESULT")
    code: int = _I32.unpack(payload)[0]
    return code


def request_version(stdin: bytes) -> str:
    """The request's cniVersion if it has a plain one (the few answers the agent path words
    itself use it), else "" (json is imported only here: these paths are rare)."""
    import json

    try:
        conf = json.loads(stdin)
    except (ValueError, RecursionError):  # the caller's stdin: anything may be in it
        return ""
    version = conf.get("cniVersion") if isinstance(conf, dict) else None
    if not isinstance(version, str) or not 0 < len(version) <= MAX_VERSION:
        return ""
    return version if all(c.isascii() and (c.isalnum() or c in ".-+") for c in version) else ""


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


def error_reply(version: str, code: int, msg: str, details: str) -> bytes:
    """A CNI error object in the given cniVersion ("": the newest we speak)."""
    import json

    error = {"cniVersion": version or "1.1.0", "code": code, "msg": msg, "details": details}
    return json.dumps(error).encode() + b"\n"
