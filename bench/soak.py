"""Soak: does a long-lived agent age? Thousands of ADD/DEL cycles through it, mixed with
callers from fresh mount namespaces and callers killed (SIGKILL) mid-request; what the agent
holds at the start, middle and end.

    python -m bench.soak --ours-bin dist/bin/cni-bridge [--cycles 2000] [--streams 2]
                         [--fresh-every 4] [--kill-every 10] [--out bench/results/soak.json]

Each stream owns a few container namespaces and runs cycles on them in turn: ADD, then DEL, of
a new container ID. Every `--fresh-every`-th call comes from a fresh mount namespace
(`unshare -m`, as rootless podman's calls do), every `--kill-every`-th ADD or DEL is killed after
a random 0-60 ms, then DEL is called again for that container (as a runtime retries).
A few attachments stay present throughout (an idle timeout must not end the agent).
Reported at the start (after a warm-up), middle and end: the agent's and its workers'
descriptors, threads, processes, PSS and the namespaces they hold (/proc/PID/ns/* and
namespace descriptors), the agent's pid (a restart would hide growth), and what is left on
the host after the last DEL (veths, reservations).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench import agent, report
from bench.run import BRIDGE, REFERENCE_DIR, SUBNET, progress
from tests.lab import Lab
from tests.lab.netns import Netns

REPO = Path(__file__).resolve().parent.parent
PREFIX = "cbS"
KEEP = 4  # attachments present throughout
PER_STREAM = 8  # container namespaces per stream

Json = dict[str, Any]


class Soak:
    def __init__(self, args: argparse.Namespace, lab: Lab, tmp: Path) -> None:
        self.args = args
        self.lab = lab
        self.host = lab.netns("h")
        self.host.sysctl("net.ipv4.ip_forward", 1)
        self.data_dir = tmp / "ipam"
        self.binary = str(Path(args.ours_bin).resolve())
        self.conf = {
            "cniVersion": "1.0.0", "name": "cbs-soak", "type": "cni-bridge", "bridge": BRIDGE,
            "isGateway": True, "ipMasq": True, "hairpinMode": True,
            "capabilities": {"portMappings": True},
            "ipam": {"type": "host-local", "ranges": [[{"subnet": SUBNET}]],
                     "routes": [{"dst": "0.0.0.0/0"}], "dataDir": str(self.data_dir)},
        }
        self.lock = threading.Lock()
        self.counts = {"calls": 0, "fresh_mnt": 0, "killed": 0, "failed": 0}
        self.failures: list[str] = []
        self.done = 0
        self.snapshots: dict[str, Json] = {}

    def call(self, command: str, cid: str, ns: Netns, port: int, *, fresh: bool = False,
             kill_after: float | None = None) -> tuple[int | None, str]:
        conf = dict(self.conf, runtimeConfig={"portMappings": [
            {"hostPort": port, "containerPort": 80, "protocol": "tcp"}]})
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CNI_COMMAND": command,
               "CNI_CONTAINERID": cid, "CNI_NETNS": ns.path, "CNI_IFNAME": "eth0",
               "CNI_PATH": REFERENCE_DIR}
        argv = self.host.command(*(["unshare", "-m"] if fresh else []), self.binary)
        proc = subprocess.Popen(argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, cwd="/")
        if kill_after is None:
            out, err = proc.communicate(json.dumps(conf).encode(), timeout=self.args.timeout)
            return proc.returncode, (out + err).decode(errors="replace").strip()
        assert proc.stdin is not None
        proc.stdin.write(json.dumps(conf).encode())
        proc.stdin.close()
        time.sleep(kill_after)
        proc.kill()
        proc.wait(timeout=self.args.timeout)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
        return None, ""

    def _count(self, key: str, failure: str | None = None) -> int:
        with self.lock:
            self.counts[key] += 1
            if failure is not None and len(self.failures) < 20:
                self.failures.append(failure)
            return self.counts[key]

    def stream(self, index: int, cycles: int, namespaces: list[Netns],
               measured: bool = True) -> None:
        rnd = random.Random(index)
        for i in range(cycles):
            ns = namespaces[i % len(namespaces)]
            cid = f"soak-{index}-{i}"
            port = 30000 + index * 100 + i % len(namespaces)
            for command in ("ADD", "DEL"):
                n = self._count("calls")
                fresh = n % self.args.fresh_every == 0
                kill = n % self.args.kill_every == 0
                if fresh:
                    self._count("fresh_mnt")
                if kill:
                    self._count("killed")
                    self.call(command, cid, ns, port, fresh=fresh,
                              kill_after=rnd.uniform(0, 0.06))
                    command = "DEL"  # the runtime cleans up after a killed call
                    fresh = False
                code, out = self.call(command, cid, ns, port, fresh=fresh)
                if code != 0:
                    self._count("failed", f"{command} {cid}: exit {code}: {out[:300]}")
                    self.call("DEL", cid, ns, port)
                if command == "DEL" and kill:
                    break  # the cycle's DEL was that retry
            with self.lock:
                self.done += 1
                done = self.done
            if measured and done == self.args.cycles // 2:
                self.snap("middle")
            if done % 500 == 0:
                progress(f"{done}/{self.args.cycles} cycles, {self.counts}")

    def snap(self, label: str) -> None:
        snap = agent.snapshot(self.host)
        snap["after_cycles"] = self.done
        snap["agent_pids"] = agent.agents(self.host)
        self.snapshots[label] = snap
        progress(f"{label}: {_line(snap)}")

    def leftovers(self) -> Json:
        links = self.host.ip_json("link", "show", "type", "veth")
        reservations = [p.name for p in (self.data_dir / "cbs-soak").glob("*")
                        if p.name[0].isdigit()] if (self.data_dir / "cbs-soak").is_dir() else []
        return {"host_veths": len(links), "reservations": len(reservations), "expected": KEEP}

    def execute(self) -> Json:
        args = self.args
        kept = self.lab.bare([f"k{i}" for i in range(KEEP)])
        for i, ns in enumerate(kept):
            code, out = self.call("ADD", f"soak-keep-{i}", ns, 29000 + i)
            if code != 0:
                raise RuntimeError(f"ADD of a kept attachment failed: {out}")
        pools = [self.lab.bare([f"s{s}c{i}" for i in range(PER_STREAM)])
                 for s in range(args.streams)]
        warm = max(20, args.cycles // 50)
        progress(f"warm-up: {warm} cycles")
        self.stream(99, warm, pools[0], measured=False)
        self.done = 0
        self.snap("start")
        per = args.cycles // args.streams
        with ThreadPoolExecutor(args.streams) as pool:
            futures = [pool.submit(self.stream, s, per, pools[s]) for s in range(args.streams)]
            for f in futures:
                f.result()
        time.sleep(2)  # let the last worker report itself free
        self.snap("end")
        return {"counts": self.counts, "failures": self.failures, "snapshots": self.snapshots,
                "leftovers": self.leftovers()}


def _line(s: Json) -> str:
    return (f"agent pids {s['agent_pids']}: {s['processes']} processes, {s['threads']} threads, "
            f"{s['fds']} fds {s['fd_kinds']}, PSS {s['pss_kib'] / 1024:.1f} MiB (the agent's "
            f"RSS {s['agent_rss_kib'] / 1024:.1f} MiB), "
            f"{s['namespaces']} namespaces")


def table(doc: Json) -> str:
    snaps = doc["results"].get("snapshots", {})
    keys = [("processes", 1), ("threads", 1), ("fds", 1), ("pss_kib", 1024),
            ("agent_rss_kib", 1024), ("namespaces", 1)]
    names = {"pss_kib": "PSS MiB", "agent_rss_kib": "agent RSS"}
    lines = [f"{'':12}{'cycles':>8}" + "".join(f"{names.get(k, k):>12}" for k, _ in keys)
             + "  agent pid"]
    for label in ("start", "middle", "end"):
        s = snaps.get(label)
        if s:
            vals = "".join(f"{s[k] / d:>12.1f}" if d != 1 else f"{s[k]:>12}" for k, d in keys)
            lines.append(f"{label:12}{s['after_cycles']:>8}{vals}  {s['agent_pids']}")
    if "start" in snaps and "end" in snaps:
        a, b = snaps["start"], snaps["end"]
        new_ns = sorted(set(b["namespace_ids"]) - set(a["namespace_ids"]))
        lines.append(f"namespaces held at the end but not at the start: {new_ns or 'none'}")
    res = doc["results"]
    lines.append(f"calls: {res.get('counts')}; failures: {res.get('failures') or 'none'}")
    lines.append(f"left on the host after the last DEL: {res.get('leftovers')}")
    if doc.get("error"):
        lines.append(f"FAILED: {doc['error']}")
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    p.add_argument("--cycles", type=int, default=2000, help="ADD/DEL cycles (2000)")
    p.add_argument("--streams", type=int, default=2, help="concurrent callers (2)")
    p.add_argument("--fresh-every", type=int, default=4,
                   help="every Nth call from a fresh mount namespace (4)")
    p.add_argument("--kill-every", type=int, default=10,
                   help="every Nth call killed mid-request (10)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per plugin exec")
    p.add_argument("--ours-bin", default=str(REPO / "dist" / "bin" / "cni-bridge"))
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "soak.json"))
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if os.geteuid() != 0:
        sys.stderr.write("bench.soak needs root (it creates network namespaces)\n")
        return 2
    if min(args.cycles, args.streams, args.fresh_every, args.kill_every) < 1:
        sys.stderr.write("--cycles, --streams, --fresh-every, --kill-every must be >= 1\n")
        return 2
    if not Path(args.ours_bin).is_file():
        sys.stderr.write(f"cni-bridge executable not found at {args.ours_bin} (make build)\n")
        return 2
    signal.signal(signal.SIGTERM, report.raise_interrupt)
    tmp = Path(tempfile.mkdtemp(prefix=f"{PREFIX}-soak-"))
    lab = Lab(PREFIX)
    results: Json = {}
    error = None
    started = time.monotonic()
    try:
        progress(f"soak: namespaces {lab.id}-*")
        results = Soak(args, lab, tmp).execute()
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        error = f"{type(exc).__name__}: {exc}"
        progress(f"FAILED: {error}")
    except KeyboardInterrupt:
        progress("interrupted: cleaning up")
        return 130
    finally:
        lab.close(grace=5.0)
        shutil.rmtree(tmp, ignore_errors=True)
    doc = {"meta": {"date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "args": vars(args), "duration_s": round(time.monotonic() - started, 1),
                    "loadavg_end": Path("/proc/loadavg").read_text().split()[:3]},
           "results": results, "error": error}
    report.write(doc, args.out, table(doc))
    return 0 if error is None and not results.get("failures") else 1


if __name__ == "__main__":
    raise SystemExit(main())
