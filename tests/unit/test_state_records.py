"""Attachment records of every bad shape are refused by parse_record, set aside by the store
and named by unusable_files (issue 14 item 4); the integration side is test_badstate.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cni_bridge.state import (
    Attachment,
    BadRecord,
    StateStore,
    attachment_tag,
    parse_record,
    unusable_files,
)

NET = "net1"
TAG = attachment_tag(NET, "c1", "eth0")


def good() -> dict[str, Any]:
    att = Attachment.new(NET, "c1", "eth0", "/run/netns/x")
    att.ips = ["10.66.0.2/24"]
    att.port_mappings = [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]
    return att.to_json()


def test_a_good_record_parses() -> None:
    att = parse_record(json.dumps(good()).encode(), NET, TAG)
    assert (att.container_id, att.ips, att.host_veth) == ("c1", ["10.66.0.2/24"], "vcb" + TAG)


BAD: list[tuple[str, Any]] = [
    ("not JSON", b"{\"network\": "),
    ("empty", b""),
    ("a JSON array", [1, 2, 3]),
    ("a JSON null", None),
    ("network missing", {}),
    ("container_id missing", {**good(), "container_id": 7}),
    ("ips is not a list of strings", {**good(), "ips": "10.66.0.2/24"}),
    ("ips holds", {**good(), "ips": ["10.66.0.999/24"]}),
    ("port_mappings is not a list", {**good(), "port_mappings": "8080:80"}),
    ("lacks integer hostPort", {**good(), "port_mappings": [{"hostPort": "8080", "containerPort": 80}]}),
    ("protocol or hostIP", {**good(), "port_mappings": [{"hostPort": 1, "containerPort": 1, "protocol": 6}]}),
    ("netns_inode is not", {**good(), "netns_inode": "12"}),
    ("pid is not", {**good(), "pid": True}),
    ("mac is a number", {**good(), "mac": 5}),
    ("dns_names is not", {**good(), "dns_names": "web"}),
    ("unknown phase", {**good(), "phase": "done"}),
    ("result is not an object", {**good(), "result": "ok"}),
    ("another attachment", {**good(), "container_id": "c2"}),
    ("host_veth is not the one", {**good(), "host_veth": "eth0"}),
]


@pytest.mark.parametrize(("why", "raw"), BAD, ids=[b[0] for b in BAD])
def test_every_bad_shape_is_refused_with_its_reason(why: str, raw: Any) -> None:
    data = raw if isinstance(raw, bytes) else json.dumps(raw).encode()
    with pytest.raises(BadRecord, match=why) as info:
        parse_record(data, NET, TAG)
    assert info.value.tag == TAG


def test_store_sets_a_bad_record_aside_and_lists_it(tmp_path: Path) -> None:
    net_dir = tmp_path / NET
    store = StateStore(str(net_dir))
    (net_dir / ".cni-bridge").mkdir(parents=True)
    path = net_dir / ".cni-bridge" / f"{TAG}.json"
    path.write_text("[1,2,3]")
    other = attachment_tag(NET, "c2", "eth0")
    (net_dir / ".cni-bridge" / f"{other}.json").mkdir()  # a directory where a record belongs
    records, bad = store.scan()
    assert records == [] and sorted(b.tag for b in bad) == sorted([TAG, other])
    assert {u.tag for u in unusable_files(str(net_dir))} == {TAG, other}

    att = store.get(NET, "c1", "eth0")
    assert att is not None and not att.recorded and att.host_veth == "vcb" + TAG
    assert not path.exists()
    (kept,) = [p for p in (net_dir / ".cni-bridge").iterdir() if p.name.startswith(TAG)]
    assert kept.name.startswith(f"{TAG}.json.set-aside-") and kept.read_text() == "[1,2,3]"
    listed = {(u.tag, bool(u.reason)) for u in unusable_files(str(net_dir))}
    assert listed == {(TAG, False), (other, True)}  # set aside; still to be set aside
    assert store.has_other(TAG)  # the other's directory still counts as a record
    assert store.get(NET, "c1", "eth0") is None  # nothing to read any more


def test_a_file_where_the_state_directory_belongs_is_set_aside(tmp_path: Path) -> None:
    net_dir = tmp_path / NET
    net_dir.mkdir()
    (net_dir / ".cni-bridge").write_text("junk")
    store = StateStore(str(net_dir))
    assert store.scan()[0] == [] and [b.path for b in store.scan()[1]] == [store.dir]
    att = store.get(NET, "c1", "eth0")
    assert att is not None and not att.recorded
    store.put(Attachment.new(NET, "c1", "eth0", ""))  # the directory can be made again
    assert [a.container_id for a in store.all()] == ["c1"]
