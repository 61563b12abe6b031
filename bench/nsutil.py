"""Throwaway network namespaces for the benchmark: made in bulk, always removed.

Only `ip netns add/del` (bind mounts under /run/netns) and commands run *inside* the
namespaces created here; the root namespace's links, routes, sysctls and rules are never
touched.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Iterable, Sequence

NETNS_DIR = "/run/netns"
PREFIX = "cbE"


def netns_path(name: str) -> str:
    return os.path.join(NETNS_DIR, name)


def exists(name: str) -> bool:
    return os.path.exists(netns_path(name))


def _batch(lines: Iterable[str], *, check: bool) -> None:
    """`ip -batch -`: one `ip` process for many commands (1000 namespaces in about a second)."""
    text = "".join(f"{line}\n" for line in lines)
    if not text:
        return
    # -force: go on after a failed line, so cleanup removes everything it still can.
    argv = ["ip", "-force", "-batch", "-"] if not check else ["ip", "-batch", "-"]
    proc = subprocess.run(argv, input=text, text=True, capture_output=True, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"ip -batch failed: {proc.stderr.strip()}")


def in_netns(name: str, argv: Sequence[str]) -> list[str]:
    """A command line running `argv` inside network namespace `name`.

    nsenter rather than `ip netns exec`: runtimes call plugins from one mount namespace, and
    `ip netns exec` would make a new one per call (the warm resident refuses callers from a
    mount namespace other than its own)."""
    return ["nsenter", f"--net=/run/netns/{name}", *argv]


class NamespacePool:
    """Namespaces named `<prefix>-<run id>-<suffix>`, all deleted by `close()` (idempotent).

    Use as a context manager; `close()` is also safe to call from a signal handler's path.
    """

    def __init__(self, prefix: str = PREFIX, run_id: str | None = None) -> None:
        self.prefix = prefix
        self.run_id = run_id or secrets.token_hex(3)
        self.names: list[str] = []

    def name(self, suffix: str) -> str:
        return f"{self.prefix}-{self.run_id}-{suffix}"

    def create(self, suffixes: Sequence[str]) -> list[str]:
        names = [self.name(s) for s in suffixes]
        # Recorded before creation so a half-done batch is still cleaned up.
        self.names.extend(names)
        _batch((f"netns add {n}" for n in names), check=True)
        return names

    def create_host(self, suffix: str = "host") -> str:
        """A namespace standing in for the host: loopback up, forwarding on (as on a host)."""
        (name,) = self.create([suffix])
        subprocess.run(in_netns(name, ["ip", "link", "set", "lo", "up"]), check=True)
        subprocess.run(
            in_netns(name, ["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]),
            check=True,
            capture_output=True,
        )
        return name

    def delete(self, names: Sequence[str]) -> None:
        _batch((f"netns del {n}" for n in names if exists(n)), check=False)
        gone = set(names)
        self.names = [n for n in self.names if n not in gone]

    def close(self) -> None:
        self.delete(list(self.names))

    def __enter__(self) -> NamespacePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _ns_id(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def pids_in(names: Sequence[str]) -> dict[int, str]:
    """Processes whose network namespace is one of `names`: pid -> namespace name.

    Matched by namespace identity (nsfs device and inode), never by process name, so only
    processes living in namespaces this run created are found (e.g. a resident daemon a
    plugin started there).
    """
    wanted = {ident: n for n in names if (ident := _ns_id(netns_path(n))) is not None}
    found: dict[int, str] = {}
    if not wanted:
        return found
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            ident = _ns_id(f"/proc/{entry}/ns/net")
            if ident in wanted:
                found[int(entry)] = wanted[ident]
    return found


def peak_rss_kib(pid: int) -> int | None:
    """VmHWM of a live process (its peak resident set), or None when it is gone."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def kill_in(names: Sequence[str], grace: float = 2.0) -> list[int]:
    """SIGTERM, then SIGKILL after `grace` seconds, every process inside `names`."""
    pids = list(pids_in(names))
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(_alive(p) for p in pids):
            time.sleep(0.05)
        pids = [p for p in pids if _alive(p)]
        if not pids:
            break
    return pids


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def stale(prefix: str = PREFIX) -> list[str]:
    """Namespaces left by an earlier run that was killed hard (SIGKILL, power loss)."""
    try:
        names = os.listdir(NETNS_DIR)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if n.startswith(f"{prefix}-"))


def remove(names: Sequence[str]) -> None:
    _batch((f"netns del {n}" for n in names), check=False)


def new_id() -> str:
    return secrets.token_hex(3)
