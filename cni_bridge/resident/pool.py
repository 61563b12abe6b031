"""The resident's parent: accepts connections and hands each to a worker process.

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
context). So after a request a worker says it is free on a channel to the parent, and the
parent hands it the next connection as a descriptor; up to `--pool` free workers are kept (one
once requests stop for SHRINK_AFTER: a fresh fork, which owns far fewer pages than one that
served), and a spare is forked ahead when the last free worker is
still busy SPARE_DELAY after it was taken, so a request finds a prepared worker waiting even
after the last one left; a connection that finds none gets a fresh fork, which may join the pool
afterwards, unless cores + 1 requests run already: then it waits a moment for the next worker to
come free (`waiting`). A worker the request left unclean leaves after answering (`worker._fit`), as it does
after `DEFAULT_MAX_REQUESTS`; one that served a caller from another mount namespace comes back
to the agent's and stays unless that request loaded anything there (`mounts`). A free worker
that has served is handed the next request before a fresh spare.
"""

from __future__ import annotations

import gc
import math
import os
import select
import signal
import socket
import struct
import sys
import time
from types import FrameType

from cni_bridge.ports.loop import SHORT_OF
from cni_bridge.resident import naming, policy
from cni_bridge.resident.duty import Duty, NoDuty
from cni_bridge.resident.sweep import sweep
from cni_bridge.resident.waiting import Waiting
from cni_bridge.resident.worker import (
    FREE,
    FREE_AFTER_RUN,
    TAKE,
    WORKER_NOT_RUN,
    WORKER_RAN,
    Engine,
    log,
    refuse,
)
from cni_bridge.resident.worker import run as run_worker
from cni_bridge.state import HOST_VETH_PREFIX


def attachments_present() -> bool:
    """Whether an attachment of ours exists in this network namespace, from the kernel: the
    host end of its veth (named by state.host_veth_name). The agent then stays, whatever its
    idle timeout: it is what keeps the next ADD warm on a host that has containers."""
    return any(name.startswith(HOST_VETH_PREFIX) for _, name in socket.if_nameindex())


BACKLOG = 128
IDENTITY_CHECK = 30.0  # how often the parent looks for an upgrade on disk
DEFAULT_MAX_WORKERS = 32
DEFAULT_HARD_TIMEOUT = 300.0
DEFAULT_POOL = 2
DEFAULT_MAX_REQUESTS = 1000
# Free workers kept once requests stop: each idle worker that has served costs ~7-10 MiB of
# pages of its own (what it dirtied since its fork), the agent's whole budget being 40 MiB.
IDLE_POOL = 1
# Seconds without a request before the pool shrinks to IDLE_POOL, and that one is a fresh fork
# that rehearsed lightly (see _renew).
SHRINK_AFTER = 2.0
# A spare is forked this long after the last free worker was taken, if it is still busy: most
# requests are back sooner, and a spare forked at once (and rehearsing) ran beside every
# request on the same cores, to be sent away as surplus once the worker was back.
SPARE_DELAY = 0.25
# accept() out of descriptors: the listener is left out of the poll this long (it is
# level-triggered: polled again at once, it would spin and fill the log), the callers queued.
ACCEPT_PAUSE = 0.5


def _name_of(listener: socket.socket) -> tuple[str, tuple[int, int]] | None:
    """The path a unix listener is bound to and that file's identity (None: no path)."""
    path = listener.getsockname()
    if not isinstance(path, str) or not path.startswith("/"):
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return path, (st.st_dev, st.st_ino)


class Pooled:
    """The parent's handle on a worker that may serve more than one request: the channel on
    which it is handed connections and on which it says it is free again."""

    __slots__ = ("pid", "served", "sock")

    def __init__(self, pid: int, sock: socket.socket) -> None:
        self.pid = pid
        self.sock = sock
        self.served = 0  # requests it ran: the one that ran most has touched most of its pages


