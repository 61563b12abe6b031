"""Starting an agent on first use: whoever takes the lock beside the socket binds the socket
afresh and starts `cni-bridge serve` with both inherited (systemd's LISTEN_FDS convention), so
a burst of first calls cannot start several. An agent started by systemd
(build/cni-bridge.service) takes them itself (server.claimed_listener).

The caller does not wait for it: it claims the name (the lock taken, the socket bound) before
it runs its own request in-process, and starts the agent as it exits (`start_pending`, called
by cli.run once the answer is written, or at interpreter exit): the agent is forked then and
execs only once the caller has exited. Its start (the imports, the engine's warm-up, its first
workers: more CPU than the request in-process) then does not compete with the caller's answer:
on 2 cores a first ADD took ~1.3x a cold one when the agent started alongside, ~1.0x when it
started after. Forking at the end rather than before the request matters too: a fork shares
every page copy-on-write, so forked first, the caller took a page fault and a copy for every
page it wrote for the rest of the request (~750 faults per ADD), and waited for a middle child
to be scheduled; at the end it copies its page tables (~1 ms) and exits. Until the agent
listens, later calls find its socket bound but not listening, and run in-process too.

The agent inherits the caller's namespaces, runs in its own session with stdio on /dev/null (a
runtime reading the plugin's stdout until EOF is not held up), and leaves after an idle period
when no attachment of ours is left.
"""
import _socket
import os
import sys

from cni_bridge.resident import policy
from cni_bridge.resident.naming import lock_path, package_parent

TYPE_CHECKING = False
if TYPE_CHECKING:
    from cni_bridge.resident.client import ClientConfig

DEFAULT_HANDLER = "cni_bridge.engine:handle"
# The write ends of the pipes a started agent waits on (see _start): open for this process's life.
_EXITED: list[int] = []
# Names claimed by `spawn`, started by `start_pending`: (lock fd, socket, argv, environ, log).
_PENDING: "list[tuple[int, _socket.socket, list[str], dict[str, str], str]]" = []
# Per-request variables a started agent must not inherit from the call that started it.
REQUEST_VARS = frozenset(
    {"CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_ARGS", "CNI_PATH"}
    | {policy.LAUNCHER_VAR, policy.RELAY_VAR}
)

# `python -c` bootstrap for an agent started from a source or site-packages install: load the
# package from the very directory this client came from, whatever sys.path the server gets.
_BOOT = (
    "import sys; sys.path.insert(0, sys.argv.pop(1)); "
    "from cni_bridge.resident.server import main; sys.exit(main(sys.argv[1:]))"
)


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
    """Claim the name for a resident unless one runs or is starting; True if claimed. The
    resident is started by `start_pending`, as this process exits (see the module's docstring).

    The lock beside the socket decides: whoever takes it (non-blocking) binds the socket afresh
    and hands both to the resident it starts, which holds the lock for its whole life. A second
    caller, and every caller while the started resident waits or warms up (its socket is bound,
    not listening, so connections are refused until it is ready), finds the lock taken. Both
    descriptors are close-on-exec: a plugin the request execs meanwhile does not get them.
    """
    if not sys.executable or not cfg.socket_path:
        return False
    held = claim(cfg.socket_path)
    if held is None:
        return False
    lock_fd, sock = held
    if not _PENDING:
        import atexit  # built in: nothing to load

        atexit.register(start_pending)  # cli.run ends with os._exit: it calls start_pending
    _PENDING.append((lock_fd, sock, server_argv(cfg), server_environ(), cfg.log_path))
    return True


def start_pending() -> None:
    """Start the residents this process claimed the names of; each execs once this process
    has exited. Call it last, with the answer written: this process must exit right after
    (forked processes of it wait for that, and one of them is its child until then)."""
    while _PENDING:
        lock_fd, sock, argv, env, log_path = _PENDING.pop()
        try:
            _start(lock_fd, sock, argv, env, log_path)
        finally:  # the resident has its own copies; if none started, the name is free again
            sock.close()
            os.close(lock_fd)


def _start(
    lock_fd: int, sock: _socket.socket, argv: list[str], env: dict[str, str], log_path: str
) -> None:
    try:
        # Its write end stays open in this process only (close-on-exec: a plugin it execs, an
        # aardvark-dns it starts, does not keep it): EOF there means this process has exited.
        exited_r, exited_w = os.pipe2(os.O_CLOEXEC)
    except OSError:
        return
    try:
        pid = os.fork()
    except OSError:
        os.close(exited_r)
        os.close(exited_w)
        return
    if pid == 0:  # pragma: no cover - runs in the child
        try:
            # The caller's stdout at once: it exits right after this fork, and the runtime
            # reading its stdout until EOF must not wait for this child and the grandchild.
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, 1)
            os.close(null)
            os.setsid()  # leave the caller's session and process group
            if os.fork() == 0:  # the grandchild: not a session leader, never owns a terminal
                os.close(exited_w)
                _exec_server(sock.fileno(), lock_fd, exited_r, argv, env, log_path)
        finally:
            os._exit(0)
    # Not waited for: this process exits now, and its init (or subreaper) reaps the child.
    os.close(exited_r)
    _EXITED.append(exited_w)  # held until this process exits


def claim(path: str) -> "tuple[int, _socket.socket] | None":
    """Take the agent's lock for `path` and bind a fresh socket there; None if the lock is
    held (an agent runs or is starting) or the socket cannot be bound. The lock stays held as
    long as its open file does, in whichever process it is passed to."""
    lock_fd = _take_lock(lock_path(path))
    if lock_fd is None:
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


def _take_lock(path: str) -> "int | None":
    """The lock at `path` unless someone holds it. A leaving agent, or a sweep of a killed one's
    files (sweep.py), removes the lock file while holding it: a lock taken on a file no longer
    at `path` is worthless (another caller would create and take a fresh one), so take again."""
    import fcntl

    for _ in range(3):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # an agent runs or is starting
            os.close(fd)
            return None
        try:
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                return fd
        except OSError:
            pass
        os.close(fd)
    return None


def _exec_server(
    sock_fd: int,
    lock_fd: int,
    exited_fd: int,
    argv: list[str],
    env: dict[str, str],
    log_path: str,
) -> None:
    """In the grandchild: stdio on /dev/null, the socket as fd 3 and its lock as fd 4 (systemd's
    LISTEN_FDS with names), no other descriptor; exec once the caller has exited."""
    try:
        import fcntl

        high = fcntl.fcntl(sock_fd, fcntl.F_DUPFD, 10)  # out of the way of 0..4
        high_lock = fcntl.fcntl(lock_fd, fcntl.F_DUPFD, 10)
        high_exited = fcntl.fcntl(exited_fd, fcntl.F_DUPFD, 10)
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
        os.dup2(high_exited, 5)
        os.closerange(6, max(os.sysconf("SC_OPEN_MAX"), 1024))
        os.chdir("/")
        os.read(5, 1)  # EOF: the caller has exited (nobody writes)
        os.close(5)
        env["LISTEN_FDS"] = "2"
        env["LISTEN_FDNAMES"] = "agent:lock"
        env["LISTEN_PID"] = str(os.getpid())
        os.execve(argv[0], argv, env)
    finally:
        os._exit(127)
