"""Our aardvark-dns: its config directory and its process, one per host network namespace.

The directory is `/run/cni-bridge/dns/<netns>/` (never podman's `/run/containers/networks/
aardvark-dns`), where `<netns>` is the host namespace's cookie (SO_NETNS_COOKIE, never reused
during a boot; its inode on kernels before 5.14): the server must run in the namespace of the
gateways it listens on, and test namespaces, or a node's several host-like namespaces, each get
their own server. aardvark-dns reads every file of the directory but its pid file as a network
and exits at a reload when one does not parse, so files are written elsewhere in `/run/
cni-bridge/dns/` and renamed into place.

`reconcile` makes the process match the directory, under one flock (the base directory's):
networks and no server: start it (`aardvark-dns --config DIR -p 53 run` daemonises once it has
written its pid file) and wait until it listens; networks and a server: SIGHUP, and wait until
the addresses asked for are bound again (a reload closes and reopens every socket); no networks:
SIGTERM, wait for the process to go, remove the directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Iterator, Sequence

from cni_bridge import atomic
from cni_bridge.dns.names import parse_listen
from cni_bridge.domain import IPAddress

BASE_DIR = "/run/cni-bridge/dns"
PID_FILE = "aardvark.pid"  # aardvark-dns's own name for it (config/constants.rs)
PORT = 53
# Debian installs it for podman outside PATH; other distributions use libexec.
SEARCH = (
    "/usr/lib/podman/aardvark-dns",
    "/usr/libexec/podman/aardvark-dns",
    "/usr/local/lib/podman/aardvark-dns",
    "/usr/local/libexec/podman/aardvark-dns",
)
BINARY_ENV = "CNI_BRIDGE_AARDVARK_DNS"
READY_TIMEOUT = 3.0
STOP_TIMEOUT = 3.0
_SO_NETNS_COOKIE = getattr(socket, "SO_NETNS_COOKIE", 71)


class DNSServerError(Exception):
    """The name server could not be started or does not answer (str: for the runtime)."""


class DNSServerMissing(DNSServerError):
    """aardvark-dns is not installed."""


def netns_key() -> str:
    """Names this process's network namespace for the rest of the boot."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        try:
            raw = s.getsockopt(socket.SOL_SOCKET, _SO_NETNS_COOKIE, 8)
            return f"netns-{struct.unpack('=Q', raw)[0]}"
        except OSError:
            return f"ino-{os.stat('/proc/self/ns/net').st_ino}"


def binary() -> str:
    chosen = os.environ.get(BINARY_ENV)
    if chosen:
        if os.access(chosen, os.X_OK):
            return chosen
        raise DNSServerMissing(f"containerDNS: {BINARY_ENV}={chosen!r} is not an executable")
    found = shutil.which("aardvark-dns")
    if found:
        return found
    for path in SEARCH:
        if os.access(path, os.X_OK):
            return path
    raise DNSServerMissing(
        "containerDNS needs aardvark-dns (Debian/Ubuntu package aardvark-dns), not found in "
        f"PATH nor in {', '.join(SEARCH)} (or set {BINARY_ENV})"
    )


def _proc_alive(pid: int) -> bool:
    """Running, not a zombie waiting for its parent (init) to reap it."""
    try:
        with open(f"/proc/{pid}/stat", errors="replace") as f:  # any name
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2 :].split(" ", 1)[0] not in ("Z", "X")


def udp_sockets(addrs: Sequence[IPAddress], port: int = PORT) -> dict[IPAddress, set[int]]:
    """The inodes of the UDP sockets bound to addr:port in this network namespace, by address."""
    wanted = {(a.packed, port): a for a in addrs}
    out: dict[IPAddress, set[int]] = {a: set() for a in addrs}
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            with open(table) as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10:
                continue
            hexaddr, _, hexport = fields[1].partition(":")
            raw = bytes.fromhex(hexaddr)
            # The kernel prints each 32-bit word in host (little-endian) order.
            packed = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            addr = wanted.get((packed, int(hexport, 16)))
            if addr is not None:
                out[addr].add(int(fields[9]))
    return out


