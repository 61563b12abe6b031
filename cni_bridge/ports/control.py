"""The holder's control socket, as the plugin (after ADD and DEL) and `status` reach it.

One holder per network namespace listens on AGENT_DIR/ports-<netns inode>.sock (root's
directory alone: nobody else can bind or reach it), SOCK_SEQPACKET, one JSON message each
way: {"op": "changed", "dir": <network dir>, "tag": <record tag>} after an ADD or DEL (the
holder re-reads that record and answers once its sockets match it), or {"op": "status"}.
Standard library only; every failure means "no holder" and is never an error of the caller.
"""

from __future__ import annotations

import _socket  # not socket: ADD and DEL reach the holder through it (socket's enums cost)
import json
import os

from cni_bridge.resident.naming import agent_dir

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

CHANGED_TIMEOUT = 2.0  # the holder answers in about a millisecond; a busy one is not waited for
MAX_MESSAGE = 1 << 20
PREFIX = "ports-"  # + the network namespace's inode, .sock or .lock (lockfile.py)


def paths(netns_ino: int | None = None, create: bool = False) -> tuple[str, str]:
    """(control socket, lock) of the holder of this network namespace; ("", "") if the agent
    directory is not root's alone."""
    directory = agent_dir(create)
    if not directory:
        return "", ""
    ino = os.stat("/proc/self/ns/net").st_ino if netns_ino is None else netns_ino
    return f"{directory}/{PREFIX}{ino}.sock", f"{directory}/{PREFIX}{ino}.lock"


def _connect(timeout: float) -> _socket.socket | None:
    path, _ = paths()
    if not path:
        return None
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_SEQPACKET | _socket.SOCK_CLOEXEC)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
    except OSError:
        sock.close()
        return None
    return sock


def ask(message: dict[str, Any], timeout: float = CHANGED_TIMEOUT) -> dict[str, Any] | None:
    """The holder's answer, or None (no holder, or it did not answer in time)."""
    sock = _connect(timeout)
    if sock is None:
        return None
    try:
        sock.send(json.dumps(message).encode())
        raw = sock.recv(MAX_MESSAGE)
        answer = json.loads(raw) if raw else None
    except (OSError, ValueError):
        return None
    finally:
        sock.close()
    return answer if isinstance(answer, dict) else None


def changed(network_dir: str, tag: str) -> dict[str, Any] | None:
    """Tell the holder a record of `network_dir` changed; its answer once it holds what the
    records ask for, or None if no holder runs here."""
    return ask({"op": "changed", "dir": os.path.abspath(network_dir), "tag": tag})


def status() -> dict[str, Any] | None:
    return ask({"op": "status"})
