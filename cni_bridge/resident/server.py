"""`cni-bridge serve`: the resident cni-bridge, a warm parent that hands each request to a worker.

    cni-bridge serve [--idle S] [--pool N] [--max-workers N] [--hard-timeout S]

This module starts it: it binds (or inherits, LISTEN_FDS) its socket in naming.AGENT_DIR, imports the
engine once and hands over to the parent's loop (`pool.Server`). Each worker checks its peer
(`admission`), reads the request, sends READY, waits for GO, runs the engine once and sends the
RESULT (`worker`, `protocol`).
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import signal
import socket
import time
import traceback
from collections.abc import Sequence

from cni_bridge.converge import watch
from cni_bridge.dns.agent import DnsDuty
from cni_bridge.ports.duty import HeldPorts
from cni_bridge.resident import naming, policy, spawn, sweep
from cni_bridge.resident.pool import (
    DEFAULT_HARD_TIMEOUT,
    DEFAULT_MAX_WORKERS,
    DEFAULT_POOL,
    IDENTITY_CHECK,
    Server,
)
from cni_bridge.resident.worker import Engine, log

DEFAULT_RETRY_AFTER = 60.0


def inherited_listener() -> tuple[socket.socket, int] | None:
    """The socket and its held lock a starting client passed as fds 3 and 4 (systemd's
    LISTEN_FDS convention, names "agent:lock"; see spawn.spawn)."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()) or os.environ.get("LISTEN_FDS") != "2":
        return None
    if os.environ.get("LISTEN_FDNAMES") != "agent:lock":
        return None
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)
    sock = socket.socket(fileno=3)
    os.set_inheritable(3, False)
    os.set_inheritable(4, False)
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
        sock.close()
        raise OSError(errno.EINVAL, "inherited fd 3 is not a unix stream socket")
    return sock, 4


def claimed_listener(identity: str) -> tuple[socket.socket, int] | None:
    """Take the lock and bind the socket ourselves (started by systemd or by hand); None if
    another resident holds them. Raises OSError if AGENT_DIR is not root's alone."""
    path = naming.socket_path_for(identity, create=True)
    if not path:
        raise OSError(errno.EPERM, f"{naming.AGENT_DIR} is not a directory only root can use")
    held = spawn.claim(path)
    if held is None:
        return None
    lock_fd, sock = held
    return socket.socket(fileno=sock.detach()), lock_fd


def load_handler(spec: str) -> Engine:
    """Import `module:attr` and run the module's optional `warm()` (imports, models; no sockets);
    the module's optional `prepare()`, `reusable()` and `rehearse(light=False)` come with the
    handler (a spare that rehearses fully calls `rehearse()`, so one without `light` still
    works)."""
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
    hooks = [getattr(module, name, None) for name in ("prepare", "reusable", "rehearse")]
    return Engine(handler, *[hook if callable(hook) else None for hook in hooks])


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.idle is None:
        args.idle = policy.env_seconds(os.environ, policy.IDLE_VAR, policy.DEFAULT_IDLE)
    if not (args.idle >= 0 and args.hard_timeout >= 0 and args.max_workers > 0 and args.pool >= 0):
        parser.error("--idle, --hard-timeout and --pool must be >= 0, --max-workers > 0")
    return args


def build_parser() -> argparse.ArgumentParser:
    """Also the source of `cni-bridge --help` and the man page (cni_bridge/manual.py)."""
    from cni_bridge.manual import Formatter

    parser = argparse.ArgumentParser(
        prog="cni-bridge serve",
        description="Serve CNI requests from a warm resident process.",
        formatter_class=Formatter,
    )
    parser.add_argument(
        "--idle",
        type=float,
        default=None,
        help="leave after this many idle seconds when no attachment of ours exists in this "
        f"network namespace; 0: never (default ${policy.IDLE_VAR}, else {policy.DEFAULT_IDLE:g})",
    )
    parser.add_argument("--handler", default=spawn.DEFAULT_HANDLER, help=argparse.SUPPRESS)
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
        help="kill a worker running longer than this many seconds; 0: never",
    )
    parser.add_argument(
        "--pool",
        type=int,
        default=DEFAULT_POOL,
        help="free workers kept while requests come (one after 2 s without any); 0: a fresh "
        "fork for every request",
    )
    # How often the parent looks at the code on disk and its socket's name (tests shorten it).
    parser.add_argument(
        "--check-interval", type=float, default=IDENTITY_CHECK, help=argparse.SUPPRESS
    )
    # A started resident serves the identity its starter computed (and bound the name for).
    parser.add_argument("--identity", default="", help=argparse.SUPPRESS)
    parser.add_argument(
        "--retry-after",
        type=float,
        default=DEFAULT_RETRY_AFTER,
        help="after a failed start, hold the name this many seconds so callers do not "
        "restart it on every call",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """`cni-bridge serve`: argv holds the arguments after `serve`."""
    args = parse_args(argv)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    os.umask(0o022)
    fingerprint = naming.build_identity()
    identity = args.identity or fingerprint
    held = inherited_listener() or claimed_listener(identity)
    if held is None:
        log("another resident already serves this code here")
        return 0
    listener, lock_fd = held
    path = listener.getsockname()
    try:
        return _serve(args, listener, identity, fingerprint)
    finally:
        # Still ours: nobody else can bind it while we hold the lock, released only after.
        sweep.release(lock_fd, path)


def _serve(
    args: argparse.Namespace, listener: socket.socket, identity: str, fingerprint: str
) -> int:
    os.chdir("/")
    # Callers run in-process until we listen (see spawn.spawn): start at full priority.
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
        check_interval=args.check_interval,
        # The ports the engine's records publish: held only for the engine, not a test handler.
        holder=HeldPorts(enabled=args.handler == spawn.DEFAULT_HANDLER),
        watcher=watch.duty(enabled=args.handler == spawn.DEFAULT_HANDLER),
        dns=DnsDuty(enabled=args.handler == spawn.DEFAULT_HANDLER),
    )
    return server.run()
