"""What runtimes really get from cni-bridge, as ratios to the reference chain in the same run.

    python -m bench.run --ours-bin dist/bin/cni-bridge [--n 30] [--samples 5] [--parallel 20]
                        [--scale 1,1000] [--quiet 330] [--out bench/results/latest.json]

Two sides, each in a throwaway "host" namespace of the namespace lab (tests/lab) with one
container namespace per attachment, driven by the same client (cni_bridge.libcni, bench.caller):
- reference: bridge (+ host-local, exec'd by bridge) + portmap from /usr/lib/cni, ipMasq and one
  port mapping per container;
- ours: one plugin of type `cni-bridge` with the same settings, the built binary (its launcher).
Samples alternate between the sides, so a load that comes and goes (this machine is shared)
weighs on both alike. Scenarios, in this order (see bench/README section in the README):
first ADD with no agent running (the plugin starts it); ADD/DEL from a caller that keeps one
mount namespace; the same with a fresh mount namespace per call; cold (CNI_BRIDGE_RESIDENT=0);
20 parallel ADDs; the first ADD after the agent was started as the systemd unit starts it;
an ADD after `--quiet` seconds without any call with an attachment present; ADD with many
attachments present vs one; the agent's PSS (agent + idle workers).

Everything (namespaces, IPAM dataDir, result cache, agents in our namespaces) is created by the
run and removed at the end, also on failure, Ctrl-C or SIGTERM. The root namespace is never
touched.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import agent, report
from bench.caller import Caller, CallerError
from cni_bridge.resident.pool import SHRINK_AFTER
from tests.lab import Lab, netns

REPO = Path(__file__).resolve().parent.parent
REFERENCE_DIR = "/usr/lib/cni"
SUBNET = "10.77.0.0/16"
BRIDGE = "cbe0"
PORT_BASE = 20000
CNI_VERSION = "1.0.0"
PREFIX = "cbE"
SIDES = ("reference", "ours")
SCALE_SETTLE = 0.25  # seconds between the reference's scale probes and ours (scale())
SCENARIOS = ("first", "keep", "fresh", "cold", "parallel", "unit", "quiet", "scale")
UNIT_SETTLE = 2.0  # seconds between the unit-started agent's listening and the first ADD

Json = dict[str, Any]


class BenchError(RuntimeError):
    pass


def _ipam(data_dir: str) -> Json:
    return {"type": "host-local", "ranges": [[{"subnet": SUBNET}]],
            "routes": [{"dst": "0.0.0.0/0"}], "dataDir": data_dir}


def reference_conflist(data_dir: str) -> Json:
    return {"cniVersion": CNI_VERSION, "name": "cbe-ref", "plugins": [
        {"type": "bridge", "bridge": BRIDGE, "isGateway": True, "ipMasq": True,
         "hairpinMode": True, "ipam": _ipam(data_dir)},
        {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True},
    ]}


def ours_conflist(data_dir: str, extra: Json) -> Json:
    plugin: Json = {"type": "cni-bridge", "bridge": BRIDGE, "isGateway": True, "ipMasq": True,
                    "hairpinMode": True, "ipam": _ipam(data_dir),
                    "capabilities": {"portMappings": True}}
    plugin.update(extra)
    return {"cniVersion": CNI_VERSION, "name": "cbe-ours", "plugins": [plugin]}


def progress(msg: str) -> None:
    sys.stderr.write(f"[bench {time.strftime('%H:%M:%S')}] {msg}\n")
    sys.stderr.flush()


class Side:
    """One implementation: its host namespace, its caller, its attachments."""

    def __init__(
        self, impl: str, args: argparse.Namespace, lab: Lab, tmp: Path, variant: str = ""
    ) -> None:
        """`variant`: a second host of the same implementation (its namespaces, data dir and
        agent apart from the first's), as the scale probes use one host per count."""
        self.impl = impl
        self.args = args
        self.lab = lab
        # The separator keeps variants' namespace names apart ("ok1-10" vs "ok1000-0").
        self.tag = ("r" if impl == "reference" else "o") + (f"{variant}-" if variant else "")
        self.dir = tmp / (f"{impl}-{variant}" if variant else impl)
        self.dir.mkdir()
        self.counter = itertools.count()
        self.host = lab.netns(f"{self.tag}h")
        self.host.sysctl("net.ipv4.ip_forward", 1)
        data_dir = str(self.dir / "ipam")
        if impl == "reference":
            cfg: Json = {"conflist": reference_conflist(data_dir), "cni_path": REFERENCE_DIR,
                         "env": {}}
        else:
            bin_dir = self.dir / "bin"
            bin_dir.mkdir()
            (bin_dir / "cni-bridge").symlink_to(Path(args.ours_bin).resolve())
            cfg = {"conflist": ours_conflist(data_dir, json.loads(args.ours_extra)),
                   "cni_path": f"{bin_dir}:{REFERENCE_DIR}",
                   "env": dict(kv.split("=", 1) for kv in args.ours_env)}
        cfg.update(cache_dir=str(self.dir / "cache"), timeout=args.timeout)
        self.caller = Caller(self.host, cfg, self.dir / "caller.json")

    def fresh(self, count: int) -> list[Json]:
        """`count` new container namespaces, each with its own container ID and host port."""
        index = [next(self.counter) for _ in range(count)]
        made = self.lab.bare([f"{self.tag}{i}" for i in index])
        return [{"netns": ns.path, "cid": f"bench-{self.tag}-{i}", "port": PORT_BASE + i}
                for ns, i in zip(made, index, strict=True)]

    def run(self, command: str, att: Json, **extra: Any) -> float:
        resp = self.caller.call(op="run", command=command, **att, **extra)
        if not resp["ok"]:
            raise BenchError(f"{self.impl} {command} {att['cid']}: {resp['error']}")
        wall: float = resp["wall"]
        return wall

    def parallel(self, command: str, atts: list[Json]) -> Json:
        resp = self.caller.call(op="parallel", command=command, items=atts)
        failed = [r["error"] for r in resp["results"] if not r["ok"]]
        ips = [r["ip"] for r in resp["results"]]
        return {"count": len(atts), "wall_ms": round(resp["wall"] * 1000, 2), "failures": failed,
                "distinct_addresses": len({ip for ip in ips if ip}) == len(atts),
                "per_command": report.summary([r["wall"] for r in resp["results"]])}


class Bench:
    def __init__(self, args: argparse.Namespace, lab: Lab, tmp: Path) -> None:
        self.args = args
        self.lab = lab
        self.tmp = tmp
        self.ref = Side("reference", args, lab, tmp)
        self.ours = Side("ours", args, lab, tmp)
        self.sides = (self.ref, self.ours)
        self.scale_sides: list[Side] = []  # the scale probes' hosts, one per side and count
        self.out: Json = {"reference": {}, "ours": {}}
        self.notes: list[str] = []

    def put(self, side: Side, key: str, value: Any) -> None:
        self.out[side.impl][key] = value

    def seq(self, key: str, n: int, *, env: Json | None = None, fresh_mnt: bool = False) -> None:
        atts = {s.impl: s.fresh(n) for s in self.sides}
        extra: Json = {"fresh_mnt": fresh_mnt}
        for verb in ("ADD", "DEL"):
            walls: dict[str, list[float]] = {s.impl: [] for s in self.sides}
            for i in range(n):
                for side in self.sides:
                    side_env = env if side is self.ours else None
                    walls[side.impl].append(
                        side.run(verb, atts[side.impl][i], env=side_env, **extra))
            for side in self.sides:
                self.put(side, f"{key}_{verb.lower()}", report.summary(walls[side.impl]))

    def keep_one(self) -> dict[str, Json]:
        """One attachment per side for the first-ADD samples: neither side then builds its
        network (bridge, firewall scaffolding) in a sample. Without it ours would rebuild the
        bridge its last DEL removed in every sample, and the reference, which leaves its
        bridge, in the first only; the network's creation is the same for every ADD of a
        fresh host and is not what these rows are about."""
        kept = {s.impl: s.fresh(1)[0] for s in self.sides}
        for side in self.sides:
            side.run("ADD", kept[side.impl])
        return kept

    def drop(self, kept: dict[str, Json]) -> None:
        for side in self.sides:
            side.run("DEL", kept[side.impl])

    def first_add_no_agent(self) -> None:
        """The first ADD on a host with no agent (ours): the plugin runs it in-process and
        starts one for the next calls. The agent is stopped before each sample; an attachment
        stays present."""
        kept = self.keep_one()
        walls: dict[str, list[float]] = {s.impl: [] for s in self.sides}
        for _ in range(self.args.samples):
            agent.stop(self.ours.host)
            for side in self.sides:
                (att,) = side.fresh(1)
                walls[side.impl].append(side.run("ADD", att))
                side.run("DEL", att)
        for side in self.sides:
            self.put(side, "first_add_no_agent", report.summary(walls[side.impl]))
        self.drop(kept)

    def first_add_after_unit_start(self) -> None:
        """The agent started as build/cni-bridge.service's ExecStart does (systemd is not
        running here: the benchmark starts it the same way), then the first ADD. An attachment
        stays present (see keep_one)."""
        kept = self.keep_one()
        walls: dict[str, list[float]] = {s.impl: [] for s in self.sides}
        binary = str(Path(self.args.ours_bin).resolve())
        served = []
        for _ in range(self.args.samples):
            agent.stop(self.ours.host)
            unit = agent.start_like_unit(self.ours.host, binary)
            # The unit starts the agent at boot, well before the first pod: let it finish
            # starting (its spare worker and held-ports holder are forked after it listens).
            time.sleep(UNIT_SETTLE)
            for side in self.sides:
                (att,) = side.fresh(1)
                walls[side.impl].append(side.run("ADD", att))
                side.run("DEL", att)
            # The unit's agent served the calls, rather than one the plugin started beside it.
            served.append(agent.agents(self.ours.host) == [unit.pid])
        for side in self.sides:
            self.put(side, "first_add_unit", report.summary(walls[side.impl]))
        self.put(self.ours, "unit_agent_served", all(served))
        self.drop(kept)
        # Back to an agent the plugin starts (the default idle timeout applies to it), which is
        # what the quiet-period scenario is about.
        agent.stop(self.ours.host)

    def parallel(self) -> None:
        for side in self.sides:
            atts = side.fresh(self.args.parallel)
            self.put(side, "parallel_add", side.parallel("ADD", atts))
            self.put(side, "parallel_del", side.parallel("DEL", atts))

    def scale(self) -> None:
        """ADD/DEL probes with k attachments present, for each k of --scale: one host per side
        and count, populated first, then the probes taken in turns across all of them (sample
        i at every count before sample i+1 at any), so that a load that comes and goes, or the
        machine's drift over the minutes populating takes, weighs on every count alike; probing
        one count after the other compared two different moments. In each phase (ADD, then
        DEL) the reference runs its counts, then, SCALE_SETTLE later, ours runs its counts back
        to back, in turn first and second (by the sample's parity): so each of our probes
        follows either that pause or our own other probe, never the reference's call at one
        count only (its ADD at 1000 is ~0.8 s of iptables work whose freeing the kernel
        defers). With two counts every host of ours gets a call about every 1.2 s, under
        SHRINK_AFTER (2 s, after which an agent renews its worker), so each agent's pool stays
        as warm as in the other rows; more counts lengthen that gap."""
        counts = sorted(set(self.args.scale))
        hosts: dict[tuple[str, int], Side] = {}
        for k in counts:
            for impl in SIDES:
                side = Side(impl, self.args, self.lab, self.tmp, variant=f"k{k}")
                self.scale_sides.append(side)
                hosts[impl, k] = side
            progress(f"populating to {k} attachments per side")
            present = {impl: hosts[impl, k].fresh(k) for impl in SIDES}
            for i in range(k):
                for impl in SIDES:
                    hosts[impl, k].run("ADD", present[impl][i])
                if (i + 1) % 200 == 0:
                    progress(f"  {i + 1}/{k}")
        samples = self.args.scale_samples
        probes = {key: side.fresh(samples) for key, side in hosts.items()}
        walls: dict[tuple[str, int, str], list[float]] = {}
        progress(f"{samples} probes at each of {counts} attachments, in turns")
        for i in range(samples):
            order = counts if i % 2 == 0 else counts[::-1]
            for verb in ("ADD", "DEL"):
                for k in counts:
                    walls.setdefault(("reference", k, verb), []).append(
                        hosts["reference", k].run(verb, probes["reference", k][i]))
                time.sleep(SCALE_SETTLE)
                for k in order:
                    walls.setdefault(("ours", k, verb), []).append(
                        hosts["ours", k].run(verb, probes["ours", k][i]))
        for side in self.sides:
            slot = self.out[side.impl].setdefault("scale", {})
            for k in counts:
                slot[str(k)] = {"present": k,
                                "add": report.summary(walls[side.impl, k, "ADD"]),
                                "del": report.summary(walls[side.impl, k, "DEL"])}
        # Our agent with each count present (its held ports: two descriptors per published port).
        self.put(self.ours, "agent_scale", {
            str(k): _brief(agent.snapshot(hosts["ours", k].host)) for k in counts})

    def quiet(self) -> None:
        """An ADD after --quiet seconds without any call, with an attachment present (the agent
        must stay for it). Ours first, so its quiet period is exactly the one asked; the
        reference has no state to lose. Before the scale probes, so both sides have one
        attachment present, not a thousand (the reference's ADD grows with them)."""
        kept = {s.impl: s.fresh(1)[0] for s in self.sides}
        for side in self.sides:
            side.run("ADD", kept[side.impl])
        progress(f"quiet for {self.args.quiet:g} s (an attachment present per side)")
        self.put(self.ours, "agent_before_quiet", _brief(agent.snapshot(self.ours.host)))
        time.sleep(self.args.quiet)
        self.put(self.ours, "agent_after_quiet", _brief(agent.snapshot(self.ours.host)))
        for side in (self.ours, self.ref):
            (att,) = side.fresh(1)
            wall = side.run("ADD", att)
            side.run("DEL", att)
            self.put(side, "quiet_add_ms", round(wall * 1000, 2))
        for side in self.sides:
            side.run("DEL", kept[side.impl])
        self.put(self.ours, "quiet_s", self.args.quiet)

    def execute(self) -> Json:
        args = self.args
        run = set(args.only or SCENARIOS)
        if "first" in run:
            progress("first ADD with no agent running (the plugin starts it)")
            self.first_add_no_agent()
        if "keep" in run:
            progress(f"{args.n} ADD then DEL, caller keeps one mount namespace")
            self.seq("keep", args.n)
            # Idle: once requests stop the pool keeps its warmest worker alone (SHRINK_AFTER
            # later).
            time.sleep(SHRINK_AFTER + 1)
            self.put(self.ours, "agent_idle", agent.snapshot(self.ours.host))
        if "fresh" in run:
            progress(f"{args.n} ADD then DEL, a fresh mount namespace per call")
            self.seq("fresh", args.n, fresh_mnt=True)
        if "cold" in run:
            progress(f"{args.samples} cold ADD then DEL (ours: CNI_BRIDGE_RESIDENT=0)")
            self.seq("cold", args.samples, env={"CNI_BRIDGE_RESIDENT": "0"})
        if "parallel" in run:
            progress(f"{args.parallel} parallel ADD, then DEL")
            self.parallel()
        if "unit" in run:
            progress("first ADD after the agent's start by the unit's ExecStart")
            self.first_add_after_unit_start()
        if "quiet" in run:
            self.quiet()
        if "scale" in run:
            self.scale()
        self.put(self.ours, "agent_end", agent.snapshot(self.ours.host))
        return self.out


def _brief(snap: Json) -> Json:
    return {k: v for k, v in snap.items() if k not in ("namespace_ids", "per_pid")}


def _parse_scale(text: str) -> list[int]:
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("scale must be a comma-separated list of counts >= 1")
    return values


def _parse_only(text: str) -> list[str]:
    names = [v.strip() for v in text.split(",") if v.strip()]
    unknown = sorted(set(names) - set(SCENARIOS))
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"scenarios are {','.join(SCENARIOS)}")
    return names


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=30, help="sequential ADD/DEL samples per set-up (30)")
    p.add_argument("--samples", type=int, default=5,
                   help="samples of cold, first-ADD and scale probes (5)")
    p.add_argument("--parallel", type=int, default=20, help="concurrent ADDs (20)")
    p.add_argument("--scale", type=_parse_scale, default=[1, 1000],
                   help="attachments present for the scaling probes (1,1000; two counts keep "
                        "every agent's calls under 2 s apart, more may not)")
    p.add_argument("--scale-samples", type=int, default=15,
                   help="probes at each count of --scale, taken in turns (15)")
    p.add_argument("--quiet", type=float, default=330.0,
                   help="seconds without any call before the quiet-period ADD (330)")
    p.add_argument("--only", type=_parse_only, default=None, metavar="NAMES",
                   help=f"run only these scenarios, comma-separated: {','.join(SCENARIOS)}")
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "latest.json"))
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per plugin exec")
    p.add_argument("--ours-bin", default=str(REPO / "dist" / "bin" / "cni-bridge"),
                   help="the cni-bridge executable (the launcher link of a build)")
    p.add_argument("--ours-env", action="append", default=[], metavar="K=V",
                   help="extra environment for ours")
    p.add_argument("--ours-extra", default="{}", metavar="JSON",
                   help="keys merged into our plugin config")
    p.add_argument("--cleanup-stale", action="store_true",
                   help=f"delete namespaces named {PREFIX}-* left by a killed run, then exit")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if os.geteuid() != 0:
        sys.stderr.write("bench.run needs root (it creates network namespaces)\n")
        return 2
    if args.cleanup_stale:
        names = netns.stale(PREFIX)
        netns.delete(names)
        print(f"removed {len(names)} namespaces: {' '.join(n.name for n in names)}")
        return 0
    if min(args.n, args.parallel, args.samples, args.scale_samples) < 1 or args.quiet < 0:
        sys.stderr.write("--n, --parallel, --samples and --scale-samples must be >= 1, "
                         "--quiet >= 0\n")
        return 2
    if not Path(args.ours_bin).is_file():
        sys.stderr.write(f"cni-bridge executable not found at {args.ours_bin} (make build)\n")
        return 2
    json.loads(args.ours_extra)  # fail early on a typo
    if any("=" not in kv for kv in args.ours_env):
        sys.stderr.write("--ours-env wants K=V\n")
        return 2
    signal.signal(signal.SIGTERM, report.raise_interrupt)
    signal.signal(signal.SIGHUP, report.raise_interrupt)

    tmp = Path(tempfile.mkdtemp(prefix=f"{PREFIX}-bench-"))
    lab = Lab(PREFIX)
    bench: Bench | None = None
    error = None
    started = time.monotonic()
    try:
        progress(f"namespaces {lab.id}-*")
        bench = Bench(args, lab, tmp)
        bench.execute()
    except (BenchError, CallerError, RuntimeError) as exc:
        error = str(exc)
        progress(f"FAILED: {exc}")
    except KeyboardInterrupt:
        progress("interrupted: cleaning up")
        return 130
    finally:
        if bench is not None:
            for side in (*bench.sides, *bench.scale_sides):
                side.caller.close()
        survivors = lab.close(grace=5.0)
        if survivors:
            progress(f"processes that would not die: {survivors}")
        shutil.rmtree(tmp, ignore_errors=True)

    results = bench.out if bench is not None else {}
    doc = report.document(args, results, error, time.monotonic() - started)
    report.write(doc, args.out, report.table(doc))
    return 0 if error is None else 1


if __name__ == "__main__":
    raise SystemExit(main())
