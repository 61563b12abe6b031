"""A worker's first request imports nothing the agent could have preloaded (engine.warm):
every module imported during a request is paid for by every fresh worker, which is what a
caller from its own mount namespace (rootless podman, `ip netns exec`) always gets.

A real agent (`cni-bridge serve --pool 0`: a fresh fork per request) runs the engine through
tests/integration/warm_handler.py, which records the modules each request imported, for
ADD, CHECK and DEL with published ports, containerDNS, ipspoofchk and macspoofchk on.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cni_bridge.resident import spawn
from tests.lab.plugin import ROOT, PluginLab
from tests.lab.poll import wait_for

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root and network namespaces"),
]

HANDLER = "tests.integration.warm_handler:handle"
# Third-party and standard modules that cost milliseconds to import: never late either.
HEAVY = ("pydantic", "pydantic_core", "nftables", "pyroute2", "typing_extensions", "ipaddress")


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[PluginLab]:
    lab = PluginLab(tmp_path, prefix="cbW")
    try:
        yield lab
    finally:
        lab.close()


def _agent(lab: PluginLab, record: Path) -> None:
    log = open(lab.tmp / "agent.log", "a")  # noqa: SIM115 - lives with the process
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "CNI_BRIDGE_TEST_IMPORTS": str(record),
    }
    argv = [sys.executable, "-c", spawn._BOOT, str(ROOT), "--handler", HANDLER]
    lab.spawn(lab.host, [*argv, "--idle", "0", "--pool", "0"], env=env, stderr=log)
    log.close()
    assert wait_for(lambda: "serving" in _log(lab), timeout=30), _log(lab)


def _log(lab: PluginLab) -> str:
    path = lab.tmp / "agent.log"
    return path.read_text() if path.exists() else ""


def test_a_fresh_workers_first_requests_import_nothing_new(lab: PluginLab) -> None:
    record = lab.tmp / "imports.jsonl"
    _agent(lab, record)
    conf: dict[str, Any] = lab.conf(
        cniVersion="1.1.0",
        ipam={
            "type": "host-local",
            "ranges": [[{"subnet": "10.66.0.0/24"}], [{"subnet": "fd00:66::/64"}]],
            "dataDir": str(lab.data_dir),
        },
        capabilities={"portMappings": True},
        containerDNS=True,
        ipspoofchk=True,
        macspoofchk=True,
        runtimeConfig={
            "portMappings": [{"hostPort": 18081, "containerPort": 80, "protocol": "tcp"}]
        },
    )
    ns = lab.netns("c")
    cid = f"warm{lab.tag}"
    lab.resident = "connect"  # through the agent started above, never in-process
    code, result = lab.plugin("ADD", conf, cid, ns.path)
    assert code == 0, result
    for command, c in (("CHECK", {**conf, "prevResult": result}), ("DEL", conf)):
        code, out = lab.plugin(command, c, cid, ns.path)
        assert code == 0, out
    entries = [json.loads(line) for line in record.read_text().splitlines()]
    agent = {e["ppid"] for e in entries}
    assert [e["command"] for e in entries] == ["ADD", "CHECK", "DEL"], _log(lab)
    assert len(agent) == 1 and len({e["pid"] for e in entries}) == 3  # a fresh fork each
    late = {
        e["command"]: [m for m in e["late"] if m.startswith("cni_bridge") or m in HEAVY
                       or m.split(".")[0] in HEAVY]
        for e in entries
    }
    assert late == {"ADD": [], "CHECK": [], "DEL": []}, {e["command"]: e["late"] for e in entries}
