"""Per-attachment records: what an ADD made, written before it is made.

DEL and GC work from these records, so an empty or vanished CNI_NETNS (containerd's second DEL)
still removes everything. Records live beside host-local's files, in
`<dataDir>/<network>/.cni-bridge/<tag>.json`, and are read and written under the same flock as
the reservations (the store's lock). Writes go through a temp file and rename, so a crash never
leaves half a record. Standard library only.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from dataclasses import dataclass, field, fields
from typing import Any

from cni_bridge import atomic

STATE_DIR = ".cni-bridge"
RECORD_VERSION = 1
HOST_VETH_PREFIX = "vcb"

PHASE_ADDING = "adding"
PHASE_READY = "ready"


def attachment_tag(network: str, container_id: str, ifname: str) -> str:
    """A short stable name for (network, container ID, ifname): nft tags, veth and file names."""
    digest = hashlib.sha256(f"{network}\0{container_id}\0{ifname}".encode()).hexdigest()
    return digest[:12]


def host_veth_name(network: str, container_id: str, ifname: str) -> str:
    # Deterministic, so DEL and GC find the host end without the container's namespace.
    return HOST_VETH_PREFIX + attachment_tag(network, container_id, ifname)


_BOOT_ID: str | None = None


def boot_id() -> str:
    global _BOOT_ID
    if _BOOT_ID is None:
        try:
            with open("/proc/sys/kernel/random/boot_id") as f:
                _BOOT_ID = f.read().strip()
        except OSError:
            _BOOT_ID = ""
    return _BOOT_ID


def boot_time() -> float:
    """Wall-clock time of this boot (btime of /proc/stat)."""
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("btime "):
                return float(line.split()[1])
    return 0.0


def process_start(pid: int) -> str:
    """The start time of a process (field 22 of /proc/<pid>/stat), "" if there is none: with
    the pid it names one process for good, even after the pid is reused."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return ""
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    fields = stat[stat.rfind(")") + 2 :].split()
    return fields[19] if len(fields) > 19 else ""


@dataclass
class Attachment:
    network: str
    container_id: str
    ifname: str
    netns: str = ""
    # The namespace's nsfs inode at ADD: liveness the kernel can confirm from any mount
    # namespace, where the path may not be visible (0 in records from before it was kept).
    netns_inode: int = 0
    bridge: str = ""
    host_veth: str = ""
    tag: str = ""
    boot_id: str = ""
    created: float = 0.0
    phase: str = PHASE_ADDING
    ips: list[str] = field(default_factory=list)
    port_mappings: list[dict[str, Any]] = field(default_factory=list)
    runtime_holds_ports: bool = False  # podman's conmon holds them (cni_bridge/ports/model.py)
    mac: str = ""
    # The names containerDNS serves for it (dns/): withdrawn at DEL, rebuilt from records.
    dns_names: list[str] = field(default_factory=list)
    result: dict[str, Any] | None = None
    # The process doing the ADD, so another ADD, DEL or GC can tell a crashed ADD (clean it up)
    # from one still running (leave it alone).
    pid: int = 0
    pid_start: str = ""
    # False for a stand-in built without a readable record: what it owns must be searched for.
    recorded: bool = True

    @classmethod
    def new(cls, network: str, container_id: str, ifname: str, netns: str) -> Attachment:
        return cls(
            network=network,
            container_id=container_id,
            ifname=ifname,
            netns=netns,
            host_veth=host_veth_name(network, container_id, ifname),
            tag=attachment_tag(network, container_id, ifname),
            boot_id=boot_id(),
            created=time.time(),
            pid=os.getpid(),
            pid_start=process_start(os.getpid()),
        )

    def add_in_progress(self) -> bool:
        """An ADD of this attachment is running right now (its process is alive)."""
        return (
            self.phase == PHASE_ADDING
            and self.pid > 0
            and self.boot_id == boot_id()
            and bool(self.pid_start)
            and process_start(self.pid) == self.pid_start
        )

    @property
    def key(self) -> tuple[str, str]:
        return (self.container_id, self.ifname)

    def to_json(self) -> dict[str, Any]:
        # Shallow on purpose: json.dumps only reads the nested lists and dicts, and asdict's deep
        # copies of the result cost ~0.1 ms a write (three writes per ADD).
        return {"version": RECORD_VERSION, **{name: getattr(self, name) for name in _FIELDS}}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Attachment:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


