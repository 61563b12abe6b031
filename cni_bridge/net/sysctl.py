"""Sysctl reads and writes through /proc/sys, in the calling thread's network namespace.

The kernel resolves /proc/sys/net/* against the opening thread's namespace, so a container's
sysctls are written by a thread that has joined it (see `netns.entered`) - never by writing
the host's files. Standard library only.
"""

from __future__ import annotations

import os

from cni_bridge.net.ops import NetError

_ROOT = "/proc/sys"


def sysctl_path(key: str) -> str:
    """`net/ipv4/conf/br0/route_localnet` (preferred: names may contain dots) or dotted form."""
    parts = key.strip("/").split("/") if "/" in key else key.split(".")
    if not parts or any(p in ("", ".", "..") for p in parts):
        raise NetError(f"invalid sysctl name {key!r}")
    return os.path.join(_ROOT, *parts)


def read(key: str) -> str | None:
    """The current value, or None when the sysctl does not exist (IPv6 disabled, no such link)."""
    try:
        with open(sysctl_path(key), encoding="ascii") as f:
            return f.read().strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise NetError(f"cannot read sysctl {key}: {exc.strerror}", errno=exc.errno) from None


def write(key: str, value: str, *, missing_ok: bool = False) -> bool:
    """Set a sysctl unless it already has the value; returns whether it was written.

    Skipping identical values keeps repeated ADDs from needing write access (and avoids the
    side effects some sysctls have on every write).
    """
    path = sysctl_path(key)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        if missing_ok:
            return False
        raise NetError(f"sysctl {key} does not exist") from None
    except OSError as exc:
        raise NetError(f"cannot open sysctl {key}: {exc.strerror}", errno=exc.errno) from None
    try:
        current = os.read(fd, 4096).decode("ascii", "replace").strip()
        if current == value.strip():
            return False
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, value.encode("ascii"))
        return True
    except OSError as exc:
        raise NetError(
            f"cannot set sysctl {key}={value}: {exc.strerror}", errno=exc.errno
        ) from None
    finally:
        os.close(fd)
