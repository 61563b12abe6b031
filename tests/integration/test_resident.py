"""The resident mode end to end: real servers and clients in throwaway network namespaces (cbF-*).

Servers run a FAKE engine (`fake_handle` below, loaded by module path) that records every call
it serves in a file named by the request, with the namespace inode it sees, so the tests can
check what really ran, how often, and where. Clients run as separate processes under
`nsenter --net`, like a runtime exec'ing the plugin.
"""

from __future__ import annotations

import _thread
import contextlib
import ctypes
import fcntl
import importlib
import json
import os
import secrets
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from cni_bridge.background import Background
from cni_bridge.resident import client, naming, pool, protocol, spawn, waiting, worker
from cni_bridge.state import HOST_VETH_PREFIX
from tests.lab.procs import children, zombie_children
from tests.lab.procs import command_line as cmdline

ROOT = Path(__file__).resolve().parents[2]
HANDLER = "tests.integration.test_resident:fake_handle"
NETNS_DIR = Path("/run/netns")
CLONE_NEWNET = 0x40000000

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root and network namespaces"),
]


# --- the fake engine (runs inside the resident's workers) -------------------------------------


def _ino(path: str) -> int | None:
    try:
        return os.stat(path).st_ino if path.startswith("/") else None
    except OSError:
        return None


def _record(path: str, entry: dict[str, Any]) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, json.dumps(entry).encode() + b"\n")
    finally:
        os.close(fd)


_LEAKED: list[int] = []
_UNFIT: list[Any] = []


def _mapped(library: str) -> str | None:
    with open("/proc/self/maps") as f:
        return next((line for line in f if line.rstrip().endswith("/" + library)), None)


def reusable() -> bool:
    """The engine's say on reusing this worker (see engine.reusable)."""
    return not _UNFIT


def fake_handle(env: Mapping[str, str], stdin: bytes) -> tuple[int, bytes]:
    """A stand-in engine driven by the request's `fake` section."""
    conf = json.loads(stdin)
    fake = conf.get("fake", {})
    netns = env.get("CNI_NETNS", "")
    umask = os.umask(0)
    os.umask(umask)
    entry = {
        "id": fake.get("id"),
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "command": env.get("CNI_COMMAND"),
        "netns": netns,
        "netns_ino": _ino(netns),
        "original_netns": env.get(worker.ORIGINAL_NETNS_VAR),
        "umask": umask,
        "cni_args": env.get("CNI_ARGS"),
        "environ_args": os.environ.get("CNI_ARGS"),
        "secret": env.get("FAKE_SECRET"),
        "mnt_ino": os.stat("/proc/self/ns/mnt").st_ino,
        "group": fake.get("group"),
    }
    _record(fake["record"], entry)
    mode = fake.get("mode", "ok")
    if mode == "hang":
        time.sleep(fake.get("seconds", 60))
    elif mode == "crash":
        os._exit(3)
    elif mode == "raise":
        raise RuntimeError("fake engine failure")
    elif mode == "leak_fd":  # a descriptor left open, as a forgotten lock file would be
        _LEAKED.append(os.open("/dev/null", os.O_RDONLY))
    elif mode == "leak_thread":  # as background.Background starts one: invisible to threading
        _thread.start_new_thread(time.sleep, (60,))
    elif mode == "background":  # a joined Background job leaves the worker reusable
        if Background(lambda: None).join() is not None:
            return 1, json.dumps({"code": 999, "msg": "background job failed"}).encode()
    elif mode == "caught":  # an internal error the engine caught and answered itself
        _UNFIT.append(fake.get("id"))
        return 1, json.dumps({"code": 999, "msg": "internal error"}).encode()
    elif mode == "barrier":  # returns only once `n` requests are in flight together
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with open(fake["record"]) as f:  # the record holds earlier requests' lines too
                mark = json.dumps({"group": fake["group"]})[1:-1]
                if sum(mark in line for line in f) >= fake["n"]:
                    break
            time.sleep(0.02)
        else:
            return 1, json.dumps({"code": 999, "msg": "the others never ran alongside"}).encode()
    elif mode == "import":  # a module no request had imported (recorded: it really is new)
        _record(fake["record"], {"id": fake.get("id"), "new": fake["module"] not in sys.modules})
        importlib.import_module(fake["module"])
    elif mode == "dlopen":  # a library not mapped before (see test_mounts' file_mappings)
        _record(fake["record"], {"id": fake.get("id"), "new": _mapped(fake["library"]) is None})
        ctypes.CDLL(fake["library"])
    elif mode == "boot_id":  # an engine cache filled from a file (state.boot_id)
        from cni_bridge import state

        _record(fake["record"], {"id": fake.get("id"), "new": state._BOOT_ID is None})
        state.boot_id()
    elif mode == "wait_flag":
        deadline = time.monotonic() + 30
        while not os.path.exists(fake["flag"]) and time.monotonic() < deadline:
            time.sleep(0.02)
        _record(fake["record"], {"id": fake.get("id"), "after_flag_ino": _ino(netns)})
    sys.stderr.write(f"fake engine log for {fake.get('id')}\n")
    out = {"cniVersion": conf.get("cniVersion"), "id": fake.get("id"), "netns_ino": _ino(netns)}
    if fake.get("read"):  # a file as this process sees it (in the caller's mount namespace)
        out["read"] = Path(fake["read"]).read_text()
    return fake.get("exit", 0), json.dumps(out).encode()


# --- helpers ----------------------------------------------------------------------------------

CLIENT_SCRIPT = r"""
import _socket, ctypes, json, os, sys
spec = json.loads(sys.argv[1])
sys.path.insert(0, spec["root"])
from cni_bridge.resident import client
if spec.get("umask") is not None:
    os.umask(spec["umask"])
cfg = client.ClientConfig(**spec["config"])
env, stdin = spec["env"], spec["stdin"].encode()
if spec.get("how") == "try":
    result = client.try_resident(env, stdin, cfg)
else:  # by hand, to reach the server from unusual places
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    if spec.get("move_to"):  # the socket stays in this netns, the process leaves it
        fd = os.open(spec["move_to"], os.O_RDONLY)
        if ctypes.CDLL(None, use_errno=True).setns(fd, 0x40000000) != 0:
            raise OSError(ctypes.get_errno(), "setns")
    if spec.get("as_nobody"):
        os.setgroups([]); os.setgid(65534); os.setuid(65534)
    sock.settimeout(5)
    try:
        sock.connect(cfg.socket_path)
    except OSError:
        result = None
    else:
        mntns = os.open(spec.get("mntns", "/proc/self/ns/mnt"), os.O_RDONLY)
        result = client.exchange(sock, env, stdin, mntns, cfg)
print(json.dumps(None if result is None else [result[0], result[1].decode()]), flush=True)
if spec.get("hold"):  # stay alive until the test closes our stdin
    sys.stdin.read()
"""