_FIELDS = tuple(f.name for f in fields(Attachment))

NETWORK_FILE = "network.conf"


def _writer_alive(tmp_name: str) -> bool:
    """Temp files are named <final>.<pid>.tmp."""
    parts = tmp_name.rsplit(".", 2)
    return len(parts) == 3 and parts[1].isdigit() and os.path.exists(f"/proc/{parts[1]}")


def _atomic_write(path: str, data: bytes) -> None:
    # A killed writer leaves the old record or the new one, never half; after a power loss
    # every attachment is gone anyway and reboot reclaim takes over (so no fsync).
    atomic.replace(path, data, f"{path}.{os.getpid()}.tmp")


class StateStore:
    """The records of one network. Callers hold the network's lock (the IPAM store's flock)."""

    def __init__(self, network_dir: str) -> None:
        self.dir = os.path.join(network_dir, STATE_DIR)

    def save_network(self, config: dict[str, Any]) -> None:
        """The network's config as of its latest ADD, so operator commands (ls, status, gc)
        can work without the runtime's config files."""
        data = json.dumps(config, sort_keys=True).encode()
        path = os.path.join(self.dir, NETWORK_FILE)
        try:
            with open(path, "rb") as f:
                if f.read() == data:
                    return
        except OSError:
            pass
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        _atomic_write(path, data)

    def load_network(self) -> dict[str, Any] | None:
        try:
            with open(os.path.join(self.dir, NETWORK_FILE), "rb") as f:
                data = json.load(f)
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def _path(self, tag: str) -> str:
        return os.path.join(self.dir, tag + ".json")

    def get(self, network: str, container_id: str, ifname: str) -> Attachment | None:
        path = self._path(attachment_tag(network, container_id, ifname))
        try:
            with open(path, "rb") as f:
                data = json.load(f)
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            # A record we cannot read is still a record of something we made: DEL removes what
            # the deterministic names let it find, and drops the unreadable file. Its boot is
            # unknown (a power loss can leave it empty), so it must not claim to be this one's:
            # reboot reclaim then goes by the reservation's age.
            att = Attachment.new(network, container_id, ifname, "")
            att.boot_id = ""
            att.pid, att.pid_start = 0, ""
            att.recorded = False
            return att
        return Attachment.from_json(data)

    def put(self, att: Attachment) -> None:
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        _atomic_write(self._path(att.tag), json.dumps(att.to_json(), sort_keys=True).encode())

    def remove(self, att: Attachment) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path(att.tag))

    def has_other(self, tag: str) -> bool:
        """Whether a record other than `tag`'s exists (names only: no record is read)."""
        try:
            with os.scandir(self.dir) as it:
                for entry in it:
                    name = entry.name
                    if name.endswith(".json") and name != tag + ".json":
                        return True
        except FileNotFoundError:
            pass
        return False

    def all(self) -> list[Attachment]:
        out: list[Attachment] = []
        try:
            names = sorted(os.listdir(self.dir))
        except FileNotFoundError:
            return out
        for name in names:
            if name == NETWORK_FILE:
                continue
            if not name.endswith(".json"):
                if name.endswith(".tmp") and not _writer_alive(name):
                    # Left by a writer killed between write and rename: never a valid record.
                    # (A live writer's is about to be renamed; callers need not hold the lock.)
                    with contextlib.suppress(OSError):
                        os.unlink(os.path.join(self.dir, name))
                continue
            try:
                with open(os.path.join(self.dir, name), "rb") as f:
                    out.append(Attachment.from_json(json.load(f)))
            except (OSError, ValueError, TypeError):
                continue
        return out
