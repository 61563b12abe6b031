"""The resident cni-bridge: a warm parent that hands each request to a worker process.

    cni-bridge serve [--idle S] [--pool N] [--max-workers N] [--hard-timeout S]

The parent binds (or inherits, LISTEN_FDS) the abstract socket, imports the engine once, and
then only accepts connections and passes them to workers. Each worker checks its peer, reads the
request, sends READY, waits for GO, runs the engine once and sends the RESULT (see `protocol`).

Why worker processes rather than threads (measured on the 2-core test machine): workers run in
parallel instead of sharing one GIL; a crash (libnftables has segfaulted on bad input) or a hang
ends with one worker, and per-request process state can be set up freely: umask and environment
as the caller had them, stderr captured and sent back. `gc.freeze()` in the parent keeps the
workers' garbage collections from copying the parent's pages (a forked worker doing gc work took
29 ms without it, 7 ms with it). The engine's own guarantees hold unchanged: its flocks are per
open file, its nftables batches are atomic transactions, its rollback runs inside the worker.

Workers are reused. A fresh fork pays for the fork (~2 ms), for ~1500 copy-on-write faults as
CPython touches the parent's objects (a warm ADD took 17 ms in a fresh fork, 10.5 ms in a
process that had run one) and for the engine's per-process set-up (`prepare()`: the libnftables
context). So after a request a worker says it is free on a channel to the parent (a
SOCK_SEQPACKET pair), and the parent hands it the next connection as a descriptor; up to
`--pool` free workers are kept, one is forked at start, and a connection that finds none (a
burst) gets a fresh fork, which may join the pool afterwards. A request must leave the worker
as it found it: if the engine raised, or left a descriptor (an flock held by an open file would
block the next request on itself), a thread or a namespace switch behind, the worker leaves
after answering, as it does after `DEFAULT_MAX_REQUESTS`.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import gc
import importlib
import logging
import math
import os
import select
import signal
import socket
import struct
import sys
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from types import FrameType
from typing import NamedTuple, NoReturn

from cni_bridge.resident import client, protocol

Handler = Callable[[Mapping[str, str], bytes], tuple[int, bytes]]


class Engine(NamedTuple):
    """What `--handler MODULE:ATTR` names: the handler, and the module's optional hooks."""

    handle: Handler
    prepare: Callable[[], None] | None = None  # once per pooled worker, after its fork
    reusable: Callable[[], bool] | None = None  # after each request: may the worker go on?

BACKLOG = 128
IO_TIMEOUT = 5.0  # reading a request and waiting for GO: the client is already waiting
RESULT_TIMEOUT = 30.0  # delivering a result to a client that reads it at once
IDENTITY_CHECK = 30.0  # how often the parent looks for an upgrade on disk
DEFAULT_MAX_WORKERS = 32
# A worker's exit status: the request ran, or it was declined (a refused caller is no activity:
# a resident that can serve nobody, e.g. started from a private mount namespace, still idles out).
WORKER_RAN = 0
WORKER_NOT_RUN = 10
DEFAULT_HARD_TIMEOUT = 300.0
DEFAULT_RETRY_AFTER = 60.0
ORIGINAL_NETNS_VAR = "CNI_BRIDGE_ORIGINAL_NETNS"

CAP_NET_ADMIN = 12
CAP_SYS_ADMIN = 21
REQUIRED_CAPS = (1 << CAP_NET_ADMIN) | (1 << CAP_SYS_ADMIN)
NS_GET_NSTYPE = 0xB703  # ioctl _IO(0xb7, 0x3)
CLONE_NEWNET = 0x40000000

_CRED = struct.Struct("iII")
_ANCBUF = socket.CMSG_SPACE(4 * _CRED.size)  # room to notice (and close) extra descriptors
# The pool's channel between the parent and a worker (SOCK_SEQPACKET, one byte a message).
_TAKE = b"C"  # parent -> worker, with the connection as SCM_RIGHTS
_FREE = b"R"  # worker -> parent: ready for a (first or next) connection
_FREE_AFTER_RUN = b"D"  # the same, after a request that ran (activity for the idle timer)
DEFAULT_POOL = 2
DEFAULT_MAX_REQUESTS = 1000


