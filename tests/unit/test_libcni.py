"""The libcni client against fake plugins: scripts that record their env and stdin and answer.

No root needed: nothing here touches the network, only files under tmp_path.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from cni_bridge import libcni
from cni_bridge.domain import MAX_NETWORK_NAME
from cni_bridge.errors import INVALID_CONFIG, CNIError
from cni_bridge.libcni import cache, cli
from cni_bridge.protocol.versions import CURRENT_VERSION

FAKE_PLUGIN = """#!{python}
import json, os, sys, time
LOG = {log!r}
data = sys.stdin.read() if os.environ.get("CNI_COMMAND") != "NOREAD" else ""
conf = json.loads(data) if data else {{}}
cmd = os.environ.get("CNI_COMMAND")
me = os.path.basename(sys.argv[0])
env = {{k: v for k, v in os.environ.items() if k.startswith("CNI_")}}
with open(LOG, "a") as fh:
    fh.write(json.dumps({{"plugin": me, "env": env, "stdin": conf, "stdin_len": len(data)}}) + "\\n")
fake = conf.get("fake", {{}})
if cmd == "VERSION":
    print(json.dumps({{"cniVersion": conf.get("cniVersion"), "supportedVersions": ["1.0.0", "1.1.0"]}}))
    sys.exit(0)
if fake.get("sleep"):
    time.sleep(fake["sleep"])
fail = fake.get("fail", {{}}).get(cmd)
if fail == "stderr":
    sys.stderr.write("boom on stderr\\n")
    sys.exit(3)
if fail:
    print(json.dumps(fail))
    sys.exit(1)
if cmd == "ADD":
    prev = conf.get("prevResult") or {{"cniVersion": conf.get("cniVersion"), "ips": []}}
    res = dict(prev)
    res["interfaces"] = prev.get("interfaces", []) + [{{"name": me + "-if"}}]
    if fake.get("ip"):
        res["ips"] = prev.get("ips", []) + [{{"address": fake["ip"]}}]
    if fake.get("big"):
        res["padding"] = "x" * fake["big"]
    if fake.get("noversion"):
        res.pop("cniVersion", None)
    sys.stderr.write("note from " + me + "\\n")
    print(json.dumps(res))
"""


class Env:
    """A private CNI world: net.d, a plugin dir, a cache dir and the plugins' call log."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.netd = root / "net.d"
        self.bin = root / "bin"
        self.cache = root / "cache"
        self.log = root / "calls.jsonl"
        self.netd.mkdir()
        self.bin.mkdir()
        for name in ("alpha", "beta", "gamma"):
            path = self.bin / name
            path.write_text(FAKE_PLUGIN.format(python=sys.executable, log=str(self.log)))
            path.chmod(0o755)

    def write_conflist(
        self,
        name: str,
        plugins: list[dict[str, Any]],
        version: str = "1.0.0",
        filename: str | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        conf = {"cniVersion": version, "name": name, "plugins": plugins, **extra}
        (self.netd / (filename or f"{name}.conflist")).write_text(json.dumps(conf))
        return conf

    def environ(self, **extra: str) -> dict[str, str]:
        env = {
            "NETCONFPATH": str(self.netd),
            "CNI_PATH": f"{self.root}/nothing-here:{self.bin}",
            "CNI_CACHE_DIR": str(self.cache),
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        }
        env.update(extra)
        return env

    def calls(self) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def reset(self) -> None:
        if self.log.exists():
            self.log.unlink()

    def run(self, *argv: str, **extra: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        code = cli.main(list(argv), environ=self.environ(**extra), stdout=out, stderr=err)
        return code, out.getvalue(), err.getvalue()

    def cache_files(self) -> list[str]:
        d = self.cache / "results"
        return sorted(p.name for p in d.iterdir()) if d.exists() else []


@pytest.fixture
def world(tmp_path: Path) -> Env:
    return Env(tmp_path)


NETNS = "/run/netns/fake-ns"
CID = "c1"
PORTS = {"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]}


def chain() -> list[dict[str, Any]]:
    return [
        {"type": "alpha", "fake": {"ip": "10.0.0.2/24"}, "capabilities": {"portMappings": False}},
        {"type": "beta", "capabilities": {"portMappings": True, "bandwidth": True}},
    ]


# --------------------------------------------------------------------------- config loading


def test_load_conflist_picks_by_name_in_sorted_order(world: Env) -> None:
    world.write_conflist("net", [{"type": "alpha"}], filename="20-net.conflist")
    world.write_conflist("net", [{"type": "beta"}], filename="10-net.conflist")
    world.write_conflist("other", [{"type": "gamma"}], filename="05-other.conflist")
    conf = libcni.load_conflist(str(world.netd), "net")
    assert [p["type"] for p in conf.plugins] == ["beta"]
    assert conf.raw == (world.netd / "10-net.conflist").read_bytes()


def test_single_conf_is_wrapped_into_a_list(world: Env) -> None:
    (world.netd / "10-single.conf").write_text(
        json.dumps({"cniVersion": "0.4.0", "name": "single", "type": "alpha"})
    )
    conf = libcni.load_conflist(str(world.netd), "single")
    assert conf.name == "single"
    assert conf.cni_version == "0.4.0"
    assert [p["type"] for p in conf.plugins] == ["alpha"]


def test_missing_network_and_empty_dir_are_config_errors(world: Env) -> None:
    with pytest.raises(CNIError) as empty:
        libcni.load_conflist(str(world.netd), "net")
    assert empty.value.code == 7
    assert "no net configurations found" in empty.value.msg
    world.write_conflist("net", [{"type": "alpha"}])
    with pytest.raises(CNIError) as missing:
        libcni.load_conflist(str(world.netd), "absent")
    assert 'no net configuration with name "absent"' in missing.value.msg


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"{not json", 6),
        (b'{"cniVersion": "1.0.0", "plugins": [{"type": "a"}]}', 7),
        (b'{"name": "n", "plugins": []}', 7),
        (b'{"name": "n", "plugins": [{"name": "no type"}]}', 7),
        (b'{"name": "n", "disableCheck": "maybe", "plugins": [{"type": "a"}]}', 7),
    ],
)
def test_malformed_conflists_are_rejected(body: bytes, code: int) -> None:
    with pytest.raises(CNIError) as err:
        libcni.conflist_from_bytes(body)
    assert err.value.code == code


