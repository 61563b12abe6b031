"""Per-attachment records: what an ADD made, written before it is made.

DEL and GC work from these records, so an empty or vanished CNI_NETNS (containerd's second DEL)
still removes everything. Records live beside host-local's files, in
`<dataDir>/<network>/.cni-bridge/<tag>.json`, and are read and written under the same flock as
the reservations (the store's lock). Writes go through a temp file and rename, so a crash never
leaves half a record. Standard library only.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import os
import time

from cni_bridge import atomic
from cni_bridge.digest import sha256_hex
from cni_bridge.log import getLogger
from cni_bridge.slotted import Slotted
from cni_bridge.tuples import NamedTuple

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

log = getLogger(__name__)

STATE_DIR = ".cni-bridge"
RECORD_VERSION = 1
HOST_VETH_PREFIX = "vcb"

PHASE_ADDING = "adding"
PHASE_READY = "ready"


def attachment_tag(network: str, container_id: str, ifname: str) -> str:
    """A short stable name for (network, container ID, ifname): nft tags, veth and file names."""
    digest = sha256_hex(f"{network}\0{container_id}\0{ifname}".encode())
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
        with open(f"/proc/{pid}/stat", errors="replace") as f:  # any name
            stat = f.read()
    except OSError:
        return ""
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    fields = stat[stat.rfind(")") + 2 :].split()
    return fields[19] if len(fields) > 19 else ""


# The fields of a record, as its JSON names them (and Attachment's attributes).
_FIELDS = (
    "network", "container_id", "ifname", "netns", "netns_inode", "netns_cookie", "bridge",
    "host_veth", "tag", "boot_id", "created", "phase", "ips", "port_mappings",
    "runtime_holds_ports", "mac", "dns_names", "result", "pid", "pid_start", "recorded",
)


class Attachment(Slotted):
    """A record as the program holds it (a plain class, not a dataclass: see slotted.py)."""

    __slots__ = _FIELDS

    def __init__(
        self,
        network: str,
        container_id: str,
        ifname: str,
        netns: str = "",
        # The namespace's nsfs inode at ADD: liveness the kernel can confirm from any mount
        # namespace, where the path may not be visible (0 in records from before it was kept).
        netns_inode: int = 0,
        # Its cookie (SO_NETNS_COOKIE), which unlike the inode number is never reused: an inode
        # match is a live namespace only if the cookie matches too (0: not kept, or no kernel
        # support; the inode alone then).
        netns_cookie: int = 0,
        bridge: str = "",
        host_veth: str = "",
        tag: str = "",
        boot_id: str = "",
        created: float = 0.0,
        phase: str = PHASE_ADDING,
        ips: list[str] | None = None,
        port_mappings: list[dict[str, Any]] | None = None,
        runtime_holds_ports: bool = False,  # podman's conmon holds them (cni_bridge/ports/model.py)
        mac: str = "",
        # The names containerDNS serves for it (dns/): withdrawn at DEL, rebuilt from records.
        dns_names: list[str] | None = None,
        result: dict[str, Any] | None = None,
        # The process doing the ADD, so another ADD, DEL or GC can tell a crashed ADD (clean it
        # up) from one still running (leave it alone).
        pid: int = 0,
        pid_start: str = "",
        # False for a stand-in built without a readable record: what it owns must be searched for.
        recorded: bool = True,
    ) -> None:
        self.network = network
        self.container_id = container_id
        self.ifname = ifname
        self.netns = netns
        self.netns_inode = netns_inode
        self.netns_cookie = netns_cookie
        self.bridge = bridge
        self.host_veth = host_veth
        self.tag = tag
        self.boot_id = boot_id
        self.created = created
        self.phase = phase
        self.ips: list[str] = [] if ips is None else ips
        self.port_mappings: list[dict[str, Any]] = [] if port_mappings is None else port_mappings
        self.runtime_holds_ports = runtime_holds_ports
        self.mac = mac
        self.dns_names: list[str] = [] if dns_names is None else dns_names
        self.result = result
        self.pid = pid
        self.pid_start = pid_start
        self.recorded = recorded

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
        return cls(**{k: v for k, v in data.items() if k in _KNOWN})


_KNOWN = frozenset(_FIELDS)


# --------------------------------------------------------------------- reading a record


class BadRecord(Exception):
    """A file in a record's place that is not a record we can act on."""

    def __init__(self, path: str, reason: str, tag: str = "") -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason
        self.tag = tag  # the attachment's tag, from the file's name ("" for the directory)