class Server:
    def __init__(
        self,
        listener: socket.socket,
        engine: Engine,
        *,
        identity: str,
        fingerprint: str = "",
        idle: float = policy.DEFAULT_IDLE,
        max_workers: int = DEFAULT_MAX_WORKERS,
        hard_timeout: float = DEFAULT_HARD_TIMEOUT,
        pool: int = DEFAULT_POOL,
        max_requests: int = DEFAULT_MAX_REQUESTS,
        holder: Duty | None = None,
        check_interval: float = IDENTITY_CHECK,
        watcher: Duty | None = None,
        dns: Duty | None = None,
    ) -> None:
        self.listener = listener
        self.engine = engine
        self.identity = identity  # what callers must claim (the name was derived from it)
        self.fingerprint = fingerprint or naming.build_identity()  # the code on disk at start
        self.idle = idle
        self.max_workers = max_workers
        self.hard_timeout = hard_timeout
        self.pool_size = pool
        self.max_requests = max_requests
        self.check_interval = check_interval  # code on disk, socket name
        self.holder = holder or NoDuty()  # published ports (cni_bridge/ports/duty.py)
        self.watcher = watcher or NoDuty()  # the ruleset watch (converge/watch)
        self.dns = dns or NoDuty()  # the containerDNS server (cni_bridge/dns/agent.py)
        self._duties: tuple[Duty, ...] = (self.holder, self.watcher, self.dns)
        self._duty_fds: dict[int, Duty] = {}  # the descriptors the loop polls for them
        self.workers: dict[int, float] = {}  # pid -> start of the request it runs
        self.channels: dict[int, Pooled] = {}  # channel fd -> worker, busy or free
        self.waiting = Waiting()  # a burst's connections, for the next free worker
        self.free: list[Pooled] = []  # the warmest last (most served, then most recent): used first
        self.stopping = False
        self.listening = False
        self.last_activity = time.monotonic()
        self.last_demand = self.last_activity  # the last connection or worker's return
        self._wake_r = self._wake_w = -1
        self._poller: select.poll | None = None
        self._preloaded: frozenset[str] = frozenset()
        self._named: tuple[str, tuple[int, int]] | None = None
        self._accept_paused = 0.0  # until when the listener is out of the poll (0: it is in)

    def _request_stop(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True

    def run(self) -> int:
        self._named = _name_of(self.listener)
        self.listener.listen(BACKLOG)
        self.listener.setblocking(False)
        self.listening = True
        if self._named is not None and (swept := sweep(self._named[0])):
            log(f"removed the files of {swept} agent(s) killed with their namespace")
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
        next_check = time.monotonic() + self.check_interval
        log(f"serving (idle {self.idle:g}s)")
        while True:
            self._reap()
            self._keep_a_spare()
            for conn in self.waiting.expired(time.monotonic()):
                self._fork_worker(conn)
                conn.close()
            for duty in self._duties:
                duty.tick()
            now = time.monotonic()
            if self.stopping and self.listening:
                log(f"stopping; {len(self.workers)} request(s) still running")
                self._stop_listening(poller)
            if not self.workers:
                if self.stopping:
                    break
                if now - self.last_demand >= SHRINK_AFTER and self._renewable():
                    self._renew()
                if self.idle > 0 and now - self.last_activity >= self.idle:
                    if not attachments_present():
                        log("idle, leaving")
                        break
                    self.last_activity = now  # look again after another idle period
            if now >= next_check:
                next_check = now + self.check_interval
                if naming.build_identity() != self.fingerprint:
                    log("the code on disk changed, leaving for a fresh resident")
                    self.stopping = True
                    continue
                if not self._still_named():
                    log("its socket was removed, leaving")
                    self.stopping = True
                    continue
            self._poll_duties(poller)
            timeout = min(next_check - now, *(duty.due_in() for duty in self._duties))
            if not self.workers and self.idle > 0:
                timeout = min(timeout, self.idle - (now - self.last_activity))
            if not self.workers and self._renewable():
                timeout = min(timeout, self.last_demand + SHRINK_AFTER - now)
            if self._spare_due() > now:
                timeout = min(timeout, self._spare_due() - now)
            timeout = min(timeout, self.waiting.due_in(now))
            if self._accept_paused and (self._accept_paused <= now or not self.listening):
                if self.listening:
                    poller.register(self.listener, select.POLLIN)
                self._accept_paused = 0.0
            if self._accept_paused:
                timeout = min(timeout, self._accept_paused - now)
            for fd, _ in poller.poll(max(1, math.ceil(timeout * 1000))):
                if fd == self._wake_r:
                    self._drain_wakeups()
                elif fd in self.channels:
                    self._channel_event(self.channels[fd])
                elif fd in self._duty_fds:
                    self._duty_fds[fd].readable(fd)
                elif self.listening and fd == self.listener.fileno():
                    self._accept()
        self._stop_listening(poller)
        for duty in self._duties:
            duty.stop()
        return 0

    def _poll_duties(self, poller: select.poll) -> None:
        """Poll exactly the descriptors the duties have now (a watch subscribes late, again)."""
        now = {fd: duty for duty in self._duties for fd in duty.fds()}
        for fd in self._duty_fds.keys() - now.keys():
            poller.unregister(fd)
        for fd in now.keys() - self._duty_fds.keys():
            poller.register(fd, select.POLLIN)
        self._duty_fds = now

    def _still_named(self) -> bool:
        """Whether the socket's name still leads to it. Rootless podman removes the private /run
        of a network namespace it tears down: callers can no longer reach this agent, and a new
        one serves the next namespace."""
        if self._named is None:
            return True
        try:
            st = os.stat(self._named[0])
        except OSError:
            return False
        return (st.st_dev, st.st_ino) == self._named[1]

    def _stop_listening(self, poller: select.poll) -> None:
        # Connections still queued are reset: their clients have not had READY, so they fall
        # back in-process, and the next one starts a fresh resident.
        if self.listening:
            if not self._accept_paused:
                poller.unregister(self.listener)
            self.listener.close()
            self.listening = False
        self.waiting.close_all()
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
        while self.workers or self.channels or any(duty.pid for duty in self._duties):
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.workers.clear()
                return
            if pid == 0:
                return
            if [duty for duty in self._duties if duty.reaped(pid, status)]:  # each sees each
                continue
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
            except OSError as exc:
                if exc.errno in SHORT_OF and self._poller is not None:  # leave the rest queued
                    log(f"accept failed: {exc}; accepting again in {ACCEPT_PAUSE:g} s")
                    self._poller.unregister(self.listener)
                    self._accept_paused = time.monotonic() + ACCEPT_PAUSE
                    return
                log(f"accept failed: {exc}")
                return
            self.last_demand = time.monotonic()
            if len(self.workers) >= self.max_workers:
                refuse(conn, "busy")
                conn.close()
                continue
            if not self._hand_over(conn):
                if self.pool_size > 0 and self.waiting.should_wait(len(self.workers)):
                    self.waiting.add(conn, self.last_demand)  # see resident/waiting.py
                    continue
                self._fork_worker(conn)
            conn.close()

    # --- the pool

    def _fork_worker(self, conn: socket.socket | None, light: bool = False) -> None:
        """A new worker for `conn`, or (None) a free one waiting in the pool, which rehearses
        (`light`: only lightly)."""
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
            run_worker(
                conn,
                channel,
                self.engine,
                identity=self.identity,
                hard_timeout=self.hard_timeout,
                max_requests=self.max_requests,
                preloaded=self._preloaded,
                forget_parent=self._forget_parent,
                light=light,
            )
        if channel is not None and parent_end is not None:
            channel.close()
            worker = Pooled(pid, parent_end)
            self.channels[parent_end.fileno()] = worker
            assert self._poller is not None
            self._poller.register(parent_end, select.POLLIN)
            if conn is None:
                return  # free once it says so
        self.workers[pid] = time.monotonic()

    def _keep_a_spare(self) -> None:
        """One free (or starting) worker at all times, so that no request waits for a fork: the
        first one, a burst's next one, and the one after a worker that left; while a pooled
        worker is busy, only from SPARE_DELAY after it was taken (it is likely back by then)."""
        if self._spare_due() <= time.monotonic():
            self._fork_worker(None)

    def _spare_due(self) -> float:
        """When a spare is to be forked (inf: none is needed)."""
        if self.pool_size <= 0 or self.stopping:
            return math.inf
        if self.free or any(w.pid not in self.workers for w in self.channels.values()):
            return math.inf  # a free or starting one
        if self.waiting.should_wait(len(self.workers)):  # saturated: the next to free serves
            return math.inf
        if self.channels:  # pooled workers, all busy
            return self.last_demand + SPARE_DELAY
        return 0.0

    def _hand_over(self, conn: socket.socket) -> bool:
        while self.free:
            worker = self.free.pop()
            try:
                worker.sock.sendmsg(
                    [TAKE],
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
        if data not in (FREE, FREE_AFTER_RUN):  # it left (or broke the protocol): forget it
            self._close_channel(worker)
            return
        if self.workers.pop(worker.pid, None) is not None:
            self.last_demand = time.monotonic()
            if data == FREE_AFTER_RUN:
                self.last_activity = self.last_demand
                worker.served += 1
        if self.stopping:
            self._close_channel(worker)  # not needed: it reads EOF and leaves
            return
        self.free.append(worker)
        while self.waiting and self.free:
            conn = self.waiting.pop()
            if not self._hand_over(conn):
                self._fork_worker(conn)
            conn.close()
        self._trim(self.pool_size)

    def _renewable(self) -> bool:
        """Whether the idle pool is more than one worker that has not served (see _renew)."""
        return len(self.free) > IDLE_POOL or any(w.served for w in self.free)

    def _renew(self) -> None:
        """Requests stopped: keep one free worker, a fresh fork that rehearsed lightly. Every page
        a forked worker writes is its own (reference counts of every object it touched, its
        allocations), and the next request pays a copy-on-write fault for each it has not
        written yet. Measured with the bundle (private dirty; faults of the next ADD): a worker
        that served ~10 MiB, ~300; a fully rehearsed spare ~7.4 MiB, ~650; one that only
        prepared ~2.8 MiB, ~1800 (a few ms more); the light rehearsal (the request read and its
        plan built: the pure part) ~5.4 MiB, ~1150. The spare forked at start rehearses in
        full: the first request after the agent started is often one a runtime waits for, and
        it stays until it serves."""
        if not any(w.served for w in self.free):
            self._trim(IDLE_POOL)
            return
        for worker in list(self.free):
            self._close_channel(worker)
        if not self.stopping and self.pool_size > 0:
            self._fork_worker(None, light=True)

    def _trim(self, keep: int) -> None:
        """Keep the `keep` warmest free workers; the others read EOF and leave. The warmest has
        served most (a spare that has served nothing pays its copy-on-write faults on its first
        request); among equals the most recently freed."""
        self.free.sort(key=lambda w: w.served)  # stable: recency among equals
        while len(self.free) > keep:
            self._close_channel(self.free[0])

    def _close_channel(self, worker: Pooled) -> None:
        fd = worker.sock.fileno()
        if fd >= 0 and self.channels.get(fd) is worker:
            del self.channels[fd]
            if self._poller is not None:
                self._poller.unregister(fd)
        if worker in self.free:
            self.free.remove(worker)
        worker.sock.close()

    def _forget_parent(self) -> None:
        """In a new worker: close the parent's listener, wake-up pipe and pool channels."""
        self.listener.close()
        os.close(self._wake_r)
        os.close(self._wake_w)
        for other in self.channels.values():  # the parent's ends of its other workers
            other.sock.close()
        self.channels.clear()
        self.free.clear()
        self.waiting.close_all()  # other callers' connections: the parent's to hand over
        for duty in self._duties:
            duty.forget()