# --------------------------------------------------------------------------- ADD


def test_add_runs_the_chain_in_order_with_prev_result_and_capabilities(world: Env) -> None:
    world.write_conflist("net", chain())
    code, out, err = world.run(
        "add", "net", NETNS, CNI_CONTAINERID=CID, CNI_ARGS="A=1;B=2", CAP_ARGS=json.dumps(PORTS)
    )
    assert code == 0, (out, err)
    calls = world.calls()
    assert [c["plugin"] for c in calls] == ["alpha", "beta"]
    for call in calls:
        forced = {k: v for k, v in call["env"].items() if k != "CNI_CACHE_DIR"}  # inherited
        assert forced == {
            "CNI_COMMAND": "ADD",
            "CNI_CONTAINERID": CID,
            "CNI_NETNS": NETNS,
            "CNI_IFNAME": "eth0",
            "CNI_ARGS": "A=1;B=2",
            "CNI_PATH": f"{world.root}/nothing-here:{world.bin}",
        }
        assert call["stdin"]["name"] == "net"
        assert call["stdin"]["cniVersion"] == "1.0.0"
    first, second = calls[0]["stdin"], calls[1]["stdin"]
    assert "prevResult" not in first
    # alpha declares portMappings false: nothing injected; beta declares it true.
    assert "runtimeConfig" not in first
    assert second["runtimeConfig"] == PORTS  # bandwidth declared but not supplied
    assert second["prevResult"]["interfaces"] == [{"name": "alpha-if"}]
    result = json.loads(out)
    assert result["interfaces"] == [{"name": "alpha-if"}, {"name": "beta-if"}]
    assert result["ips"] == [{"address": "10.0.0.2/24"}]
    assert out.startswith('{\n    "')  # four-space indent, as libcni's Print
    assert "note from alpha" in err  # plugin stderr is passed through