_STR_FIELDS = ("netns", "bridge", "host_veth", "tag", "boot_id", "phase", "mac", "pid_start")
_INT_FIELDS = ("netns_inode", "netns_cookie", "pid")
_PORT_INTS = ("hostPort", "containerPort", "hostPortEnd")
_PORT_STRS = ("protocol", "hostIP")


def _json_kind(value: object) -> str:
    kinds = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return kinds.get(type(value), "number")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _shape_problem(raw: dict[str, Any]) -> str:
    """Why `raw` is not a record's JSON (\"\" when it is one): every field this version acts
    on has its type, so DEL and GC never act on a value of the wrong kind."""
    for name in ("network", "container_id", "ifname"):
        if not isinstance(raw.get(name), str) or not raw[name]:
            return f"{name} missing or not a non-empty string"
    for name in _STR_FIELDS:
        if name in raw and not isinstance(raw[name], str):
            return f"{name} is a {_json_kind(raw[name])}, not a string"
    for name in _INT_FIELDS:
        if name in raw and (not _is_int(raw[name]) or raw[name] < 0):
            return f"{name} is not a non-negative integer"
    if "created" in raw and (isinstance(raw["created"], bool)
                             or not isinstance(raw["created"], (int, float))):
        return "created is not a number"
    if "version" in raw and not _is_int(raw["version"]):
        return "version is not an integer"
    if raw.get("phase", PHASE_ADDING) not in (PHASE_ADDING, PHASE_READY):
        return f"unknown phase {raw['phase']!r}"
    if "recorded" in raw and not isinstance(raw["recorded"], bool):
        return "recorded is not a boolean"
    if "result" in raw and raw["result"] is not None and not isinstance(raw["result"], dict):
        return "result is not an object"
    ips = raw.get("ips", [])
    if not isinstance(ips, list) or not all(isinstance(ip, str) for ip in ips):
        return "ips is not a list of strings"
    for ip in ips:
        try:
            ipaddress.ip_interface(ip)
        except ValueError:
            return f"ips holds {ip!r}, not an address"
    names = raw.get("dns_names", [])
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        return "dns_names is not a list of strings"
    pms = raw.get("port_mappings", [])
    if not isinstance(pms, list) or not all(isinstance(pm, dict) for pm in pms):
        return "port_mappings is not a list of objects"
    for pm in pms:
        if not all(_is_int(pm.get(k)) for k in ("hostPort", "containerPort")):
            return "a port mapping lacks integer hostPort and containerPort"
        if any(k in pm and not _is_int(pm[k]) for k in _PORT_INTS):
            return "a port mapping holds a port that is not an integer"
        if any(k in pm and not isinstance(pm[k], str) for k in _PORT_STRS):
            return "a port mapping's protocol or hostIP is not a string"
    return ""


def parse_record(data: bytes, network: str, tag: str, path: str = "") -> Attachment:
    """The attachment a record's bytes describe, or BadRecord saying why they do not: not
    JSON, not an object, a field of the wrong type, or names that do not lead to this file
    (which would let a record name a link that is not ours for DEL to delete)."""
    where = path or f"{tag}.json"
    try:
        raw = json.loads(data)
    except ValueError as exc:  # UnicodeDecodeError is one
        raise BadRecord(where, f"not JSON ({exc})" if data.strip() else "empty", tag) from None
    if not isinstance(raw, dict):
        raise BadRecord(where, f"a JSON {_json_kind(raw)}, not an object", tag)
    problem = _shape_problem(raw)
    if problem:
        raise BadRecord(where, problem, tag)
    derived = attachment_tag(raw["network"], raw["container_id"], raw["ifname"])
    if raw["network"] != network or derived != tag:
        raise BadRecord(where, "it describes another attachment than its file name says", tag)
    for name, value in (("tag", derived), ("host_veth", HOST_VETH_PREFIX + derived)):
        if raw.get(name, value) != value:
            raise BadRecord(where, f"its {name} is not the one its names derive", tag)
    return Attachment.from_json(raw)


def stand_in(network: str, tag: str) -> Attachment:
    """An attachment known only by its tag (its record unreadable, its names lost): what the
    tag derives (host veth, nftables elements, macspoofchk guard) is all it can be found by."""
    return Attachment(
        network=network, container_id="", ifname="", tag=tag,
        host_veth=HOST_VETH_PREFIX + tag, recorded=False,
    )


# A NamedTuple, not a frozen dataclass: the same immutable, hashable record, without the six
# methods a frozen dataclass compiles at import (~2.5 M instructions of every cold exec).
class Unusable(NamedTuple):
    """A file an operator should look at: set aside already, or to be set aside by the next
    DEL or GC of the network."""

    path: str
    reason: str  # "" for a file set aside earlier (its warning said why)
    tag: str = ""  # the attachment's, for a record


