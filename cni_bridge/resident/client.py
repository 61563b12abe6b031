"""The thin client in Python: hand one CNI request to the agent and relay its answer.

A built bundle is exec'd through its native launcher (build/launcher.c), which relays requests
to a running agent itself and execs the bundle, landing here, when none answers (this client
then starts one, see `spawn`) or when the agent says so. A source install, or a bundle exec'd
directly, comes here for every request. Both speak the same protocol (`protocol`); the agent
decides (`policy`).

Imported by every exec'd plugin before anything heavy, so it uses only the cheapest standard
modules: `_socket` rather than `socket` (which pulls in `enum` and `selectors`, ~10 ms), no
`typing`, `json`, `hashlib` or `subprocess` on the common path.

    try_resident(env, stdin) -> (exit code, stdout) | None

None means the request did not start in an agent (none is running, it said to run it here, it
did not answer READY in time): the caller runs it in-process. With none running, the client
also starts one (`spawn`) for the calls to come, without waiting for it: this call is answered
in-process, and the agent comes up after. A tuple is the answer to relay;
the engine's stderr has already gone to fd 2. Once the client has sent GO it never returns
None: an agent that dies or hangs mid-request yields a CNI error 11 ("try again later")
instead, so no request ever runs twice.

The request carries the caller's mount namespace as a descriptor: the worker joins it, so every
path (CNI_NETNS, dataDir, CNI_PATH, locks) means what it means to the caller. Its stdin and
stdout travel as memfds (this process has read stdin already and returns stdout), its stderr
as itself.

Environment (read from the `env` given, i.e. the plugin's environment):
    CNI_BRIDGE_RESIDENT                0/off: in-process only; 1/auto (default): use or start
                                       an agent; connect: use one, never start one
    CNI_BRIDGE_RESIDENT_IDLE           seconds a started agent stays idle (300; 0: forever)
    CNI_BRIDGE_RESIDENT_TIMEOUT        seconds to wait for an answer after GO (120)
    CNI_BRIDGE_RESIDENT_READY_TIMEOUT  seconds to wait for READY before running in-process (1)
    CNI_BRIDGE_RESIDENT_LOG            file for a started agent's log (default: none)
"""

import _socket
import os
import struct
import time

from cni_bridge.resident import naming, policy, protocol
from cni_bridge.resident.spawn import DEFAULT_HANDLER, spawn

# Annotations naming what is imported below are strings, without `from __future__ import
# annotations`: on the thin path every import counts (that one is ~0.15 ms).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

_CRED = struct.Struct("iII")  # struct ucred: pid, uid, gid
_FDS = struct.Struct("4i")


class ClientConfig:
    """How the client finds, uses and starts an agent. `from_env` reads the variables above."""

    __slots__ = ("handler", "identity", "idle", "log_path", "mode", "ready_timeout", "socket_path")

    def __init__(
        self,
        *,
        mode: str = policy.MODE_AUTO,
        ready_timeout: float = policy.DEFAULT_READY_TIMEOUT,
        idle: float = policy.DEFAULT_IDLE,
        log_path: str = "",
        handler: str = DEFAULT_HANDLER,
        identity: str | None = None,
        socket_path: str | None = None,
    ) -> None:
        if mode not in (policy.MODE_OFF, policy.MODE_AUTO, policy.MODE_CONNECT):
            raise ValueError(f"unknown resident mode {mode!r}")
        self.mode = mode
        self.ready_timeout = ready_timeout
        self.idle = idle
        self.log_path = log_path
        self.handler = handler
        if mode == policy.MODE_OFF:  # don't pay for the fingerprint when it is not needed
            self.identity = identity or ""
        else:
            self.identity = identity if identity is not None else naming.build_identity()
        # "": no safe place for the socket (see naming.agent_dir): no agent is used or started.
        if socket_path is None:
            create = mode == policy.MODE_AUTO
            socket_path = naming.socket_path_for(self.identity, create=create)
        self.socket_path = socket_path

    @classmethod
    def from_env(cls, env: "Mapping[str, str]") -> "ClientConfig":
        return cls(
            mode=policy.mode_of(env),
            ready_timeout=policy.env_seconds(
                env, policy.READY_TIMEOUT_VAR, policy.DEFAULT_READY_TIMEOUT
            ),
            idle=policy.env_seconds(env, policy.IDLE_VAR, policy.DEFAULT_IDLE),
            log_path=env.get(policy.LOG_VAR, ""),
        )


