"""Bad state never blocks teardown (issue 14 item 4).

The real plugin runs as a process in a throwaway "host" namespace. A record of each bad shape,
garbage in a reservation file and a directory where the lock file belongs: DEL and GC still
remove everything (judged by `ip -j`, `nft -j list ruleset` and the data dir), the bad file is
set aside (kept, named on stderr and by `cni-bridge ls`), and no path prints a traceback.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from cni_bridge.state import attachment_tag, host_veth_name
from tests.lab import Netns, nft, probe
from tests.lab.plugin import ROOT, PluginLab, in_host, plugin_command

pytestmark = [pytest.mark.integration, pytest.mark.plugin]

PREFIX = "cbB"
HOST_PORT = 18090
OUTSIDE_HOST = "192.0.2.1"

# Each shape a record was found in (issue 14), as the bytes put in its place; None: a
# directory where the file belongs.
SHAPES: dict[str, bytes | None] = {
    "garbage": b"\x00\x9f not json at all",
    "array": b"[1,2,3]",
    "null": b"null",
    "empty-object": b"{}",
    "string-typed": b"",  # filled from the real record: every list turned into a string
    "directory": None,
}


@pytest.fixture
def blab(tmp_path: Path) -> Iterator[PluginLab]:
    lab = PluginLab(tmp_path, prefix=PREFIX)
    try:
        yield lab
    finally:
        lab.close()


def conf_of(lab: PluginLab, **over: Any) -> dict[str, Any]:
    return lab.conf(
        cniVersion="1.1.0", macspoofchk=True, capabilities={"portMappings": True},
        ipam={"type": "host-local", "ranges": [[{"subnet": "10.66.0.0/28"}]],
              "dataDir": str(lab.data_dir)},
        **over,
    )


def with_port(conf: Mapping[str, Any], port: int) -> dict[str, Any]:
    return dict(conf, runtimeConfig={"portMappings": [
        {"hostPort": port, "containerPort": 80, "protocol": "tcp"}]})


def call(lab: PluginLab, command: str, conf: Mapping[str, Any], cid: str = "", netns: str = "",
         extra: Mapping[str, str] | None = None) -> tuple[int, Any, str]:
    """One CNI call; (exit code, the JSON it printed, its stderr)."""
    argv = in_host(lab.host, lab.env(command, cid, netns, extra=extra), plugin_command())
    proc = subprocess.run(argv, input=json.dumps(conf), capture_output=True, text=True,
                          timeout=60, cwd=ROOT)
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    out = proc.stdout.strip()
    return proc.returncode, json.loads(out) if out else None, proc.stderr


def cli(lab: PluginLab, *args: str) -> subprocess.CompletedProcess[str]:
    proc = lab.cli(*args, "--data-dir", str(lab.data_dir))
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    return proc


def state_dir(lab: PluginLab, net: str) -> Path:
    return lab.data_dir / net / ".cni-bridge"


def record_path(lab: PluginLab, net: str, cid: str) -> Path:
    return state_dir(lab, net) / f"{attachment_tag(net, cid, 'eth0')}.json"


def spoil(path: Path, shape: str) -> None:
    """Put the record in `shape`."""
    if shape == "string-typed":
        raw = json.loads(path.read_text())
        raw.update(ips=",".join(raw["ips"]), port_mappings=json.dumps(raw["port_mappings"]),
                   netns_inode=str(raw["netns_inode"]))
        path.write_text(json.dumps(raw))
        return
    data = SHAPES[shape]
    path.unlink()
    if data is None:
        path.mkdir()
        (path / "x").write_text("something")
    else:
        path.write_bytes(data)


def set_aside(lab: PluginLab, net: str) -> list[str]:
    d = state_dir(lab, net)
    return sorted(p.name.split(".set-aside-")[0] for p in d.iterdir()
                  if ".set-aside-" in p.name) if d.is_dir() else []


def elements(ns: Netns, family: str) -> list[Any]:
    """Every element of every set and map in our table of `family` (inet, bridge)."""
    out = []
    for obj in nft.ruleset(ns):
        for kind in ("set", "map"):
            s = obj.get(kind)
            if s and s["family"] == family and s["table"] == "cni_bridge":
                out += s.get("elem", [])
    return out


def addresses_on_host(ns: Netns) -> list[str]:
    return sorted(f"{a['local']}/{a['prefixlen']}" for d in ns.ip_json("addr", "show")
                  for a in d.get("addr_info", []) if a.get("scope") == "global")


def assert_nothing_left(lab: PluginLab, net: str, cids: list[str]) -> None:
    links = lab.host.links()
    for cid in cids:
        assert host_veth_name(net, cid, "eth0") not in links
    assert lab.reservations(net) == []
    assert sorted(state_dir(lab, net).glob("*.json")) == []
    assert elements(lab.host, "inet") == []
    assert elements(lab.host, "bridge") == []  # macspoofchk guards
    assert [r for r in lab.host.ip_json("route", "show") if r["dst"].startswith("10.66.")] == []
    assert addresses_on_host(lab.host) == [f"{OUTSIDE_HOST}/24"]


def attach(lab: PluginLab, conf: Mapping[str, Any], cids: list[str]) -> dict[str, Netns]:
    nss = {cid: lab.container() for cid in cids}
    for i, cid in enumerate(cids):
        code, out, err = call(lab, "ADD", with_port(conf, HOST_PORT + i), cid, nss[cid].path)
        assert code == 0, (out, err)
    assert len(elements(lab.host, "bridge")) == 2 * len(cids)  # a guarded port, a MAC each
    return nss


@pytest.mark.parametrize("shape", list(SHAPES))
def test_del_over_a_bad_record_removes_everything(blab: PluginLab, shape: str) -> None:
    conf = conf_of(blab)
    net = conf["name"]
    out_ns = blab.outside(blab.host)
    (c,) = attach(blab, conf, ["bad"]).values()
    blab.server(c, "tcp", 80, reply="hello")
    assert probe(out_ns, "tcp", OUTSIDE_HOST, HOST_PORT, timeout=3) == "hello"
    spoil(record_path(blab, net, "bad"), shape)

    listing = json.loads(cli(blab, "ls", "--json").stdout)
    assert [(r["phase"], r["hostVeth"]) for r in listing] == [
        ("unreadable", host_veth_name(net, "bad", "eth0"))]
    status = cli(blab, "status")
    assert status.returncode != 0 and str(record_path(blab, net, "bad")) in status.stdout

    code, out, err = call(blab, "DEL", with_port(conf, HOST_PORT), "bad", c.path)
    assert code == 0, (out, err)
    assert "set aside" in err and record_path(blab, net, "bad").name in err
    assert_nothing_left(blab, net, ["bad"])
    assert c.links() == ["lo"]
    assert not (probe(out_ns, "tcp", OUTSIDE_HOST, HOST_PORT, timeout=2) or "").startswith("hello")
    assert set_aside(blab, net) == [record_path(blab, net, "bad").name]
    listing = json.loads(cli(blab, "ls", "--json").stdout)
    assert [(r["phase"], Path(r["file"]).name.split(".set-aside-")[0]) for r in listing] == [
        ("set-aside", record_path(blab, net, "bad").name)]
    # A second DEL (containerd's, no netns) finds nothing more to do.
    code, out, err = call(blab, "DEL", conf, "bad", "")
    assert code == 0, (out, err)


def test_gc_over_records_of_every_bad_shape_removes_everything(blab: PluginLab) -> None:
    conf = conf_of(blab)
    net = conf["name"]
    blab.outside(blab.host)
    cids = list(SHAPES)
    attach(blab, conf, cids)
    for cid in cids:
        spoil(record_path(blab, net, cid), cid)
    code, out, err = call(blab, "GC", {**conf, "cni.dev/valid-attachments": []})
    assert code == 0, (out, err)
    assert_nothing_left(blab, net, cids)
    assert set_aside(blab, net) == sorted(record_path(blab, net, c).name for c in cids)


def test_manual_gc_removes_dead_bad_records_and_keeps_live_ones(blab: PluginLab) -> None:
    conf = conf_of(blab)
    net = conf["name"]
    blab.outside(blab.host)
    nss = attach(blab, conf, ["live", "dead"])
    for cid in nss:
        spoil(record_path(blab, net, cid), "array")
    blab.remove([nss["dead"]])
    proc = cli(blab, "gc")
    assert proc.returncode == 0, proc.stderr
    assert host_veth_name(net, "dead", "eth0") not in blab.host.links()
    assert host_veth_name(net, "live", "eth0") in blab.host.links()
    assert blab.reservations(net) == ["10.66.0.2"]  # the live one's
    assert len(elements(blab.host, "bridge")) == 2  # the live one's guard
    assert set_aside(blab, net) == sorted(record_path(blab, net, c).name for c in nss)
    # Its DEL, without a record, still removes all of it.
    code, out, err = call(blab, "DEL", with_port(conf, HOST_PORT), "live", nss["live"].path)
    assert code == 0, (out, err)
    assert_nothing_left(blab, net, ["live", "dead"])


def test_garbage_in_a_reservation_file_does_not_leak_the_address(blab: PluginLab) -> None:
    conf = conf_of(blab)
    net = conf["name"]
    blab.outside(blab.host)
    nss = attach(blab, conf, ["a", "b"])
    (blab.data_dir / net / "10.66.0.2").write_bytes(b"\x00\xffgarbage\r\n\r\n")
    (blab.data_dir / net / "10.66.0.3").unlink()
    (blab.data_dir / net / "10.66.0.3").mkdir()
    listing = json.loads(cli(blab, "ls", "--json").stdout)
    assert sorted(Path(r["file"]).name for r in listing if "file" in r) == ["10.66.0.2", "10.66.0.3"]
    code, out, err = call(blab, "DEL", conf, "a", nss["a"].path)
    assert code == 0, (out, err)
    assert "10.66.0.2" in err and "set aside" in err
    code, out, err = call(blab, "GC", {**conf, "cni.dev/valid-attachments": []})
    assert code == 0, (out, err)
    assert_nothing_left(blab, net, ["a", "b"])
    kept = sorted(p.name.split(".set-aside-")[0] for p in (blab.data_dir / net).iterdir()
                  if ".set-aside-" in p.name)
    assert kept == ["10.66.0.2", "10.66.0.3"]
    # Both addresses are handed out again.
    for cid, ip in (("c", "10.66.0.2"), ("d", "10.66.0.3")):
        code, out, err = call(blab, "ADD", conf, cid, blab.container().path,
                              extra={"CNI_ARGS": f"IP={ip}"})
        assert code == 0 and out["ips"][0]["address"] == f"{ip}/28", (out, err)


def test_a_directory_where_the_lock_file_belongs(blab: PluginLab) -> None:
    conf = conf_of(blab)
    net = conf["name"]
    blab.outside(blab.host)
    nss = attach(blab, conf, ["a"])
    lock = blab.data_dir / net / "lock"
    lock.unlink()
    lock.mkdir()
    before = blab.host.links()
    c = blab.container()
    code, out, err = call(blab, "ADD", conf, "b", c.path)
    assert code == 1 and out["code"] == 5, (out, err)
    assert str(lock) in out["msg"] and "directory" in out["msg"]
    assert blab.host.links() == before and c.links() == ["lo"]
    status = cli(blab, "status")
    assert status.returncode == 2 and str(lock) in status.stdout, status.stdout
    code, out, err = call(blab, "DEL", conf, "a", nss["a"].path)
    assert code == 0, (out, err)
    assert str(lock) in err
    code, out, err = call(blab, "GC", {**conf, "cni.dev/valid-attachments": []})
    assert code == 0, (out, err)
    assert_nothing_left(blab, net, ["a", "b"])


def test_a_file_where_the_network_directory_belongs(blab: PluginLab) -> None:
    conf = conf_of(blab)
    net = conf["name"]
    blab.data_dir.mkdir()
    (blab.data_dir / net).write_text("not a directory")
    c = blab.container()
    code, out, err = call(blab, "ADD", conf, "a", c.path)
    assert code == 1 and out["code"] == 5 and "is not a directory" in out["msg"], (out, err)
    assert c.links() == ["lo"] and conf["bridge"] not in blab.host.links()
    code, out, err = call(blab, "DEL", conf, "a", c.path)
    assert code == 0, (out, err)