def test_add_writes_a_libcni_compatible_cache_entry(world: Env) -> None:
    conf = world.write_conflist("net", chain())
    code, out, _ = world.run(
        "add", "net", NETNS, CNI_CONTAINERID=CID, CNI_ARGS="A=1", CAP_ARGS=json.dumps(PORTS)
    )
    assert code == 0
    assert world.cache_files() == [f"net-{CID}-eth0"]
    path = world.cache / "results" / f"net-{CID}-eth0"
    entry = json.loads(path.read_text())
    assert entry["kind"] == "cniCacheV1"
    assert entry["containerId"] == CID
    assert entry["ifName"] == "eth0"
    assert entry["networkName"] == "net"
    assert entry["netns"] == NETNS
    assert entry["cniArgs"] == [["A", "1"]]
    assert entry["capabilityArgs"] == PORTS
    assert entry["result"] == json.loads(out)
    assert json.loads(base64.b64decode(entry["config"])) == conf
    assert path.stat().st_mode & 0o777 == 0o600


def test_container_id_defaults_to_cnitools_hash_and_ifname_to_env(
    world: Env, tmp_path: Path
) -> None:
    world.write_conflist("net", [{"type": "alpha"}])
    netns = tmp_path / "ns"
    netns.write_text("")
    code, _, _ = world.run("add", "net", str(netns), CNI_IFNAME="net1")
    assert code == 0
    expected = "cnitool-" + hashlib.sha512(str(netns).encode()).digest()[:10].hex()
    env = world.calls()[0]["env"]
    assert env["CNI_CONTAINERID"] == expected
    assert env["CNI_IFNAME"] == "net1"
    assert world.cache_files() == [f"net-{expected}-net1"]


def test_relative_netns_is_made_absolute(
    world: Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    world.write_conflist("net", [{"type": "alpha"}])
    monkeypatch.chdir(tmp_path)
    code, _, _ = world.run("add", "net", "./ns-file", CNI_CONTAINERID=CID)
    assert code == 0
    assert world.calls()[0]["env"]["CNI_NETNS"] == str(tmp_path / "ns-file")


def test_add_failure_prints_the_plugins_error_and_stops(world: Env) -> None:
    error = {"cniVersion": "1.0.0", "code": 11, "msg": "try later", "details": "busy"}
    world.write_conflist(
        "net",
        [{"type": "alpha"}, {"type": "beta", "fake": {"fail": {"ADD": error}}}, {"type": "gamma"}],
    )
    code, out, err = world.run("add", "net", NETNS, CNI_CONTAINERID=CID)
    assert code == 1
    assert json.loads(out) == error
    assert 'plugin type="beta" failed (add): try later; busy' in err
    assert [c["plugin"] for c in world.calls()] == ["alpha", "beta"]
    assert world.cache_files() == []


def test_plugin_failing_without_json_is_reported_from_stderr(world: Env) -> None:
    world.write_conflist("net", [{"type": "alpha", "fake": {"fail": {"ADD": "stderr"}}}])
    code, out, _ = world.run("add", "net", NETNS, CNI_CONTAINERID=CID)
    assert code == 1
    error = json.loads(out)
    assert error["code"] == 999
    assert "boom on stderr" in error["msg"]
    assert "exit status 3" in error["msg"]


def test_result_without_version_gets_the_configs(world: Env) -> None:
    world.write_conflist("net", [{"type": "alpha", "fake": {"noversion": True}}], version="0.4.0")
    code, out, _ = world.run("add", "net", NETNS, CNI_CONTAINERID=CID)
    assert code == 0
    assert json.loads(out)["cniVersion"] == "0.4.0"


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        ({"CNI_CONTAINERID": "../escape"}, "containerID"),
        ({"CNI_CONTAINERID": CID, "CNI_IFNAME": "much-too-long-ifname"}, "interface name"),
        ({"CNI_CONTAINERID": CID, "CNI_ARGS": "novalue"}, "CNI_ARGS"),
        ({"CNI_CONTAINERID": CID, "CAP_ARGS": "[1]"}, "CAP_ARGS"),
    ],
)
def test_bad_runtime_inputs_fail_before_any_plugin_runs(
    world: Env, extra: dict[str, str], fragment: str
) -> None:
    world.write_conflist("net", [{"type": "alpha"}])
    code, out, _ = world.run("add", "net", NETNS, **extra)
    assert code == 1
    error = json.loads(out)
    assert error["code"] == 4
    assert fragment in error["msg"]
    assert world.calls() == []


