"""Each ADD, DEL and GC says what it did: one INFO line in CNI_BRIDGE_LOG_FILE (and on stderr at
CNI_BRIDGE_LOG_LEVEL=INFO), while stdout carries only the CNI answer (issue 14 item 9)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.lab.plugin import ROOT, PluginLab, in_host, plugin_command

pytestmark = [pytest.mark.integration, pytest.mark.plugin]


def _lines(path: Path, verb: str) -> list[str]:
    if not path.exists():
        return []
    return [line for line in path.read_text().splitlines() if f" INFO cni_bridge.report: {verb} " in line]


def test_add_del_gc_write_their_line_to_the_log_file(lab: PluginLab) -> None:
    log = lab.tmp / "cni-bridge.log"
    extra = {"CNI_BRIDGE_LOG_FILE": str(log)}  # no level: the file gets INFO by default
    conf = lab.conf(
        cniVersion="1.1.0",
        capabilities={"portMappings": True},
        runtimeConfig={"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]},
    )
    c1, c2 = lab.container(), lab.container()
    r1 = lab.add(conf, "logged1", c1, extra=extra)
    conf2 = {**conf, "runtimeConfig": {}}
    lab.add(conf2, "logged2", c2, extra=extra)
    veth1 = r1["interfaces"][1]["name"]
    (add1, add2) = _lines(log, "ADD")
    assert f"ADD {conf['name']}/logged1/eth0: created veth {veth1} on bridge {conf['bridge']}" in add1
    assert r1["ips"][0]["address"] in add1 and "ports 8080->80/tcp" in add1
    assert "logged2" in add2

    code, out = lab.plugin("DEL", conf, "logged1", c1.path, extra=extra)
    assert code == 0, out
    (del1,) = _lines(log, "DEL")
    assert f"DEL {conf['name']}/logged1/eth0: removed veth {veth1}" in del1
    assert r1["ips"][0]["address"] in del1 and "record" in del1
    # A second DEL finds nothing, and says so.
    code, out = lab.plugin("DEL", conf, "logged1", c1.path, extra=extra)
    assert code == 0, out
    assert "removed nothing (already gone)" in _lines(log, "DEL")[1]

    code, out = lab.plugin("GC", {**conf, "cni.dev/valid-attachments": []}, extra=extra)
    assert code == 0, out
    (gc,) = _lines(log, "GC")
    assert f"GC {conf['name']}: removed {conf['name']}/logged2/eth0 (veth " in gc
    # One line per verb (other modules may add their own INFO lines, under their own names).
    assert sum(" cni_bridge.report: " in line for line in log.read_text().splitlines()) == 5


def test_info_on_stderr_leaves_stdout_the_cni_answer(lab: PluginLab) -> None:
    conf = lab.conf()
    c1 = lab.container()
    env = lab.env("ADD", "stderr1", c1.path, extra={"CNI_BRIDGE_LOG_LEVEL": "INFO"})
    proc = subprocess.run(in_host(lab.host, env, plugin_command()), input=json.dumps(conf),
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["ips"]  # stdout is exactly the result
    assert "Traceback" not in proc.stdout and "cni_bridge.report" not in proc.stdout
    assert " INFO cni_bridge.report: ADD " in proc.stderr
    # Without a level or a file, stderr stays quiet (runtimes show a plugin's stderr).
    env = lab.env("DEL", "stderr1", c1.path)
    proc = subprocess.run(in_host(lab.host, env, plugin_command()), input=json.dumps(conf),
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0 and proc.stdout == "" and proc.stderr == "", proc.stderr


def test_sync_writes_one_line_naming_what_it_healed(lab: PluginLab) -> None:
    log = lab.tmp / "cni-bridge.log"
    conf = lab.conf()
    c1 = lab.container()
    lab.add(conf, "synced", c1)
    lab.host.exec("nft", "flush", "ruleset")  # a firewall reload
    env = {"CNI_BRIDGE_LOG_FILE": str(log)}
    done = lab.cli("sync", "--data-dir", str(lab.data_dir), env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    (line,) = _lines(log, "SYNC:")
    assert line.split(" SYNC: healed ", 1)[1]  # names what it healed
    healed = [x.removeprefix("healed: ") for x in done.stdout.splitlines() if x.startswith("healed: ")]
    assert healed and all(h in line for h in healed)
    # nothing left to heal: no INFO line (the agent syncs after every ruleset change)
    done = lab.cli("sync", "--data-dir", str(lab.data_dir), env=env)
    assert done.returncode == 0 and len(_lines(log, "SYNC:")) == 1