class Refused(Exception):
    """The request is declined before it runs; the client runs it in-process."""


def log(message: str) -> None:
    try:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
        sys.stderr.write(f"{stamp} cni-bridge resident[{os.getpid()}]: {message}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


# --- checks -----------------------------------------------------------------------------------


def _same_file(a: str, b: str) -> bool:
    sa, sb = os.stat(a), os.stat(b)
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def effective_caps(pid: int | str) -> int:
    with open(f"/proc/{pid}/status", "rb") as status:
        for line in status:
            if line.startswith(b"CapEff:"):
                return int(line.split(b":", 1)[1], 16)
    raise OSError(errno.ENOENT, "no CapEff line")


def check_peer(conn: socket.socket) -> None:
    """Raise Refused unless the caller could do the same work in-process, in the same place.

    The abstract name already confines callers to this network namespace; this checks it
    again from /proc, and that the caller is root, shares our mount namespace (the engine's
    files: IPAM store, state, locks) and user namespace, has the capabilities the work needs,
    and none we lack (a resident started by a weaker caller must not serve a stronger one).
    """
    pid, uid, _gid = _CRED.unpack(
        conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CRED.size)
    )
    if uid != 0:
        raise Refused(f"caller uid {uid} is not root")
    if pid <= 0:
        raise Refused("caller is not visible in this pid namespace")
    try:
        for ns in ("net", "mnt", "user"):
            if not _same_file(f"/proc/{pid}/ns/{ns}", f"/proc/self/ns/{ns}"):
                raise Refused(f"caller pid {pid} is in another {ns} namespace")
        caps = effective_caps(pid)
        own = effective_caps("self")
    except OSError as exc:
        raise Refused(f"cannot inspect caller pid {pid}: {exc}") from exc
    if caps & REQUIRED_CAPS != REQUIRED_CAPS:
        raise Refused(f"caller pid {pid} lacks CAP_NET_ADMIN or CAP_SYS_ADMIN")
    if caps & ~own:
        raise Refused(f"caller pid {pid} has capabilities this resident lacks")


def open_netns(fd: int) -> int:
    """A readable descriptor for the network namespace behind a received (O_PATH) one."""
    try:
        if os.fstat(fd).st_dev != os.stat("/proc/self/ns/net").st_dev:
            raise Refused("the descriptor sent is not a namespace")
        real = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise Refused(f"cannot open the namespace sent: {exc}") from exc
    try:
        kind = fcntl.ioctl(real, NS_GET_NSTYPE)
    except OSError as exc:
        os.close(real)
        raise Refused(f"cannot inspect the namespace sent: {exc}") from exc
    if kind != CLONE_NEWNET:
        os.close(real)
        raise Refused("the namespace sent is not a network namespace")
    return real


def admit(request: protocol.Request, fds: list[int], identity: str) -> int:
    """Validate a decoded request; return the netns descriptor for the engine (-1: none)."""
    if request.identity != identity:
        raise Refused("the caller runs other code than this resident")
    if len(fds) > 1:
        raise Refused("more than one descriptor sent")
    if request.has_netns_fd != bool(fds):
        raise Refused("descriptor flag and descriptors sent disagree")
    takes_netns = request.env.get("CNI_COMMAND", "") in client.NETNS_COMMANDS
    if not fds:
        # A path alone might name another file here than for the caller; it must come as a fd.
        if takes_netns and request.env.get("CNI_NETNS"):
            raise Refused("CNI_NETNS sent without its descriptor")
        return -1
    if not takes_netns:
        raise Refused("a namespace sent for a command that takes none")
    return open_netns(fds[0])


# --- one request ------------------------------------------------------------------------------


