"""A cold exec'd ADD, CHECK and DEL (no agent: CNI_BRIDGE_RESIDENT=0, everything in the exec'd
process) never imports pydantic: the config is validated by the lean validator (leanconf.py,
see netconf.load_netconf), which saves ~200 ms of a cold ADD; nor the other modules in OFF_PATH.

Python's own import log (PYTHONPROFILEIMPORTTIME, as `-X importtime`) is read from the plugin's
stderr, so every import of the process is seen, whatever path it exits by. From source only:
the bundle's interpreter ignores PYTHON* variables.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.lab.plugin import ROOT, PluginLab, binary_under_test, in_host, plugin_command

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root and network namespaces"),
    pytest.mark.skipif(binary_under_test(), reason="the bundle ignores PYTHONPROFILEIMPORTTIME"),
]


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[PluginLab]:
    lab = PluginLab(tmp_path, prefix="cbCI")
    try:
        yield lab
    finally:
        lab.close()


# Modules a cold ADD/CHECK/DEL does without before its answer, each measured off the path
# (callgrind, -X importtime); extend when one more leaves it, so that it stays off.
OFF_PATH = {
    # cni_bridge/log.py: logging only once a record is written, which by default none is
    "logging", "traceback", "string", "textwrap",
    "socket", "selectors",  # _socket (net/, ports/ check and control): socket builds enums
    "signal",  # commands/deps.py's test hook imports it when it runs
    "threading",  # _thread: background.py, ipam/store.py
    "hashlib",  # digest.py: _sha256 alone
    "typing",  # annotations only (TYPE_CHECKING); hints.py and tuples.py for the rest
    # the records there are NamedTuples or slotted.Slotted classes: a dataclass compiles its
    # methods at import, and `dataclasses` imports inspect (with ast, dis, tokenize)
    "dataclasses", "inspect", "ast", "dis", "tokenize",
}


def _cold(lab: PluginLab, command: str, conf: dict[str, Any], cid: str, netns: str,
          code: int = 0) -> tuple[Any, set[str]]:
    env = lab.env(command, cid, netns, extra={"CNI_BRIDGE_RESIDENT": "0", "PYTHONPROFILEIMPORTTIME": "1"})
    proc = subprocess.run(in_host(lab.host, env, plugin_command()), input=json.dumps(conf),
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines()
                if line.startswith("import time:")}
    assert proc.returncode == code, (proc.stdout, proc.stderr[-2000:])
    assert "cni_bridge.engine" in imported, proc.stderr[-2000:]  # the log is there
    return (json.loads(proc.stdout) if proc.stdout.strip() else None), imported


def test_cold_add_check_del_import_neither_pydantic_nor_what_they_do_without(lab: PluginLab) -> None:
    conf = lab.conf(
        cniVersion="1.1.0",
        capabilities={"portMappings": True},
        runtimeConfig={"portMappings": [{"hostPort": 18082, "containerPort": 80}]},
    )
    ns = lab.netns("c")
    cid = f"cold{lab.tag}"
    result, imported = _cold(lab, "ADD", conf, cid, ns.path)
    seen = {"ADD": imported}
    _, seen["CHECK"] = _cold(lab, "CHECK", {**conf, "prevResult": result}, cid, ns.path)
    _, seen["DEL"] = _cold(lab, "DEL", conf, cid, ns.path)
    for command, modules in seen.items():
        assert "cni_bridge.leanconf" in modules, command
        heavy = sorted(m for m in modules
                       if m.split(".")[0] in ("pydantic", "pydantic_core", "cni_bridge.config")
                       or m == "cni_bridge.config")
        assert heavy == [], (command, heavy)
        assert sorted(OFF_PATH & modules) == [], command
    assert result["ips"][0]["address"].startswith("10.66.0.")


def test_a_cold_add_refused_for_a_taken_port_does_without_them_too(lab: PluginLab) -> None:
    # The refusal names the holder (ports/lookup.py, imported only then).
    lab.server(lab.host, "tcp", 18083, host="127.0.0.1")
    conf = lab.conf(capabilities={"portMappings": True},
                    runtimeConfig={"portMappings": [{"hostPort": 18083, "containerPort": 80}]})
    out, imported = _cold(lab, "ADD", conf, f"taken{lab.tag}", lab.netns("c").path, code=1)
    assert out["code"] == 100 and f"pid {lab.procs[-1].pid} (" in out["msg"], out
    assert "cni_bridge.ports.lookup" in imported
    assert sorted(OFF_PATH & imported) == []
