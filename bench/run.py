"""Latency, scaling, concurrency, memory and ruleset size: reference CNI chain vs cni-bridge.

    python -m bench.run [--n 30] [--scale 1,100,1000] [--only reference|ours]
                        [--out bench/results/latest.json]

Both sides run the same scenario through the same client (`cni_bridge.libcni.run_chain`),
each in a throwaway "host" namespace of its own with one container namespace per
attachment. The client runs in a worker process started with `nsenter --net=<host>`, so every
plugin exec happens inside the host namespace; the worker times each command (the whole
plugin chain, wall clock) and reads each plugin's peak RSS from `os.wait4`.

- reference: bridge (+ host-local, exec'd by bridge) + portmap from /usr/lib/cni, ipMasq and
  one port mapping per container;
- ours: one plugin of type `cni-bridge` with the same settings, from a CNI_PATH dir made here.

Everything (namespaces, IPAM dataDir, result cache) is created by the run and removed at the
end, also on failure, Ctrl-C or SIGTERM. The root namespace is never touched.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any

from bench import nsutil

REPO = Path(__file__).resolve().parent.parent
REFERENCE_DIR = "/usr/lib/cni"
SUBNET = "10.77.0.0/16"
BRIDGE = "cbe0"
PORT_BASE = 20000
CONTAINER_PORT = 80
IMPLS = ("reference", "ours")
CNI_VERSION = "1.0.0"

Json = dict[str, Any]


class BenchError(RuntimeError):
    pass


# --------------------------------------------------------------------------- configurations


def _ipam(data_dir: str) -> Json:
    return {
        "type": "host-local",
        "ranges": [[{"subnet": SUBNET}]],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dataDir": data_dir,
    }


def reference_conflist(data_dir: str) -> Json:
    return {
        "cniVersion": CNI_VERSION,
        "name": "cbe-ref",
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": True,
                "ipMasq": True,
                "hairpinMode": True,
                "ipam": _ipam(data_dir),
            },
            {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True},
        ],
    }


def ours_conflist(data_dir: str, extra: Json) -> Json:
    plugin: Json = {
        "type": "cni-bridge",
        "bridge": BRIDGE,
        "isGateway": True,
        "ipMasq": True,
        "hairpinMode": True,
        "ipam": _ipam(data_dir),
        "capabilities": {"portMappings": True},
    }
    plugin.update(extra)
    return {"cniVersion": CNI_VERSION, "name": "cbe-ours", "plugins": [plugin]}


def cap_args(port: int) -> Json:
    return {
        "portMappings": [{"hostPort": port, "containerPort": CONTAINER_PORT, "protocol": "tcp"}]
    }


# --------------------------------------------------------------------------- worker (in host netns)


def _first_ip(result: Json | None) -> str | None:
    ips = (result or {}).get("ips") or []
    return str(ips[0].get("address")) if ips else None


class WorkerState:
    """Runs commands for the parent; lives inside the host namespace."""

    def __init__(self, cfg: Json) -> None:
        from cni_bridge import libcni

        self.libcni = libcni
        self.conf = libcni.conflist_from_dict(cfg["conflist"])
        self.cni_path: str = cfg["cni_path"]
        self.cache_dir: str = cfg["cache_dir"]
        self.timeout = float(cfg["timeout"])
        self.environ = {**os.environ, **cfg["env"]}

    def run(
        self,
        command: str,
        netns: str,
        cid: str,
        port: int,
        cni_path: str | None = None,
        env: Json | None = None,
    ) -> Json:
        from cni_bridge.errors import CNIError

        records: list[Any] = []
        error = None
        result = None
        start = time.perf_counter()
        try:
            result = self.libcni.run_chain(
                command,
                self.conf,
                netns,
                cid,
                "eth0",
                cni_path or self.cni_path,
                cap_args(port),
                self.cache_dir,
                "",
                timeout=self.timeout,
                on_exec=records.append,
                environ={**self.environ, **(env or {})},
            )
        except CNIError as exc:
            error = f"code {exc.code}: {exc.msg}" + (f"; {exc.details}" if exc.details else "")
        wall = time.perf_counter() - start
        return {
            "ok": error is None,
            "error": error,
            "wall": wall,
            "execs": [r.as_dict() for r in records],
            "ip": _first_ip(result),
        }

    def parallel(self, command: str, items: list[Json]) -> Json:
        # All threads are released together so the plugins really contend.
        barrier = threading.Barrier(len(items) + 1)

        def one(item: Json) -> Json:
            barrier.wait()
            return self.run(command, item["netns"], item["cid"], item["port"])

        with ThreadPoolExecutor(len(items)) as pool:
            futures = [pool.submit(one, item) for item in items]
            barrier.wait()
            start = time.perf_counter()
            results = [f.result() for f in futures]
            wall = time.perf_counter() - start
        return {"wall": wall, "results": results}


def ruleset_size() -> Json:
    proc = subprocess.run(["nft", "list", "ruleset"], capture_output=True, check=False)
    if proc.returncode != 0:
        return {"error": proc.stderr.decode(errors="replace").strip()}
    return {"lines": proc.stdout.count(b"\n"), "bytes": len(proc.stdout)}


def worker_main(cfg_path: str) -> int:
    """JSON lines on stdin/stdout; exits on `quit` or EOF (the parent is gone)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when we stop
    state = WorkerState(json.loads(Path(cfg_path).read_text()))
    for line in sys.stdin:
        req = json.loads(line)
        op = req.pop("op")
        if op == "quit":
            break
        if op == "run":
            resp = state.run(**req)
        elif op == "parallel":
            resp = state.parallel(req["command"], req["items"])
        elif op == "ruleset":
            resp = ruleset_size()
        else:
            resp = {"error": f"unknown op {op!r}"}
        sys.stdout.write(json.dumps(resp) + "\n")
        sys.stdout.flush()
    return 0