def _passed_fds(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    """The descriptors an SCM_RIGHTS message carried (the caller owns and closes them)."""
    fds: list[int] = []
    for level, kind, cdata in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            count = len(cdata) // 4
            fds.extend(struct.unpack(f"{count}i", cdata[: count * 4]))
    return fds


def _recv_with_fds(conn: socket.socket, size: int, deadline: float, fds: list[int]) -> bytes:
    buf = bytearray()
    while len(buf) < size:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("request not received in time")
        conn.settimeout(remaining)
        data, ancdata, flags, _ = conn.recvmsg(
            min(size - len(buf), 1 << 20), _ANCBUF, socket.MSG_CMSG_CLOEXEC
        )
        fds.extend(_passed_fds(ancdata))
        if flags & socket.MSG_CTRUNC:
            raise protocol.ProtocolError("ancillary data truncated")
        if not data:
            raise protocol.PeerClosed("connection closed mid-request")
        buf += data
    return bytes(buf)


def receive_request(conn: socket.socket, deadline: float, fds: list[int]) -> protocol.Request:
    kind, length = protocol.decode_header(_recv_with_fds(conn, protocol.HEADER.size, deadline, fds))
    if kind != protocol.REQUEST:
        raise protocol.ProtocolError(f"expected REQUEST, got {protocol.KIND_NAMES[kind]}")
    return protocol.decode_request(_recv_with_fds(conn, length, deadline, fds))


def request_environ(
    request: protocol.Request, netns_fd: int, base: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The caller's forwarded variables over ours, also installed as this worker's os.environ."""
    own = os.environ if base is None else base
    env = {k: v for k, v in own.items() if not protocol.is_forwarded(k)}
    env.update(request.env)
    if netns_fd >= 0:
        env[ORIGINAL_NETNS_VAR] = request.env.get("CNI_NETNS", "")
        # /proc/<pid>, not /proc/self: the path stays valid in helpers the engine may fork.
        env["CNI_NETNS"] = f"/proc/{os.getpid()}/fd/{netns_fd}"
    os.environ.clear()
    os.environ.update(env)
    return env


# Exceptions that escaped the engine in this process: a worker that saw one serves no more.
HANDLER_FAILURES: list[str] = []


def internal_error(stdin: bytes, detail: str) -> bytes:
    return protocol.error_reply(stdin, 999, "internal error", detail)


def run_handler(
    handler: Handler, env: Mapping[str, str], stdin: bytes, umask: int
) -> tuple[int, bytes, bytes]:
    """Run the engine once with the caller's umask; return (exit code, stdout, stderr)."""
    os.umask(umask)
    root = logging.getLogger()
    handlers_before = list(root.handlers)
    capture = os.memfd_create("cni-bridge-stderr", os.MFD_CLOEXEC)
    sys.stderr.flush()
    saved = os.dup(2)
    os.dup2(capture, 2)
    try:
        try:
            code, out = handler(env, stdin)
            if not isinstance(code, int) or not isinstance(out, bytes | bytearray):
                raise TypeError(f"handler returned {type(code).__name__}, {type(out).__name__}")
            out = bytes(out)
        except BaseException as exc:  # the engine should raise nothing; a worker never dies of it
            traceback.print_exc()
            detail = f"{type(exc).__name__}: {exc}"
            HANDLER_FAILURES.append(detail)
            code, out = 1, internal_error(stdin, detail)
    finally:
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        # Handlers the request configured (a log file named in its environment) end with it:
        # the next request in this worker sets up its own.
        for h in [h for h in root.handlers if h not in handlers_before]:
            root.removeHandler(h)
            h.close()
    size = os.fstat(capture).st_size
    err = os.pread(capture, protocol.MAX_STDERR, max(0, size - protocol.MAX_STDERR))
    os.close(capture)
    return code, out, err


def _refuse(conn: socket.socket, reason: str) -> None:
    log(f"refused: {reason}")
    try:
        data = reason.encode("utf-8", "replace")[: protocol.MAX_REASON]
        protocol.send_all(conn, protocol.encode_frame(protocol.REFUSE, data), time.monotonic() + 1)
    except (OSError, protocol.ProtocolError):
        pass


class CallerWatch:
    """After GO the caller only waits for the result. If it goes away (its timeout, or the
    runtime killed the exec'd plugin), this worker dies at once, exactly as an in-process plugin
    killed mid-request would: the attachment records let the runtime's DEL or GC clean up, and no
    orphaned request keeps changing state that a DEL or a retried ADD now owns.

    `stop()` ends the watch once the engine has returned, so a worker that serves another
    request is not killed when this caller closes its end after reading the result."""

    def __init__(self, conn: socket.socket) -> None:
        import threading

        self._conn = conn
        self._stop_r, self._stop_w = os.pipe2(os.O_CLOEXEC)
        self._thread = threading.Thread(target=self._watch, name="caller-watch", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        poller = select.poll()
        poller.register(self._conn.fileno(), select.POLLIN | select.POLLHUP | select.POLLERR)
        poller.register(self._stop_r, select.POLLIN)
        while True:
            try:
                events = poller.poll()
            except InterruptedError:
                continue
            for fd, ev in events:
                if fd == self._stop_r:
                    return
                if ev & (select.POLLHUP | select.POLLERR):
                    os.kill(os.getpid(), signal.SIGKILL)
                try:
                    data = self._conn.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
                except BlockingIOError:
                    continue
                except OSError:
                    os.kill(os.getpid(), signal.SIGKILL)
                if not data:  # EOF: the caller closed its end
                    os.kill(os.getpid(), signal.SIGKILL)
                return  # the caller sent something after GO: not ours to judge; stop watching

    def stop(self) -> None:
        os.write(self._stop_w, b"x")
        self._thread.join()
        os.close(self._stop_r)
        os.close(self._stop_w)


def serve_connection(
    conn: socket.socket,
    handler: Handler,
    *,
    identity: str,
    base_env: Mapping[str, str] | None = None,
) -> bool:
    """The whole exchange for one accepted connection; True if the handler ran. `base_env`:
    the worker's own environment, under the caller's variables (default: os.environ now)."""
    fds: list[int] = []
    netns_fd = -1
    try:
        try:
            check_peer(conn)
            try:
                request = receive_request(conn, time.monotonic() + IO_TIMEOUT, fds)
            except (OSError, protocol.ProtocolError) as exc:
                raise Refused(f"bad request: {exc}") from exc
            netns_fd = admit(request, fds, identity)
        except Refused as exc:
            _refuse(conn, str(exc))
            return False
        try:
            protocol.send_all(
                conn, protocol.encode_frame(protocol.READY), time.monotonic() + IO_TIMEOUT
            )
            kind, _ = protocol.recv_frame(conn, time.monotonic() + IO_TIMEOUT)
        except (OSError, protocol.ProtocolError) as exc:
            log(f"caller left before GO, not run: {exc}")  # it runs the request itself
            return False
        if kind != protocol.GO:
            log(f"expected GO, got {protocol.KIND_NAMES[kind]}: not run")
            return False
        watch = CallerWatch(conn)
        code, out, err = run_handler(
            handler, request_environ(request, netns_fd, base_env), request.stdin, request.umask
        )
        watch.stop()
        try:
            payload = protocol.encode_result(code, out, err)
        except protocol.ProtocolError as exc:
            payload = protocol.encode_result(1, internal_error(request.stdin, str(exc)), err)
        try:
            frame = protocol.encode_frame(protocol.RESULT, payload)
            protocol.send_all(conn, frame, time.monotonic() + RESULT_TIMEOUT)
        except (OSError, protocol.ProtocolError) as exc:
            log(f"result not delivered: {exc}")
        return True
    finally:
        for fd in [*fds, netns_fd]:
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        conn.close()


# --- the parent -------------------------------------------------------------------------------


class Pooled:
    """The parent's handle on a worker that may serve more than one request: the channel on
    which it is handed connections and on which it says it is free again."""

    __slots__ = ("pid", "sock")

    def __init__(self, pid: int, sock: socket.socket) -> None:
        self.pid = pid
        self.sock = sock


class Server:
    def __init__(
        self,
        listener: socket.socket,
        engine: Engine,
        *,
        identity: str,
        fingerprint: str = "",
        idle: float = client.DEFAULT_IDLE,
        max_workers: int = DEFAULT_MAX_WORKERS,
        hard_timeout: float = DEFAULT_HARD_TIMEOUT,
        pool: int = DEFAULT_POOL,
        max_requests: int = DEFAULT_MAX_REQUESTS,
    ) -> None:
        self.listener = listener
        self.engine = engine
        self.identity = identity  # what callers must claim (the name was derived from it)
        self.fingerprint = fingerprint or client.build_identity()  # the code on disk at start
        self.idle = idle
        self.max_workers = max_workers
        self.hard_timeout = hard_timeout
        self.pool_size = pool
        self.max_requests = max_requests
        self.workers: dict[int, float] = {}  # pid -> start of the request it runs
        self.channels: dict[int, Pooled] = {}  # channel fd -> worker, busy or free
        self.free: list[Pooled] = []  # most recently freed last: the warmest is used first
        self.stopping = False
        self.listening = False
        self.last_activity = time.monotonic()
        self._wake_r = self._wake_w = -1
        self._poller: select.poll | None = None
        self._preloaded: frozenset[str] = frozenset()

    def _request_stop(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True

    def run(self) -> int:
        self.listener.listen(BACKLOG)
        self.listener.setblocking(False)
        self.listening = True
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._request_stop)
        self._preloaded = frozenset(sys.modules)
        gc.freeze()
        poller = self._poller = select.poll()
        poller.register(self.listener, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        next_check = time.monotonic() + IDENTITY_CHECK
        log(f"serving (idle {self.idle:g}s)")
        if self.pool_size > 0:
            self._fork_worker(None)  # the first request should not wait for a fork either
        while True:
            self._reap()
            now = time.monotonic()
            if self.stopping and self.listening:
                log(f"stopping; {len(self.workers)} request(s) still running")
                self._stop_listening(poller)
            if not self.workers:
                if self.stopping:
                    break
                if self.idle > 0 and now - self.last_activity >= self.idle:
                    log("idle, leaving")
                    break
            if now >= next_check:
                next_check = now + IDENTITY_CHECK
                if client.build_identity() != self.fingerprint:
                    log("the code on disk changed, leaving for a fresh resident")
                    self.stopping = True
                    continue
            timeout = next_check - now
            if not self.workers and self.idle > 0:
                timeout = min(timeout, self.idle - (now - self.last_activity))
            for fd, _ in poller.poll(max(1, math.ceil(timeout * 1000))):
                if fd == self._wake_r:
                    self._drain_wakeups()
                elif fd in self.channels:
                    self._channel_event(self.channels[fd])
                elif self.listening and fd == self.listener.fileno():
                    self._accept()
        self._stop_listening(poller)
        return 0

    def _stop_listening(self, poller: select.poll) -> None:
        # Connections still queued are reset: their clients have not had READY, so they fall
        # back in-process, and the next one starts a fresh resident.
        if self.listening:
            poller.unregister(self.listener)
            self.listener.close()
            self.listening = False
        # A free worker reads EOF and leaves; a busy one finishes its request first.
        for worker in list(self.channels.values()):
            self._close_channel(worker)

    def _drain_wakeups(self) -> None:
        try:
            while os.read(self._wake_r, 256):
                pass
        except BlockingIOError:
            pass

    def _reap(self) -> None:
        while self.workers or self.channels:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.workers.clear()
                return
            if pid == 0:
                return
            busy = self.workers.pop(pid, None) is not None
            for worker in [w for w in self.channels.values() if w.pid == pid]:
                self._close_channel(worker)
            if os.WIFSIGNALED(status):
                log(f"worker {pid} killed by signal {os.WTERMSIG(status)}")
            elif os.WEXITSTATUS(status) not in (WORKER_RAN, WORKER_NOT_RUN):
                log(f"worker {pid} exited with status {os.WEXITSTATUS(status)}")
            if busy and (not os.WIFEXITED(status) or os.WEXITSTATUS(status) != WORKER_NOT_RUN):
                self.last_activity = time.monotonic()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and the like: leave the rest queued
                log(f"accept failed: {exc}")
                return
            if len(self.workers) >= self.max_workers:
                _refuse(conn, "busy")
                conn.close()
                continue
            if not self._hand_over(conn):
                self._fork_worker(conn)
            conn.close()

    # --- the pool

    def _fork_worker(self, conn: socket.socket | None) -> None:
        """A new worker for `conn`, or (None) a free one waiting in the pool."""
        channel = parent_end = None
        if self.pool_size > 0:
            try:
                parent_end, channel = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            except OSError as exc:  # out of descriptors: this worker serves one request only
                log(f"no channel for a new worker: {exc}")
                if conn is None:
                    return
        try:
            pid = os.fork()
        except OSError as exc:  # the client sees EOF before READY and runs in-process
            log(f"fork failed: {exc}")
            for sock in (parent_end, channel):
                if sock is not None:
                    sock.close()
            return
        if pid == 0:
            if parent_end is not None:
                parent_end.close()
            self._worker(conn, channel)
        if channel is not None and parent_end is not None:
            channel.close()
            worker = Pooled(pid, parent_end)
            self.channels[parent_end.fileno()] = worker
            assert self._poller is not None
            self._poller.register(parent_end, select.POLLIN)
            if conn is None:
                return  # free once it says so
        self.workers[pid] = time.monotonic()

    def _hand_over(self, conn: socket.socket) -> bool:
        while self.free:
            worker = self.free.pop()
            try:
                worker.sock.sendmsg(
                    [_TAKE],
                    [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", conn.fileno()))],
                )
            except OSError as exc:  # it is gone (reaped as any child); try the next one
                log(f"worker {worker.pid} did not take a request: {exc}")
                self._close_channel(worker)
                continue
            self.workers[worker.pid] = time.monotonic()
            return True
        return False

    def _channel_event(self, worker: Pooled) -> None:
        try:
            data = worker.sock.recv(16, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data not in (_FREE, _FREE_AFTER_RUN):  # it left (or broke the protocol): forget it
            self._close_channel(worker)
            return
        if self.workers.pop(worker.pid, None) is not None and data == _FREE_AFTER_RUN:
            self.last_activity = time.monotonic()
        if self.stopping or len(self.free) >= self.pool_size:
            self._close_channel(worker)  # not needed: it reads EOF and leaves
        else:
            self.free.append(worker)

    def _close_channel(self, worker: Pooled) -> None:
        fd = worker.sock.fileno()
        if fd >= 0 and self.channels.get(fd) is worker:
            del self.channels[fd]
            if self._poller is not None:
                self._poller.unregister(fd)
        if worker in self.free:
            self.free.remove(worker)
        worker.sock.close()

    # --- in a worker

    def _worker(self, conn: socket.socket | None, channel: socket.socket | None) -> NoReturn:
        """Serve `conn`, then (with a channel) further connections the parent hands over while
        this process stays fit to: see `_fit`. Never returns."""
        status = WORKER_NOT_RUN
        try:
            signal.set_wakeup_fd(-1)
            for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                signal.signal(sig, signal.SIG_DFL)
            self.listener.close()
            os.close(self._wake_r)
            os.close(self._wake_w)
            for other in self.channels.values():  # the parent's ends of its other workers
                other.sock.close()
            self.channels.clear()
            self.free.clear()
            base_env = dict(os.environ)
            if channel is not None and self.engine.prepare is not None:
                self.engine.prepare()
            # As the worker will be between requests: the connection in hand is closed by then.
            baseline = _process_state(ignore=conn)
            served = 0
            ran = False
            while True:
                if conn is None:
                    assert channel is not None
                    try:
                        channel.send(_FREE_AFTER_RUN if ran else _FREE)
                    except OSError:  # the parent is leaving, or has closed our channel
                        break
                    conn = _receive_connection(channel)
                    if conn is None:  # the parent closed the channel: not needed any more
                        break
                if self.hard_timeout > 0:  # SIGALRM's default action ends a hung worker
                    signal.setitimer(signal.ITIMER_REAL, self.hard_timeout)
                ran = serve_connection(
                    conn, self.engine.handle, identity=self.identity, base_env=base_env
                )
                signal.setitimer(signal.ITIMER_REAL, 0)
                conn = None
                if ran:
                    status = WORKER_RAN
                    served += 1
                    self._report_late_imports(served)
                if (
                    channel is None
                    or served >= self.max_requests
                    or not _fit(baseline, self.engine.reusable)
                ):
                    break
        except BaseException:
            traceback.print_exc()
            status = 2
        finally:
            os._exit(status)

    def _report_late_imports(self, served: int) -> None:
        if served != 1:
            return
        late = sorted(set(sys.modules) - self._preloaded)
        if late:  # each of these costs a worker's first request: warm() should load them
            log(f"a request imported {len(late)} modules not preloaded: {', '.join(late[:30])}")


def _receive_connection(channel: socket.socket) -> socket.socket | None:
    """The connection the parent hands over, or None when it closed the channel instead."""
    msg, ancdata, _flags, _ = channel.recvmsg(
        16, socket.CMSG_SPACE(4 * 4), socket.MSG_CMSG_CLOEXEC
    )
    fds = _passed_fds(ancdata)
    if msg != _TAKE or len(fds) != 1:
        for fd in fds:
            os.close(fd)
        return None
    return socket.socket(fileno=fds[0])


def _process_state(ignore: socket.socket | None = None) -> tuple[object, ...]:
    """What a request must leave as it found it for the next one to run in this process (the
    working directory is simply reset)."""
    import threading

    os.chdir("/")
    listing = os.open("/proc/self/fd", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:  # the listing's own descriptor is not part of the state
        fds = frozenset(os.listdir(listing)) - {str(listing)}
    finally:
        os.close(listing)
    if ignore is not None:
        fds -= {str(ignore.fileno())}
    return (
        fds,
        threading.active_count(),
        os.stat("/proc/self/ns/net").st_ino,
        os.stat("/proc/self/ns/mnt").st_ino,
    )


def _fit(baseline: tuple[object, ...], reusable: Callable[[], bool] | None) -> bool:
    """Whether this worker may serve another request: the engine raised nothing and left no
    descriptor (a lock held by an open file would block the next request on itself), no
    thread and no namespace switch behind. Otherwise the worker leaves
    and the next request gets a fresh fork, as every request did before workers were reused."""
    if HANDLER_FAILURES or not (reusable is None or reusable()):
        return False
    now = _process_state()
    if now == baseline:
        return True
    fds_before, fds_now = baseline[0], now[0]
    assert isinstance(fds_before, frozenset) and isinstance(fds_now, frozenset)
    detail = (
        [f"descriptors opened {_fd_names(fds_now - fds_before)}"] if fds_now - fds_before else []
    )
    if fds_before - fds_now:
        detail.append(f"descriptors closed {sorted(fds_before - fds_now)}")
    if baseline[1:] != now[1:]:
        detail.append(f"threads/net ns/mount ns {baseline[1:]} -> {now[1:]}")
    log(f"worker leaves after its request: {'; '.join(detail)}")
    return False


def _fd_names(fds: frozenset[str]) -> list[str]:
    out = []
    for fd in sorted(fds):
        try:
            out.append(f"{fd}={os.readlink('/proc/self/fd/' + fd)}")
        except OSError:
            out.append(fd)
    return out


# --- start-up ---------------------------------------------------------------------------------


def inherited_listener() -> socket.socket | None:
    """The socket a starting client (or systemd) passed as fd 3 (LISTEN_FDS convention)."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()) or os.environ.get("LISTEN_FDS") != "1":
        return None
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)
    sock = socket.socket(fileno=3)
    os.set_inheritable(3, False)
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
        sock.close()
        raise OSError(errno.EINVAL, "inherited fd 3 is not a unix stream socket")
    return sock


def load_handler(spec: str) -> Engine:
    """Import `module:attr` and run the module's optional `warm()` (imports, models; no sockets);
    the module's optional `prepare()` and `reusable()` come with the handler."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"handler must be MODULE:ATTR, not {spec!r}")
    module = importlib.import_module(module_name)
    handler = getattr(module, attr)
    if not callable(handler):
        raise TypeError(f"{spec} is not callable")
    warm = getattr(module, "warm", None)
    if callable(warm):
        warm()
    prepare = getattr(module, "prepare", None)
    reusable = getattr(module, "reusable", None)
    return Engine(
        handler, prepare if callable(prepare) else None, reusable if callable(reusable) else None
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="cni-bridge serve", description="Serve CNI requests from a warm resident process."
    )
    default_idle = client.env_seconds(os.environ, client.IDLE_VAR, client.DEFAULT_IDLE)
    parser.add_argument(
        "--idle",
        type=float,
        default=default_idle,
        help="leave after this many idle seconds; 0: never (default %(default)s)",
    )
    parser.add_argument("--handler", default=client.DEFAULT_HANDLER, help=argparse.SUPPRESS)
    parser.add_argument(
        "--max-workers",
        type=int,
        default=DEFAULT_MAX_WORKERS,
        help="requests served at once; more are sent back in-process",
    )
    parser.add_argument(
        "--hard-timeout",
        type=float,
        default=DEFAULT_HARD_TIMEOUT,
        help="kill a worker running longer than this; 0: never",
    )
    parser.add_argument(
        "--pool",
        type=int,
        default=DEFAULT_POOL,
        help="free workers kept for further requests; 0: a fresh fork for every request "
        "(default %(default)s)",
    )
    # A started resident serves the identity its starter computed (and bound the name for).
    parser.add_argument("--identity", default="", help=argparse.SUPPRESS)
    parser.add_argument(
        "--retry-after",
        type=float,
        default=DEFAULT_RETRY_AFTER,
        help="after a failed start, hold the name this long so callers do not "
        "restart it on every call",
    )
    args = parser.parse_args(argv)
    if not (args.idle >= 0 and args.hard_timeout >= 0 and args.max_workers > 0 and args.pool >= 0):
        parser.error("--idle, --hard-timeout and --pool must be >= 0, --max-workers > 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """`cni-bridge serve`: argv holds the arguments after `serve`."""
    args = parse_args(argv)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    os.umask(0o022)
    fingerprint = client.build_identity()
    identity = args.identity or fingerprint
    listener = inherited_listener()
    if listener is None:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(client.name_for(identity))
        except OSError as exc:
            listener.close()
            if exc.errno == errno.EADDRINUSE:
                log("another resident already serves this code here")
                return 0
            raise
    os.chdir("/")
    # Full priority: the caller that started us waits for us to listen (see client.spawn).
    try:
        engine = load_handler(args.handler)
    except Exception:
        log(f"cannot load the engine {args.handler}:\n{traceback.format_exc()}")
        time.sleep(args.retry_after)  # bound, not listening: callers run in-process meanwhile
        listener.close()
        return 1
    server = Server(
        listener,
        engine,
        identity=identity,
        fingerprint=fingerprint,
        idle=args.idle,
        max_workers=args.max_workers,
        hard_timeout=args.hard_timeout,
        pool=args.pool,
    )
    return server.run()
