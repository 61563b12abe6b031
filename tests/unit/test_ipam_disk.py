"""The disk store: host-local's layout byte for byte, both-way compatibility with the real
reference binary, flock exclusion, and concurrent allocation from many processes.

The reference plugin needs neither root nor a network namespace for IPAM alone.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
import time
from ipaddress import ip_address, ip_network
from pathlib import Path
from typing import Any

import pytest

from cni_bridge.domain import IPAddress
from cni_bridge.ipam.allocator import IPAMConflict, allocate
from cni_bridge.ipam.disk import DiskStore, parse_owner
from cni_bridge.ipam.ranges import Range, RangeSet

REPO = Path(__file__).resolve().parents[2]
HOST_LOCAL = "/usr/lib/cni/host-local"
needs_reference = pytest.mark.skipif(
    not os.access(HOST_LOCAL, os.X_OK), reason="reference host-local plugin not installed"
)
NET = "ipamtest"


def a(s: str) -> IPAddress:
    return ip_address(s)


def rs(subnet: str) -> RangeSet:
    return (Range(ip_network(subnet)),)


def host_local_conf(data_dir: Path, subnets: list[str]) -> dict[str, Any]:
    """A network config for the reference host-local: one range set per subnet."""
    return {
        "cniVersion": "1.0.0",
        "name": NET,
        "type": "bridge",
        "ipam": {
            "type": "host-local",
            "dataDir": str(data_dir),
            "ranges": [[{"subnet": s}] for s in subnets],
        },
    }


def host_local(
    command: str, data_dir: Path, subnets: list[str], cid: str, ifname: str = "eth0", args: str = ""
) -> subprocess.CompletedProcess[bytes]:
    conf = host_local_conf(data_dir, subnets)
    env = {
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": cid,
        "CNI_NETNS": "/nonexistent/netns",
        "CNI_IFNAME": ifname,
        "CNI_PATH": os.path.dirname(HOST_LOCAL),
        "CNI_ARGS": args,
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
    }
    return subprocess.run(
        [HOST_LOCAL], input=json.dumps(conf).encode(), env=env, capture_output=True, check=False
    )


def host_local_ips(proc: subprocess.CompletedProcess[bytes]) -> list[str]:
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout)
    return [ip["address"] for ip in result["ips"]]


def files(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def test_layout_byte_for_byte(tmp_path: Path) -> None:
    store = DiskStore(NET, str(tmp_path))
    got = allocate(store, [rs("10.0.0.0/24"), rs("fd00:1::/64")], "c1", "eth0")
    assert [str(x.address) for x in got] == ["10.0.0.2/24", "fd00:1::2/64"]
    d = tmp_path / NET
    assert files(d) == {
        "10.0.0.2": b"c1\r\neth0",
        "fd00:1::2": b"c1\r\neth0",
        "last_reserved_ip.0": b"10.0.0.2",
        "last_reserved_ip.1": b"fd00:1::2",
        "lock": b"",
    }
    for name in ("10.0.0.2", "last_reserved_ip.0"):
        assert stat.S_IMODE((d / name).stat().st_mode) == 0o644


@needs_reference
def test_same_files_as_the_reference(tmp_path: Path) -> None:
    subnets = ["10.5.0.0/28", "fd00:5::/120"]
    ref_dir, our_dir = tmp_path / "ref", tmp_path / "ours"
    store = DiskStore(NET, str(our_dir))
    sets = [rs(s) for s in subnets]
    for cid, ifname in (("aaa", "eth0"), ("bbb", "eth0"), ("aaa", "net1")):
        ref = host_local_ips(host_local("ADD", ref_dir, subnets, cid, ifname))
        ours = [str(x.address) for x in allocate(store, sets, cid, ifname)]
        assert ours == ref
    ref_files, our_files = files(ref_dir / NET), files(our_dir / NET)
    assert our_files == ref_files
    assert len(our_files) == 3 * 2 + 2 + 1


@needs_reference
def test_reads_and_releases_what_the_reference_wrote(tmp_path: Path) -> None:
    subnets = ["10.6.0.0/24", "fd00:6::/64"]
    sets = [rs(s) for s in subnets]
    assert host_local_ips(host_local("ADD", tmp_path, subnets, "ref1")) == [
        "10.6.0.2/24",
        "fd00:6::2/64",
    ]
    store = DiskStore(NET, str(tmp_path))
    assert sorted(map(str, store.get_by_id("ref1", "eth0"))) == ["10.6.0.2", "fd00:6::2"]
    assert store.owner(a("fd00:6::2")) == ("ref1", "eth0")
    assert store.reservations() == {
        a("10.6.0.2"): ("ref1", "eth0"),
        a("fd00:6::2"): ("ref1", "eth0"),
    }
    assert store.last_reserved_ip("1") == a("fd00:6::2")
    # Round robin continues after the reference's last address, and the reverse too.
    assert [str(x.address) for x in allocate(store, sets, "ours1", "eth0")] == [
        "10.6.0.3/24",
        "fd00:6::3/64",
    ]
    assert host_local_ips(host_local("ADD", tmp_path, subnets, "ref2")) == [
        "10.6.0.4/24",
        "fd00:6::4/64",
    ]
    # Our duplicate check sees the reference's files.
    with pytest.raises(IPAMConflict, match="has been allocated to ref1"):
        allocate(store, sets, "ref1", "eth0")
    with store.lock():
        assert sorted(map(str, store.release_by_id("ref1", "eth0"))) == ["10.6.0.2", "fd00:6::2"]
        assert store.release_by_id("ref1", "eth0") == []  # idempotent
    assert not (tmp_path / NET / "10.6.0.2").exists()
    assert not (tmp_path / NET / "fd00:6::2").exists()


@needs_reference
def test_reference_releases_and_sees_what_we_wrote(tmp_path: Path) -> None:
    subnets = ["10.7.0.0/24", "fd00:7::/64"]
    store = DiskStore(NET, str(tmp_path))
    allocate(store, [rs(s) for s in subnets], "ours1", "eth0")
    allocate(store, [rs(s) for s in subnets], "ours2", "eth0")
    dup = host_local("ADD", tmp_path, subnets, "ours1")
    assert dup.returncode != 0
    assert b"10.7.0.2 has been allocated to ours1" in dup.stdout
    # The reference continues round robin after our last_reserved_ip files.
    assert host_local_ips(host_local("ADD", tmp_path, subnets, "ref1")) == [
        "10.7.0.4/24",
        "fd00:7::4/64",
    ]
    # A requested address we hold is not available to the reference either.
    taken = host_local("ADD", tmp_path, subnets, "ref2", args="IP=10.7.0.3")
    assert b"requested IP address 10.7.0.3 is not available" in taken.stdout
    assert host_local("DEL", tmp_path, subnets, "ours1").returncode == 0
    assert store.get_by_id("ours1", "eth0") == []
    assert sorted(os.listdir(tmp_path / NET)) == sorted(
        [
            "10.7.0.3",
            "fd00:7::3",
            "10.7.0.4",
            "fd00:7::4",
            "last_reserved_ip.0",
            "last_reserved_ip.1",
            "lock",
        ]
    )


def test_old_files_with_only_a_container_id(tmp_path: Path) -> None:
    d = tmp_path / NET
    d.mkdir()
    (d / "10.0.0.9").write_bytes(b"oldcontainer\n")
    (d / "10.0.0.10").write_bytes(b"oldcontainer\r\neth1")
    store = DiskStore(NET, str(tmp_path))
    assert store.owner(a("10.0.0.9")) == ("oldcontainer", "")
    assert sorted(map(str, store.get_by_id("oldcontainer", "eth0"))) == ["10.0.0.9"]
    with store.lock():
        # Exact matches first; the old-format file only when there are none (as host-local).
        assert store.release_by_id("oldcontainer", "eth1") == [a("10.0.0.10")]
        assert store.release_by_id("oldcontainer", "eth0") == [a("10.0.0.9")]
    assert store.reservations() == {}


def test_parse_owner_trims_like_host_local() -> None:
    assert parse_owner(b" abc\r\neth0\n") == ("abc", "eth0")
    assert parse_owner(b"abc") == ("abc", "")
    assert parse_owner(b"") == ("", "")


def test_foreign_files_are_ignored(tmp_path: Path) -> None:
    store = DiskStore(NET, str(tmp_path))
    allocate(store, [rs("10.0.0.0/24")], "c1", "eth0")
    d = tmp_path / NET
    (d / "README").write_text("c1\r\neth0")
    (d / "FD00::5").write_text("c1\r\neth0")  # not the canonical spelling host-local writes
    os.symlink("/etc/hostname", d / "10.0.0.77")
    assert store.get_by_id("c1", "eth0") == [a("10.0.0.2")]
    assert list(store.reservations()) == [a("10.0.0.2")]
    assert store.owner(a("10.0.0.77")) is None


def test_default_data_dir() -> None:
    assert DiskStore("mynet").dir == "/var/lib/cni/networks/mynet"
    assert DiskStore("mynet", "").dir == "/var/lib/cni/networks/mynet"


@pytest.mark.parametrize("network", ["", ".", "..", "a/b", "../etc", "x\0y"])
def test_network_name_must_be_one_path_component(tmp_path: Path, network: str) -> None:
    with pytest.raises(ValueError, match="network name"):
        DiskStore(network, str(tmp_path))


@pytest.mark.parametrize(
    ("cid", "ifname"),
    [
        ("../x", "eth0"),
        ("..", "eth0"),
        ("a\r\nb", "eth0"),
        ("", "eth0"),
        ("c", "a/b"),
        ("c", "eth0\n"),
    ],
)
def test_container_id_and_ifname_are_checked(tmp_path: Path, cid: str, ifname: str) -> None:
    store = DiskStore(NET, str(tmp_path))
    with store.lock(), pytest.raises(ValueError, match="invalid"):
        store.reserve(cid, ifname, a("10.0.0.5"), "0")
    assert not (tmp_path / NET / "10.0.0.5").exists()
    with store.lock(), pytest.raises(ValueError, match="range set id"):
        store.reserve("c", "eth0", a("10.0.0.5"), "../0")


def test_reserve_is_exclusive_and_release_is_idempotent(tmp_path: Path) -> None:
    store = DiskStore(NET, str(tmp_path))
    with store.lock():
        assert store.reserve("c1", "eth0", a("10.0.0.5"), "0")
        assert not store.reserve("c2", "eth0", a("10.0.0.5"), "0")
        assert store.owner(a("10.0.0.5")) == ("c1", "eth0")
        store.release(a("10.0.0.5"))
        store.release(a("10.0.0.5"))
    assert store.owner(a("10.0.0.5")) is None


def test_stale_temporaries_from_a_crash_do_not_matter(tmp_path: Path) -> None:
    d = tmp_path / NET
    d.mkdir()
    (d / ".reserve.tmp").write_bytes(b"half")
    (d / "last_reserved_ip.0.tmp").write_bytes(b"10.")
    store = DiskStore(NET, str(tmp_path))
    allocate(store, [rs("10.0.0.0/24")], "c1", "eth0")
    assert files(d) == {"10.0.0.2": b"c1\r\neth0", "last_reserved_ip.0": b"10.0.0.2", "lock": b""}


def test_bad_last_reserved_ip_is_only_a_hint(tmp_path: Path) -> None:
    d = tmp_path / NET
    d.mkdir()
    (d / "last_reserved_ip.0").write_bytes(b"garbage")
    store = DiskStore(NET, str(tmp_path))
    assert store.last_reserved_ip("0") is None
    assert str(allocate(store, [rs("10.0.0.0/24")], "c1", "eth0")[0].address) == "10.0.0.2/24"


def test_reserved_at_is_the_file_mtime(tmp_path: Path) -> None:
    store = DiskStore(NET, str(tmp_path))
    allocate(store, [rs("10.0.0.0/24")], "c1", "eth0")
    os.utime(tmp_path / NET / "10.0.0.2", (1000.0, 1234.5))
    assert store.reserved_at(a("10.0.0.2")) == 1234.5
    with pytest.raises(KeyError):
        store.reserved_at(a("10.0.0.3"))


def test_read_only_calls_do_not_create_the_directory(tmp_path: Path) -> None:
    store = DiskStore(NET, str(tmp_path))
    assert store.get_by_id("c1", "eth0") == []
    assert store.reservations() == {}
    assert store.last_reserved_ip("0") is None
    assert not (tmp_path / NET).exists()


def test_mutation_without_lock_is_refused(tmp_path: Path) -> None:
    store = DiskStore(NET, str(tmp_path))
    with pytest.raises(RuntimeError, match="without holding"):
        store.release_by_id("c1", "eth0")


def _try_flock(path: Path) -> bool:
    """Whether another process can take the flock right now."""
    code = textwrap.dedent(
        f"""
        import fcntl, os, sys
        fd = os.open({str(path)!r}, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            sys.exit(1)
        """
    )
    return subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_lock_is_an_flock_on_the_lock_file_and_reentrant(tmp_path: Path) -> None:
    store = DiskStore(NET, str(tmp_path))
    lock = tmp_path / NET / "lock"
    with store.lock():
        assert not _try_flock(lock)
        with store.lock():  # re-entrant: no self-deadlock
            assert not _try_flock(lock)
        assert not _try_flock(lock)
    assert _try_flock(lock)
    # Our lock is released even when the block raises.
    with pytest.raises(ZeroDivisionError), store.lock():
        _ = 1 / 0
    assert _try_flock(lock)


@needs_reference
def test_reference_waits_for_our_lock(tmp_path: Path) -> None:
    store = DiskStore(NET, str(tmp_path))
    conf = json.dumps(host_local_conf(tmp_path, ["10.8.0.0/24"]))
    env = {
        "CNI_COMMAND": "ADD",
        "CNI_CONTAINERID": "ref",
        "CNI_NETNS": "/x",
        "CNI_IFNAME": "eth0",
        "CNI_PATH": "/usr/lib/cni",
    }
    conf_file = tmp_path / "conf.json"
    conf_file.write_text(conf)
    with store.lock(), conf_file.open("rb") as stdin:
        proc = subprocess.Popen([HOST_LOCAL], stdin=stdin, stdout=subprocess.PIPE, env=env)
        # Whatever the scheduling, the reference must not get past our lock while we hold it.
        time.sleep(0.3)
        assert proc.poll() is None
        assert store.reservations() == {}
        assert store.reserve("ours", "eth0", a("10.8.0.2"), "0")
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert json.loads(out)["ips"][0]["address"] == "10.8.0.3/24"


_WORKER = textwrap.dedent(
    """
    import os, sys, time
    from ipaddress import ip_network
    from cni_bridge.ipam.allocator import allocate
    from cni_bridge.ipam.disk import DiskStore
    from cni_bridge.ipam.ranges import Range
    data_dir, go, cid = sys.argv[1:4]
    while not os.path.exists(go):  # start together
        time.sleep(0.002)
    sets = [(Range(ip_network("10.20.0.0/26")),), (Range(ip_network("fd00:20::/64")),)]
    got = allocate(DiskStore("ipamtest", data_dir), sets, cid, "eth0")
    print(" ".join(str(x.address.ip) for x in got))
    """
)


def _run_concurrently(tmp_path: Path, ours: int, reference: int) -> list[list[str]]:
    go = tmp_path / "go"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, str(tmp_path), str(go), f"ours{i}"],
            stdout=subprocess.PIPE,
            env=env,
        )
        for i in range(ours)
    ]
    ref_procs = []
    conf = host_local_conf(tmp_path, ["10.20.0.0/26", "fd00:20::/64"])
    conf_file = tmp_path / "conf.json"
    conf_file.write_text(json.dumps(conf))
    try:
        go.touch()
        for i in range(reference):
            ref_env = {
                "CNI_COMMAND": "ADD",
                "CNI_CONTAINERID": f"ref{i}",
                "CNI_NETNS": "/x",
                "CNI_IFNAME": "eth0",
                "CNI_PATH": "/usr/lib/cni",
            }
            with conf_file.open("rb") as stdin:
                ref_procs.append(
                    subprocess.Popen([HOST_LOCAL], stdin=stdin, stdout=subprocess.PIPE, env=ref_env)
                )
        results: list[list[str]] = []
        for p in procs:
            out, _ = p.communicate(timeout=120)
            assert p.returncode == 0
            results.append(out.decode().split())
        for p in ref_procs:
            out, _ = p.communicate(timeout=120)
            assert p.returncode == 0, out
            results.append([ip["address"].split("/")[0] for ip in json.loads(out)["ips"]])
        return results
    finally:
        for p in procs + ref_procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def _check_distinct(tmp_path: Path, results: list[list[str]], n: int) -> None:
    v4 = [r[0] for r in results]
    v6 = [r[1] for r in results]
    assert len(set(v4)) == n and len(set(v6)) == n
    assert all(ip_address(x) in ip_network("10.20.0.0/26") and x != "10.20.0.1" for x in v4)
    store = DiskStore(NET, str(tmp_path))
    assert len(store.reservations()) == 2 * n
    assert {str(ip) for ip in store.reservations()} == set(v4) | set(v6)


def test_thirty_processes_get_distinct_addresses(tmp_path: Path) -> None:
    results = _run_concurrently(tmp_path, ours=30, reference=0)
    _check_distinct(tmp_path, results, 30)


@needs_reference
def test_concurrent_with_the_reference(tmp_path: Path) -> None:
    results = _run_concurrently(tmp_path, ours=12, reference=12)
    _check_distinct(tmp_path, results, 24)


# ---------------------------------------------------------------- garbage in the store (#14.4)


@pytest.mark.parametrize("data", [b"", b"\xff\xfe\x00junk", b"a\r\nb\r\nc",
                                  b"../etc\r\neth0", b"c1\r\neth\x07", b"   \n"])
def test_garbage_owner_is_unreadable(data: bytes) -> None:
    from cni_bridge.ipam.store import UNREADABLE

    assert parse_owner(data) == UNREADABLE


def test_host_local_owners_still_parse() -> None:
    assert parse_owner(b"c1\r\neth0") == ("c1", "eth0")
    assert parse_owner(b"  c1\r\neth0\n") == ("c1", "eth0")
    assert parse_owner(b"c1") == ("c1", "")


def test_a_garbage_or_directory_reservation_is_set_aside_on_release(tmp_path: Path) -> None:
    from cni_bridge.ipam.store import UNREADABLE

    store = DiskStore(NET, str(tmp_path))
    d = tmp_path / NET
    d.mkdir()
    (d / "10.0.0.5").write_bytes(b"\x00\x01garbage")
    (d / "10.0.0.6").mkdir()
    assert store.reservations() == {a("10.0.0.5"): UNREADABLE, a("10.0.0.6"): UNREADABLE}
    assert sorted(store.unreadable()) == [str(d / "10.0.0.5"), str(d / "10.0.0.6")]
    with store.lock():
        store.release(a("10.0.0.5"))
        store.release(a("10.0.0.6"))
    assert store.reservations() == {}
    kept = sorted(p.name for p in d.iterdir() if ".set-aside-" in p.name)
    assert [k.split(".set-aside-")[0] for k in kept] == ["10.0.0.5", "10.0.0.6"]
    # Both addresses can be handed out again.
    with store.lock():
        assert store.reserve("c1", "eth0", a("10.0.0.5"), "0")
        assert store.reserve("c1", "eth0", a("10.0.0.6"), "0")


def test_a_directory_in_the_lock_files_place(tmp_path: Path) -> None:
    from cni_bridge.ipam.disk import StoreUnusable

    (tmp_path / NET / "lock").mkdir(parents=True)
    with pytest.raises(StoreUnusable, match="is a directory where the lock file"), \
            DiskStore(NET, str(tmp_path)).lock():
        pass
    # Teardown locks the directory instead, and excludes another teardown meanwhile.
    first = DiskStore(NET, str(tmp_path), teardown=True)
    with first.lock():
        probe = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(f"""
                import fcntl, os
                fd = os.open({str(tmp_path / NET / "lock")!r}, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    print("held")
            """)], capture_output=True, text=True, check=True)
        assert probe.stdout.strip() == "held"


def test_a_file_where_the_store_directory_belongs(tmp_path: Path) -> None:
    from cni_bridge.ipam.disk import StoreUnusable

    (tmp_path / NET).write_text("not a directory")
    with pytest.raises(StoreUnusable, match="is not a directory"), \
            DiskStore(NET, str(tmp_path), teardown=True).lock():
        pass