class Worker:
    """The parent's handle on a worker running inside `host`."""

    def __init__(self, host: str, cfg_path: Path) -> None:
        argv = [sys.executable, "-m", "bench.run", "--worker", str(cfg_path)]
        self.proc = subprocess.Popen(
            nsutil.in_netns(host, argv),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
            start_new_session=True,  # Ctrl-C reaches the parent only; it stops us in order
        )

    def call(self, **req: Any) -> Json:
        stdin: IO[str] | None = self.proc.stdin
        stdout: IO[str] | None = self.proc.stdout
        assert stdin is not None and stdout is not None
        stdin.write(json.dumps(req) + "\n")
        stdin.flush()
        line = stdout.readline()
        if not line:
            raise BenchError(f"worker exited (status {self.proc.wait()})")
        answer: Json = json.loads(line)
        return answer

    def close(self, graceful: bool) -> None:
        if self.proc.poll() is None and graceful:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write('{"op": "quit"}\n')
                self.proc.stdin.close()
                self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                pass
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


# --------------------------------------------------------------------------- statistics


def summary(walls: list[float]) -> Json:
    ms = sorted(w * 1000 for w in walls)
    if not ms:
        return {"n": 0}
    p90 = statistics.quantiles(ms, n=10, method="inclusive")[8] if len(ms) > 1 else ms[0]
    return {
        "n": len(ms),
        "p50_ms": round(statistics.median(ms), 2),
        "p90_ms": round(p90, 2),
        "mean_ms": round(statistics.fmean(ms), 2),
        "min_ms": round(ms[0], 2),
        "max_ms": round(ms[-1], 2),
    }


TIME = "/usr/bin/time"
WRAPPER = """#!/bin/sh
# Measuring wrapper: GNU time forks the real plugin from a small process, so the plugin's
# ru_maxrss is its own (the kernel carries the exec'ing process's peak RSS across exec).
exec {time} -q -a -o '{log}' -f "{name} ${{CNI_COMMAND:-none}} %M %x" '{real}' "$@"
"""


def write_wrappers(target: Path, real_dirs: list[str], log: Path) -> None:
    """A CNI_PATH dir where every plugin of `real_dirs` runs under GNU time."""
    target.mkdir()
    for directory in real_dirs:
        for name in sorted(os.listdir(directory)):
            real = Path(directory) / name
            wrapper = target / name
            if wrapper.exists() or not (real.is_file() and os.access(real, os.X_OK)):
                continue
            wrapper.write_text(WRAPPER.format(time=TIME, log=log, name=name, real=real.resolve()))
            wrapper.chmod(0o755)


