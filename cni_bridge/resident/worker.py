"""A worker: one process that serves requests handed to it, one at a time, then leaves.

Each request is the whole exchange of `protocol` on one connection: what the caller asked for
(`policy.bundle_reason`), admission (see `admission`), READY, GO, then the caller's stdin read,
the engine run once writing the caller's own stdout and stderr, RESULT with the exit code. A
pooled worker then tells the parent it is free on its channel (a SOCK_SEQPACKET pair) and gets
the next connection as a descriptor, for as long as it stays fit: a request must leave the
process as it found it (see `_fit`), and one served in a caller's mount namespace must leave
nothing of that namespace behind once the worker is back in its own (see `mounts`).
What runs the request inside the process is `running`'s (`log` and `ORIGINAL_NETNS_VAR` are
re-exported here for the agent's other modules).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable, Mapping
from typing import NoReturn

from cni_bridge.resident import policy, protocol
from cni_bridge.resident.admission import (
    Refused,
    admit,
    check_peer,
    netns_path,
    open_netns_path,
    passed_fds,
    receive_request,
)
from cni_bridge.resident.mounts import join_mounts, keep_home, return_home, settle, threads
from cni_bridge.resident.running import (
    HANDLER_FAILURES,
    CallerWatch,
    Handler,
    internal_error,
    read_stdin,
    request_environ,
    run_handler,
    write_all,
)
from cni_bridge.resident.running import ORIGINAL_NETNS_VAR as ORIGINAL_NETNS_VAR
from cni_bridge.resident.running import log as log
from cni_bridge.tuples import NamedTuple


class Engine(NamedTuple):
    """What `--handler MODULE:ATTR` names: the handler, and the module's optional hooks."""

    handle: Handler
    prepare: Callable[[], None] | None = None  # once per pooled worker, after its fork
    reusable: Callable[[], bool] | None = None  # after each request: may the worker go on?
    # Once per spare, after prepare: a dry run (light=True: only its pure, cheapest part).
    # Called without the argument when it is False (a module's older `rehearse()`).
    rehearse: Callable[..., None] | None = None


IO_TIMEOUT = 5.0  # reading a request and waiting for GO: the client is already waiting
RESULT_TIMEOUT = 30.0  # delivering a result to a client that reads it at once
# A worker's exit status: the request ran, or it was declined (a refused caller is no activity:
# a resident that can serve nobody, e.g. started from a private mount namespace, still idles out).
WORKER_RAN = 0
WORKER_NOT_RUN = 10
# The pool's channel between the parent and a worker (SOCK_SEQPACKET, one byte a message).
TAKE = b"C"  # parent -> worker, with the connection as SCM_RIGHTS
FREE = b"R"  # worker -> parent: ready for a (first or next) connection
FREE_AFTER_RUN = b"D"  # the same, after a request that ran (activity for the idle timer)


def refuse(conn: socket.socket, reason: str, *, quiet: bool = False) -> None:
    """Tell the caller to run the request through the bundle (nothing ran; stdin is unread)."""
    if not quiet:
        log(f"refused: {reason}")
    try:
        data = policy.in_process(reason).encode("utf-8", "replace")[: protocol.MAX_REASON]
        protocol.send_all(conn, protocol.encode_frame(protocol.EXEC, data), time.monotonic() + 1)
    except (OSError, protocol.ProtocolError):
        pass


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
    netns_fd = mntns_fd = -1
    try:
        try:
            pid = check_peer(conn)
            try:
                request = receive_request(conn, time.monotonic() + IO_TIMEOUT, fds)
            except (OSError, protocol.ProtocolError) as exc:
                raise Refused(f"bad request: {exc}") from exc
            reason = policy.bundle_reason(request.argv, request.env)
            if reason:  # what the caller asked for is the bundle's, not a refusal
                refuse(conn, reason, quiet=True)
                return False
            stdio, netns_fd, mntns_fd = admit(request, fds, identity, pid)
            if mntns_fd >= 0:
                join_mounts(mntns_fd)
                path = netns_path(request.env)
                if netns_fd < 0 and path:
                    netns_fd = open_netns_path(path)
        except Refused as exc:
            refuse(conn, str(exc))
            return False
        try:
            ready = protocol.encode_ready(policy.request_timeout(request.env))
            protocol.send_all(
                conn, protocol.encode_frame(protocol.READY, ready), time.monotonic() + IO_TIMEOUT
            )
            kind, _ = protocol.recv_frame(conn, time.monotonic() + IO_TIMEOUT)
        except (OSError, protocol.ProtocolError) as exc:
            log(f"caller left before GO, not run: {exc}")  # it runs the request itself
            return False
        if kind != protocol.GO:
            log(f"expected GO, got {protocol.KIND_NAMES[kind]}: not run")
            return False
        watch = CallerWatch(conn)
        stdin = read_stdin(stdio[0])
        running = protocol.request_version(stdin).encode()
        with contextlib.suppress(OSError, protocol.ProtocolError):  # the watch sees a lost caller
            protocol.send_all(
                conn, protocol.encode_frame(protocol.RUNNING, running), time.monotonic() + IO_TIMEOUT
            )
        env = request_environ(request, netns_fd, base_env)
        code, out = run_handler(handler, env, stdin, request.umask, stdio[2])
        watch.stop()
        if len(out) > protocol.MAX_STDOUT:
            out = internal_error(stdin, f"an answer of {len(out)} bytes is too large")
        write_all(stdio[1], out)
        # The caller's stdout is closed here before the exit code goes: a runtime reading it
        # to EOF is not held up by this worker.
        _close_all(fds)
        try:
            frame = protocol.encode_frame(protocol.RESULT, protocol.encode_result(code))
            protocol.send_all(conn, frame, time.monotonic() + RESULT_TIMEOUT)
        except (OSError, protocol.ProtocolError) as exc:
            log(f"result not delivered: {exc}")
        return True
    finally:
        _close_all([*fds, netns_fd, mntns_fd])
        conn.close()


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)
    fds[:] = []


