"""Which code an agent runs (its identity) and where it listens.

An agent listens on a unix socket in /run/cni-bridge (root's alone, see `agent_dir`: no
unprivileged process can squat the name or stand in for the agent), named after the protocol
version, a fingerprint of the identity (an upgraded plugin never talks to an old agent) and the
network namespace (the host side of the work is done in the agent's).

A built bundle's identity is its build id: build/build.sh makes one per build and writes it
both into the bundle (a data file) and, through `launcher_header`, into the native launcher,
so the two cannot drift apart; a mismatch is reported (cli, LAUNCHER_VAR), never silently slow.
A source or site-packages install is identified by its interpreter and its package files.
"""

import os
import sys

from cni_bridge.resident import protocol

# Root's alone (0700, owned by root; see agent_dir), so no unprivileged process can take the
# agent's name or stand in for it. Not an abstract name: anyone in the netns can bind those.
AGENT_DIR = "/run/cni-bridge"
BUILD_ID_FILE = "cni-bridge-build-id"  # in the bundle's _internal/ (sys._MEIPASS)


def package_parent() -> str:
    """The directory holding the `cni_bridge` package this module was loaded from."""
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _file_sig(path: str) -> str:
    try:
        st = os.stat(path)
    except OSError:
        return "-"
    return f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"


def _tree_sig(root: str) -> str:
    """Count, total size and newest mtime of the package's .py files (~0.2 ms for ~50 files)."""
    count = size = newest = 0
    stack = [root]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    if entry.name != "__pycache__":
                        stack.append(entry.path)
                elif entry.name.endswith(".py"):
                    st = entry.stat()
                    count += 1
                    size += st.st_size
                    newest = max(newest, st.st_mtime_ns)
            except OSError:
                continue
    return f"{count}:{size}:{newest}"


def build_identity() -> str:
    """A fingerprint of the code: any upgrade changes it, so a caller never reaches an agent
    running other code."""
    if getattr(sys, "frozen", False):
        bundle = getattr(sys, "_MEIPASS", "")
        try:
            with open(os.path.join(bundle, BUILD_ID_FILE), encoding="ascii") as f:
                return frozen_identity(f.read().strip())
        except (OSError, ValueError):  # a bundle not built by build.sh: its executable's stat
            exe = os.path.realpath(sys.executable) if sys.executable else ""
            return "|".join([f"v{protocol.PROTOCOL_VERSION}", exe, _file_sig(exe)])
    identity = "|".join([sys.executable, _file_sig(sys.executable)])
    root = os.path.join(package_parent(), "cni_bridge")
    return "|".join([f"v{protocol.PROTOCOL_VERSION}", identity, root, _tree_sig(root)])


def frozen_identity(build_id: str) -> str:
    if not build_id or not all(c in "0123456789abcdef" for c in build_id):
        raise ValueError(f"bad build id {build_id!r}")
    return f"v{protocol.PROTOCOL_VERSION}|build:{build_id}"