def parse_rss_log(log: Path) -> Json:
    """{"peak_rss_kib": max, "by_plugin": {plugin: {command: max KiB}}} from the wrappers' log."""
    by_plugin: dict[str, dict[str, int]] = {}
    text = log.read_text() if log.exists() else ""
    for line in text.splitlines():
        parts = line.split()
        if len(parts) != 4 or not parts[2].isdigit():
            continue
        plugin, command, kib = parts[0], parts[1], int(parts[2])
        slot = by_plugin.setdefault(plugin, {})
        slot[command] = max(slot.get(command, 0), kib)
    peak = max((k for cmds in by_plugin.values() for k in cmds.values()), default=None)
    return {"peak_rss_kib": peak, "by_plugin": by_plugin}


# --------------------------------------------------------------------------- one implementation


def _progress(msg: str) -> None:
    sys.stderr.write(f"[bench] {msg}\n")
    sys.stderr.flush()


class Scenario:
    """The measured scenario for one implementation, in its own host namespace."""

    def __init__(self, impl: str, args: argparse.Namespace, pool: nsutil.NamespacePool, tmp: Path):
        self.impl = impl
        self.args = args
        self.pool = pool
        self.tag = "ref" if impl == "reference" else "our"
        self.dir = tmp / impl
        self.dir.mkdir()
        self.counter = itertools.count()
        self.created: list[str] = []
        self.real_path = ""
        self.leftovers: Json = {}

    def _config(self) -> Json:
        data_dir = str(self.dir / "ipam")
        if self.impl == "reference":
            return {
                "conflist": reference_conflist(data_dir),
                "cni_path": REFERENCE_DIR,
                "env": {},
            }
        ours_bin = Path(self.args.ours_bin)
        if not ours_bin.is_file():
            raise BenchError(f"cni-bridge executable not found at {ours_bin} (see --ours-bin)")
        bin_dir = self.dir / "bin"
        bin_dir.mkdir()
        (bin_dir / "cni-bridge").symlink_to(ours_bin.resolve())
        env = dict(kv.split("=", 1) for kv in self.args.ours_env)
        return {
            "conflist": ours_conflist(data_dir, json.loads(self.args.ours_extra)),
            # The reference dir stays reachable in case the plugin delegates (it should not).
            "cni_path": f"{bin_dir}:{REFERENCE_DIR}",
            "env": env,
        }

    def fresh(self, count: int) -> list[Json]:
        """`count` new container namespaces, each with its own container ID and host port."""
        index = [next(self.counter) for _ in range(count)]
        names = self.pool.create([f"{self.tag}-c{i}" for i in index])
        self.created.extend(names)
        return [
            {"netns": nsutil.netns_path(n), "cid": f"bench-{self.tag}-{i}", "port": PORT_BASE + i}
            for n, i in zip(names, index, strict=True)
        ]

    def run(self, worker: Worker, command: str, att: Json, **extra: Any) -> float:
        resp = worker.call(op="run", command=command, **att, **extra)
        if not resp["ok"]:
            raise BenchError(f"{self.impl} {command} {att['cid']}: {resp['error']}")
        wall: float = resp["wall"]
        return wall

    def parallel(self, worker: Worker, command: str, atts: list[Json]) -> Json:
        resp = worker.call(op="parallel", command=command, items=atts)
        failed = [r["error"] for r in resp["results"] if not r["ok"]]
        ips = [r["ip"] for r in resp["results"]]
        return {
            "count": len(atts),
            "wall_ms": round(resp["wall"] * 1000, 2),
            "failures": failed,
            "distinct_addresses": len({ip for ip in ips if ip}) == len(atts),
            "per_command": summary([r["wall"] for r in resp["results"]]),
        }

    def execute(self) -> Json:
        cfg = self._config()
        cfg.update(cache_dir=str(self.dir / "cache"), timeout=self.args.timeout)
        self.real_path = cfg["cni_path"]
        cfg_path = self.dir / "worker.json"
        cfg_path.write_text(json.dumps(cfg))
        host = self.pool.create_host(f"{self.tag}-h")
        self.created.append(host)
        worker = Worker(host, cfg_path)
        graceful = False
        try:
            out = self._measure(worker)
            graceful = True
            return out
        finally:
            worker.close(graceful)
            self._reap()
            self.pool.delete(self.created)

    def _reap(self) -> None:
        """Stop whatever plugins left running in our namespaces (a resident daemon, say),
        noting its peak memory first."""
        procs = nsutil.pids_in(self.created)
        self.leftovers = {
            str(pid): {"netns": ns, "peak_rss_kib": nsutil.peak_rss_kib(pid)}
            for pid, ns in procs.items()
        }
        if procs:
            _progress(f"{self.impl}: stopping {len(procs)} process(es) left in our namespaces")
            nsutil.kill_in(self.created)

    def memory_probe(self, worker: Worker, label: str) -> Json:
        """Peak RSS per plugin over a few ADD/DEL, every plugin exec'd under GNU time."""
        if not os.access(TIME, os.X_OK):
            return {"error": f"needs {TIME} (apt-get install time)"}
        wrap = self.dir / f"memwrap-{label}"
        log = self.dir / f"rss-{label}.log"
        write_wrappers(wrap, self.real_path.split(":"), log)
        for att in self.fresh(self.args.mem_samples):
            self.run(worker, "ADD", att, cni_path=str(wrap))
            self.run(worker, "DEL", att, cni_path=str(wrap))
        return parse_rss_log(log)

    def _measure(self, worker: Worker) -> Json:
        args = self.args
        # Warm-up: the first ADD creates the bridge and the firewall scaffolding.
        # For ours it also starts the warm resident: what a node pays once.
        (warm,) = self.fresh(1)
        first_add = self.run(worker, "ADD", warm)
        self.run(worker, "DEL", warm)
        mem_empty = self.memory_probe(worker, "empty")

        # Cold: every exec does the whole job in-process (ours with the resident off): what a
        # node without the resident pays, and the import cost made visible.
        _progress(f"{self.impl}: {args.samples} cold ADD then DEL")
        cold_env = {"CNI_BRIDGE_RESIDENT": "0"}
        cold_atts = self.fresh(args.samples)
        cold_add = [self.run(worker, "ADD", a, env=cold_env) for a in cold_atts]
        cold_del = [self.run(worker, "DEL", a, env=cold_env) for a in cold_atts]

        _progress(f"{self.impl}: {args.n} sequential ADD then DEL")
        atts = self.fresh(args.n)
        adds = [self.run(worker, "ADD", a) for a in atts]
        dels = [self.run(worker, "DEL", a) for a in atts]

        _progress(f"{self.impl}: {args.parallel} parallel ADD, then DEL")
        patts = self.fresh(args.parallel)
        par_add = self.parallel(worker, "ADD", patts)
        par_del = self.parallel(worker, "DEL", patts)

        scale: Json = {}
        present: list[Json] = []
        probes = self.fresh(args.samples)
        for k in sorted(set(args.scale)):
            need = k - len(present)
            if need > 0:
                _progress(f"{self.impl}: populating to {k} attachments")
                start = time.perf_counter()
                for i, a in enumerate(self.fresh(need)):
                    self.run(worker, "ADD", a)
                    present.append(a)
                    if (i + 1) % 100 == 0:
                        _progress(f"{self.impl}:   {len(present)}/{k}")
                populate_s = time.perf_counter() - start
            else:
                populate_s = 0.0
            p_add, p_del = [], []
            for p in probes:
                p_add.append(self.run(worker, "ADD", p))
                p_del.append(self.run(worker, "DEL", p))
            scale[str(k)] = {
                "present": len(present),
                "add": summary(p_add),
                "del": summary(p_del),
                "populate_s": round(populate_s, 2),
            }
        ruleset = worker.call(op="ruleset")
        ruleset["at_attachments"] = len(present)
        mem_full = self.memory_probe(worker, "full")
        mem_full["at_attachments"] = len(present)
        return {
            "first_add_ms": round(first_add * 1000, 2),
            "cold_add": summary(cold_add),
            "cold_del": summary(cold_del),
            "add": summary(adds),
            "del": summary(dels),
            "parallel_add": par_add,
            "parallel_del": par_del,
            "scale": scale,
            "ruleset": ruleset,
            "memory": {"empty": mem_empty, "at_max": mem_full},
        }