def test_missing_plugin_is_an_invalid_config_like_a_delegated_one(world: Env) -> None:
    world.write_conflist("net", [{"type": "alpha"}, {"type": "delta"}])
    code, out, _ = world.run("add", "net", NETNS, CNI_CONTAINERID=CID)
    assert code == 1
    error = json.loads(out)
    assert error["code"] == 7
    assert error["msg"] == f'failed to find plugin "delta" in path [{world.root}/nothing-here {world.bin}]'


def test_plugin_type_cannot_escape_cni_path(world: Env) -> None:
    world.write_conflist("net", [{"type": "../bin/alpha"}])
    code, out, _ = world.run("add", "net", NETNS, CNI_CONTAINERID=CID)
    assert code == 1
    assert "invalid plugin name" in json.loads(out)["msg"]
    assert world.calls() == []


# --------------------------------------------------------------------------- DEL / CHECK


def test_del_runs_in_reverse_with_the_cached_result_and_drops_the_cache(world: Env) -> None:
    world.write_conflist("net", chain())
    _, added, _ = world.run("add", "net", NETNS, CNI_CONTAINERID=CID, CAP_ARGS=json.dumps(PORTS))
    world.reset()
    code, out, _ = world.run("del", "net", NETNS, CNI_CONTAINERID=CID)
    assert (code, out) == (0, "")
    calls = world.calls()
    assert [c["plugin"] for c in calls] == ["beta", "alpha"]
    assert all(c["env"]["CNI_COMMAND"] == "DEL" for c in calls)
    assert all(c["stdin"]["prevResult"] == json.loads(added) for c in calls)
    # CAP_ARGS unset: the capability args of the ADD come from the cache.
    assert calls[0]["stdin"]["runtimeConfig"] == PORTS
    assert world.cache_files() == []


def test_del_without_cache_runs_without_prev_result(world: Env) -> None:
    world.write_conflist("net", chain())
    code, _, _ = world.run("del", "net", NETNS, CNI_CONTAINERID=CID, CAP_ARGS="{}")
    assert code == 0
    calls = world.calls()
    assert [c["plugin"] for c in calls] == ["beta", "alpha"]
    assert all("prevResult" not in c["stdin"] for c in calls)
    assert all("runtimeConfig" not in c["stdin"] for c in calls)


def test_del_below_040_gets_no_prev_result_but_still_drops_the_cache(world: Env) -> None:
    world.write_conflist("net", [{"type": "alpha"}], version="0.3.1")
    world.run("add", "net", NETNS, CNI_CONTAINERID=CID)
    assert world.cache_files()
    world.reset()
    code, _, _ = world.run("del", "net", NETNS, CNI_CONTAINERID=CID)
    assert code == 0
    assert "prevResult" not in world.calls()[0]["stdin"]
    assert world.cache_files() == []


def test_del_stops_at_the_first_failure_and_keeps_the_cache(world: Env) -> None:
    error = {"code": 5, "msg": "cannot"}
    world.write_conflist(
        "net", [{"type": "alpha"}, {"type": "beta", "fake": {"fail": {"DEL": error}}}]
    )
    world.run("add", "net", NETNS, CNI_CONTAINERID=CID)
    world.reset()
    code, out, _ = world.run("del", "net", NETNS, CNI_CONTAINERID=CID)
    assert code == 1
    assert json.loads(out)["msg"] == "cannot"
    assert json.loads(out)["cniVersion"] == "1.0.0"  # filled in when the plugin left it out
    assert [c["plugin"] for c in world.calls()] == ["beta"]
    assert world.cache_files() == [f"net-{CID}-eth0"]


def test_del_with_a_corrupt_cache_drops_it_and_proceeds(world: Env) -> None:
    world.write_conflist("net", [{"type": "alpha"}])
    results = world.cache / "results"
    results.mkdir(parents=True)
    (results / f"net-{CID}-eth0").write_text("{corrupt")
    code, _, _ = world.run("del", "net", NETNS, CNI_CONTAINERID=CID)
    assert code == 0
    assert "prevResult" not in world.calls()[0]["stdin"]
    assert world.cache_files() == []


def test_cached_result_is_converted_to_the_configs_version(world: Env) -> None:
    world.write_conflist("net", [{"type": "alpha", "fake": {"ip": "10.0.0.2/24"}}], version="0.4.0")
    world.run("add", "net", NETNS, CNI_CONTAINERID=CID)
    world.write_conflist("net", [{"type": "alpha"}], version="1.0.0")
    world.reset()
    assert world.run("del", "net", NETNS, CNI_CONTAINERID=CID)[0] == 0
    prev = world.calls()[0]["stdin"]["prevResult"]
    assert prev["cniVersion"] == "1.0.0"
    assert prev["ips"] == [{"address": "10.0.0.2/24"}]