SQUATTER_SCRIPT = r"""
import os, socket, sys
sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
sock.bind(sys.argv[2])  # root may: a root-started impostor that then drops its privileges
os.setgroups([]); os.setgid(65534); os.setuid(65534)
sock.listen(8)  # the peer credentials a client sees are the listener's, taken here
print("listening", flush=True)
conn, _ = sock.accept()
conn.settimeout(10)
got = b""
try:
    while chunk := conn.recv(65536):
        got += chunk
except OSError:
    pass
print(len(got), flush=True)
"""


def wait_until(predicate: Callable[[], bool], timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def alive(pid: int) -> bool:
    """Running (a zombie left to a parent that does not reap counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def pids_in_netns(ns: str) -> list[int]:
    target = os.stat(NETNS_DIR / ns)
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                st = os.stat(f"/proc/{entry}/ns/net")
            except OSError:
                continue
            if (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino):
                pids.append(int(entry))
    return pids


def residents_in(ns: str) -> list[int]:
    """Resident parents (not their workers, which share the command line) in a namespace."""
    found = [
        p for p in pids_in_netns(ns) if "cni_bridge.resident.server" in cmdline(p) and alive(p)
    ]
    return [
        p
        for p in found
        if int(Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[1]) not in found
    ]


class Env:
    """Namespaces, records and processes of one test; everything is removed at the end."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.tag = secrets.token_hex(3)
        self.namespaces: list[str] = []
        self.procs: list[subprocess.Popen[Any]] = []
        self.record = str(tmp / "calls.jsonl")
        self.counter = 0
        # A fixed identity for servers and clients: other work editing the package meanwhile
        # must not move the socket name under the test's feet.
        self.identity = f"cbF-test-{self.tag}"

    def socket_path(self, ns: str) -> str:
        """Where the resident of this test's identity listens for namespace `ns`."""
        name = naming.name_for(self.identity, os.stat(NETNS_DIR / ns).st_ino)
        return f"{naming.AGENT_DIR}/{name}"

    def netns(self, name: str) -> str:
        ns = f"cbF-{self.tag}-{name}"
        subprocess.run(["ip", "netns", "add", ns], check=True)
        self.namespaces.append(ns)
        return ns

    def cleanup(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for ns in self.namespaces:
            if (NETNS_DIR / ns).exists():
                sock = self.socket_path(ns)  # what a killed resident or a squatter left
                for path in (sock, naming.lock_path(sock)):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path)
                # Residents a client started in our namespace, and their workers.
                for pid in pids_in_netns(ns):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                subprocess.run(["ip", "netns", "del", ns], check=False)

    def start_server(self, ns: str, *extra: str) -> subprocess.Popen[bytes]:
        log = open(self.tmp / f"server-{ns}.log", "ab")  # noqa: SIM115 - lives with the process
        argv = ["nsenter", f"--net={NETNS_DIR / ns}", sys.executable, "-c", spawn._BOOT, str(ROOT)]
        argv += ["--handler", HANDLER, "--idle", "0", "--identity", self.identity, *extra]
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
            start_new_session=True,
            cwd="/",
        )
        log.close()
        self.procs.append(proc)
        assert wait_until(lambda: self.ping(ns) is not None), self.server_log(ns)
        return proc

    def start_squatter(self, ns: str) -> subprocess.Popen[str]:
        """A non-root listener on the resident's name (SQUATTER_SCRIPT), once it listens; it
        prints how many bytes a client sent it after the client has gone."""
        argv = ["nsenter", f"--net={NETNS_DIR / ns}", sys.executable, "-c", SQUATTER_SCRIPT]
        squatter = subprocess.Popen(
            [*argv, str(ROOT), self.socket_path(ns)],
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.procs.append(squatter)
        assert squatter.stdout is not None
        assert squatter.stdout.readline().strip() == "listening"
        return squatter

    def server_log(self, ns: str) -> str:
        path = self.tmp / f"server-{ns}.log"
        return path.read_text() if path.exists() else ""

    def request(
        self, command: str = "ADD", netns: str = "", mode: str = "ok", **fake: Any
    ) -> tuple[dict[str, str], str, str]:
        self.counter += 1
        rid = f"r{self.counter}"
        env = {
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": f"ctr-{rid}",
            "CNI_IFNAME": "eth0",
            "CNI_NETNS": netns,
            "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAME={rid}",
            "CNI_PATH": "/opt/cni/bin",
            "FAKE_SECRET": "not-forwarded",
        }
        stdin = {
            "cniVersion": "1.0.0",
            "name": "cbF",
            "fake": {"id": rid, "record": self.record, "mode": mode, **fake},
        }
        return env, json.dumps(stdin), rid

    def run_client(
        self,
        ns: str,
        env: Mapping[str, str],
        stdin: str,
        *,
        how: str = "try",
        timeout: float = 60,
        private_dir: Path | None = None,
        marker: str = "",
        **options: Any,
    ) -> subprocess.CompletedProcess[str]:
        """Run CLIENT_SCRIPT in `ns`; with `private_dir`, from a fresh mount namespace (as
        `unshare -m`, rootless podman and `ip netns exec` call) in which a tmpfs on that
        directory holds a file `marker` that only this caller sees (`marker`, default "seen by
        <private_dir>")."""
        config = {
            "mode": "connect",
            "handler": HANDLER,
            "identity": self.identity,
            **options.pop("config", {}),
        }
        spec = {
            "root": str(ROOT),
            "env": dict(env),
            "stdin": stdin,
            "config": config,
            "how": how,
            **options,
        }
        argv = [sys.executable, "-c", CLIENT_SCRIPT, json.dumps(spec)]
        if private_dir is not None:
            script = 'mount -t tmpfs cbF "$1" && echo "$2" > "$1/marker" && shift 2 && exec "$@"'
            argv = ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "-"]
            argv += [str(private_dir), marker or f"seen by {private_dir}", sys.executable, "-c"]
            argv += [CLIENT_SCRIPT, json.dumps(spec)]
        return subprocess.run(
            ["nsenter", f"--net={NETNS_DIR / ns}", *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd="/",
        )

    def call(self, ns: str, env: Mapping[str, str], stdin: str, **options: Any) -> Any:
        done = self.run_client(ns, env, stdin, **options)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    def ping(self, ns: str) -> Any:
        env, stdin, _ = self.request("VERSION", netns="dummy")
        return self.call(ns, env, stdin)

    def calls(self, rid: str | None = None) -> list[dict[str, Any]]:
        if not os.path.exists(self.record):
            return []
        entries = [json.loads(line) for line in Path(self.record).read_text().splitlines()]
        return [e for e in entries if rid is None or e.get("id") == rid]


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    e = Env(tmp_path)
    try:
        yield e
    finally:
        e.cleanup()


# --- round trips ------------------------------------------------------------------------------


def test_request_round_trips_with_the_netns_as_a_descriptor(env: Env) -> None:
    host = env.netns("host")
    container = env.netns("ctr")
    env.start_server(host)
    req_env, stdin, rid = env.request("ADD", netns=str(NETNS_DIR / container), exit=0)
    done = env.run_client(host, req_env, stdin, umask=0o027)
    assert done.returncode == 0, done.stderr
    code, out = json.loads(done.stdout)
    expected_ino = os.stat(NETNS_DIR / container).st_ino
    assert code == 0
    assert json.loads(out) == {"cniVersion": "1.0.0", "id": rid, "netns_ino": expected_ino}
    assert f"fake engine log for {rid}" in done.stderr  # stderr relayed
    [call] = env.calls(rid)
    # The engine got a path to the descriptor the client sent, naming the same namespace.
    assert call["netns"] == f"/proc/{call['pid']}/fd/{call['netns'].rsplit('/', 1)[1]}"
    assert call["netns_ino"] == expected_ino
    assert call["original_netns"] == str(NETNS_DIR / container)
    assert call["umask"] == 0o027
    assert call["cni_args"] == call["environ_args"] == req_env["CNI_ARGS"]
    assert call["secret"] is None  # only CNI_* and an allow-list travel
    assert call["command"] == "ADD"


def test_exit_code_and_error_output_are_relayed(env: Env) -> None:
    host = env.netns("host")
    env.start_server(host)
    req_env, stdin, rid = env.request("DEL", exit=1)
    assert env.call(host, req_env, stdin)[0] == 1
    req_env, stdin, rid = env.request("DEL", mode="raise")
    done = env.run_client(host, req_env, stdin)
    code, out = json.loads(done.stdout)
    assert code == 1
    assert json.loads(out)["code"] == 999
    assert "fake engine failure" in done.stderr
    assert len(env.calls(rid)) == 1


def test_version_with_a_dummy_netns_sends_no_descriptor(env: Env) -> None:
    host = env.netns("host")
    env.start_server(host)
    req_env, stdin, rid = env.request("VERSION", netns="dummy")
    assert env.call(host, req_env, stdin)[0] == 0
    [call] = env.calls(rid)
    assert call["netns"] == "dummy"
    assert call["original_netns"] is None


def test_the_namespace_stays_pinned_when_its_mount_goes(env: Env) -> None:
    host = env.netns("host")
    container = env.netns("ctr")
    env.start_server(host)
    expected_ino = os.stat(NETNS_DIR / container).st_ino
    flag = env.tmp / "flag"
    req_env, stdin, rid = env.request(
        "ADD", netns=str(NETNS_DIR / container), mode="wait_flag", flag=str(flag)
    )
    result: list[Any] = []
    runner = threading.Thread(target=lambda: result.append(env.call(host, req_env, stdin)))
    runner.start()
    try:
        assert wait_until(lambda: len(env.calls(rid)) == 1)
        subprocess.run(["ip", "netns", "del", container], check=True)
        assert not (NETNS_DIR / container).exists()
    finally:
        flag.touch()
        runner.join(60)
    assert result and result[0][0] == 0
    assert env.calls(rid)[1]["after_flag_ino"] == expected_ino


def test_a_missing_netns_is_left_to_the_in_process_path(env: Env) -> None:
    host = env.netns("host")
    env.start_server(host)
    req_env, stdin, rid = env.request("DEL", netns=str(NETNS_DIR / f"cbF-{env.tag}-never"))
    assert env.call(host, req_env, stdin) is None
    assert env.calls(rid) == []


def at_once(
    env: Env, host: str, requests: list[tuple[dict[str, str], str, str]]
) -> list[list[dict[str, Any]]]:
    """Every request from a thread of its own, all at once; each must succeed. What each ran."""
    results: dict[str, Any] = {}

    def run(req: tuple[dict[str, str], str, str]) -> None:
        results[req[2]] = env.call(host, req[0], req[1])

    threads = [threading.Thread(target=run, args=(r,)) for r in requests]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert all(results.get(rid) is not None and results[rid][0] == 0 for _, _, rid in requests)
    return [env.calls(rid) for _, _, rid in requests]


def test_requests_run_concurrently_each_once(env: Env) -> None:
    host = env.netns("host")
    env.start_server(host)
    # A barrier, not a sleep: under load a short sleep can end before the last caller
    # connects, and a freed worker may then rightly serve it.
    requests = [env.request("ADD", mode="barrier", n=6, group="six") for _ in range(6)]
    calls = at_once(env, host, requests)
    assert all(len(c) == 1 for c in calls)
    assert len({c[0]["pid"] for c in calls}) == len(requests)  # one worker per request


def test_a_burst_beyond_the_cores_waits_for_free_workers(env: Env) -> None:
    """More requests at once than cores + 1: the others wait for a worker to come free instead
    of a fork each (resident/waiting.py), and each still runs exactly once."""
    host = env.netns("host")
    env.start_server(host)
    count = waiting.busy_limit() + 3
    requests = [env.request("ADD", mode="hang", seconds=0.3) for _ in range(count)]
    calls = at_once(env, host, requests)
    assert all(len(c) == 1 for c in calls)
    assert len({c[0]["pid"] for c in calls}) < count, env.server_log(host)


# --- who may call -----------------------------------------------------------------------------


def test_a_caller_in_another_netns_cannot_reach_it(env: Env) -> None:
    host = env.netns("host")
    other = env.netns("other")
    env.start_server(host)
    req_env, stdin, rid = env.request("VERSION", netns="dummy")
    assert env.call(other, req_env, stdin) is None
    assert env.call(host, req_env, stdin) is not None  # the same call from the right place works
    assert len(env.calls(rid)) == 1


def test_a_caller_whose_process_left_the_netns_is_refused(env: Env) -> None:
    host = env.netns("host")
    other = env.netns("other")
    env.start_server(host)
    req_env, stdin, rid = env.request("VERSION", netns="dummy")
    # The socket is made in `host` (so the name resolves) but the process then moves to `other`.
    assert env.call(host, req_env, stdin, how="raw", move_to=str(NETNS_DIR / other)) is None
    assert env.calls(rid) == []
    assert "another net namespace" in env.server_log(host)
    assert env.call(host, req_env, stdin, how="raw") is not None
    assert len(env.calls(rid)) == 1


def test_a_non_root_caller_cannot_reach_it(env: Env) -> None:
    host = env.netns("host")
    env.start_server(host)
    req_env, stdin, rid = env.request("VERSION", netns="dummy")
    assert env.call(host, req_env, stdin, how="raw", as_nobody=True) is None
    assert env.calls(rid) == []
    assert env.call(host, req_env, stdin, how="raw") is not None
    assert len(env.calls(rid)) == 1


UNPRIVILEGED_SCRIPT = r"""
import errno, json, os, socket, sys
path, old_name = sys.argv[1], bytes.fromhex(sys.argv[2])
os.setgroups([]); os.setgid(65534); os.setuid(65534)
tried = {}
for what, act in [
    ("bind", lambda: socket.socket(socket.AF_UNIX, socket.SOCK_STREAM).bind(path)),
    ("connect", lambda: socket.socket(socket.AF_UNIX, socket.SOCK_STREAM).connect(path)),
    ("create", lambda: os.close(os.open(path + ".x", os.O_CREAT | os.O_WRONLY, 0o600))),
    ("unlink", lambda: os.unlink(path)),
    ("rename", lambda: os.rename(os.path.dirname(path), os.path.dirname(path) + ".x")),
]:
    try:
        act()
        tried[what] = "done"
    except OSError as exc:
        tried[what] = errno.errorcode[exc.errno]
held = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
held.bind(old_name)  # the abstract name of old, computable by anyone: now nobody looks there
held.listen(8)
print(json.dumps(tried), flush=True)
sys.stdin.read()
"""


def test_an_unprivileged_process_can_neither_squat_nor_impersonate(env: Env) -> None:
    """The socket lives in a directory only root can enter: an unprivileged process can neither
    take the agent's name before it starts, nor replace or reach it, nor stand in for it; the
    abstract name the agent used to have, squatted, changes nothing. Root callers are served."""
    host = env.netns("host")
    container = env.netns("ctr")
    assert naming.agent_dir(create=True) == naming.AGENT_DIR
    st = os.lstat(naming.AGENT_DIR)
    assert st.st_uid == 0 and st.st_mode & 0o777 == 0o700
    path = env.socket_path(host)
    old_name = b"\0cni-bridge/v1/" + path.rsplit("-", 2)[1].encode()
    squatter = subprocess.Popen(
        ["nsenter", f"--net={NETNS_DIR / host}", sys.executable, "-c", UNPRIVILEGED_SCRIPT,
         path, old_name.hex()],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    env.procs.append(squatter)
    assert squatter.stdout is not None
    tried = json.loads(squatter.stdout.readline())
    assert tried == dict.fromkeys(["bind", "connect", "create", "unlink", "rename"], "EACCES")
    assert not os.path.exists(path)
    # The first root call starts the agent (and runs in-process); the next ones are its.
    auto = {"mode": "auto", "idle": 0.0}
    req_env, stdin, rid = env.request("ADD", netns=str(NETNS_DIR / container))
    assert env.call(host, req_env, stdin, config=auto) is None
    assert wait_until(lambda: len(residents_in(host)) == 1)
    [resident] = residents_in(host)
    for _ in range(2):
        assert wait_until(lambda: env.ping(host) is not None), env.server_log(host)
        req_env, stdin, rid = env.request("ADD", netns=str(NETNS_DIR / container))
        assert env.call(host, req_env, stdin, config=auto) is not None, env.server_log(host)
        assert env.calls(rid)[0]["ppid"] == resident
    assert os.lstat(path).st_uid == 0


def test_the_client_ignores_a_resident_that_is_not_root(env: Env) -> None:
    host = env.netns("host")
    squatter = env.start_squatter(host)
    assert squatter.stdout is not None
    req_env, stdin, _ = env.request("ADD", netns=str(NETNS_DIR / host))
    assert env.call(host, req_env, stdin) is None
    assert squatter.stdout.readline().strip() == "0"  # not one byte of the request was sent


# --- failures ---------------------------------------------------------------------------------


# --- the worker pool -----------------------------------------------------------------------


def test_a_worker_serves_the_next_request_with_only_that_requests_context(env: Env) -> None:
    host = env.netns("host")
    containers = [env.netns(f"ctr{i}") for i in range(3)]
    env.start_server(host)
    rids = []
    for i, ctr in enumerate(containers):
        req_env, stdin, rid = env.request("ADD", netns=str(NETNS_DIR / ctr))
        code, _ = env.call(host, req_env, stdin, umask=0o022 + i)
        assert code == 0
        rids.append(rid)
    calls = [env.calls(rid)[0] for rid in rids]
    assert len({c["pid"] for c in calls}) == 1, calls  # one warm worker, not killed in between
    for i, (c, ctr, rid) in enumerate(zip(calls, containers, rids, strict=True)):
        assert c["netns_ino"] == os.stat(NETNS_DIR / ctr).st_ino
        assert c["umask"] == 0o022 + i
        assert c["cni_args"] == c["environ_args"] == f"IgnoreUnknown=1;K8S_POD_NAME={rid}"
        assert c["secret"] is None


def _home(pid: int) -> bool:
    """Whether worker `pid` is in this process's (the agent's) mount namespace."""
    try:
        return os.stat(f"/proc/{pid}/ns/mnt").st_ino == os.stat("/proc/self/ns/mnt").st_ino
    except OSError:
        return False


def test_callers_in_fresh_mount_namespaces_are_served_there_by_one_warm_worker(env: Env) -> None:
    """The worker joins the caller's mount namespace: CNI_NETNS and every file the engine
    opens mean what they mean to the caller. It then goes back to the agent's own and serves
    the next caller, from whichever mount namespace, with exactly that caller's view: a file
    hidden by one caller's tmpfs, shown by another's, is read as each of them sees it."""
    host = env.netns("host")
    container = env.netns("ctr")
    env.start_server(host)
    private = env.tmp / "private"
    private.mkdir()
    (private / "marker").write_text("the agent's own view\n")
    own_mnt = os.stat("/proc/self/ns/mnt").st_ino
    pids, mnts = [], []
    for i, fresh in enumerate([True, True, False, True, False]):
        req_env, stdin, rid = env.request(
            "ADD", netns=str(NETNS_DIR / container), read=str(private / "marker")
        )
        if fresh:
            done = env.run_client(host, req_env, stdin, private_dir=private, marker=f"caller {i}")
        else:
            done = env.run_client(host, req_env, stdin)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) is not None, env.server_log(host)  # not refused
        code, out = json.loads(done.stdout)
        assert code == 0, out
        assert json.loads(out)["read"] == (f"caller {i}\n" if fresh else "the agent's own view\n")
        assert json.loads(out)["netns_ino"] == os.stat(NETNS_DIR / container).st_ino
        [call] = env.calls(rid)
        pids.append(call["pid"])
        mnts.append(call["mnt_ino"])
        # Back in the agent's namespace before the next caller comes (it then says it is free).
        assert wait_until(lambda: _home(pids[-1])), env.server_log(host)
    assert len(set(pids)) == 1, (pids, env.server_log(host))  # one warm worker throughout
    assert (mnts[2], mnts[4]) == (own_mnt, own_mnt)
    # Each fresh caller's own (the kernel may give a freed namespace's inode to the next one).
    assert own_mnt not in (mnts[0], mnts[1], mnts[3])
    assert alive(pids[0])
    assert "worker leaves" not in env.server_log(host)


@pytest.mark.parametrize(
    ("mode", "fake", "trace"),
    [
        ("import", {"module": "colorsys"}, "it imported colorsys"),
        ("dlopen", {"library": "libanl.so.1"}, "it mapped 1 new file"),
        ("boot_id", {}, "it filled cni_bridge.state._BOOT_ID"),
    ],
)
def test_a_worker_that_loaded_anything_in_a_callers_mount_namespace_leaves(
    env: Env, mode: str, fake: dict[str, str], trace: str
) -> None:
    """Nothing loaded from one caller's mount namespace may serve another: a module, a
    library, an engine cache filled from a file there all make the worker leave after
    answering, and the next caller gets another worker."""
    host = env.netns("host")
    env.start_server(host)
    private = env.tmp / "private"
    private.mkdir()
    req_env, stdin, first = env.request("ADD", mode=mode, **fake)
    done = env.run_client(host, req_env, stdin, private_dir=private)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)[0] == 0, (done.stdout, env.server_log(host))
    assert env.calls(first)[1]["new"] is True  # it really was loaded by this request
    pid = env.calls(first)[0]["pid"]
    assert wait_until(lambda: not alive(pid)), env.server_log(host)
    assert f"while in a caller's mount namespace {trace}" in env.server_log(host)
    req_env, stdin, second = env.request("ADD")
    done = env.run_client(host, req_env, stdin, private_dir=private)
    assert json.loads(done.stdout)[0] == 0, done.stdout
    assert env.calls(second)[0]["pid"] != pid