def unusable_files(network_dir: str) -> list[Unusable]:
    """The network's records that cannot be read and the files set aside earlier (records,
    reservation files, a state directory that was a file): what `ls` and `status` name."""
    out = [Unusable(b.path, b.reason, b.tag) for b in StateStore(network_dir).scan()[1]]
    for where in (network_dir, os.path.join(network_dir, STATE_DIR)):
        try:
            names = sorted(os.listdir(where))
        except OSError:
            continue
        for name in names:
            if atomic.is_set_aside(name):
                original = name[: name.index(atomic.SET_ASIDE_MARK)]
                tag = original[: -len(".json")] if where != network_dir else ""
                out.append(Unusable(os.path.join(where, name), "", tag))
    return out

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
        # host-local's layout: the network's directory is named after it.
        self.network = os.path.basename(os.path.normpath(network_dir))

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
        """The record of the attachment; None when there is none. A record that cannot be
        trusted is set aside (the caller holds the lock) and a stand-in is returned that knows
        only what the names derive: `recorded` is False, so its owner searches for what it
        made instead of believing a list."""
        tag = attachment_tag(network, container_id, ifname)
        try:
            return self._load(tag)
        except FileNotFoundError:
            return None
        except BadRecord as exc:
            self.set_aside(exc)
        # Its boot is unknown (a power loss can leave it empty), so it must not claim to be
        # this one's: reboot reclaim then goes by the reservation's age.
        att = Attachment.new(network, container_id, ifname, "")
        att.boot_id = ""
        att.pid, att.pid_start = 0, ""
        att.recorded = False
        return att

    def _load(self, tag: str) -> Attachment:
        """Raises FileNotFoundError when there is no record, BadRecord when it is not one."""
        path = self._path(tag)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            raise
        except OSError as exc:
            if exc.errno == errno.ENOTDIR:  # the state directory itself is a file
                raise BadRecord(self.dir, "not a directory") from None
            raise BadRecord(path, exc.strerror or str(exc), tag) from None
        return parse_record(data, self.network, tag, path)

    def scan(self) -> tuple[list[Attachment], list[BadRecord]]:
        """Every record, and every file in the records' place that is not one (set-aside
        files are not listed: see set_aside_files). Reads only; needs no lock."""
        good: list[Attachment] = []
        bad: list[BadRecord] = []
        try:
            names = sorted(os.listdir(self.dir))
        except FileNotFoundError:
            return good, bad
        except OSError as exc:
            return good, [BadRecord(self.dir, exc.strerror or str(exc))]
        for name in names:
            if name == NETWORK_FILE or atomic.is_set_aside(name):
                continue
            if not name.endswith(".json"):
                if name.endswith(".tmp") and not _writer_alive(name):
                    # Left by a writer killed between write and rename: never a valid record.
                    # (A live writer's is about to be renamed; callers need not hold the lock.)
                    try:  # noqa: SIM105 - contextlib stays off the exec path
                        os.unlink(os.path.join(self.dir, name))
                    except OSError:
                        pass
                continue
            try:
                good.append(self._load(name[: -len(".json")]))
            except FileNotFoundError:
                continue  # removed meanwhile
            except BadRecord as exc:
                bad.append(exc)
        return good, bad

    def set_aside(self, bad: BadRecord) -> str:
        """Move a bad record (or the whole state directory, when that is not a directory) out
        of the way, kept for the operator; the caller holds the lock. Returns its new path."""
        try:
            new = atomic.set_aside(bad.path, time.time())
        except FileNotFoundError:
            return ""  # set aside meanwhile by another holder of a stale view
        log.warning(
            "attachment record %s is unusable (%s): set aside as %s; what it described is "
            "removed by what the names derive (see `cni-bridge ls`)",
            bad.path, bad.reason, new,
        )
        return new

    def put(self, att: Attachment) -> None:
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        _atomic_write(self._path(att.tag), json.dumps(att.to_json(), sort_keys=True).encode())

    def remove(self, att: Attachment) -> None:
        try:  # noqa: SIM105 - contextlib stays off the exec path
            os.unlink(self._path(att.tag))
        except (FileNotFoundError, NotADirectoryError):
            pass

    def has_other(self, tag: str) -> bool:
        """Whether a record other than `tag`'s exists (names only: no record is read)."""
        try:
            with os.scandir(self.dir) as it:
                for entry in it:
                    name = entry.name
                    if name.endswith(".json") and name != tag + ".json":
                        return True
        except (FileNotFoundError, NotADirectoryError):
            pass
        return False

    def all(self) -> list[Attachment]:
        """The readable records (the others: scan)."""
        return self.scan()[0]
