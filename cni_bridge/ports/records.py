"""The holder's desired state: the sockets the records ask for, indexed by socket.

Every attachment record (phase ready) under the data directories in use (datadirs.py) whose
host veth is in this network namespace (another namespace's attachments, and those whose
container is gone, ask for nothing). Read in full by scan_all, one record by read_one.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable, Iterable

from cni_bridge import datadirs
from cni_bridge.ports.model import HoldKey, Wanted, first_owner, wanted_from_record
from cni_bridge.state import NETWORK_FILE, PHASE_READY, STATE_DIR

MAX_RECORD = 1 << 20

Owner = tuple[str, str]  # (network dir, record tag)


Parsed = tuple[Wanted, str, str]  # a ready record's sockets, label and host veth
FileId = tuple[int, int, int]  # inode, size, mtime: records are replaced by rename


class Records:
    def __init__(self, data_dirs: Callable[[], list[str]] = datadirs.in_use) -> None:
        self.data_dirs = data_dirs
        self.told: set[str] = set()  # data dirs ADDs named (in case the registry lost one)
        self.records: dict[Owner, Wanted] = {}
        self.wanting: dict[HoldKey, set[Owner]] = {}  # the records' index by socket
        self.labels: dict[Owner, str] = {}
        # What the last full scan parsed, by path: a rescan (the agent's loop waits for it)
        # stats each record and parses only those replaced since.
        self.parsed: dict[str, tuple[FileId, Parsed | None]] = {}

    def _read(self, path: str, names: Callable[[str], bool]) -> tuple[Wanted, str]:
        try:
            parsed = self._parse(path)
        except (OSError, ValueError):
            return {}, ""
        if parsed is None:
            return {}, ""
        wanted, label, veth = parsed
        if not names(veth):
            return {}, ""  # another namespace's attachment, or one whose container is gone
        return wanted, label

    def _parse(self, path: str, known: tuple[FileId, Parsed | None] | None = None) -> Parsed | None:
        with open(path, "rb") as f:
            if known is not None:
                st = os.fstat(f.fileno())
                if known[0] == (st.st_ino, st.st_size, st.st_mtime_ns):
                    self.parsed[path] = known
                    return known[1]
            data = json.loads(f.read(MAX_RECORD))
            st = os.fstat(f.fileno())
        parsed: Parsed | None = None
        if isinstance(data, dict) and data.get("phase") == PHASE_READY:
            veth = data.get("host_veth")
            if isinstance(veth, str):
                label = f"{data.get('network')}/{data.get('container_id')}/{data.get('ifname')}"
                parsed = wanted_from_record(data), label, veth
        if known is not None:
            self.parsed[path] = ((st.st_ino, st.st_size, st.st_mtime_ns), parsed)
        return parsed

    def scan_all(self) -> None:
        present = {name for _, name in socket.if_nameindex()}
        records: dict[Owner, Wanted] = {}
        labels: dict[Owner, str] = {}
        before, self.parsed = self.parsed, {}
        for data_dir in sorted(set(self.data_dirs()) | self.told):
            try:
                networks = os.listdir(data_dir)
            except OSError:
                continue
            for net in networks:
                net_dir = os.path.join(data_dir, net)
                state_dir = os.path.join(net_dir, STATE_DIR)
                try:
                    names = os.listdir(state_dir)
                except OSError:
                    continue
                for name in names:
                    if not name.endswith(".json") or name == NETWORK_FILE:
                        continue
                    path = os.path.join(state_dir, name)
                    try:
                        parsed = self._parse(path, before.get(path, ((-1, -1, -1), None)))
                    except (OSError, ValueError):
                        continue
                    if parsed is None or parsed[2] not in present:
                        continue
                    wanted, label = parsed[0], parsed[1]
                    if wanted:
                        owner = (net_dir, name[: -len(".json")])
                        records[owner], labels[owner] = wanted, label
        self.records, self.labels = records, labels
        self.wanting = {}
        for owner, wanted in records.items():
            for key in wanted:
                self.wanting.setdefault(key, set()).add(owner)

    def replace(self, owner: Owner, wanted: Wanted, label: str) -> list[HoldKey]:
        """One record's sockets replaced; the keys whose wanted state may have changed."""
        old = self.records.pop(owner, {})
        self.labels.pop(owner, None)
        for key in old:
            owners = self.wanting.get(key, set())
            owners.discard(owner)
            if not owners:
                self.wanting.pop(key, None)
        if wanted:
            self.records[owner], self.labels[owner] = wanted, label
            for key in wanted:
                self.wanting.setdefault(key, set()).add(owner)
        return [*old, *(k for k in wanted if k not in old)]

    def read_one(self, net_dir: str, tag: str) -> list[HoldKey]:
        def exists(veth: str) -> bool:
            try:
                socket.if_nametoindex(veth)
            except (OSError, ValueError):  # ValueError: a NUL in a record's name
                return False
            return True

        self.told.add(os.path.dirname(net_dir))
        wanted, label = self._read(os.path.join(net_dir, STATE_DIR, tag + ".json"), exists)
        return self.replace((net_dir, tag), wanted, label)

    def wanted(self, keys: Iterable[HoldKey]) -> Wanted:
        """The wanted sockets among `keys`, each with its first owner's target."""
        out: Wanted = {}
        for key in keys:
            owners = self.wanting.get(key)
            if owners:
                out[key] = self.records[first_owner(owners)][key]
        return out

    def owner_of(self, key: HoldKey) -> str:
        for owner, wanted in sorted(self.records.items()):
            if key in wanted:
                return self.labels.get(owner, "")
        return ""
