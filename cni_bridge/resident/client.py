"""The thin client: hand one CNI request to the resident cni-bridge and relay its answer.

A built bundle is exec'd through its native launcher (build/launcher.c), which performs this
module's happy path (connect, REQUEST, READY, GO, RESULT) without starting Python and execs the
bundle, landing here, for everything else. This module stays the reference: the launcher's
constants are checked against it (tests/unit/test_launcher_constants.py).

Imported by every exec'd plugin before anything heavy, so it uses only the cheapest standard
modules: `_socket` rather than `socket` (which pulls in `enum` and `selectors`, ~10 ms), no
`typing`, `json`, `hashlib` or `subprocess` on the common path.

    try_resident(env, stdin) -> (exit code, stdout) | None

None means the request did not start in a resident (none is running, it refused, it did not
answer READY in time): the caller runs it in-process. A tuple is the answer to relay; stderr
text from the resident has already been written to fd 2. Once the client has sent GO it never
returns None: a resident that dies or hangs mid-request yields a CNI error 11 ("try again
later") instead, so no request ever runs twice (see `protocol`).

The resident listens on a unix socket in /run/cni-bridge (root's alone, see `agent_dir`: no
unprivileged process can squat the name or stand in for the agent), named after the protocol
version, a fingerprint of the code (`identity`: an upgraded plugin never talks to an old
resident) and the network namespace (the host side of the work is done in the agent's). The
server checks the peer further (root, same net and user namespaces, the capabilities the work
needs, from the kernel's peer credentials) and the client checks the server is root. The request carries the
caller's mount namespace as a descriptor: the worker joins it, so every path (CNI_NETNS,
dataDir, CNI_PATH, locks) means what it means to the caller, whatever mount namespace it is in.

If no resident answers, the client takes the lock beside the socket, binds the socket afresh
and starts `cni-bridge serve` with both inherited (systemd's LISTEN_FDS convention): whoever
takes the lock first starts the only resident, so a burst of first calls cannot start several
(see `spawn`). A resident started by systemd (build/cni-bridge.service) takes them itself. The
resident inherits the
caller's namespaces, runs in its own session with stdio on /dev/null (a runtime reading the
plugin's stdout until EOF is not held up), and leaves after an idle period.

Environment (read from the `env` given, i.e. the plugin's environment):
    CNI_BRIDGE_RESIDENT                0/off: in-process only; 1/auto (default): use or start
                                       a resident; connect: use one, never start one
    CNI_BRIDGE_RESIDENT_IDLE           seconds a started resident stays idle (300; 0: forever)
    CNI_BRIDGE_RESIDENT_TIMEOUT        seconds to wait for an answer after GO (120)
    CNI_BRIDGE_RESIDENT_READY_TIMEOUT  seconds to wait for READY before running in-process (1)
    CNI_BRIDGE_RESIDENT_LOG            file for a started resident's log (default: none)
"""

import _socket
import os
import struct
import sys
import time

from cni_bridge.resident import protocol

# Annotations naming what is imported below are strings, without `from __future__ import
# annotations`: on the thin path every import counts (that one is ~0.15 ms).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

MODE_VAR = "CNI_BRIDGE_RESIDENT"
IDLE_VAR = "CNI_BRIDGE_RESIDENT_IDLE"
TIMEOUT_VAR = "CNI_BRIDGE_RESIDENT_TIMEOUT"
READY_TIMEOUT_VAR = "CNI_BRIDGE_RESIDENT_READY_TIMEOUT"
LOG_VAR = "CNI_BRIDGE_RESIDENT_LOG"

MODE_OFF = "off"
MODE_AUTO = "auto"
MODE_CONNECT = "connect"
_MODES = {
    **dict.fromkeys(("0", "off", "no", "false"), MODE_OFF),
    **dict.fromkeys(("", "1", "auto", "on", "yes", "true"), MODE_AUTO),
    MODE_CONNECT: MODE_CONNECT,
}

