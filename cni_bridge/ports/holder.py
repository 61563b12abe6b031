"""The holder: one process per host network namespace, forked and supervised by the agent,
that holds a socket on every published host port and relays what reaches it (proxy.py).

The records are the desired state (records.py). They are read in full at start and every
RESCAN seconds, and one record at a time when an ADD or DEL says it changed
(control.py): the answer goes back once the sockets match, so a port is held when ADD returns.
A port it could not hold (a host program got there first) is retried every RETRY seconds and
reported by `status`.

A selector loop (loop.py) in its own process: the agent's parent stays single-threaded and never
waits on a relay, and a relay's failure cannot touch the agent. It dies with the agent
(PR_SET_PDEATHSIG) and takes a lock first, so two holders never compete for one namespace.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import resource
import signal
import socket
import struct
import time
import traceback
from collections.abc import Iterable
from typing import Any, NoReturn

from cni_bridge.ports import control, lockfile, lookup, sockets
from cni_bridge.ports.loop import READ, SHORT_OF, Loop, Timer
from cni_bridge.ports.model import HoldKey, Target, plan
from cni_bridge.ports.proxy import TcpRelay, UdpRelay
from cni_bridge.ports.records import Owner, Records
from cni_bridge.ports.supervisor import detach_from_agent

RESCAN = 30.0
RETRY = 2.0
PR_SET_PDEATHSIG = 1
ACCEPT_RETRY = 0.5
ASK_TIMEOUT = 5.0  # a control client that connected but does not ask is let go
# Families a host may lack (IPv6 disabled): nothing can bind there, so nothing is to hold.
_NOT_HERE = (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL)


def _log(message: str) -> None:
    from cni_bridge.resident.worker import log

    log(f"ports: {message}")


def _some(keys: list[HoldKey]) -> str:
    return ", ".join(map(str, keys[:4])) + (f" and {len(keys) - 4} more" if len(keys) > 4 else "")


class Held:
    __slots__ = ("key", "relay", "target")

    def __init__(self, key: HoldKey, target: Target | None) -> None:
        self.key = key
        self.target = target
        self.relay: TcpRelay | UdpRelay | None = None

    def close(self) -> None:
        if self.relay is not None:
            self.relay.close()


class Holder:
    def __init__(self, records: Records | None = None, loop: Loop | None = None) -> None:
        self.want = records or Records()
        self.loop = loop or Loop(_log)
        self.held: dict[HoldKey, Held] = {}
        self.failed: dict[HoldKey, str] = {}
        self.absent: set[HoldKey] = set()  # a family this host does not have

    # ------------------------------------------------------------------ the sockets

    def apply(self, keys: Iterable[HoldKey] | None = None) -> None:
        """Bring the sockets among `keys` (None: all) to what the records want."""
        everything = keys is None
        if keys is None:
            keys = set(self.want.wanting) | set(self.held) | set(self.failed)
        keys = set(keys)
        wanted = self.want.wanted(keys)
        todo = plan(wanted, {k: self.held[k].target for k in keys if k in self.held})
        for key in todo.close:
            self.held.pop(key).close()
        for key, target in todo.retarget:
            self.held[key].target = target
        for key in keys & set(self.failed):
            if key not in wanted:
                del self.failed[key]
        opened = 0
        for key, target in todo.open:
            if key in self.absent:
                continue
            try:
                self.held[key] = self._open(key, target)
            except OSError as exc:
                if exc.errno in _NOT_HERE and key.wildcard:
                    self.absent.add(key)
                    continue
                why = exc.strerror or str(exc)
                if exc.errno == errno.EADDRINUSE:
                    # Naming the holder reads every process's descriptors (~90 ms on a busy
                    # host): a retry keeps the name found, a full rescan looks again.
                    known = self.failed.get(key, "")
                    why = known if known.startswith("held by") and not everything else (
                        f"held by {lookup.describe(lookup.holders_of(key))}"
                    )
                if self.failed.get(key) != why:
                    _log(f"cannot hold {key}: {why}")
                self.failed[key] = why
            else:
                self.failed.pop(key, None)
                opened += 1
        if everything and (todo.close or opened):  # ADD and DEL's own changes are not logged
            released = f"released {_some(todo.close)}; " if todo.close else ""
            _log(f"{released}holding {len(self.held)} socket(s)")

    def _open(self, key: HoldKey, target: Target | None) -> Held:
        held = Held(key, target)
        sock = sockets.hold(key)
        sock.setblocking(False)
        relay = TcpRelay if key.protocol == "tcp" else UdpRelay
        held.relay = relay(self.loop, sock, lambda: held.target)
        return held

    def close(self) -> None:
        for held in self.held.values():
            held.close()
        self.held.clear()

    # ------------------------------------------------------------------ answers

    def status(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "held": [str(k) for k in sorted(self.held)],
            "failed": [
                {"port": str(k), "reason": why, "attachment": self.want.owner_of(k)}
                for k, why in sorted(self.failed.items())
            ],
        }

    def answer_changed(self, owner: Owner) -> dict[str, Any]:
        mine = self.want.records.get(owner, {})
        return {
            "held": [str(k) for k in sorted(mine) if k in self.held],
            "failed": {str(k): self.failed[k] for k in sorted(mine) if k in self.failed},
        }

    def handle(self, message: Any) -> dict[str, Any]:
        if not isinstance(message, dict):
            return {"error": "not an object"}
        if message.get("op") == "status":
            return self.status()
        if message.get("op") == "changed":
            net_dir, tag = message.get("dir"), message.get("tag")
            if not isinstance(net_dir, str) or not isinstance(tag, str) or "/" in tag:
                return {"error": "bad changed message"}
            self.apply(self.want.read_one(os.path.abspath(net_dir), tag))
            return self.answer_changed((os.path.abspath(net_dir), tag))
        return {"error": "unknown op"}


# ---------------------------------------------------------------------- the process


class Control:
    """The control socket on the holder's loop: one message in, one answer out, per client."""

    def __init__(self, holder: Holder, listener: socket.socket) -> None:
        self.holder = holder
        self.loop = holder.loop
        self.listener = listener
        self.loop.watch(listener, READ, self._accept)

    def _accept(self, _ready: int) -> None:
        for _ in range(16):
            try:
                conn, _ = self.listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno not in SHORT_OF:
                    raise
                # Relayed connections (anyone's, to [::1]:port) used up the descriptors: answer
                # once some are back rather than end, which would let every port go.
                self.loop.pause(self.listener, ACCEPT_RETRY, self._accept)
                return
            cred = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("iII"))
            # Our own user only: root, as the agent runs (its directory is root's alone).
            if struct.unpack("iII", cred)[1] != os.geteuid():
                conn.close()
                continue
            conn.setblocking(False)
            self._wait(conn)

    def _wait(self, conn: socket.socket) -> None:
        timer = self.loop.later(ASK_TIMEOUT, lambda: self.loop.close(conn))
        self.loop.watch(conn, READ, lambda _: self._answer(conn, timer))

    def _answer(self, conn: socket.socket, timer: Timer) -> None:
        try:
            raw = conn.recv(control.MAX_MESSAGE)
        except BlockingIOError:
            return
        except OSError:
            raw = b""
        timer.cancel()
        self.loop.unwatch(conn)
        try:
            if not raw:
                return
            try:
                message = json.loads(raw)
            except ValueError:
                message = None
            try:
                reply = self.holder.handle(message)
            except Exception:
                # One request's failure is that request's: ending the loop would let every
                # port go and cut every relayed connection; the next rescan applies it all.
                _log(f"a request failed: {str(message)[:200]}\n{traceback.format_exc()}")
                reply = {"error": "the holder failed on this request (see the agent's log)"}
            conn.settimeout(ASK_TIMEOUT)
            conn.sendall(json.dumps(reply).encode())
        except OSError:
            pass
        finally:
            conn.close()