def test_convert_result_adds_and_removes_ip_versions() -> None:
    new = {"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.2/24"}, {"address": "fd00::2/64"}]}
    old = cache.result_as_version(new, "0.4.0")
    assert [ip["version"] for ip in old["ips"]] == ["4", "6"]
    assert cache.result_as_version(old, "1.1.0")["ips"] == new["ips"]
    # Down to 0.2.0's flat form, as libcni converts; a version the spec does not have fails.
    flat = cache.result_as_version(new, "0.2.0")
    assert (flat["ip4"], flat["ip6"]) == ({"ip": "10.0.0.2/24"}, {"ip": "fd00::2/64"})
    with pytest.raises(CNIError) as exc:
        cache.result_as_version(new, "0.9.0")
    assert exc.value.code == 1
    assert cache.result_as_version(new, "1.0.0") is new  # same version: passed on as stored


def test_check_runs_in_order_with_the_cached_result(world: Env) -> None:
    world.write_conflist("net", chain())
    _, added, _ = world.run("add", "net", NETNS, CNI_CONTAINERID=CID)
    world.reset()
    code, out, _ = world.run("check", "net", NETNS, CNI_CONTAINERID=CID)
    assert (code, out) == (0, "")
    calls = world.calls()
    assert [c["plugin"] for c in calls] == ["alpha", "beta"]
    assert all(c["env"]["CNI_COMMAND"] == "CHECK" for c in calls)
    assert all(c["stdin"]["prevResult"] == json.loads(added) for c in calls)
    assert world.cache_files() == [f"net-{CID}-eth0"]


def test_check_failure_stops_the_chain(world: Env) -> None:
    error = {"code": 3, "msg": "no such container"}
    world.write_conflist(
        "net", [{"type": "alpha", "fake": {"fail": {"CHECK": error}}}, {"type": "beta"}]
    )
    code, out, _ = world.run("check", "net", NETNS, CNI_CONTAINERID=CID)
    assert code == 1
    assert json.loads(out)["code"] == 3
    assert [c["plugin"] for c in world.calls()] == ["alpha"]


def test_check_needs_040_and_honours_disable_check(world: Env) -> None:
    world.write_conflist("old", [{"type": "alpha"}], version="0.3.1")
    code, out, _ = world.run("check", "old", NETNS, CNI_CONTAINERID=CID)
    assert code == 1
    assert json.loads(out)["code"] == 1
    world.write_conflist("off", [{"type": "alpha"}], disableCheck=True)
    assert world.run("check", "off", NETNS, CNI_CONTAINERID=CID)[0] == 0
    assert world.calls() == []


# --------------------------------------------------------------------------- GC / STATUS / VERSION


def test_gc_sends_the_cached_attachments_of_the_network_to_each_plugin_once(world: Env) -> None:
    world.write_conflist("net", [{"type": "alpha"}, {"type": "beta"}], version="1.1.0")
    world.write_conflist("other", [{"type": "gamma"}], version="1.1.0")
    world.run("add", "net", NETNS, CNI_CONTAINERID="c1")
    world.run("add", "net", NETNS, CNI_CONTAINERID="c2", CNI_IFNAME="net1")
    world.run("add", "other", NETNS, CNI_CONTAINERID="c3")
    world.reset()
    code, _, _ = world.run("gc", "net")
    assert code == 0
    calls = world.calls()
    assert [c["plugin"] for c in calls] == ["alpha", "beta"]
    for call in calls:
        assert call["env"]["CNI_COMMAND"] == "GC"
        assert call["env"]["CNI_CONTAINERID"] == ""
        assert call["env"]["CNI_NETNS"] == ""
        assert call["stdin"]["name"] == "net"
        assert call["stdin"]["cniVersion"] == "1.1.0"
        assert "prevResult" not in call["stdin"]
        assert sorted(
            call["stdin"]["cni.dev/valid-attachments"], key=lambda a: a["containerID"]
        ) == [
            {"containerID": "c1", "ifname": "eth0"},
            {"containerID": "c2", "ifname": "net1"},
        ]
    assert len(world.cache_files()) == 3


