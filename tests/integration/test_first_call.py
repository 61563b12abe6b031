"""The first call on a host with no agent (issue 13, items 5-6): the plugin answers it
in-process at once, without waiting for the agent it starts, and the agent comes up afterwards
for the next calls. Runs the plugin under test (from source, or the built binary through its
launcher with CNI_BRIDGE_TEST_PLUGIN=binary) as a runtime does, whatever
CNI_BRIDGE_TEST_RESIDENT says: this file is about the default mode."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest

from tests.lab import procs
from tests.lab.plugin import ROOT, PluginLab, in_host, plugin_command
from tests.lab.poll import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.plugin]

REPORT = re.compile(r" cni-bridge\[(\d+)\] INFO cni_bridge\.report: ADD \S+/(\S+)/eth0: ")


def parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except OSError:
        return 0


def add(lab: PluginLab, conf: dict[str, object], cid: str, extra: dict[str, str]) -> int:
    """One ADD as a runtime execs it; the pid of the process it exec'd (nsenter, env, the
    launcher and the bundle all exec in place)."""
    ns = lab.container()
    env = lab.env("ADD", cid, ns.path, extra=extra)
    proc = subprocess.Popen(in_host(lab.host, env, plugin_command()), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    out, err = proc.communicate(json.dumps(conf), timeout=60)
    assert proc.returncode == 0, (out, err)
    assert json.loads(out)["ips"], out
    return proc.pid


def served_by(log: Path) -> dict[str, int]:
    """Container ID -> the pid that logged its ADD (the plugin itself, or an agent's worker)."""
    found = (REPORT.search(line) for line in log.read_text().splitlines())
    return {m[2]: int(m[1]) for m in found if m}


def agents(lab: PluginLab) -> list[int]:
    """Agent parents (`serve`, not their workers) in the lab's host namespace."""
    def argv(pid: int) -> list[str]:
        try:
            return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
        except OSError:
            return []

    found = [pid for pid, _ in procs.in_netns([lab.host]) if "--identity" in argv(pid)]
    return [p for p in found if parent(p) not in found]


def test_the_first_add_runs_in_process_and_leaves_an_agent_listening(lab: PluginLab) -> None:
    log = lab.tmp / "cni-bridge.log"
    agent_log = lab.tmp / "agent.log"
    extra = {
        "CNI_BRIDGE_RESIDENT": "auto",
        "CNI_BRIDGE_RESIDENT_IDLE": "120",
        "CNI_BRIDGE_RESIDENT_LOG": str(agent_log),
        "CNI_BRIDGE_LOG_FILE": str(log),  # INFO: one line per ADD, with the pid that ran it
    }
    conf = lab.conf()
    assert agents(lab) == []
    first = add(lab, conf, "first", extra)
    # Answered by the process the runtime exec'd, not by the agent it started.
    assert served_by(log) == {"first": first}
    assert wait_for(lambda: agent_log.exists() and "serving" in agent_log.read_text(), 60)
    [agent] = agents(lab)
    # The next call is the agent's: its worker logs the ADD, in the caller's stead.
    second = add(lab, conf, "second", extra)
    worker = served_by(log)["second"]
    assert worker != second and parent(worker) == agent
    os.kill(agent, signal.SIGTERM)
    assert wait_for(lambda: agent not in agents(lab), 30), agent_log.read_text()
    assert agent_log.read_text().count("serving") == 1  # one agent started, by the first call
