"""Which data dirs hold records for this network namespace, so the agent's watch and a plain
`cni-bridge sync` find networks whose config names a non-default `ipam.dataDir`.

ADD notes its data dir in `/run/cni-bridge/data-dirs.<netns inode>` (the agent's directory,
root's alone; one file per network namespace, as the agent's socket is): a line appended the
first time a process sees a data dir that is not listed, nothing on later ADDs.
"""

from __future__ import annotations

import os

from cni_bridge.domain import DEFAULT_DATA_DIR

_seen: set[str] = set()  # listed already (this process looked)


def _path(create: bool = False) -> str:
    from cni_bridge.resident.client import agent_dir

    directory = agent_dir(create)
    if not directory:
        return ""
    return f"{directory}/data-dirs.{os.stat('/proc/self/ns/net').st_ino}"


def known() -> list[str]:
    """The default data dir and those noted here, in the order first noted."""
    dirs = [DEFAULT_DATA_DIR]
    path = _path()
    if path:
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                dirs += [line.rstrip("\n") for line in f if line.strip()]
        except OSError:
            pass
    return list(dict.fromkeys(os.path.abspath(d) for d in dirs))


def remember(data_dir: str) -> None:
    data_dir = os.path.abspath(data_dir)
    if data_dir in _seen:
        return
    _seen.update(known())
    if data_dir in _seen:
        return
    path = _path(create=True)
    if not path or "\n" in data_dir:
        return
    # One short O_APPEND write: concurrent writers never interleave within a line.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, (data_dir + "\n").encode())
    finally:
        os.close(fd)
    _seen.add(data_dir)