DEFAULT_IDLE = 300.0
DEFAULT_TIMEOUT = 120.0
DEFAULT_READY_TIMEOUT = 1.0
DEFAULT_HANDLER = "cni_bridge.engine:handle"

# Commands whose CNI_NETNS names a namespace to work in; for the others (VERSION with podman's
# "dummy", GC, STATUS) the variable is forwarded as it is and no descriptor is sent.
NETNS_COMMANDS = frozenset({"ADD", "DEL", "CHECK"})
# Per-request variables a started resident must not inherit from the call that started it.
REQUEST_VARS = frozenset(
    {"CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_ARGS", "CNI_PATH"}
)

_CRED = struct.Struct("iII")  # struct ucred: pid, uid, gid
_FD = struct.Struct("i")
# Root's alone (0700, owned by root; see agent_dir), so no unprivileged process can take the
# agent's name or stand in for it. Not an abstract name: anyone in the netns can bind those.
AGENT_DIR = "/run/cni-bridge"

# `python -c` bootstrap for a resident started from a source or site-packages install: load the
# package from the very directory this client came from, whatever sys.path the server gets.
_BOOT = (
    "import sys; sys.path.insert(0, sys.argv.pop(1)); "
    "from cni_bridge.resident.server import main; sys.exit(main(sys.argv[1:]))"
)


MAX_SECONDS = 1e9  # beyond this a socket timeout overflows; build/launcher.c uses the same bound


def env_seconds(env: "Mapping[str, str]", name: str, default: float) -> float:
    """A decimal number of seconds from 0 to MAX_SECONDS, else the default."""
    raw = env.get(name, "")
    if "_" in raw:  # float() takes 1_000; C's strtod, in the launcher, does not
        return default
    try:
        value = float(raw)
    except ValueError:
        return default
    return value if 0 <= value <= MAX_SECONDS else default


class ClientConfig:
    """How the client finds, uses and starts a resident. `from_env` reads the variables above."""

    __slots__ = (
        "handler",
        "identity",
        "idle",
        "log_path",
        "mode",
        "ready_timeout",
        "request_timeout",
        "socket_path",
    )

    def __init__(
        self,
        *,
        mode: str = MODE_AUTO,
        ready_timeout: float = DEFAULT_READY_TIMEOUT,
        request_timeout: float = DEFAULT_TIMEOUT,
        idle: float = DEFAULT_IDLE,
        log_path: str = "",
        handler: str = DEFAULT_HANDLER,
        identity: str | None = None,
        socket_path: str | None = None,
    ) -> None:
        if mode not in (MODE_OFF, MODE_AUTO, MODE_CONNECT):
            raise ValueError(f"unknown resident mode {mode!r}")
        self.mode = mode
        self.ready_timeout = ready_timeout
        self.request_timeout = request_timeout
        self.idle = idle
        self.log_path = log_path
        self.handler = handler
        if mode == MODE_OFF:  # don't pay for the fingerprint when it is not needed
            self.identity = identity or ""
        else:
            self.identity = identity if identity is not None else build_identity()
        # "": no safe place for the socket (see agent_dir): no resident is used or started.
        if socket_path is None:
            socket_path = socket_path_for(self.identity, create=mode == MODE_AUTO)
        self.socket_path = socket_path

    @classmethod
    def from_env(cls, env: "Mapping[str, str]") -> "ClientConfig":
        mode = _MODES.get(env.get(MODE_VAR, "").strip().lower(), MODE_AUTO)
        return cls(
            mode=mode,
            ready_timeout=env_seconds(env, READY_TIMEOUT_VAR, DEFAULT_READY_TIMEOUT),
            request_timeout=env_seconds(env, TIMEOUT_VAR, DEFAULT_TIMEOUT),
            idle=env_seconds(env, IDLE_VAR, DEFAULT_IDLE),
            log_path=env.get(LOG_VAR, ""),
        )


