"""Rootless podman (CNI backend), timed from its own plugin calls: cni-bridge vs the reference
chain, both networks used by the same user's podman, runs alternating.

    python -m bench.rootless --ours-bin dist/bin/cni-bridge [--runs 8] [--out FILE]

What it sets up, all removed at the end (shared/RUNTIMES.md "Rootless podman"): a throwaway
user `cbrootless` with subordinate id ranges, its home in a temporary directory holding a
busybox root filesystem, a copy of the built bundle, podman's configuration (CNI backend, its
own plugin and network directories) and two networks: `cbr-ours` (cni-bridge) and `cbr-ref`
(bridge + host-local + portmap). podman runs in a private mount namespace where /dev/net/tun
is usable by the user (a 0666 node bound over it there; the machine's node stays 0600).
Every plugin podman execs is a small shim that logs the command and its wall time, so the
figures are what podman itself waits for. podman calls each plugin from a fresh mount
namespace of its rootless network namespace and sends VERSION to every plugin before most
commands; both are in the figures.

Samples: the first ADD in a fresh rootless network namespace (nothing of the user's running:
ours starts its agent there), then, with one container kept running on each network (so the
rootless network namespace and ours's agent stay), `--runs` runs of `podman run --rm ...
/bin/true` per network, alternating: each one ADD and one DEL (p50).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pwd
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import report
from bench.run import progress
from tests.lab import procs

REPO = Path(__file__).resolve().parent.parent
USER = "cbrootless"
SUBIDS = "531072-596607"  # used only when useradd assigns none itself (Debian's does)
REFERENCE_DIR = Path("/usr/lib/cni")
NETS = {"ours": "cbr-ours", "reference": "cbr-ref"}

Json = dict[str, Any]

SHIM = """#!/bin/sh
s=$(date +%s%N)
{real} "$@"
rc=$?
e=$(date +%s%N)
echo "{name} $CNI_COMMAND $(( (e-s)/1000 ))" >> {log}
exit $rc
"""

# Runs podman as the user in a private mount namespace with a usable /dev/net/tun.
RUNNER = r"""
set -e
d={tun_dir}
mount -t tmpfs cbrootless "$d"
mknod "$d/tun" c 10 200
chmod 666 "$d/tun"
mount --bind "$d/tun" /dev/net/tun
exec su {user} -s /bin/sh -c "$1"
"""


class Rootless:
    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        self.args = args
        self.home = tmp / "home"
        self.log = self.home / "shim.log"
        self.tun_dir = tmp / "tun"  # a tmpfs on it inside each podman's mount namespace
        self.created_user = False

    # ------------------------------------------------------------------ set-up and removal

    def setup(self) -> None:
        if _user_exists(USER):
            raise RuntimeError(f"user {USER} exists already (a killed run?): remove it first")
        _run(["useradd", "-M", "-d", str(self.home), "-s", "/bin/sh", USER])
        self.created_user = True
        if not _subids(USER):
            _run(["usermod", "--add-subuids", SUBIDS, "--add-subgids", SUBIDS, USER])
        h = self.home
        for d in ("rootfs/bin", "rootfs/etc", "rootfs/proc", "rootfs/sys", "rootfs/dev",
                  "rootfs/tmp", "net.d", "run", "cni-bin", "cfg"):
            (h / d).mkdir(parents=True)
        busybox = h / "rootfs/bin/busybox"
        shutil.copy("/bin/busybox", busybox)
        applets = _run([str(busybox), "--list"]).stdout.split()
        for applet in applets:
            if applet != "busybox":
                (h / "rootfs/bin" / applet).symlink_to("busybox")
        bundle = Path(self.args.ours_bin).resolve().parent
        shutil.copytree(bundle, h / "cni-bridge.d", symlinks=True)
        launcher = h / "cni-bridge.d" / Path(self.args.ours_bin).resolve().name
        reals = {"cni-bridge": launcher, **{p: REFERENCE_DIR / p for p in
                                             ("bridge", "portmap", "host-local")}}
        for name, real in reals.items():
            shim = h / "cni-bin" / name
            shim.write_text(SHIM.format(real=real, name=name, log=self.log))
            shim.chmod(0o755)
        (h / "cfg/containers.conf").write_text(
            '[containers]\ndefault_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]\n'
            '[engine]\ncgroup_manager = "cgroupfs"\nevents_logger = "file"\nruntime = "runc"\n'
            f'[network]\nnetwork_backend = "cni"\ncni_plugin_dirs = ["{h}/cni-bin"]\n'
            f'network_config_dir = "{h}/net.d"\n')
        (h / "cfg/storage.conf").write_text(
            f'[storage]\ndriver = "vfs"\ngraphroot = "{h}/storage"\n'
            f'runroot = "{h}/run/storage"\n')
        ipam = {"type": "host-local", "routes": [{"dst": "0.0.0.0/0"}]}
        common = {"isGateway": True, "ipMasq": True, "hairpinMode": True}
        ours = {"cniVersion": "1.0.0", "name": NETS["ours"], "plugins": [
            {"type": "cni-bridge", "bridge": "cbr0", **common,
             "capabilities": {"portMappings": True},
             "ipam": {**ipam, "ranges": [[{"subnet": "10.78.0.0/24"}]]}}]}
        ref = {"cniVersion": "1.0.0", "name": NETS["reference"], "plugins": [
            {"type": "bridge", "bridge": "cbr1", **common,
             "ipam": {**ipam, "ranges": [[{"subnet": "10.78.1.0/24"}]]}},
            {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True}]}
        for conf in (ours, ref):
            (h / "net.d" / f"{conf['name']}.conflist").write_text(json.dumps(conf))
        self.tun_dir.mkdir()
        self.log.write_text("")
        _run(["chown", "-R", f"{USER}:{USER}", str(h)])
        (h / "run").chmod(0o700)

    def teardown(self) -> None:
        if not self.created_user:
            return
        with contextlib.suppress(Exception):
            self.podman("podman rm -f -t 0 -a", timeout=60)
        uid = _uid(USER)
        if uid is not None:  # the user's processes (conmon, slirp4netns, our agent), by pid
            victims = {i for pid in _pids_of(uid, _subids(USER))
                       if (i := procs.identity(pid)) is not None}
            procs.kill(victims, grace=2.0)
        # userdel also drops the user's /etc/subuid and /etc/subgid lines (shadow 4.13).
        subprocess.run(["userdel", USER], capture_output=True, check=False)
        self.created_user = False

    # ------------------------------------------------------------------ podman

    def podman(self, command: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        env = (f"cd {self.home} && export HOME={self.home} XDG_RUNTIME_DIR={self.home}/run "
               f"CONTAINERS_CONF={self.home}/cfg/containers.conf "
               f"CONTAINERS_STORAGE_CONF={self.home}/cfg/storage.conf && ")
        proc = subprocess.run(
            ["unshare", "-m", "--propagation", "private", "sh", "-c",
             RUNNER.format(user=USER, tun_dir=self.tun_dir), "-", env + command],
            capture_output=True, text=True, timeout=timeout, cwd="/", check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"{command}: exit {proc.returncode}: {proc.stderr.strip()[-800:]}")
        return proc

    def run_once(self, side: str) -> list[tuple[str, str, int]]:
        """One `podman run --rm` on the side's network; the plugin execs it caused."""
        with open(self.log, "r+") as fh:  # emptied, still the user's to append to
            fh.truncate()
        self.podman(f"podman run --rm --network {NETS[side]} --rootfs {self.home}/rootfs "
                    "/bin/true")
        out = []
        for line in self.log.read_text().splitlines():
            name, command, us = line.split()
            out.append((name, command, int(us)))
        return out

    def measure(self) -> Json:
        samples: dict[str, dict[str, list[float]]] = {s: {} for s in NETS}
        version: dict[str, list[float]] = {}
        first: Json = {}
        for side in ("reference", "ours"):  # nothing running: a fresh rootless netns each
            first[side] = _verb_ms(self.run_once(side), "ADD")
        for side, net in NETS.items():
            self.podman(f"podman run -d --name cbr-keep-{side} --network {net} "
                        f"--rootfs {self.home}/rootfs /bin/sleep 100000")
        for i in range(self.args.runs):
            for side in ("reference", "ours"):
                execs = self.run_once(side)
                for verb in ("ADD", "DEL"):
                    samples[side].setdefault(verb, []).append(_verb_ms(execs, verb))
                for name, command, us in execs:
                    if command == "VERSION" and name in ("cni-bridge", "bridge"):
                        version.setdefault(name, []).append(us / 1000)
            progress(f"rootless podman: {i + 1}/{self.args.runs} runs per network")
        out: Json = {"first_add_ms": first}
        for side in NETS:
            for verb, vals in samples[side].items():
                out.setdefault(side, {})[verb.lower()] = {
                    "p50_ms": round(statistics.median(vals), 1), "n": len(vals)}
        out["version_p50_ms"] = {k: round(statistics.median(v), 1) for k, v in version.items()}
        return out