def test_gc_deletes_cached_attachments_that_are_not_valid(world: Env) -> None:
    world.write_conflist("net", [{"type": "alpha"}], version="1.1.0")
    world.run("add", "net", NETNS, CNI_CONTAINERID="c1")
    world.run("add", "net", NETNS, CNI_CONTAINERID="c2")
    world.reset()
    keep = json.dumps([{"containerID": "c2", "ifname": "eth0"}])
    code, _, _ = world.run("gc", "net", "--valid-attachments", keep)
    assert code == 0
    calls = world.calls()
    assert [(c["env"]["CNI_COMMAND"], c["env"]["CNI_CONTAINERID"]) for c in calls] == [
        ("DEL", "c1"),
        ("GC", ""),
    ]
    assert calls[0]["env"]["CNI_NETNS"] == NETNS  # from the cache entry
    assert calls[1]["stdin"]["cni.dev/valid-attachments"] == json.loads(keep)
    assert world.cache_files() == ["net-c2-eth0"]


def test_gc_below_110_sends_no_gc_and_errors_are_collected(world: Env) -> None:
    world.write_conflist("old", [{"type": "alpha"}], version="1.0.0")
    assert world.run("gc", "old")[0] == 0
    assert world.calls() == []
    failing = {"type": "alpha", "fake": {"fail": {"GC": {"code": 999, "msg": "gc broke"}}}}
    world.write_conflist("new", [failing, {"type": "beta"}], version="1.1.0")
    code, out, _ = world.run("gc", "new")
    assert code == 1
    assert "gc broke" in json.loads(out)["msg"]
    assert [c["plugin"] for c in world.calls()] == ["alpha", "beta"]  # best effort


def test_status_asks_each_plugin_and_stops_at_the_first_not_ready(world: Env) -> None:
    world.write_conflist("net", [{"type": "alpha"}, {"type": "beta"}], version="1.1.0")
    assert world.run("status", "net")[0] == 0
    assert [(c["plugin"], c["env"]["CNI_COMMAND"]) for c in world.calls()] == [
        ("alpha", "STATUS"),
        ("beta", "STATUS"),
    ]
    world.reset()
    down = {"type": "alpha", "fake": {"fail": {"STATUS": {"code": 50, "msg": "not ready"}}}}
    world.write_conflist("net", [down, {"type": "beta"}], version="1.1.0")
    code, out, _ = world.run("status", "net")
    assert code == 1
    assert json.loads(out)["code"] == 50
    assert [c["plugin"] for c in world.calls()] == ["alpha"]


def test_status_below_110_is_a_no_op(world: Env) -> None:
    world.write_conflist("net", [{"type": "alpha"}], version="1.0.0")
    assert world.run("status", "net")[0] == 0
    assert world.calls() == []


def test_version_asks_each_plugin_like_libcni(world: Env) -> None:
    world.write_conflist("net", [{"type": "alpha"}, {"type": "beta"}])
    code, out, _ = world.run("version", "net")
    assert code == 0
    answers = json.loads(out)
    assert [a["type"] for a in answers] == ["alpha", "beta"]
    assert answers[0]["version"]["supportedVersions"] == ["1.0.0", "1.1.0"]
    call = world.calls()[0]
    assert call["env"]["CNI_COMMAND"] == "VERSION"
    assert call["env"]["CNI_NETNS"] == "dummy"
    assert call["stdin"] == {"cniVersion": CURRENT_VERSION}


# --------------------------------------------------------------------------- execution


def test_a_hanging_plugin_is_killed_at_the_timeout(world: Env) -> None:
    world.write_conflist("net", [{"type": "alpha", "fake": {"sleep": 30}}])
    start = time.monotonic()
    code, out, _ = world.run("add", "net", NETNS, CNI_CONTAINERID=CID, CNI_CLIENT_TIMEOUT="1")
    assert code == 1
    assert "timed out" in json.loads(out)["msg"]
    assert time.monotonic() - start < 20  # a generous bound: proves the kill, not a speed