def test_a_mount_namespace_that_is_not_the_callers_is_refused(env: Env) -> None:
    host = env.netns("host")
    env.start_server(host)
    private = env.tmp / "private"
    private.mkdir()
    req_env, stdin, rid = env.request("ADD")
    # From a fresh mount namespace, the resident's own one sent as if it were the caller's.
    theirs = f"/proc/{os.getpid()}/ns/mnt"
    done = env.run_client(host, req_env, stdin, private_dir=private, how="hand", mntns=theirs)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) is None
    assert env.calls(rid) == []
    assert "the mount namespace sent is not the caller's" in env.server_log(host)


def test_pool_zero_forks_a_worker_per_request(env: Env) -> None:
    host = env.netns("host")
    env.start_server(host, "--pool", "0")
    pids = set()
    for _ in range(2):
        req_env, stdin, rid = env.request("ADD")
        assert env.call(host, req_env, stdin)[0] == 0
        pids.add(env.calls(rid)[0]["pid"])
    assert len(pids) == 2


def test_once_requests_stop_the_pool_keeps_one_fresh_worker(env: Env) -> None:
    """A worker that served owns the pages it wrote: once no request came for SHRINK_AFTER,
    the one worker kept is a fresh fork, and it serves the next request."""
    host = env.netns("host")
    agent = env.start_server(host).pid
    served = set()
    for _ in range(2):
        req_env, stdin, rid = env.request("ADD")
        assert env.call(host, req_env, stdin)[0] == 0
        served.add(env.calls(rid)[0]["pid"])

    def renewed() -> bool:
        kids = children(agent)
        return len(kids) == 1 and not kids & served

    assert wait_until(renewed, timeout=pool.SHRINK_AFTER + 10), (served, children(agent))
    (fresh,) = children(agent)
    req_env, stdin, rid = env.request("ADD")
    assert env.call(host, req_env, stdin)[0] == 0
    assert env.calls(rid)[0]["pid"] == fresh, env.server_log(host)