def _verb_ms(execs: list[tuple[str, str, int]], verb: str) -> float:
    """The top-level plugins' time for `verb` (host-local runs inside bridge: not added)."""
    return round(sum(us for name, command, us in execs
                     if command == verb and name != "host-local") / 1000, 1)


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {proc.returncode}: {proc.stderr.strip()}")
    return proc


def _user_exists(name: str) -> bool:
    return _uid(name) is not None


def _uid(name: str) -> int | None:
    try:
        return pwd.getpwnam(name).pw_uid
    except KeyError:
        return None


def _subids(user: str) -> list[tuple[int, int]]:
    """The user's subordinate uid ranges, (first, last), from /etc/subuid."""
    out = []
    with contextlib.suppress(OSError):
        for line in Path("/etc/subuid").read_text().splitlines():
            name, _, rest = line.partition(":")
            if name == user and rest.count(":") == 1:
                first, count = (int(x) for x in rest.split(":"))
                out.append((first, first + count - 1))
    return out


def _pids_of(uid: int, ranges: list[tuple[int, int]]) -> list[int]:
    """Processes running as `uid` or as one of its subordinate ids (its containers)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            status = Path(f"/proc/{entry}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("Uid:"):
                real = int(line.split()[1])
                if real == uid or any(lo <= real <= hi for lo, hi in ranges):
                    found.append(int(entry))
                break
    return found


def table(doc: Json) -> str:
    res = doc.get("results") or {}
    lines = [f"{'rootless podman, p50 (ms)':40}{'reference':>10}{'ours':>10}{'ratio':>8}"]
    for label, path in (("ADD", ("add",)), ("DEL", ("del",))):
        r = res.get("reference", {}).get(path[0], {}).get("p50_ms")
        o = res.get("ours", {}).get(path[0], {}).get("p50_ms")
        ratio = f"{o / r:.2f}" if r and o else "-"
        lines.append(f"{label + ' (podman run --rm, agent warm)':40}{r!s:>10}{o!s:>10}{ratio:>8}")
    first = res.get("first_add_ms", {})
    if first:
        r, o = first.get("reference"), first.get("ours")
        ratio = f"{o / r:.2f}" if r and o else "-"
        lines.append(f"{'first ADD in a fresh rootless netns':40}{r!s:>10}{o!s:>10}{ratio:>8}")
    ver = res.get("version_p50_ms", {})
    if ver:
        lines.append(f"{'VERSION, one plugin exec':40}{ver.get('bridge')!s:>10}"
                     f"{ver.get('cni-bridge')!s:>10}")
    if doc.get("error"):
        lines.append(f"FAILED: {doc['error']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.rootless",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=8, help="podman runs per network (8)")
    p.add_argument("--ours-bin", default=str(REPO / "dist" / "bin" / "cni-bridge"))
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "rootless.json"))
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        sys.stderr.write("bench.rootless needs root (it creates a throwaway user)\n")
        return 2
    missing = [t for t in ("podman", "newuidmap", "slirp4netns", "runc") if not shutil.which(t)]
    if missing or not Path("/bin/busybox").exists():
        sys.stderr.write(f"bench.rootless needs {missing or 'busybox-static'} "
                         "(apt-get install podman uidmap slirp4netns runc busybox-static)\n")
        return 2
    signal.signal(signal.SIGTERM, report.raise_interrupt)
    tmp = Path(tempfile.mkdtemp(prefix="cbrootless-"))
    tmp.chmod(0o755)  # the user must reach its home inside
    bench = Rootless(args, tmp)
    results: Json = {}
    error = None
    started = time.monotonic()
    try:
        bench.setup()
        results = bench.measure()
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        error = f"{type(exc).__name__}: {exc}"
        progress(f"rootless podman FAILED: {error}")
    except KeyboardInterrupt:
        error = "interrupted"
    finally:
        bench.teardown()
        shutil.rmtree(tmp, ignore_errors=True)
    doc = {"meta": {"date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "runs": args.runs, "duration_s": round(time.monotonic() - started, 1)},
           "results": results, "error": error}
    report.write(doc, args.out, table(doc))
    return 0 if error is None else 1


if __name__ == "__main__":
    raise SystemExit(main())