def test_large_stdin_and_stdout_do_not_deadlock(world: Env) -> None:
    big_conf = {"type": "alpha", "blob": "y" * 300_000, "fake": {"big": 500_000}}
    world.write_conflist("net", [big_conf])
    code, out, _ = world.run("add", "net", NETNS, CNI_CONTAINERID=CID)
    assert code == 0
    assert len(json.loads(out)["padding"]) == 500_000
    assert world.calls()[0]["stdin_len"] > 300_000


def test_run_chain_api_and_exec_records(world: Env) -> None:
    records: list[libcni.ExecRecord] = []
    conflist = {"cniVersion": "1.0.0", "name": "api", "plugins": chain()}
    result = libcni.run_chain(
        "ADD",
        conflist,
        NETNS,
        "api-1",
        "eth0",
        str(world.bin),
        PORTS,
        str(world.cache),
        "K=V",
        on_exec=records.append,
        environ={},
    )
    assert result is not None
    assert result["interfaces"][-1] == {"name": "beta-if"}
    assert [(r.plugin, r.command, r.exit_code) for r in records] == [
        ("alpha", "ADD", 0),
        ("beta", "ADD", 0),
    ]
    assert all(r.wall_s > 0 and r.maxrss_kib > 1000 for r in records)
    assert world.calls()[1]["stdin"]["runtimeConfig"] == PORTS
    assert world.calls()[0]["env"]["CNI_ARGS"] == "K=V"
    assert (
        libcni.run_chain(
            "DEL", conflist, NETNS, "api-1", cni_path=str(world.bin), cache_dir=str(world.cache)
        )
        is None
    )
    assert world.cache_files() == []


def test_run_chain_raises_plugin_errors(world: Env) -> None:
    error = {"code": 100, "msg": "port taken"}
    conflist = {
        "cniVersion": "1.0.0",
        "name": "api",
        "plugins": [{"type": "alpha", "fake": {"fail": {"ADD": error}}}],
    }
    with pytest.raises(libcni.PluginError) as err:
        libcni.run_chain(
            "ADD", conflist, NETNS, "x", cni_path=[str(world.bin)], cache_dir=str(world.cache)
        )
    assert (err.value.code, err.value.msg, err.value.plugin) == (100, "port taken", "alpha")


def test_parallel_adds_write_distinct_cache_entries(world: Env) -> None:
    from concurrent.futures import ThreadPoolExecutor

    conflist = {"cniVersion": "1.0.0", "name": "par", "plugins": [{"type": "alpha"}]}

    def add(i: int) -> dict[str, Any] | None:
        return libcni.run_chain(
            "ADD", conflist, NETNS, f"p{i}", cni_path=str(world.bin), cache_dir=str(world.cache)
        )

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(add, range(16)))
    assert all(r is not None for r in results)
    assert world.cache_files() == sorted(f"par-p{i}-eth0" for i in range(16))
    assert not [p for p in (world.cache / "results").iterdir() if ".tmp-" in p.name]


def test_cli_usage_errors_exit_2(world: Env) -> None:
    with pytest.raises(SystemExit) as exc:
        world.run("add", "net")
    assert exc.value.code == 2
    with pytest.raises(SystemExit):
        world.run("frobnicate", "net", NETNS)


def test_client_import_stays_lean() -> None:
    """Exec'd once per command: the import pulls in no typing, subprocess or plugin machinery."""
    import subprocess

    code = (
        "import sys; before = set(sys.modules); import cni_bridge.libcni.cli; "
        "print(' '.join(sorted(set(sys.modules) - before)))"
    )
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-S", "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": str(root)},
    ).stdout.split()
    heavy = {"typing", "subprocess", "dataclasses", "ipaddress", "argparse", "hashlib"}
    assert not heavy & set(out), out
    assert not [m for m in out if m.startswith(("pydantic", "pyroute2", "nftables"))], out
    assert "cni_bridge.invoke" in out


def test_network_name_follows_the_domain_rule(world: Env) -> None:
    """The client checks the conflist's name by domain.py's rule, its length bound included
    (libcni's own check has none): no plugin runs for a name the plugin would refuse."""
    name = "n" * (MAX_NETWORK_NAME + 1)
    world.write_conflist(name, [{"type": "alpha"}])
    code, out, _ = world.run("add", name, NETNS, CNI_CONTAINERID=CID)
    assert code == 1
    error = json.loads(out)
    assert error["code"] == INVALID_CONFIG and f"at most {MAX_NETWORK_NAME}" in error["msg"]
    assert world.calls() == []
