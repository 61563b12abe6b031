"""Named network namespaces (`ip netns`, bind mounts under /run/netns) and commands inside them.

Only `ip netns add/del` and commands run *inside* a namespace: nothing here changes the root
namespace's links, routes, sysctls or firewall.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.lab.shell import CommandError, run

NETNS_DIR = Path("/run/netns")


@dataclass(frozen=True)
class Netns:
    name: str

    @property
    def path(self) -> str:
        return str(NETNS_DIR / self.name)

    def exists(self) -> bool:
        return os.path.exists(self.path)

    def identity(self) -> tuple[int, int] | None:
        """The namespace's nsfs (device, inode): what /proc/<pid>/ns/net of its processes shows."""
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_dev, st.st_ino

    def command(self, *cmd: str) -> list[str]:
        """`cmd` run inside this namespace.

        nsenter, not `ip netns exec`: no new mount namespace per call (runtimes call plugins
        from one, and the warm resident serves only callers in its own mount namespace)."""
        return ["nsenter", f"--net={self.path}", *cmd]

    def exec(
        self,
        *cmd: str,
        check: bool = True,
        timeout: float = 60,
        input: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        return run(self.command(*cmd), check=check, timeout=timeout, input=input, env=env)

    def ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run(["ip", "-n", self.name, *args], check=check)

    def ip_batch(self, lines: Iterable[str]) -> None:
        """`ip` commands in one process inside the namespace (fails on the first error)."""
        text = "".join(f"{line}\n" for line in lines)
        if text:
            run(["ip", "-n", self.name, "-batch", "-"], input=text)

    def ip_json(self, *args: str) -> Any:
        return json.loads(self.ip("-j", *args).stdout or "[]")

    def links(self) -> list[str]:
        return [link["ifname"] for link in self.ip_json("link", "show")]

    def addrs(self, dev: str) -> list[str]:
        """The device's addresses of global scope, as address/prefix."""
        data = self.ip_json("addr", "show", "dev", dev)
        return [f"{a['local']}/{a['prefixlen']}" for d in data for a in d.get("addr_info", [])
                if a.get("scope") != "link"]

    def sysctl(self, key: str, value: str | int) -> None:
        # /proc/sys/net resolves against the writer's namespace: nsenter is enough.
        self.exec("sysctl", "-qw", f"{key}={value}")


def _batch(lines: Iterable[str], *, check: bool) -> None:
    """`ip -batch -`: one `ip` process for many commands (1000 namespaces in about a second)."""
    text = "".join(f"{line}\n" for line in lines)
    if not text:
        return
    # -force: go on after a failed line, so cleanup removes everything it still can.
    argv = ["ip", "-batch", "-"] if check else ["ip", "-force", "-batch", "-"]
    proc = run(argv, input=text, check=False)
    if check and proc.returncode != 0:
        raise CommandError(argv, proc)


def add(names: Sequence[str]) -> list[Netns]:
    _batch((f"netns add {n}" for n in names), check=True)
    return [Netns(n) for n in names]


def delete(namespaces: Sequence[Netns]) -> None:
    """Delete those that still exist; never fails (cleanup must go on)."""
    _batch((f"netns del {ns.name}" for ns in namespaces if ns.exists()), check=False)


def named() -> list[Netns]:
    """Every namespace that has a name (an `ip netns` mount), sorted."""
    try:
        names = os.listdir(NETNS_DIR)
    except FileNotFoundError:
        return []
    return [Netns(n) for n in sorted(names)]


def stale(prefix: str) -> list[Netns]:
    """Namespaces named `<prefix>-*` left by a run that was killed hard (SIGKILL, power loss)."""
    return [ns for ns in named() if ns.name.startswith(f"{prefix}-")]