# --------------------------------------------------------------------------- report


def _get(d: Json | None, *path: str) -> Any:
    for key in path:
        if not isinstance(d, dict):
            return None
        d = d.get(key)
    return d


def rows(results: Json, scale: list[int]) -> list[tuple[str, tuple[str, ...], float]]:
    """(label, path into an implementation's results, divisor for display)."""
    out: list[tuple[str, tuple[str, ...], float]] = [
        ("ADD p50 (ms)", ("add", "p50_ms"), 1),
        ("ADD p90 (ms)", ("add", "p90_ms"), 1),
        ("DEL p50 (ms)", ("del", "p50_ms"), 1),
        ("DEL p90 (ms)", ("del", "p90_ms"), 1),
        ("first ADD of the run (ms)", ("first_add_ms",), 1),
        ("cold ADD p50 (ms)", ("cold_add", "p50_ms"), 1),
        ("cold DEL p50 (ms)", ("cold_del", "p50_ms"), 1),
    ]
    for k in sorted(set(scale)):
        out.append((f"ADD p50 @{k} present (ms)", ("scale", str(k), "add", "p50_ms"), 1))
        out.append((f"DEL p50 @{k} present (ms)", ("scale", str(k), "del", "p50_ms"), 1))
    out += [
        ("parallel ADD wall (ms)", ("parallel_add", "wall_ms"), 1),
        ("parallel DEL wall (ms)", ("parallel_del", "wall_ms"), 1),
        ("peak RSS of a plugin (MiB)", ("memory", "empty", "peak_rss_kib"), 1024),
        ("peak RSS of a plugin @max (MiB)", ("memory", "at_max", "peak_rss_kib"), 1024),
        ("leftover processes' RSS (MiB)", ("leftover_rss_kib",), 1024),
        ("ruleset lines @max", ("ruleset", "lines"), 1),
        ("ruleset bytes @max", ("ruleset", "bytes"), 1),
    ]
    return out