def run(
    conn: socket.socket | None,
    channel: socket.socket | None,
    engine: Engine,
    *,
    identity: str,
    hard_timeout: float,
    max_requests: int,
    preloaded: frozenset[str],
    forget_parent: Callable[[], None],
    light: bool = False,
) -> NoReturn:
    """In a fresh fork: serve `conn`, then (with a channel) further connections the parent
    hands over while this process stays fit to: see `_fit`. `forget_parent` closes what the
    fork inherited of the parent's own state. A spare (no `conn`) rehearses, only lightly if
    `light`.
    Never returns."""
    status = WORKER_NOT_RUN
    try:
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        forget_parent()
        base_env = dict(os.environ)
        if channel is not None:
            keep_home()  # to come back from a caller's mount namespace
            if engine.prepare is not None:
                engine.prepare()
            # A spare, forked ahead of any request, touches what a request will (its pages
            # copied now, not while a caller waits); one forked for a waiting caller does not.
            if conn is None and engine.rehearse is not None:
                started = time.monotonic()
                rehearse(engine.rehearse, light)
                how = "lightly " if light else ""
                log(f"spare worker {how}rehearsed in {1000 * (time.monotonic() - started):.1f} ms")
        # As the worker will be between requests: the connection in hand is closed by then.
        baseline = _process_state(ignore=conn)
        served = 0
        ran = False
        while True:
            if conn is None:
                assert channel is not None
                settle()  # what a join into a caller's mount namespace starts from
                try:
                    channel.send(FREE_AFTER_RUN if ran else FREE)
                except OSError:  # the parent is leaving, or has closed our channel
                    break
                conn = _receive_connection(channel)
                if conn is None:  # the parent closed the channel: not needed any more
                    break
            if hard_timeout > 0:  # SIGALRM's default action ends a hung worker
                signal.setitimer(signal.ITIMER_REAL, hard_timeout)
            ran = serve_connection(conn, engine.handle, identity=identity, base_env=base_env)
            signal.setitimer(signal.ITIMER_REAL, 0)
            conn = None
            if ran:
                status = WORKER_RAN
                served += 1
                if served == 1:
                    _report_late_imports(preloaded)
            if channel is None or served >= max_requests:
                break
            unfit = return_home()  # from a caller's mount namespace, if it joined one
            if unfit:
                log(f"worker leaves after its request: {unfit}")
                break
            if not _fit(baseline, engine.reusable):
                break
    except BaseException:
        traceback.print_exc()
        status = 2
    finally:
        os._exit(status)


def rehearse(hook: Callable[..., None], light: bool) -> None:
    """A handler module's `rehearse`: with no argument for a full rehearsal, so a module whose
    `rehearse()` predates `light` still works."""
    if light:
        hook(light)
    else:
        hook()


def _report_late_imports(preloaded: frozenset[str]) -> None:
    late = sorted(set(sys.modules) - preloaded)
    if late:  # each of these costs a worker's first request: warm() should load them
        log(f"a request imported {len(late)} modules not preloaded: {', '.join(late[:30])}")


def _receive_connection(channel: socket.socket) -> socket.socket | None:
    """The connection the parent hands over, or None when it closed the channel instead."""
    msg, ancdata, _flags, _ = channel.recvmsg(
        16, socket.CMSG_SPACE(4 * 4), socket.MSG_CMSG_CLOEXEC
    )
    fds = passed_fds(ancdata)
    if msg != TAKE or len(fds) != 1:
        for fd in fds:
            os.close(fd)
        return None
    return socket.socket(fileno=fds[0])


def _process_state(ignore: socket.socket | None = None) -> tuple[object, ...]:
    """What a request must leave as it found it for the next one to run in this process (the
    working directory is simply reset)."""

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
        threads(),
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


