"""How long published ports stay dead after `nft flush ruleset` (issue 14 item 1).

    python -m bench.heal [--ours-bin dist/bin/cni-bridge] [--attachments 1,50] [--rounds 5]
                         [--out bench/results/heal.json]

In a throwaway "host" namespace of the namespace lab (tests/lab): one network, N containers
each publishing a port, an "outside" namespace behind a veth. Each round flushes the host's
ruleset and measures, from the moment `nft flush ruleset` returned to the first connection from
outside that reaches a container through DNAT (its answer is the client's own address):
- `agent`: the agent (`cni-bridge serve`) is running: its ruleset watch heals by itself;
- `sync`: no agent; `cni-bridge sync` is run right after the flush (its own wall time too).
A poller in the outside namespace connects every 10 ms; the clock is CLOCK_MONOTONIC, shared by
all namespaces. Nothing outside the lab's namespaces is touched.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.lab import TEST_NET_1
from tests.lab.plugin import ROOT, PluginLab, plugin_command
from tests.lab.poll import wait_for
from tests.lab.traffic import PYTHON

HOST4, OUT4 = TEST_NET_1
PORT_BASE = 21000

_POLLER = r"""
import socket, sys, time
host, port, want, deadline = sys.argv[1], int(sys.argv[2]), sys.argv[3], time.monotonic() + float(sys.argv[4])
while time.monotonic() < deadline:
    try:
        with socket.create_connection((host, port), timeout=0.1) as s:
            s.settimeout(0.5)
            if s.recv(64).decode().strip() == want:
                print(f"{time.monotonic():.6f}", flush=True)
                sys.exit(0)
    except OSError:
        pass
    time.sleep(0.01)
sys.exit(1)
"""


def _ports_back_after(lab: PluginLab, out: Any, flushed: float, port: int, limit: float) -> float:
    proc = subprocess.run(out.command(PYTHON, "-c", _POLLER, HOST4, str(port), OUT4, str(limit)),
                          capture_output=True, text=True, timeout=limit + 10)
    if proc.returncode != 0:
        raise RuntimeError(f"port {port} did not come back within {limit} s")
    return (float(proc.stdout.strip()) - flushed) * 1000


def _agent(lab: PluginLab, log: Path) -> None:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(ROOT)}
    with open(log, "a") as f:
        lab.spawn(lab.host, [*plugin_command(), "serve", "--idle", "0"], env=env, stderr=f)

    def watching() -> bool:
        return "healing: automatic" in lab.cli("status", "--data-dir", str(lab.data_dir)).stdout

    if not wait_for(watching, timeout=30, interval=0.3):
        raise RuntimeError(f"the agent's watch did not start: {log.read_text()}")


def measure(count: int, rounds: int, tmp: Path) -> dict[str, Any]:
    lab = PluginLab(tmp, prefix="cbH")
    try:
        out = lab.outside(lab.host)
        conf = lab.conf(capabilities={"portMappings": True}, ipam={
            "type": "host-local", "ranges": [[{"subnet": "10.67.0.0/16"}]],
            "dataDir": str(lab.data_dir)})  # fmt: skip
        for i in range(count):
            c = lab.container()
            mapping = {"hostPort": PORT_BASE + i, "containerPort": 80, "protocol": "tcp"}
            lab.add(dict(conf, runtimeConfig={"portMappings": [mapping]}), f"heal{i}", c)
            if i == 0:
                lab.server(c, "tcp", 80)
        result: dict[str, Any] = {"attachments": count, "sync": [], "sync_wall": [], "agent": []}
        for _ in range(rounds):  # no agent: the operator's sync
            lab.host.exec("nft", "flush", "ruleset")
            flushed = time.monotonic()
            started = time.monotonic()
            proc = lab.cli("sync", "--data-dir", str(lab.data_dir))
            result["sync_wall"].append((time.monotonic() - started) * 1000)
            if proc.returncode != 0:
                raise RuntimeError(f"sync failed: {proc.stdout}{proc.stderr}")
            result["sync"].append(_ports_back_after(lab, out, flushed, PORT_BASE, 10))
        _agent(lab, tmp / "agent.log")
        for _ in range(rounds):
            lab.host.exec("nft", "flush", "ruleset")
            flushed = time.monotonic()
            result["agent"].append(_ports_back_after(lab, out, flushed, PORT_BASE, 30))
            time.sleep(0.5)
        return result
    finally:
        lab.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.heal", description=__doc__.split("\n\n")[0])
    p.add_argument("--ours-bin", default="", help="the built binary (default: this checkout)")
    p.add_argument("--attachments", default="1,50", help="containers present, comma-separated")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out", default="bench/results/heal.json")
    args = p.parse_args(argv)
    if args.ours_bin:
        os.environ["CNI_BRIDGE_TEST_PLUGIN"] = "binary"
    runs = []
    with tempfile.TemporaryDirectory(prefix="cni-bridge-heal-") as tmp:
        for count in (int(c) for c in args.attachments.split(",")):
            sub = Path(tmp) / str(count)
            sub.mkdir()
            r = measure(count, args.rounds, sub)
            runs.append(r)
            for key in ("sync", "sync_wall", "agent"):
                r[key + "_p50_ms"] = round(statistics.median(r[key]), 1)
            print(
                f"{count:>4} attachments: flush -> ports back: by `cni-bridge sync` "
                f"{r['sync_p50_ms']} ms (the sync itself {r['sync_wall_p50_ms']} ms), "
                f"by the agent's watch {r['agent_p50_ms']} ms (p50 of {args.rounds})"
            )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"heal": runs}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