class Aardvark:
    def __init__(self, base: str = BASE_DIR, key: str | None = None) -> None:
        self.base = base
        self.dir = os.path.join(base, key or netns_key())

    # ---------------------------------------------------------------- files

    def path(self, network: str) -> str:
        return os.path.join(self.dir, network)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """One lock for every server of the host: starting, reloading and stopping."""
        for d in (os.path.dirname(self.base), self.base):
            # Root's alone, as the agent's socket directory must be (resident/client.py).
            with contextlib.suppress(FileExistsError):
                os.mkdir(d, 0o700)
        fd = os.open(self.base, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def read(self, network: str) -> str | None:
        try:
            with open(self.path(network)) as f:
                return f.read()
        except FileNotFoundError:
            return None

    def write(self, network: str, text: str | None) -> None:
        """The network's file, or none (text None)."""
        if text is None:
            atomic.remove(self.path(network))
            return
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        tmp = os.path.join(self.base, f".{os.path.basename(self.dir)}.{network}.{os.getpid()}.tmp")
        atomic.replace(self.path(network), text.encode(), tmp, mode=0o644)

    def networks(self) -> list[str]:
        try:
            return sorted(n for n in os.listdir(self.dir) if n != PID_FILE)
        except FileNotFoundError:
            return []

    def listen_addresses(self) -> list[IPAddress]:
        out: list[IPAddress] = []
        for network in self.networks():
            out += parse_listen(self.read(network) or "")
        return list(dict.fromkeys(out))

    # ---------------------------------------------------------------- the process

    def pid(self) -> int | None:
        """The running server of this directory, checked by its command line (a pid file can
        outlive its process, and the pid be reused)."""
        try:
            with open(os.path.join(self.dir, PID_FILE)) as f:
                pid = int(f.read().strip() or 0)
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except (OSError, ValueError):
            return None
        if pid <= 0 or self.dir.encode() not in argv or not _proc_alive(pid):
            return None
        return pid

    def reconcile(self, must: Sequence[IPAddress] = (), start: bool = True) -> None:
        """The server as the directory says (the caller holds `lock`), answering from the
        current files on the addresses in `must` before this returns.

        A reload (SIGHUP) closes every socket, re-reads the files and binds again; its signal
        handler is registered anew before that, so waiting for the sockets to come back also
        makes the next SIGHUP safe (one arriving earlier is lost, or before the first
        registration ends the process). So this waits for `must` and for every address bound
        before the reload, never for one that was not (a gateway address gone from its bridge)."""
        pid = self.pid()
        if not self.networks():
            if pid is not None:
                self._stop(pid)
            atomic.remove(os.path.join(self.dir, PID_FILE))
            with contextlib.suppress(OSError):
                os.rmdir(self.dir)
            return
        addrs = self.listen_addresses()
        if pid is None:
            if not start:
                return
            self._start()
            self._wait_bound([*must], {}, any_of=addrs)
            return
        before = udp_sockets(addrs)
        os.kill(pid, signal.SIGHUP)
        self._wait_bound([a for a in addrs if before[a] or a in must], before, any_of=[])

    def stop(self) -> None:
        pid = self.pid()
        if pid is not None:
            self._stop(pid)

    def _start(self) -> None:
        argv = [binary(), "--config", self.dir, "-p", str(PORT), "run"]
        try:
            # Returns once the daemon it forks has written its pid file; the daemon leaves our
            # session and keeps only /dev/null on 0-2 (close_fds: nothing else of ours).
            proc = subprocess.run(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE, timeout=READY_TIMEOUT, close_fds=True, check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise DNSServerError(f"aardvark-dns did not start: {exc}") from None
        if proc.returncode != 0:
            err = proc.stderr.decode(errors="replace").strip().splitlines()
            raise DNSServerError(
                f"aardvark-dns exited with {proc.returncode}: {err[-1] if err else ''}"
            )

    def _wait_bound(
        self,
        addrs: Sequence[IPAddress],
        before: dict[IPAddress, set[int]],
        any_of: Sequence[IPAddress],
    ) -> None:
        """Until each of `addrs` has a socket not in `before`, and one of `any_of` has one."""
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            now = udp_sockets([*addrs, *any_of])
            missing = [a for a in addrs if not now[a] - before.get(a, set())]
            if not missing and (not any_of or any(now[a] for a in any_of)):
                return
            if time.monotonic() >= deadline or self.pid() is None:
                raise DNSServerError(
                    "aardvark-dns does not listen on "
                    + ", ".join(f"{a}:{PORT}" for a in missing or any_of)
                    + " (is another program holding the port?)"
                )
            time.sleep(0.005)

    def _stop(self, pid: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        while _proc_alive(pid):
            if time.monotonic() >= deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                break
            time.sleep(0.005)