def name_prefix(identity: str) -> str:
    """The socket's file name up to the network namespace's inode: FNV-1a 64 of the identity
    (no hashlib: it costs ~12 ms to import)."""
    digest = 0xCBF29CE484222325
    for byte in identity.encode("utf-8", "surrogateescape"):
        digest = ((digest ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"v{protocol.PROTOCOL_VERSION}-{digest:016x}-"


def name_for(identity: str, netns_ino: int | None = None) -> str:
    """The socket's file name for an identity in this network namespace, whose inode cannot be
    reused while the agent keeps it alive."""
    netns = os.stat("/proc/self/ns/net").st_ino if netns_ino is None else netns_ino
    return f"{name_prefix(identity)}{netns}.sock"


def is_agent_lock(name: str) -> bool:
    """Whether a file name in AGENT_DIR is an agent's lock, of any protocol version (what
    `name_for` and `lock_path` make: v<version>-<16 hex digits>-<netns inode>.lock)."""
    parts = name.split("-")
    if len(parts) != 3 or not parts[2].endswith(".lock"):
        return False
    version, digest, netns = parts[0], parts[1], parts[2][: -len(".lock")]
    return (
        len(version) > 1
        and version[0] == "v"
        and version[1:].isdecimal()
        and version[1:].isascii()
        and len(digest) == 16
        and all(c in "0123456789abcdef" for c in digest)
        and netns.isdecimal()
        and netns.isascii()
    )


def agent_dir(create: bool = False) -> str:
    """AGENT_DIR if it is a directory only root can enter ("" otherwise), made if `create`.

    This is what keeps the socket from being squatted or impersonated: no unprivileged process
    can bind, replace or reach a name in it. A directory that is not root's alone is not used
    at all (callers then run in-process), since someone else could have put a socket there.
    """
    if create:
        try:
            os.mkdir(AGENT_DIR, 0o700)
        except FileExistsError:
            pass
        except OSError:
            return ""
    try:
        st = os.lstat(AGENT_DIR)
    except OSError:
        return ""
    if (st.st_mode & 0o170000) != 0o040000 or st.st_uid != 0 or st.st_mode & 0o077:
        return ""
    return AGENT_DIR


def socket_path_for(identity: str, create: bool = False) -> str:
    """The agent's socket for an identity here, or "" if AGENT_DIR is not safe to use."""
    directory = agent_dir(create)
    return directory and f"{directory}/{name_for(identity)}"


def lock_path(socket_path: str) -> str:
    """The lock an agent holds for its whole life: whoever takes it owns the socket's name."""
    return socket_path[: -len(".sock")] + ".lock"


def _c_string(text: str) -> str:
    out = []
    for byte in text.encode("utf-8", "surrogateescape"):
        ch = chr(byte)
        out.append(ch if 0x20 <= byte < 0x7F and ch not in '"\\?' else f"\\{byte:03o}")
    return '"' + "".join(out) + '"'


def launcher_header(identity: str) -> str:
    """build/launcher.c's build-time configuration: everything it must agree on with this
    package, generated from it (build.sh; tests/integration/test_launcher.py)."""
    from cni_bridge import errors
    from cni_bridge.resident import policy

    values: dict[str, object] = {
        "AGENT_IDENTITY": _c_string(identity),
        "AGENT_SOCKET_PREFIX": _c_string(f"{AGENT_DIR}/{name_prefix(identity)}"),
        "READY_TIMEOUT": policy.DEFAULT_READY_TIMEOUT,
        "LAUNCHER_VAR": _c_string(policy.LAUNCHER_VAR),
        "RELAY_VAR": _c_string(policy.RELAY_VAR),
        "RELAY_LOST": _c_string(policy.LOST),
        "K_REQUEST": protocol.REQUEST,
        "K_READY": protocol.READY,
        "K_GO": protocol.GO,
        "K_RESULT": protocol.RESULT,
        "K_EXEC": protocol.EXEC,
        "K_RUNNING": protocol.RUNNING,
        "FLAG_NETNS_FD": protocol.FLAG_NETNS_FD,
        "FLAG_MNTNS_FD": protocol.FLAG_MNTNS_FD,
        "HEADER_SIZE": protocol.HEADER.size,
        "REQUEST_HEAD": protocol._REQUEST_HEAD.size,
        "MAX_REPLY": protocol.MAX_REPLY,
        "ERR_TRY_AGAIN_LATER": errors.TRY_AGAIN_LATER,
        "ERR_INTERNAL": errors.INTERNAL,
    }
    lines = ["/* Generated from cni_bridge.resident (naming.launcher_header); do not edit. */"]
    lines += [f"#define {name} {value}" for name, value in values.items()]
    return "\n".join(lines) + "\n"


def main(argv: "list[str]") -> int:
    """`python -m cni_bridge.resident.naming BUILD_ID`: the launcher's header, on stdout."""
    if len(argv) != 1:
        sys.stderr.write("usage: python -m cni_bridge.resident.naming BUILD_ID\n")
        return 2
    sys.stdout.write(launcher_header(frozen_identity(argv[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