@pytest.mark.parametrize("mode", ["leak_fd", "leak_thread", "raise", "caught"])
def test_a_worker_the_request_left_unclean_serves_no_more(env: Env, mode: str) -> None:
    host = env.netns("host")
    env.start_server(host)
    req_env, stdin, first = env.request("ADD", mode=mode)
    env.call(host, req_env, stdin)
    req_env, stdin, second = env.request("ADD")
    assert env.call(host, req_env, stdin)[0] == 0
    assert env.calls(first)[0]["pid"] != env.calls(second)[0]["pid"]
    if mode == "leak_fd":
        assert "worker leaves after its request: descriptors opened" in env.server_log(host)
    if mode == "leak_thread":  # logged once the thread had its time to end (mounts.threads)
        left = "worker leaves after its request: threads/net ns/mount ns (1,"
        assert wait_until(lambda: left in env.server_log(host)), env.server_log(host)


def test_a_worker_whose_request_joined_a_background_job_serves_the_next(env: Env) -> None:
    host = env.netns("host")
    env.start_server(host)
    req_env, stdin, first = env.request("ADD", mode="background")
    assert env.call(host, req_env, stdin)[0] == 0
    req_env, stdin, second = env.request("ADD")
    assert env.call(host, req_env, stdin)[0] == 0
    assert env.calls(first)[0]["pid"] == env.calls(second)[0]["pid"], env.server_log(host)