# --- identity: which code a resident runs ----------------------------------------------------


def package_parent() -> str:
    """The directory holding the `cni_bridge` package this module was loaded from."""
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _file_sig(path: str) -> str:
    try:
        st = os.stat(path)
    except OSError:
        return "-"
    return f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"


def _tree_sig(root: str) -> str:
    """Count, total size and newest mtime of the package's .py files (~0.2 ms for ~50 files)."""
    count = size = newest = 0
    stack = [root]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    if entry.name != "__pycache__":
                        stack.append(entry.path)
                elif entry.name.endswith(".py"):
                    st = entry.stat()
                    count += 1
                    size += st.st_size
                    newest = max(newest, st.st_mtime_ns)
            except OSError:
                continue
    return f"{count}:{size}:{newest}"


def build_identity() -> str:
    """A fingerprint of the interpreter or frozen binary and the package files.

    Any upgrade changes it, so a client never reaches a resident running other code. Frozen
    builds carry their code inside the executable, so its own signature is enough.
    """
    identity = executable_identity(sys.executable)
    if getattr(sys, "frozen", False):
        return identity
    root = os.path.join(package_parent(), "cni_bridge")
    return "|".join([identity, root, _tree_sig(root)])


def executable_identity(executable: str) -> str:
    """The identity of a frozen build at `executable`; the native launcher (build/launcher.c,
    `socket_name`) computes the same string for the bundle beside it."""
    exe = os.path.realpath(executable) if executable else ""
    return "|".join([f"v{protocol.PROTOCOL_VERSION}", exe, _file_sig(exe)])


