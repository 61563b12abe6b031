"""Running one request in a worker process: in the caller's mount namespace, with its
environment and umask, its stdin read and its stderr as ours, and a watch that ends the worker
if the caller goes away. `worker` drives the exchange around this.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping

from cni_bridge.errors import INTERNAL
from cni_bridge.resident import policy, protocol

Handler = Callable[[Mapping[str, str], bytes], tuple[int, bytes]]
ORIGINAL_NETNS_VAR = "CNI_BRIDGE_ORIGINAL_NETNS"


def log(message: str) -> None:
    try:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
        sys.stderr.write(f"{stamp} cni-bridge resident[{os.getpid()}]: {message}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def request_environ(
    request: protocol.Request, netns_fd: int, base: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The caller's forwarded variables over ours, also installed as this worker's os.environ."""
    own = os.environ if base is None else base
    env = {k: v for k, v in own.items() if not policy.is_forwarded(k)}
    env.update(policy.forwarded(request.env))
    if netns_fd >= 0:
        # /proc/<pid>, not /proc/self: the path stays valid in helpers the engine may fork.
        # In a caller's mount namespace /proc may be another pid namespace's: then the path
        # the caller gave is used, as in-process.
        pinned = f"/proc/{os.getpid()}/fd/{netns_fd}"
        try:
            st, real = os.stat(pinned), os.fstat(netns_fd)
            visible = (st.st_dev, st.st_ino) == (real.st_dev, real.st_ino)
        except OSError:
            visible = False
        if visible:
            env[ORIGINAL_NETNS_VAR] = request.env.get("CNI_NETNS", "")
            env["CNI_NETNS"] = pinned
    os.environ.clear()
    os.environ.update(env)
    return env


# Exceptions that escaped the engine in this process: a worker that saw one serves no more.
HANDLER_FAILURES: list[str] = []


def internal_error(stdin: bytes, detail: str) -> bytes:
    return protocol.error_reply(protocol.request_version(stdin), INTERNAL, "internal error", detail)


def run_handler(
    handler: Handler, env: Mapping[str, str], stdin: bytes, umask: int, stderr_fd: int
) -> tuple[int, bytes]:
    """Run the engine once with the caller's umask, its stderr on the caller's; return
    (exit code, stdout)."""
    os.umask(umask)
    root = logging.getLogger()
    handlers_before = list(root.handlers)
    sys.stderr.flush()
    saved = os.dup(2)
    os.dup2(stderr_fd, 2)
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
    return code, out


def _wait(fd: int, events: int) -> None:
    poller = select.poll()
    poller.register(fd, events)
    poller.poll()


def read_stdin(fd: int) -> bytes:
    """The caller's stdin up to the readers' one byte over the bound (cli._read_stdin), from a
    descriptor the caller may have handed over in non-blocking mode."""
    chunks: list[bytes] = []
    size = 0
    while size < protocol.MAX_STDIN:
        try:
            chunk = os.read(fd, protocol.MAX_STDIN - size)
        except BlockingIOError:
            _wait(fd, select.POLLIN)
            continue
        except OSError:  # unreadable: the engine sees what came (nothing), as in-process
            break
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def write_all(fd: int, data: bytes) -> None:
    """All of data to the caller's descriptor; a reader that went away just loses it."""
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:
            _wait(fd, select.POLLOUT)
        except OSError:
            return


class CallerWatch:
    """After GO the caller only waits for the result. If it goes away (its timeout, or the
    runtime killed the exec'd plugin), this worker dies at once, exactly as an in-process plugin
    killed mid-request would: the attachment records let the runtime's DEL or GC clean up, and no
    orphaned request keeps changing state that a DEL or a retried ADD now owns.

    `stop()` ends the watch once the engine has returned, so a worker that serves another
    request is not killed when this caller closes its end after reading the result."""

    def __init__(self, conn: socket.socket) -> None:
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