def test_a_hung_engine_gives_try_again_later_and_runs_once(env: Env) -> None:
    host = env.netns("host")
    env.start_server(host)
    req_env, stdin, rid = env.request("ADD", mode="hang", seconds=30)
    req_env["CNI_BRIDGE_RESIDENT_TIMEOUT"] = "1"  # the agent tells the caller, with READY
    done = env.run_client(host, req_env, stdin)
    code, out = json.loads(done.stdout)
    assert code == 1
    assert json.loads(out)["code"] == 11
    assert json.loads(out)["cniVersion"] == "1.0.0"
    assert "did not complete" in done.stderr
    time.sleep(1.0)  # long enough for a (wrong) second run to show up
    assert len(env.calls(rid)) == 1


def test_a_worker_dying_mid_request_gives_try_again_later(env: Env) -> None:
    host = env.netns("host")
    env.start_server(host)
    req_env, stdin, rid = env.request("ADD", mode="crash")
    code, out = env.call(host, req_env, stdin)
    assert (code, json.loads(out)["code"]) == (1, 11)
    assert len(env.calls(rid)) == 1
    assert env.ping(host) is not None  # the resident itself lives on
    assert "exited with status 3" in env.server_log(host)


def test_a_hung_worker_is_ended_by_the_hard_timeout(env: Env) -> None:
    host = env.netns("host")
    env.start_server(host, "--hard-timeout", "1")
    req_env, stdin, rid = env.request("ADD", mode="hang", seconds=60)
    code, out = env.call(host, req_env, stdin)
    assert (code, json.loads(out)["code"]) == (1, 11)
    assert wait_until(lambda: "killed by signal 14" in env.server_log(host))
    assert len(env.calls(rid)) == 1