def ratios(results: Json, scale: list[int]) -> Json:
    out: Json = {}
    for label, path, _ in rows(results, scale):
        ref, ours = _get(results.get("reference"), *path), _get(results.get("ours"), *path)
        if isinstance(ref, int | float) and isinstance(ours, int | float) and ref:
            out[label] = round(ours / ref, 3)
    return out


def table(results: Json, scale: list[int]) -> str:
    def cell(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.2f}" if abs(value) < 1000 else f"{value:.0f}"
        return str(value)

    lines = [f"{'':32}{'reference':>12}{'ours':>12}{'ours/ref':>10}"]
    rat = ratios(results, scale)
    for label, path, div in rows(results, scale):
        vals = []
        for impl in IMPLS:
            v = _get(results.get(impl), *path)
            vals.append(v / div if isinstance(v, int | float) and div != 1 else v)
        lines.append(f"{label:32}{cell(vals[0]):>12}{cell(vals[1]):>12}{cell(rat.get(label)):>10}")
    for impl in IMPLS:
        res = results.get(impl)
        if isinstance(res, dict) and "error" in res:
            lines.append(f"{impl}: FAILED: {res['error']}")
        elif isinstance(res, dict):
            ok = res["parallel_add"]["distinct_addresses"] and not res["parallel_add"]["failures"]
            lines.append(f"{impl}: parallel ADDs distinct addresses and no failures: {ok}")
    return "\n".join(lines)


def _tool_version(argv: list[str]) -> str:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=10)
    except OSError:
        return "unknown"
    return (
        (proc.stdout or proc.stderr).strip().splitlines()[0] if proc.stdout or proc.stderr else ""
    )