def try_resident(
    env: "Mapping[str, str]", stdin: bytes, config: "ClientConfig | None" = None
) -> tuple[int, bytes] | None:
    """Run one CNI request in the agent; None if it did not start there (run it in-process)."""
    cfg = config if config is not None else ClientConfig.from_env(env)
    if cfg.mode == policy.MODE_OFF or os.geteuid() != 0 or not cfg.socket_path:
        return None
    try:  # the worker joins it: every path then means what it means here
        mntns_fd = os.open("/proc/self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            sock = connect(cfg)
        except (ConnectionRefusedError, FileNotFoundError):
            # No agent listens (or one is starting): run this call in-process at once, and
            # start one for the calls to come, which comes up once this process has answered
            # and exited (see spawn). Nothing was sent: at most once holds.
            if cfg.mode == policy.MODE_AUTO:
                spawn(cfg)
            return None
        except OSError:  # backlog full, timeout: busy, not absent
            return None
        try:
            return exchange(sock, env, stdin, mntns_fd, cfg)
        finally:
            sock.close()
    finally:
        os.close(mntns_fd)


def connect(cfg: "ClientConfig") -> _socket.socket:
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    try:
        sock.settimeout(cfg.ready_timeout)
        sock.connect(cfg.socket_path)
    except BaseException:
        sock.close()
        raise
    return sock


def exchange(
    sock: _socket.socket,
    env: "Mapping[str, str]",
    stdin: bytes,
    mntns_fd: int,
    cfg: "ClientConfig",
) -> tuple[int, bytes] | None:
    """REQUEST → READY → GO → RESULT on a connected socket; see try_resident for the contract."""
    cred = sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, _CRED.size)
    if _CRED.unpack(cred)[1] != 0:  # only root may answer, wherever the socket came from
        return None
    in_fd = os.memfd_create("cni-bridge-stdin", os.MFD_CLOEXEC)
    out_fd = os.memfd_create("cni-bridge-stdout", os.MFD_CLOEXEC)
    try:
        os.write(in_fd, stdin)
        os.lseek(in_fd, 0, os.SEEK_SET)
        code = _exchange(sock, env, stdin, (in_fd, out_fd, 2, mntns_fd), cfg)
        if isinstance(code, tuple) or code is None:  # try again later, or not run
            return code
        return code, os.pread(out_fd, protocol.MAX_STDOUT, 0)
    except OSError:  # the memfds: nothing was sent
        return None
    finally:
        os.close(in_fd)
        os.close(out_fd)


def _exchange(
    sock: _socket.socket,
    env: "Mapping[str, str]",
    stdin: bytes,
    fds: tuple[int, int, int, int],
    cfg: "ClientConfig",
) -> "int | tuple[int, bytes] | None":
    """The exit code, a try-again-later answer, or None (not run)."""
    try:
        umask = os.umask(0o077)
        os.umask(umask)
        frame = protocol.encode_frame(
            protocol.REQUEST,
            protocol.encode_request(
                policy.forwarded(env),  # the agent filters too; this keeps the frame small
                umask=umask,
                identity=cfg.identity,
                has_mntns_fd=fds[3] >= 0,
            ),
        )
        deadline = time.monotonic() + cfg.ready_timeout
        sock.settimeout(cfg.ready_timeout)
        passed = _FDS.pack(*fds)[: 4 * (4 if fds[3] >= 0 else 3)]
        # The descriptors ride on the first segment; the rest of a large frame follows plainly.
        sent = sock.sendmsg([frame], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, passed)])
        protocol.send_all(sock, frame[sent:], deadline)
        kind, payload = protocol.recv_frame(sock, deadline)
        if kind != protocol.READY:  # EXEC: nothing ran, run it through the bundle (here)
            return None
        timeout = protocol.decode_ready(payload)
        # If GO cannot be sent whole, the server cannot have read it, so nothing runs.
        protocol.send_all(
            sock, protocol.encode_frame(protocol.GO), time.monotonic() + cfg.ready_timeout
        )
    except (OSError, protocol.ProtocolError):
        return None
    # Committed: the request runs (or ran) in the agent; never fall back from here.
    deadline = time.monotonic() + (timeout or policy.MAX_SECONDS)
    version = ""
    try:
        while True:
            kind, payload = protocol.recv_frame(sock, deadline)
            if kind == protocol.RUNNING:
                version = payload.decode("ascii", "replace")
            elif kind == protocol.RESULT:
                return protocol.decode_result(payload)
            else:
                raise protocol.ProtocolError(f"unexpected {protocol.KIND_NAMES[kind]} frame")
    except TimeoutError:
        reason = f"no answer within {timeout:g}s"
    except (OSError, protocol.ProtocolError) as exc:
        reason = f"connection lost mid-request: {exc}"
    return policy.try_again_later(version or protocol.request_version(stdin), reason)