def test_no_ready_in_time_means_in_process_and_the_request_never_runs(env: Env) -> None:
    host = env.netns("host")
    container = env.netns("ctr")
    proc = env.start_server(host)
    req_env, stdin, rid = env.request("ADD", netns=str(NETNS_DIR / container))
    spec = {
        "root": str(ROOT),
        "env": req_env,
        "stdin": stdin,
        "how": "try",
        "hold": True,
        "config": {"mode": "connect", "identity": env.identity, "ready_timeout": 0.5},
    }
    os.kill(proc.pid, signal.SIGSTOP)  # the connection is queued, nobody answers
    caller = subprocess.Popen(
        [
            "nsenter",
            f"--net={NETNS_DIR / host}",
            sys.executable,
            "-c",
            CLIENT_SCRIPT,
            json.dumps(spec),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    env.procs.append(caller)
    try:
        assert caller.stdout is not None and caller.stdin is not None
        assert json.loads(caller.stdout.readline()) is None  # gave up: runs it in-process
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    # The resident now takes the queued connection from a caller that is still alive (so the
    # peer checks pass), sends READY to a closed socket, and must not run the request.
    assert wait_until(lambda: "caller left before GO" in env.server_log(host)), env.server_log(host)
    caller.stdin.close()
    caller.wait(30)
    assert env.ping(host) is not None
    assert env.calls(rid) == []


def test_a_killed_resident_means_in_process(env: Env) -> None:
    host = env.netns("host")
    proc = env.start_server(host)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    req_env, stdin, rid = env.request("VERSION", netns="dummy")
    assert env.call(host, req_env, stdin) is None
    assert env.calls(rid) == []


def test_a_refused_identity_means_in_process(env: Env) -> None:
    host = env.netns("host")
    env.start_server(host)
    req_env, stdin, rid = env.request("VERSION", netns="dummy")
    # Reach the resident's name while claiming to run other code.
    config = {"identity": "other code", "socket_path": env.socket_path(host)}
    assert env.call(host, req_env, stdin, config=config) is None
    assert env.calls(rid) == []
    assert "other code than this resident" in env.server_log(host)


def test_refused_callers_do_not_keep_a_resident_alive(env: Env) -> None:
    host = env.netns("host")
    proc = env.start_server(host, "--idle", "2")
    req_env, stdin, rid = env.request("VERSION", netns="dummy")
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        assert env.call(host, req_env, stdin, how="raw", as_nobody=True) is None
    assert proc.poll() == 0
    assert "idle, leaving" in env.server_log(host)
    assert env.calls(rid) == []


def test_sigterm_lets_running_requests_finish(env: Env) -> None:
    host = env.netns("host")
    proc = env.start_server(host)
    req_env, stdin, rid = env.request("ADD", mode="hang", seconds=1.0)
    result: list[Any] = []
    runner = threading.Thread(target=lambda: result.append(env.call(host, req_env, stdin)))
    runner.start()
    try:
        assert wait_until(lambda: len(env.calls(rid)) == 1)
        proc.terminate()
    finally:
        runner.join(60)
    assert proc.wait(30) == 0
    assert result and result[0][0] == 0
    assert "stopping; 1 request(s) still running" in env.server_log(host)
    req_env, stdin, _ = env.request("VERSION", netns="dummy")
    assert env.call(host, req_env, stdin) is None


# --- starting on first use --------------------------------------------------------------------


def test_first_use_starts_a_resident_that_leaves_when_idle(env: Env) -> None:
    host = env.netns("host")
    container = env.netns("ctr")
    auto = {"mode": "auto", "idle": 2.0}
    req_env, stdin, rid = env.request("ADD", netns=str(NETNS_DIR / container))
    # The first call starts the resident and runs in-process without waiting for it (None:
    # nothing ran in a resident); the resident comes up once that caller has exited.
    assert env.call(host, req_env, stdin, config=auto) is None
    assert env.calls(rid) == []
    assert wait_until(lambda: len(residents_in(host)) == 1)
    [resident] = residents_in(host)

    def served() -> bool:
        req = env.request("ADD", netns=str(NETNS_DIR / container))
        return env.call(host, req[0], req[1], config=auto) is not None

    assert wait_until(served)
    last = env.calls()[-1]
    assert last["ppid"] == resident
    assert last["netns_ino"] == os.stat(NETNS_DIR / container).st_ino
    # It lives in the caller's namespace, in its own session, with stdio on /dev/null.
    assert os.stat(f"/proc/{resident}/ns/net").st_ino == os.stat(NETNS_DIR / host).st_ino
    assert os.getsid(resident) not in (os.getsid(0), resident)  # a session of its own, not leader
    for fd in (0, 1, 2):
        assert os.readlink(f"/proc/{resident}/fd/{fd}") == "/dev/null"
    assert wait_until(lambda: not alive(resident), timeout=60)
    req_env, stdin, rid = env.request("VERSION", netns="dummy")
    assert env.call(host, req_env, stdin) is None  # gone: connect mode finds nothing


def test_an_attachment_keeps_the_agent_past_its_idle_timeout(env: Env) -> None:
    """The idle timeout applies only when no attachment of ours exists in the agent's netns
    (the host end of a veth, by its name): a host with containers keeps its next ADD warm."""
    host = env.netns("host")
    proc = env.start_server(host, "--idle", "1")
    ip = ["ip", "-n", host, "link"]
    name = f"{HOST_VETH_PREFIX}{env.tag}"
    subprocess.run([*ip, "add", name, "type", "veth", "peer", "name", f"p{env.tag}"], check=True)
    time.sleep(3)
    assert proc.poll() is None, env.server_log(host)
    subprocess.run([*ip, "del", name], check=True)
    assert wait_until(lambda: proc.poll() is not None, timeout=10)
    assert "idle, leaving" in env.server_log(host)


def test_a_started_resident_comes_up_only_once_its_caller_has_exited(env: Env) -> None:
    """The first call claims the name and runs in-process; the resident is forked only as that
    call exits, and execs once it has: its start does not compete with that call's answer, nor
    does a fork of it make the call's every page written copy-on-write."""
    host = env.netns("host")
    req_env, stdin, rid = env.request("ADD", netns=str(NETNS_DIR / host))
    spec = {"root": str(ROOT), "env": req_env, "stdin": stdin, "how": "try", "hold": True,
            "config": {"mode": "auto", "idle": 30.0, "handler": HANDLER,
                       "identity": env.identity}}  # fmt: skip
    caller = subprocess.Popen(
        ["nsenter", f"--net={NETNS_DIR / host}", sys.executable, "-c", CLIENT_SCRIPT,
         json.dumps(spec)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd="/",
        start_new_session=True,  # so that a failed assertion's cleanup can end it (killpg)
    )  # fmt: skip
    env.procs.append(caller)
    assert caller.stdout is not None and caller.stdin is not None
    assert json.loads(caller.stdout.readline()) is None  # to run in-process, at once
    time.sleep(1.0)  # a resident exec'd at once would be up by now (it is, right after)
    assert residents_in(host) == []
    # Nothing forked from the caller while the request would run, yet the name is claimed.
    assert pids_in_netns(host) == [caller.pid]
    assert not _unheld(naming.lock_path(env.socket_path(host)))
    assert env.call(host, *env.request("VERSION", netns="dummy")[:2]) is None
    caller.stdin.close()
    assert caller.wait(30) == 0
    assert wait_until(lambda: len(residents_in(host)) == 1)
    assert wait_until(lambda: env.ping(host) is not None)
    assert env.calls(rid) == []


def test_a_started_resident_does_not_hold_the_callers_stdout(env: Env) -> None:
    host = env.netns("host")
    req_env, stdin, _ = env.request("VERSION", netns="dummy")
    # The runtime's view: read the plugin's stdout until EOF. The resident stays for 60 s.
    done = env.run_client(host, req_env, stdin, config={"mode": "auto", "idle": 60.0}, timeout=30)
    assert done.returncode == 0
    assert json.loads(done.stdout) is None  # to run in-process; the resident comes up after
    assert wait_until(lambda: len(residents_in(host)) == 1)
    [resident] = residents_in(host)
    assert alive(resident)  # still there, yet the pipe reached EOF


def test_a_burst_of_first_calls_starts_one_resident(env: Env) -> None:
    host = env.netns("host")
    auto = {"mode": "auto", "idle": 30.0}
    requests = [env.request("VERSION", netns="dummy") for _ in range(6)]
    threads = [
        threading.Thread(target=env.call, args=(host, r[0], r[1]), kwargs={"config": auto})
        for r in requests
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert wait_until(lambda: env.ping(host) is not None)
    time.sleep(0.5)  # any second resident would be up by now
    assert len(residents_in(host)) == 1


def test_a_resident_that_cannot_load_the_engine_holds_the_name(env: Env) -> None:
    host = env.netns("host")
    config = {"mode": "auto", "idle": 30.0, "handler": "tests.integration.no_such_module:handle"}
    req_env, stdin, _ = env.request("VERSION", netns="dummy")
    assert env.call(host, req_env, stdin, config=config) is None
    assert wait_until(lambda: len(residents_in(host)) == 1)
    [broken] = residents_in(host)
    # Later calls are refused at once and start nothing more while it holds the name.
    for _ in range(3):
        assert env.call(host, req_env, stdin, config=config) is None
    assert residents_in(host) == [broken]


def test_an_agent_whose_socket_is_removed_leaves(env: Env) -> None:
    """Rootless podman removes the private /run of a network namespace it tears down: an agent
    nobody can reach any more leaves instead of idling there."""
    host = env.netns("host")
    proc = env.start_server(host, "--check-interval", "0.2")
    os.unlink(env.socket_path(host))
    assert wait_until(lambda: proc.poll() is not None, timeout=20), env.server_log(host)
    assert "its socket was removed, leaving" in env.server_log(host)


def _unheld(lock: str) -> bool:
    try:
        fd = os.open(lock, os.O_RDWR)
    except FileNotFoundError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def test_a_starting_agent_removes_the_files_of_killed_agents_only(env: Env) -> None:
    """An agent killed with its namespace leaves its socket and lock in /run/cni-bridge; the
    next agent to start anywhere removes them, and leaves a live agent's alone."""
    live, dead, fresh = env.netns("live"), env.netns("dead"), env.netns("fresh")
    env.start_server(live)
    proc = env.start_server(dead)
    os.killpg(proc.pid, signal.SIGKILL)  # the agent and its workers, as `ip netns del` + kill
    proc.wait()
    left = env.socket_path(dead)
    assert wait_until(lambda: _unheld(naming.lock_path(left)))
    assert os.path.exists(left) and os.path.exists(naming.lock_path(left))
    env.start_server(fresh)  # returns once it answers: it swept before serving
    assert not os.path.exists(left) and not os.path.exists(naming.lock_path(left))
    kept = env.socket_path(live)
    assert os.path.exists(kept) and os.path.exists(naming.lock_path(kept))
    assert env.ping(live) is not None
    # An agent that leaves removes its own pair.
    served = env.procs[-1]
    served.send_signal(signal.SIGTERM)
    assert served.wait(timeout=30) == 0, env.server_log(fresh)
    mine = env.socket_path(fresh)
    assert not os.path.exists(mine) and not os.path.exists(naming.lock_path(mine))


USERNS_SCRIPT = r"""
set -e
mount -t tmpfs cbF /run  # rootless podman's calls get a private /run (under XDG_RUNTIME_DIR)
"$PYTHON" -c "$CLIENT" "$FIRST"
mkdir /run/only-here
for try in $(seq 60); do  # the agent the first call started comes up after it has exited
    out=$(unshare -m --propagation private sh -c '
        mount -t tmpfs cbF /run/only-here && echo "seen by this caller" > /run/only-here/marker &&
        exec "$PYTHON" -c "$CLIENT" "$LATER"')
    [ "$out" = null ] || break
    sleep 0.5
done
printf "%s\n" "$out"  # not echo: dash's would expand the JSON's \n
stat -c "%u %a" /run/cni-bridge
"""


def kill_groups_and_wait(groups: set[int], timeout: float = 10.0) -> None:
    """SIGKILL to each process group, then wait until none of their processes is left: what
    SIGKILL ends is gone only once reaped, and the run reaps the orphans handed to it (its
    child subreaper, tests/conftest.py) between tests, so one still exiting then was reported
    as left behind in its deleted namespace."""
    for pgid in groups:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while groups and time.monotonic() < deadline:
        for pid in zombie_children(os.getpid()):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
        alive = set()
        for pgid in groups:
            try:
                os.killpg(pgid, 0)
                alive.add(pgid)
            except ProcessLookupError:
                pass
        groups = alive
        if groups:
            time.sleep(0.02)
    assert not groups, f"process groups still alive after SIGKILL: {sorted(groups)}"


def test_an_agent_started_in_the_callers_user_namespace_serves_its_later_calls(env: Env) -> None:
    """As rootless podman calls: in a user namespace of their own, a network namespace owned by
    it, a fresh mount namespace per call and a private /run. The first call starts an agent
    there; a later call from another fresh mount namespace is served by it, and sees its own
    files. The socket directory is root's alone as seen from that user namespace, on the
    caller's private /run, so nobody outside it can squat or reach it. (The user namespace maps
    root here: this machine's interpreter lives under /root. The built bundle was run under real
    rootless podman as a throwaway user, see README.)"""
    auto = {"mode": "auto", "idle": 30.0}
    first, stdin1, rid1 = env.request("ADD")
    later, stdin2, rid2 = env.request("ADD", read="/run/only-here/marker")
    specs = []
    for req_env, stdin, config in ((first, stdin1, auto), (later, stdin2, {"mode": "connect"})):
        config = {"handler": HANDLER, "identity": env.identity, **config}
        specs.append(json.dumps({"root": str(ROOT), "env": req_env, "stdin": stdin,
                                 "config": config, "how": "try"}))  # fmt: skip
    argv = ["unshare", "--user", "--map-root-user", "--net", "--mount", "--propagation", "private"]
    environ = {"PATH": os.environ["PATH"], "PYTHON": sys.executable, "CLIENT": CLIENT_SCRIPT}
    try:
        done = subprocess.run(
            [*argv, "sh", "-c", USERNS_SCRIPT],
            env={**environ, "FIRST": specs[0], "LATER": specs[1]},
            capture_output=True,
            text=True,
            timeout=60,
            cwd="/",
        )
        assert done.returncode == 0, done.stderr
        one, two, dir_stat = done.stdout.splitlines()
        assert json.loads(two) is not None, done.stderr
        assert json.loads(json.loads(two)[1])["read"] == "seen by this caller\n"
        [call2] = env.calls(rid2)
        agent = call2["ppid"]  # the agent the first call started (nothing else could have)
        assert f"--identity {env.identity} " in cmdline(agent)
        assert json.loads(one) is None and env.calls(rid1) == []  # in-process, not waiting
        assert os.stat(f"/proc/{agent}/ns/user").st_ino != os.stat("/proc/self/ns/user").st_ino
        assert dir_stat == "0 700"  # root's alone, as seen in that user namespace
    finally:
        groups = set()
        for call in env.calls():
            with contextlib.suppress(ProcessLookupError):
                groups.add(os.getpgid(call["ppid"]))
        kill_groups_and_wait(groups)


# --- the exchange itself, on a socket pair (both ends in this process) ------------------------


def _pair_handler(env: Mapping[str, str], stdin: bytes) -> tuple[int, bytes]:
    return 0, b"pair:" + stdin


def _serve_in_child(conn: socket.socket, identity: str) -> int:
    """serve_connection in a forked child, as in the resident (it sets umask, environ, fd 2)."""
    pid = os.fork()
    if pid == 0:
        status = 2
        try:
            status = 0 if worker.serve_connection(conn, _pair_handler, identity=identity) else 1
        finally:
            os._exit(status)
    conn.close()
    return pid


def _ran(pid: int) -> bool:
    code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    assert code in (0, 1)
    return code == 0


def _request_frame(env: dict[str, str], identity: str, *, fd: bool = False) -> bytes:
    payload = protocol.encode_request(env, umask=0o22, has_netns_fd=fd, identity=identity)
    return protocol.encode_frame(protocol.REQUEST, payload)


def _send(sock: socket.socket, frame: bytes, *extra: int) -> None:
    """A REQUEST with this process's stdio (and `extra`) as the caller's descriptors."""
    fds = struct.pack(f"{3 + len(extra)}i", 0, 1, 2, *extra)
    sock.sendmsg([frame], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])


def test_serve_connection_runs_only_after_go() -> None:
    identity = naming.build_identity()
    cfg = client.ClientConfig(mode="connect", identity=identity)
    a, b = socket.socketpair()
    worker = _serve_in_child(b, identity)
    with a:
        assert client.exchange(a, {"CNI_COMMAND": "VERSION"}, b"{}", -1, cfg) == (0, b"pair:{}")
    assert _ran(worker)

    # The client never says GO: the server sends READY and stops there.
    a, b = socket.socketpair()
    worker = _serve_in_child(b, identity)
    with a:
        _send(a, _request_frame({"CNI_COMMAND": "VERSION"}, identity))
        assert protocol.recv_frame(a, time.monotonic() + 10)[0] == protocol.READY
    assert not _ran(worker)


def test_the_server_refuses_a_path_without_its_descriptor() -> None:
    identity = naming.build_identity()
    a, b = socket.socketpair()
    worker = _serve_in_child(b, identity)
    with a:
        _send(a, _request_frame({"CNI_COMMAND": "ADD", "CNI_NETNS": "/run/netns/x"}, identity))
        kind, reason = protocol.recv_frame(a, time.monotonic() + 10)
    assert kind == protocol.EXEC and b"without its descriptor" in reason
    assert not _ran(worker)


def test_the_server_refuses_a_descriptor_that_is_not_a_netns() -> None:
    identity = naming.build_identity()
    a, b = socket.socketpair()
    worker = _serve_in_child(b, identity)
    uts = os.open("/proc/self/ns/uts", os.O_RDONLY)  # a namespace, but not a network one
    with a:
        _send(a, _request_frame({"CNI_COMMAND": "ADD", "CNI_NETNS": "/x"}, identity, fd=True), uts)
        os.close(uts)
        kind, reason = protocol.recv_frame(a, time.monotonic() + 10)
    assert kind == protocol.EXEC and b"not a network namespace" in reason
    assert not _ran(worker)
