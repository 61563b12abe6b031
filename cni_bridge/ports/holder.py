"""The holder: a socket on every published host port of this host network namespace, and the
relays of what reaches them (proxy.py), on a selector loop (loop.py) that the agent's own loop
runs (duty.py).

The records are the desired state (records.py). They are read in full at start and every
RESCAN seconds, and one record at a time when an ADD or DEL says it changed
(control.py): the answer goes back once the sockets match, so a port is held when ADD returns.
A port it could not hold (a host program got there first) is retried every RETRY seconds and
reported by `status`.

Nothing here blocks: sockets are non-blocking, a control client gets its answer only if it can
take it at once, and the processes holding a port it could not take are looked up (a walk over
every process's descriptors) once, when the port first fails, not at every retry or rescan,
with one walk for all the ports that failed in the same pass.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import struct
import traceback
from collections.abc import Iterable
from typing import Any

from cni_bridge.ports import control, lookup, sockets
from cni_bridge.ports.loop import READ, SHORT_OF, Loop, Timer
from cni_bridge.ports.model import HoldKey, Target, plan
from cni_bridge.ports.proxy import TcpRelay, UdpRelay
from cni_bridge.ports.records import Owner, Records

RESCAN = 30.0
RETRY = 2.0
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
        taken: list[HoldKey] = []
        for key, target in todo.open:
            if key in self.absent:
                continue
            try:
                self.held[key] = self._open(key, target)
            except OSError as exc:
                if exc.errno in _NOT_HERE and key.wildcard:
                    self.absent.add(key)
                    continue
                known = self.failed.get(key, "")
                if exc.errno == errno.EADDRINUSE and not known.startswith("held by"):
                    taken.append(key)  # named below, with the others
                    continue
                why = known if exc.errno == errno.EADDRINUSE else exc.strerror or str(exc)
                if known != why:
                    _log(f"cannot hold {key}: {why}")
                self.failed[key] = why
            else:
                self.failed.pop(key, None)
                opened += 1
        if taken:
            # Naming the holders reads every process's descriptors (~90 ms on a busy host, the
            # agent's loop waiting): one walk for all the ports that have just been found
            # taken, none while they stay taken.
            for key, found in lookup.holders_of_each(taken).items():
                self.failed[key] = why = f"held by {lookup.describe(found)}"
                _log(f"cannot hold {key}: {why}")
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
            # One message, taken at once or not at all: the agent's loop never waits on a client.
            conn.send(json.dumps(reply).encode(), socket.MSG_DONTWAIT)
        except OSError:
            pass
        finally:
            self.loop.close(conn)