def name_for(identity: str, netns_ino: int | None = None) -> str:
    """The socket's file name for an identity in this network namespace (an agent does the
    host side of the work in its own): FNV-1a 64 of the identity (no hashlib: it costs ~12 ms)
    and the namespace's inode, which cannot be reused while the agent keeps it alive."""
    digest = 0xCBF29CE484222325
    for byte in identity.encode("utf-8", "surrogateescape"):
        digest = ((digest ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    netns = os.stat("/proc/self/ns/net").st_ino if netns_ino is None else netns_ino
    return f"v{protocol.PROTOCOL_VERSION}-{digest:016x}-{netns}.sock"


def agent_dir(create: bool = False) -> str:
    """AGENT_DIR if it is a directory only root can enter ("" otherwise), made if `create`.

    This is what keeps the socket from being squatted or impersonated: no unprivileged process
    can bind, replace or reach a name in it. A directory that is not root's alone is not used
    at all (callers then run in-process), since someone else could have put a socket there.
    """
    if create:
        try:
            os.mkdir(AGENT_DIR, 0o700)
        except FileExistsError:
            pass
        except OSError:
            return ""
    try:
        st = os.lstat(AGENT_DIR)
    except OSError:
        return ""
    if (st.st_mode & 0o170000) != 0o040000 or st.st_uid != 0 or st.st_mode & 0o077:
        return ""
    return AGENT_DIR


def socket_path_for(identity: str, create: bool = False) -> str:
    """The agent's socket for an identity here, or "" if AGENT_DIR is not safe to use."""
    directory = agent_dir(create)
    return directory and f"{directory}/{name_for(identity)}"


def lock_path(socket_path: str) -> str:
    """The lock an agent holds for its whole life: whoever takes it owns the socket's name."""
    return socket_path[: -len(".sock")] + ".lock"


# --- the exchange -----------------------------------------------------------------------------


def try_resident(
    env: "Mapping[str, str]", stdin: bytes, config: "ClientConfig | None" = None
) -> tuple[int, bytes] | None:
    """Run one CNI request in the resident; None if it did not start there (run it in-process)."""
    cfg = config if config is not None else ClientConfig.from_env(env)
    if cfg.mode == MODE_OFF or os.geteuid() != 0 or not cfg.socket_path:
        return None
    try:  # the worker joins it: every path then means what it means here
        mntns_fd = os.open("/proc/self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            sock = connect(cfg)
        except (ConnectionRefusedError, FileNotFoundError):
            if cfg.mode != MODE_AUTO or not spawn(cfg):
                return None
            # We started it: wait for it to listen (its imports, ~0.3 s) rather than pay the
            # same imports in-process while it competes for the CPU. Nothing was sent, so
            # giving up is still safe.
            maybe = _wait_for_listener(cfg, time.monotonic() + FIRST_WAIT)
            if maybe is None:
                return None
            sock = maybe
        except OSError:  # backlog full, timeout: busy, not absent
            return None
        try:
            return exchange(sock, env, stdin, mntns_fd, cfg)
        finally:
            sock.close()
    finally:
        os.close(mntns_fd)


FIRST_WAIT = 2.0  # seconds the caller that started the resident waits for it to listen


def _wait_for_listener(cfg: "ClientConfig", deadline: float) -> _socket.socket | None:
    while time.monotonic() < deadline:
        try:
            return connect(cfg)
        except (ConnectionRefusedError, FileNotFoundError):
            time.sleep(0.005)
        except OSError:
            return None
    return None


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
    try:
        cred = sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, _CRED.size)
        if _CRED.unpack(cred)[1] != 0:  # only root may answer, wherever the socket came from
            return None
        umask = os.umask(0o077)
        os.umask(umask)
        frame = protocol.encode_frame(
            protocol.REQUEST,
            protocol.encode_request(
                env,
                stdin,
                umask=umask,
                has_netns_fd=False,
                has_mntns_fd=mntns_fd >= 0,
                identity=cfg.identity,
            ),
        )
        deadline = time.monotonic() + cfg.ready_timeout
        _send_request(sock, frame, mntns_fd, deadline)
        kind, _ = protocol.recv_frame(sock, deadline)
        if kind != protocol.READY:  # REFUSE: nothing ran
            return None
        # If GO cannot be sent whole, the server cannot have read it, so nothing runs.
        protocol.send_all(
            sock, protocol.encode_frame(protocol.GO), time.monotonic() + cfg.ready_timeout
        )
    except (OSError, protocol.ProtocolError):
        return None
    # Committed: the request runs (or ran) in the resident; never fall back from here.
    try:
        kind, payload = protocol.recv_frame(sock, time.monotonic() + cfg.request_timeout)
        if kind != protocol.RESULT:
            raise protocol.ProtocolError(f"unexpected {protocol.KIND_NAMES[kind]} frame")
        code, out, err = protocol.decode_result(payload)
    except TimeoutError:
        return try_again_later(stdin, f"no answer within {cfg.request_timeout:g}s")
    except (OSError, protocol.ProtocolError) as exc:
        return try_again_later(stdin, f"connection lost mid-request: {exc}")
    if err:
        _write_all(2, err)
    return code, out


def _send_request(sock: _socket.socket, frame: bytes, fd: int, deadline: float) -> None:
    if fd < 0:
        protocol.send_all(sock, frame, deadline)
        return
    sock.settimeout(max(deadline - time.monotonic(), 0.001))
    # The descriptor rides on the first segment; the rest of a large frame follows plainly.
    sent = sock.sendmsg([frame], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, _FD.pack(fd))])
    protocol.send_all(sock, frame[sent:], deadline)


def try_again_later(stdin: bytes, reason: str) -> tuple[int, bytes]:
    """CNI error 11 for a request that reached the resident but got no answer."""
    msg = "the cni-bridge resident did not complete the request"
    _write_all(2, f"cni-bridge: {msg}: {reason}\n".encode("utf-8", "replace"))
    return 1, protocol.error_reply(stdin, 11, msg, reason)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    try:
        while view:
            view = view[os.write(fd, view) :]
    except OSError:
        pass


# --- starting a resident ----------------------------------------------------------------------