def meta(args: argparse.Namespace) -> Json:
    return {
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "reference_plugins": _tool_version(
            ["dpkg-query", "-W", "-f", "${Version}", "containernetworking-plugins"]
        ),
        "nft": _tool_version(["nft", "-v"]),
        "iptables": _tool_version(["iptables", "-V"]),
        "n": args.n,
        "scale": sorted(set(args.scale)),
        "samples_per_scale": args.samples,
        "parallel": args.parallel,
        "ours_bin": args.ours_bin,
        "ours_env": args.ours_env,
        "timing": "wall time of the whole plugin chain for one command, measured by the client "
        "running inside the host netns; RSS is ru_maxrss of each plugin exec (os.wait4)",
    }


# --------------------------------------------------------------------------- main


def _parse_scale(text: str) -> list[int]:
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError("scale must be a comma-separated list of counts >= 0")
    return values


def parser() -> argparse.ArgumentParser:
    default_bin = REPO / ".venv" / "bin" / "cni-bridge"
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=30, help="sequential ADD/DEL samples (default 30)")
    p.add_argument(
        "--scale",
        type=_parse_scale,
        default=[1, 100, 1000],
        help="attachments already present for the scaling probe (default 1,100,1000)",
    )
    p.add_argument("--samples", type=int, default=5, help="probes per scale point (default 5)")
    p.add_argument("--parallel", type=int, default=20, help="concurrent ADDs (default 20)")
    p.add_argument(
        "--mem-samples", type=int, default=3, help="ADD/DEL per memory probe (default 3)"
    )
    p.add_argument("--only", choices=IMPLS, help="run one implementation only")
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "latest.json"))
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per plugin exec")
    p.add_argument("--ours-bin", default=str(default_bin), help="the cni-bridge executable")
    p.add_argument(
        "--ours-env", action="append", default=[], metavar="K=V", help="extra env for ours"
    )
    p.add_argument(
        "--ours-extra", default="{}", metavar="JSON", help="keys merged into our plugin config"
    )
    p.add_argument(
        "--cleanup-stale",
        action="store_true",
        help=f"delete namespaces named {nsutil.PREFIX}-* left by a killed run, then exit",
    )
    p.add_argument("--worker", metavar="CFG", help=argparse.SUPPRESS)
    return p


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.worker:
        return worker_main(args.worker)
    if os.geteuid() != 0:
        sys.stderr.write("bench.run needs root (it creates network namespaces)\n")
        return 2
    if args.cleanup_stale:
        names = nsutil.stale()
        nsutil.remove(names)
        print(f"removed {len(names)} namespaces: {' '.join(names)}")
        return 0
    if args.n < 1 or args.parallel < 1 or args.samples < 1:
        sys.stderr.write("--n, --parallel and --samples must be >= 1\n")
        return 2
    json.loads(args.ours_extra)  # fail early on a typo
    for kv in args.ours_env:
        if "=" not in kv:
            sys.stderr.write(f"--ours-env wants K=V, got {kv!r}\n")
            return 2
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGHUP, _raise_interrupt)

    impls = [args.only] if args.only else list(IMPLS)
    results: Json = {}
    tmp = Path(tempfile.mkdtemp(prefix=f"{nsutil.PREFIX}-bench-"))
    pool = nsutil.NamespacePool()
    try:
        for impl in impls:
            _progress(f"{impl}: start (namespaces {pool.name('*')})")
            scenario = Scenario(impl, args, pool, tmp)
            try:
                results[impl] = scenario.execute()
            except BenchError as exc:
                _progress(f"{impl}: FAILED: {exc}")
                results[impl] = {"error": str(exc)}
            # Processes a plugin left behind (e.g. a warm resident): their own peak memory.
            results[impl]["leftover_processes"] = scenario.leftovers
            rss = [p["peak_rss_kib"] or 0 for p in scenario.leftovers.values()]
            results[impl]["leftover_rss_kib"] = sum(rss) if rss else None
    except KeyboardInterrupt:
        _progress("interrupted: cleaning up")
        return 130
    finally:
        pool.close()
        shutil.rmtree(tmp, ignore_errors=True)

    report = {"meta": meta(args), "results": results, "ratios": ratios(results, args.scale)}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(table(results, args.scale))
    print(f"written: {out}")
    return 0 if all("error" not in r for r in results.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