def _run(holder: Holder, listener: socket.socket) -> None:
    loop = holder.loop
    loop.stop_on((signal.SIGTERM, signal.SIGINT, signal.SIGHUP))
    holder.want.scan_all()
    holder.apply()  # before any answer: a status or an ADD sees the records' sockets held
    Control(holder, listener)
    next_scan = time.monotonic() + RESCAN

    def tick() -> None:
        nonlocal next_scan
        now = time.monotonic()
        if now >= next_scan:
            holder.want.scan_all()
            next_scan = now + RESCAN
            holder.apply()
        elif holder.failed:
            holder.apply(list(holder.failed))
        wait = RETRY if holder.failed else next_scan - now
        loop.later(max(0.1, min(wait, RESCAN)), tick)

    loop.later(0, tick)
    try:
        loop.run()  # an exception out of it (a bug) ends the holder: the agent starts another
    finally:
        holder.close()
        loop.shut()


def child_main() -> NoReturn:
    """The holder process, right after the agent forked it; never returns."""
    code = 1
    try:
        parent = os.getppid()
        detach_from_agent()
        # Two sockets per published port and two per relayed connection: the soft limit
        # (often 1024) would cap a host at a few hundred published ports.
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(0)
        sock_path, lock_path = control.paths(create=True)
        if not sock_path:
            _log("no usable agent directory: ports are not held")
            os._exit(0)
        lock_fd = lockfile.take(lock_path, lambda: os.getppid() == parent)
        if lock_fd is None:
            os._exit(0)  # the agent left while a previous holder still ran
        with contextlib.suppress(FileNotFoundError):
            os.unlink(sock_path)  # a previous holder's, killed: we hold the lock now
        swept = lockfile.sweep(os.path.dirname(sock_path), control.PREFIX)
        if swept:
            _log(f"removed the files of {swept} holder(s) gone with their namespace")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        listener.bind(sock_path)
        listener.listen(64)
        listener.setblocking(False)
        _log("holding published ports")
        _run(Holder(), listener)
        lockfile.release(lock_fd, lock_path, sock_path)
        code = 0
    except BaseException:
        _log(f"failed:\n{traceback.format_exc()}")
    finally:
        os._exit(code)