def server_argv(cfg: "ClientConfig") -> list[str]:
    """The same executable and code as this client, running `serve`."""
    if getattr(sys, "frozen", False):
        argv = [sys.executable, "serve"]
    else:
        argv = [sys.executable, "-c", _BOOT, package_parent()]
    argv += ["--idle", repr(cfg.idle), "--identity", cfg.identity]
    if cfg.handler != DEFAULT_HANDLER:
        argv += ["--handler", cfg.handler]
    return argv


def server_environ() -> dict[str, str]:
    return {
        k: v
        for k, v in os.environ.items()
        if k not in REQUEST_VARS and not k.startswith("LISTEN_") and k != "NOTIFY_SOCKET"
    }


def spawn(cfg: "ClientConfig") -> bool:
    """Start a resident unless one runs or is starting; True if one was started.

    The lock beside the socket decides: whoever takes it (non-blocking) binds the socket afresh
    and hands both to the resident it starts, which holds the lock for its whole life. A second
    caller, and every caller while the started resident warms up (its socket is bound, not
    listening, so connections are refused until it is ready), finds the lock taken.
    """
    if not sys.executable or not cfg.socket_path:
        return False
    held = claim(cfg.socket_path)
    if held is None:
        return False
    lock_fd, sock = held
    argv = server_argv(cfg)
    env = server_environ()
    try:
        pid = os.fork()
    except OSError:
        sock.close()
        os.close(lock_fd)
        return False
    if pid == 0:  # pragma: no cover - runs in the child
        try:
            os.setsid()  # leave the caller's session and process group
            if os.fork() == 0:  # the grandchild is reparented, so nobody has to reap it
                _exec_server(sock.fileno(), lock_fd, argv, env, cfg.log_path)
        finally:
            os._exit(0)
    sock.close()
    os.close(lock_fd)
    try:  # noqa: SIM105 - contextlib costs ~3 ms of imports
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass
    return True


def claim(path: str) -> "tuple[int, _socket.socket] | None":
    """Take the agent's lock for `path` and bind a fresh socket there; None if the lock is
    held (an agent runs or is starting) or the socket cannot be bound. The lock stays held as
    long as its open file does, in whichever process it is passed to."""
    import fcntl

    try:
        lock_fd = os.open(lock_path(path), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError:
        return None
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(lock_fd)
        return None
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    try:
        try:  # noqa: SIM105 - left by an agent that died: no one holds its lock any more
            os.unlink(path)
        except FileNotFoundError:
            pass
        sock.bind(path)
    except OSError:
        sock.close()
        os.close(lock_fd)
        return None
    return lock_fd, sock


def _exec_server(
    sock_fd: int, lock_fd: int, argv: list[str], env: dict[str, str], log_path: str
) -> None:
    """In the grandchild: stdio on /dev/null, the socket as fd 3 and its lock as fd 4 (systemd's
    LISTEN_FDS with names), no other descriptor, exec."""
    try:
        import fcntl

        high = fcntl.fcntl(sock_fd, fcntl.F_DUPFD, 10)  # out of the way of 0..4
        high_lock = fcntl.fcntl(lock_fd, fcntl.F_DUPFD, 10)
        null = os.open(os.devnull, os.O_RDWR)
        err = null
        if log_path:
            try:  # noqa: SIM105
                err = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            except OSError:
                pass
        os.dup2(null, 0)
        os.dup2(null, 1)  # never the caller's stdout: the runtime reads it until EOF
        os.dup2(err, 2)
        os.dup2(high, 3)
        os.dup2(high_lock, 4)
        os.closerange(5, max(os.sysconf("SC_OPEN_MAX"), 1024))
        os.chdir("/")
        env["LISTEN_FDS"] = "2"
        env["LISTEN_FDNAMES"] = "agent:lock"
        env["LISTEN_PID"] = str(os.getpid())
        os.execve(argv[0], argv, env)
    finally:
        os._exit(127)
