"""Whether a recorded attachment is alive, as the kernel sees it.

Not by its netns path: /run/netns/<name> is a bind mount, and a caller in another mount
namespace (a DaemonSet that mounts only /var/lib/cni, a `kubectl debug node` shell) does not
see it while the namespace lives on. Two kernel facts instead, either enough:
- the host veth exists and its peer is in another namespace (the kernel reports
  IFLA_LINK_NETNSID for it): a veth pair dies with the namespace holding one end, so this is
  the container's namespace alive, whoever can or cannot see its path;
- the namespace inode recorded at ADD is one the kernel still shows: through a process's
  /proc/<pid>/ns/net or an nsfs bind mount this process can see. Records from before the inode
  was kept have only the veth to go by.
"""

from __future__ import annotations

import os

from cni_bridge.domain import DomainError, InterfaceName
from cni_bridge.net.ops import NetOps
from cni_bridge.state import Attachment


def live_netns_files() -> dict[int, list[str]]:
    """Inode -> files naming a network namespace this process can find alive (a process's
    /proc/<pid>/ns/net, an nsfs bind mount)."""
    found: dict[int, list[str]] = {}
    try:
        pids = [name for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        pids = []
    for pid in pids:
        path = f"/proc/{pid}/ns/net"
        try:
            found.setdefault(os.stat(path).st_ino, []).append(path)
        except OSError:  # gone meanwhile, or a kernel thread's namespace we may not read
            continue
    try:
        with open("/proc/self/mountinfo") as f:
            mounts = f.read().splitlines()
    except OSError:
        mounts = []
    for line in mounts:
        # "<id> <parent> <dev> <root> <mountpoint> ... - <fstype> <source> ..."; an nsfs
        # bind mount's root is "net:[<inode>]".
        fields = line.split()
        root = fields[3] if len(fields) > 4 else ""
        if root.startswith("net:[") and root.endswith("]") and root[5:-1].isdigit():
            found.setdefault(int(root[5:-1]), []).append(fields[4])
    return found


def live_netns_inodes() -> set[int]:
    """Inodes of the network namespaces this process can find alive."""
    return set(live_netns_files())


class Liveness:
    """Judges the records of one run; the namespace scan is made at most once."""

    def __init__(self, net: NetOps) -> None:
        self._net = net
        self._files: dict[int, list[str]] | None = None

    def alive(self, att: Attachment) -> bool:
        try:
            link = self._net.host_link(InterfaceName(att.host_veth))
        except DomainError:  # a name the kernel cannot hold: there is no such veth
            link = None
        if link is not None and link.kind == "veth" and link.peer_netnsid is not None:
            return True
        if not att.netns_inode:
            return False
        if self._files is None:
            self._files = live_netns_files()
        files = self._files.get(att.netns_inode, [])
        if not files or not att.netns_cookie:
            return bool(files)
        # The kernel hands a freed namespace's inode number to the next namespace made (on a
        # busy host, within moments). No two live namespaces share one, so a file showing it
        # with another cookie means ours is gone; none readable (a bind mount hidden from this
        # mount namespace): the number alone, as with records from before the cookie.
        from cni_bridge.net.netns import netns_cookie_of

        for path in files:
            cookie = netns_cookie_of(path)
            if cookie:
                return cookie == att.netns_cookie
        return True
