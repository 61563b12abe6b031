"""A spare worker's rehearsal (resident/rehearsal.py) changes nothing on the host: with a network
and an attachment in place (bridge, veth, nftables table with a published port, records), the
ruleset, the links, addresses and routes and the data dir are the same after a real agent
started and its spare rehearsed as before; and the first ADD after it is served by that spare.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_resident_mounts import (
    agent_log,
    children,
    own_call,
    served_by,
    start_agent,
)
from tests.lab.plugin import PluginLab
from tests.lab.poll import wait_for

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root and network namespaces"),
]


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[PluginLab]:
    lab = PluginLab(tmp_path, prefix="cbR")
    try:
        yield lab
    finally:
        lab.close()


def host_state(lab: PluginLab) -> dict[str, Any]:
    files = {}
    for path in sorted(lab.data_dir.rglob("*")):
        st = path.lstat()
        content = path.read_bytes() if path.is_file() else b""
        files[str(path)] = (st.st_mode, st.st_mtime_ns, content)
    return {
        "ruleset": json.loads(lab.host.exec("nft", "-j", "list", "ruleset").stdout),
        "links": lab.host.ip_json("link", "show"),
        "addrs": lab.host.ip_json("addr", "show"),
        "routes": [lab.host.ip_json("-4", "route", "show", "table", "all"),
                   lab.host.ip_json("-6", "route", "show", "table", "all")],
        "files": files,
    }


def test_an_agent_that_starts_and_rehearses_changes_nothing_on_the_host(lab: PluginLab) -> None:
    conf = lab.conf(
        capabilities={"portMappings": True},
        runtimeConfig={"portMappings": [{"hostPort": 18082, "containerPort": 80, "protocol": "tcp"}]},
    )
    ctr = lab.netns("c")
    lab.resident = "0"  # in-process: no agent yet
    lab.add(conf, "ctr-present", ctr)
    # Settled: no address of the host still doing duplicate address detection.
    assert wait_for(lambda: "tentative" not in lab.host.ip("addr").stdout, timeout=10)
    before = host_state(lab)
    assert before["files"] and any(t.get("table", {}).get("name") == "cni_bridge"
                                   for t in before["ruleset"]["nftables"])
    agent = start_agent(lab)  # returns once its spare has rehearsed
    assert "rehearsal:" not in agent_log(lab)  # every step ran
    assert host_state(lab) == before
    # The rehearsed spare serves the first ADD (no worker forked for it).
    workers = children(agent)
    other = lab.netns("d")
    own_call(lab, "ADD", {k: v for k, v in conf.items() if k != "runtimeConfig"}, "ctr-2", other.path)
    assert served_by(lab)[0] in workers, agent_log(lab)
