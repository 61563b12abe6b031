"""Whether this process may do a verb's work: asked once, before any, of the kernel.

A caller without the capabilities would otherwise fail half-way (a directory created, then
"Operation not permitted" from netlink) with an error that does not say what is wrong. Root
in a user namespace (rootless podman's plugin calls) has them there, and passes.
"""

from __future__ import annotations

import os

from cni_bridge.errors import PERMISSION_DENIED, CNIError

# linux/capability.h: netlink and nftables changes; entering a network namespace (setns).
NEEDED = {12: "CAP_NET_ADMIN", 21: "CAP_SYS_ADMIN"}


def missing(status_text: str) -> list[str]:
    """The needed capabilities absent from CapEff in a /proc/<pid>/status text."""
    for line in status_text.splitlines():
        if line.startswith("CapEff:"):
            eff = int(line.split()[1], 16)
            return [name for bit, name in sorted(NEEDED.items()) if not eff >> bit & 1]
    return list(NEEDED.values())


def require() -> None:
    try:
        with open("/proc/self/status") as f:
            absent = missing(f.read())
    except OSError:  # no procfs: let the work itself say what fails
        return
    if absent:
        raise CNIError(
            PERMISSION_DENIED,
            f"cni-bridge must run as root (uid {os.getuid()} lacks {' and '.join(absent)})",
            "runtimes call CNI plugins as root; rootless runtimes from inside their user namespace",
        )
