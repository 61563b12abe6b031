"""Where the runtimes run: the lab's host namespace joined to an outside one, and inside the host
namespace a Sandbox, a private mount namespace held by one `sleep` process.

The sandbox has a tmpfs on /run (containerd's shim sockets and podman's netns pins stay private),
a sysfs of the host netns on /sys (as `ip netns exec` does, keeping the cgroup mounts), and the
test's own directories mounted on /etc/cni/net.d, /opt/cni/bin and /var/lib/cni (where a path
does not exist, an overlay on its nearest existing parent makes room without writing to the
disk). stop() kills every process of the mount namespace and their descendants, by PID.
"""

from __future__ import annotations

import contextlib
import os
import select
import shlex
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from tests.lab import TEST_NET_1, Lab, Netns, procs, run

UNSHARE_MOUNT = ("unshare", "--mount", "--propagation", "private")
HARNESS_VARS = frozenset({"CNI_BRIDGE_PLUGIN_DIR", "CNI_BRIDGE_ALLOW_NO_BINARY"})
SANDBOX_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class Topology:
    """The lab's host namespace and an outside one joined to it by a veth (TEST-NET-1)."""

    host: Netns
    outside: Netns
    host_addr: str = TEST_NET_1[0]

    @classmethod
    def create(cls, lab: Lab) -> Topology:
        host = lab.netns("h")
        return cls(host, lab.outside(host))


def _mount_ns(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt")
    except OSError:
        return None


def processes_of(mount_ns: str) -> set[procs.Identity]:
    """Processes in the mount namespace and all their descendants (containers live deeper)."""
    pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    return procs.with_descendants(pid for pid in pids if _mount_ns(pid) == mount_ns)


def _overlay_anchor(target: Path) -> Path:
    anchor = target
    while not anchor.exists():
        anchor = anchor.parent
    return anchor


class Sandbox:
    """A private mount namespace inside `netns`, held by one process until stop()."""

    def __init__(self, netns: Netns, workdir: Path, mounts: Mapping[str, Path]) -> None:
        self.netns = netns
        self.workdir = workdir
        self.mounts = dict(mounts)
        self.holder: subprocess.Popen[str] | None = None
        self.mount_ns = ""
        self.base_env = {"PATH": SANDBOX_PATH, "HOME": str(workdir), "LANG": "C.UTF-8"}
        # Our plugin's own knobs (log level, log file, resident) reach it through the runtime.
        self.base_env.update(
            {
                k: v
                for k, v in os.environ.items()
                if k.startswith("CNI_BRIDGE_") and k not in HARNESS_VARS
            }
        )

    def _setup_script(self) -> str:
        lines = [
            "set -e",
            "mount -t tmpfs -o mode=0755 cbd-run /run",
            # A sysfs that shows the host netns' devices, cgroup mounts carried over on top.
            "mkdir /run/.cbd-cgroup",
            "mount --rbind /sys/fs/cgroup /run/.cbd-cgroup",
            "mount -t sysfs cbd-sysfs /sys",
            "mount --move /run/.cbd-cgroup /sys/fs/cgroup",
            "rmdir /run/.cbd-cgroup",
        ]
        overlaid: set[Path] = set()
        for n, (target, source) in enumerate(sorted(self.mounts.items())):
            anchor = _overlay_anchor(Path(target))
            if anchor != Path(target) and anchor not in overlaid:
                # Room for a mount point that does not exist, with nothing written to the disk.
                upper, work = self.workdir / f"ovl{n}" / "upper", self.workdir / f"ovl{n}" / "work"
                upper.mkdir(parents=True)
                work.mkdir(parents=True)
                lines.append(
                    f"mount -t overlay cbd-ovl -o lowerdir={anchor},upperdir={upper},"
                    f"workdir={work} {anchor}"
                )
                overlaid.add(anchor)
            lines.append(f"mkdir -p {shlex.quote(target)}")
            lines.append(f"mount --bind {shlex.quote(str(source))} {shlex.quote(target)}")
        lines += ["echo ready", "exec sleep infinity"]
        return "\n".join(lines)

    def start(self, timeout: float = 15) -> None:
        script = self._setup_script()
        self.holder = subprocess.Popen(
            self.netns.command(*UNSHARE_MOUNT, "sh", "-c", script),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.base_env,
            start_new_session=True,
        )
        assert self.holder.stdout is not None and self.holder.stderr is not None
        ready, _, _ = select.select([self.holder.stdout], [], [], timeout)
        line = self.holder.stdout.readline() if ready else ""
        if line.strip() != "ready":
            self.holder.kill()
            self.holder.wait(5)
            err = self.holder.stderr.read()
            raise RuntimeError(f"sandbox set-up failed: {line!r} {err}")
        ns = _mount_ns(self.holder.pid)
        if ns is None or ns == _mount_ns(os.getpid()):
            raise RuntimeError("sandbox holder is not in a mount namespace of its own")
        self.mount_ns = ns

    @property
    def pid(self) -> int:
        assert self.holder is not None
        return self.holder.pid

    def command(self, cmd: Sequence[str]) -> list[str]:
        return ["nsenter", f"--target={self.pid}", "--mount", "--net", "--", *cmd]

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        return {**self.base_env, **(extra or {})}

    def exec(
        self,
        cmd: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        check: bool = True,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess[str]:
        return run(self.command(cmd), env=self.env(env), check=check, timeout=timeout)

    def popen(
        self, cmd: Sequence[str], *, log: IO[str], env: Mapping[str, str] | None = None
    ) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.command(cmd),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            env=self.env(env),
            start_new_session=True,
        )

    def stop(self, timeout: float = 15) -> list[int]:
        """Kill everything the sandbox started; returns the PIDs that would not die.

        Victims accumulate across rounds: a container process whose parent (conmon, the shim)
        died first is reparented out of the tree, but it was seen, so it is still killed.
        """
        if self.holder is None:
            return []
        victims: set[procs.Identity] = set()
        holder = procs.identity(self.holder.pid)
        if holder is not None:
            victims.add(holder)
        deadline = time.monotonic() + timeout
        while True:
            if self.mount_ns:
                victims |= processes_of(self.mount_ns)
            # Zombies (reaped by init in its own time) are done with: procs.alive says so.
            victims = {v for v in victims if procs.alive(v)}
            if not victims or time.monotonic() >= deadline:
                return sorted(pid for pid, _ in victims)
            procs.kill(victims, timeout=0.2)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.holder.wait(0.2)

    def netns_pins(self) -> list[str]:
        proc = self.exec(["ls", "-1", "/run/netns"], check=False)
        return proc.stdout.split() if proc.returncode == 0 else []
