"""A real agent (`cni-bridge serve`, the real engine) serving callers from fresh mount
namespaces, as `ip netns exec`, `unshare -m` and rootless podman call (resident/mounts.py and
resident/rehearsal.py).

Each fresh caller here mounts a tmpfs of its own over the data dir with a different
`last_reserved_ip.0` in it, so the address host-local hands out tells which view of the data dir
the ADD saw; the data dir as the agent's own mount namespace sees it must show only the ADDs
made from there. The log file (CNI_BRIDGE_LOG_FILE) names the process that ran each request.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cni_bridge.resident import spawn
from tests.lab.plugin import ROOT, PluginLab, in_host, plugin_command
from tests.lab.poll import wait_for

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root and network namespaces"),
]


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[PluginLab]:
    lab = PluginLab(tmp_path, prefix="cbM")
    try:
        yield lab
    finally:
        lab.close()


def agent_log(lab: PluginLab) -> str:
    path = lab.tmp / "agent.log"
    return path.read_text() if path.exists() else ""


def start_agent(lab: PluginLab) -> int:
    """`cni-bridge serve` from this checkout in the lab's host namespace; its pid once its
    first spare worker has rehearsed."""
    log = open(lab.tmp / "agent.log", "a")  # noqa: SIM115 - lives with the process
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    argv = [sys.executable, "-c", spawn._BOOT, str(ROOT), "--idle", "0"]
    proc = lab.spawn(lab.host, argv, env=env, stderr=log)
    log.close()
    assert wait_for(lambda: "spare worker rehearsed" in agent_log(lab), timeout=60), agent_log(lab)
    lab.resident = "connect"  # through this agent, never in-process
    return proc.pid


def fresh_call(
    lab: PluginLab, command: str, conf: dict[str, Any], cid: str, netns: str, last_ip: str
) -> tuple[int, Any]:
    """The plugin from a fresh mount namespace whose data dir is a tmpfs of its own, holding
    only `<network>/last_reserved_ip.0` = last_ip."""
    lab.data_dir.mkdir(exist_ok=True)
    data, net = str(lab.data_dir), conf["name"]
    script = (
        'mount -t tmpfs cbM "$1" && mkdir "$1/$2" && printf %s "$3" > "$1/$2/last_reserved_ip.0"'
        ' && shift 3 && exec "$@"'
    )
    env = lab.env(command, cid, netns, extra={"CNI_BRIDGE_LOG_FILE": str(lab.tmp / "plugin.log")})
    argv = ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "-", data, net]
    proc = subprocess.run(
        in_host(lab.host, env, [*argv, last_ip, *plugin_command()]),
        input=json.dumps(conf), capture_output=True, text=True, timeout=60, cwd=ROOT,
    )
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    assert proc.returncode in (0, 1), proc.stderr  # the plugin's own exit codes
    out = proc.stdout.strip()
    return proc.returncode, json.loads(out) if out else None


def own_call(lab: PluginLab, command: str, conf: dict[str, Any], cid: str, netns: str) -> Any:
    code, out = lab.plugin(
        command, conf, cid, netns, extra={"CNI_BRIDGE_LOG_FILE": str(lab.tmp / "plugin.log")}
    )
    assert code == 0, out
    return out


def served_by(lab: PluginLab) -> list[int]:
    """The pid of the process that wrote each ADD/DEL line of the log, in order."""
    text = (lab.tmp / "plugin.log").read_text()
    return [int(m) for m in re.findall(r"cni-bridge\[(\d+)\] INFO \S+: (?:ADD|DEL) ", text)]


def children(pid: int) -> set[int]:
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.add(int(entry))
    return found


def test_fresh_mount_namespace_callers_share_one_warm_worker_each_with_its_own_view(
    lab: PluginLab,
) -> None:
    agent = start_agent(lab)
    conf = lab.conf()
    a, b, c = (lab.netns(x) for x in ("a", "b", "c"))
    code, out = fresh_call(lab, "ADD", conf, "ctr-a", a.path, "10.66.0.9")
    assert code == 0, out
    assert out["ips"][0]["address"] == "10.66.0.10/24"  # after its own view's last address
    workers = children(agent)
    # The agent's own mount namespace: none of caller a's files, and its own allocation.
    assert own_call(lab, "ADD", conf, "ctr-b", b.path)["ips"][0]["address"] == "10.66.0.2/24"
    assert lab.reservations(conf["name"]) == ["10.66.0.2"]
    code, out = fresh_call(lab, "ADD", conf, "ctr-c", c.path, "10.66.0.19")
    assert code == 0, out
    assert out["ips"][0]["address"] == "10.66.0.20/24"  # not caller a's, not the agent's view
    assert lab.reservations(conf["name"]) == ["10.66.0.2"]
    for cid, ns in (("ctr-a", a), ("ctr-c", c)):
        code, out = fresh_call(lab, "DEL", conf, cid, ns.path, "10.66.0.9")
        assert code == 0, out
    own_call(lab, "DEL", conf, "ctr-b", b.path)
    assert lab.reservations(conf["name"]) == []
    pids = served_by(lab)
    assert len(pids) == 6 and all(p in children(agent) for p in pids), (pids, agent_log(lab))
    # One worker served all six (each came back from its caller's mount namespace), and no
    # worker was forked for them.
    assert len(set(pids)) == 1, (pids, agent_log(lab))
    assert children(agent) <= workers, agent_log(lab)  # the pool may shrink when idle
    assert "worker leaves" not in agent_log(lab)
    assert "rehearsal:" not in agent_log(lab)  # no rehearsal step failed
