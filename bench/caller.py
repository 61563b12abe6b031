"""The timed caller: a process inside one host namespace that runs plugin chains as a runtime
does (cni_bridge.libcni, the same client for both sides) and times each command.

Two caller set-ups, as runtimes have them:
- one mount namespace for all calls (containerd, kubelet, rootful podman): the caller's own;
- a fresh mount namespace per call (rootless podman's CNI calls, `ip netns exec`): the caller
  forks, the child leaves for a new mount namespace (unshare(CLONE_NEWNS), as `unshare -m`
  does) and runs the chain there; the time is the chain's, measured in the child.

The parent (bench.run) talks to it with JSON lines on stdin/stdout (`Caller`).
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any

from tests.lab.netns import Netns

REPO = Path(__file__).resolve().parent.parent
CLONE_NEWNS = 0x00020000
CONTAINER_PORT = 80

Json = dict[str, Any]


def cap_args(port: int) -> Json:
    return {
        "portMappings": [{"hostPort": port, "containerPort": CONTAINER_PORT, "protocol": "tcp"}]
    }


def _first_ip(result: Json | None) -> str | None:
    ips = (result or {}).get("ips") or []
    return str(ips[0].get("address")) if ips else None


class CallerState:
    """Runs commands for the parent; lives inside the host namespace."""

    def __init__(self, cfg: Json) -> None:
        from cni_bridge import libcni

        self.libcni = libcni
        self.conf = libcni.conflist_from_dict(cfg["conflist"])
        self.cni_path: str = cfg["cni_path"]
        self.cache_dir: str = cfg["cache_dir"]
        self.timeout = float(cfg["timeout"])
        self.environ = {**os.environ, **cfg["env"]}

    def run(self, command: str, netns: str, cid: str, port: int, env: Json | None = None,
            fresh_mnt: bool = False) -> Json:
        if fresh_mnt:
            return self._in_fresh_mnt(command, netns, cid, port, env)
        return self._run(command, netns, cid, port, env)

    def _run(self, command: str, netns: str, cid: str, port: int, env: Json | None) -> Json:
        from cni_bridge.errors import CNIError

        error = None
        result = None
        start = time.perf_counter()
        try:
            result = self.libcni.run_chain(
                command, self.conf, netns, cid, "eth0", self.cni_path, cap_args(port),
                self.cache_dir, "", timeout=self.timeout,
                environ={**self.environ, **(env or {})},
            )
        except CNIError as exc:
            error = f"code {exc.code}: {exc.msg}" + (f"; {exc.details}" if exc.details else "")
        wall = time.perf_counter() - start
        return {"ok": error is None, "error": error, "wall": wall, "ip": _first_ip(result)}

    def _in_fresh_mnt(self, command: str, netns: str, cid: str, port: int,
                      env: Json | None) -> Json:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: a new mount namespace, then the chain; never returns
            code = 0
            try:
                os.close(r)
                libc = ctypes.CDLL(None, use_errno=True)
                if libc.unshare(CLONE_NEWNS) != 0:
                    raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNS)")
                out = self._run(command, netns, cid, port, env)
            except BaseException as exc:  # reported to the parent, never raised in the child
                out = {"ok": False, "error": f"fresh mount namespace: {exc!r}", "wall": 0.0,
                       "ip": None}
                code = 1
            os.write(w, json.dumps(out).encode())
            os._exit(code)
        os.close(w)
        chunks = []
        while chunk := os.read(r, 65536):
            chunks.append(chunk)
        os.close(r)
        os.waitpid(pid, 0)
        answer: Json = json.loads(b"".join(chunks))
        return answer

    def parallel(self, command: str, items: list[Json]) -> Json:
        # All threads are released together so the plugins really contend.
        barrier = threading.Barrier(len(items) + 1)

        def one(item: Json) -> Json:
            barrier.wait()
            return self._run(command, item["netns"], item["cid"], item["port"], None)

        with ThreadPoolExecutor(len(items)) as pool:
            futures = [pool.submit(one, item) for item in items]
            barrier.wait()
            start = time.perf_counter()
            results = [f.result() for f in futures]
            wall = time.perf_counter() - start
        return {"wall": wall, "results": results}


def caller_main(cfg_path: str) -> int:
    """JSON lines on stdin/stdout; exits on `quit` or EOF (the parent is gone)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when we stop
    state = CallerState(json.loads(Path(cfg_path).read_text()))
    for line in sys.stdin:
        req = json.loads(line)
        op = req.pop("op")
        if op == "quit":
            break
        if op == "run":
            resp = state.run(**req)
        elif op == "parallel":
            resp = state.parallel(req["command"], req["items"])
        else:
            resp = {"error": f"unknown op {op!r}"}
        sys.stdout.write(json.dumps(resp) + "\n")
        sys.stdout.flush()
    return 0


class CallerError(RuntimeError):
    pass


class Caller:
    """The parent's handle on a caller running inside `host`."""

    def __init__(self, host: Netns, cfg: Json, cfg_path: Path) -> None:
        cfg_path.write_text(json.dumps(cfg))
        argv = [sys.executable, "-m", "bench.caller", str(cfg_path)]
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.proc = subprocess.Popen(
            host.command(*argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO, env=env,
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
            raise CallerError(f"caller exited (status {self.proc.wait()})")
        answer: Json = json.loads(line)
        return answer

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write('{"op": "quit"}\n')
                self.proc.stdin.close()
                self.proc.wait(timeout=10)
            except (OSError, ValueError, subprocess.TimeoutExpired):
                pass
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()


if __name__ == "__main__":
    raise SystemExit(caller_main(sys.argv[1]))
