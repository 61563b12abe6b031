"""The native launcher (build/launcher.c) against a real agent, in namespaces cbF-*.

The launcher is compiled here, with the header the build generates (naming.launcher_header)
for the test's identity, beside a stand-in for the bundle (`cni-bridge`, a script that records
how it was exec'd and answers `{"fallback": ...}` with exit code 7), so each test can tell which
path served a request: the agent (its fake engine records every call, see
test_resident.fake_handle) or the bundle. The agent is the real server.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from cni_bridge.resident import naming, protocol
from tests.integration.test_resident import NETNS_DIR, ROOT, Env

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root and network namespaces"),
    pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler (make installs gcc)"),
]

FALLBACK_EXIT = 7
ENGINE_SCRIPT = """#!{python}
import json, os, sys
record = {{
    "argv": sys.argv[1:],
    "relay": os.environ.get("CNI_BRIDGE_RELAY"),
    "launcher": os.environ.get("CNI_BRIDGE_LAUNCHER"),
    "command": os.environ.get("CNI_COMMAND"),
    "stdin": sys.stdin.buffer.read().decode("utf-8", "replace"),
}}
with open({record!r}, "a") as f:
    f.write(json.dumps(record) + "\\n")
print(json.dumps({{"fallback": True}}))
sys.exit({exit})
"""
# The real plugin's entry point, from this tree, as the bundle would run it.
REAL_ENGINE_SCRIPT = """#!{python}
import sys
sys.path.insert(0, {root!r})
from cni_bridge.cli import run
run()
"""


def compile_launcher(out: Path, identity: str) -> None:
    """As build.sh does: the header generated for `identity`, then the launcher beside it."""
    (out.parent / "cni-bridge-launch.h").write_text(naming.launcher_header(identity))
    cc = ["cc", "-O2", "-std=gnu11", "-Wall", "-Wextra", "-Werror", f"-I{out.parent}"]
    subprocess.run([*cc, "-o", str(out), str(ROOT / "build" / "launcher.c")], check=True)


class Bundle:
    """A launcher beside a recording stand-in for the bundle, and an agent for it."""

    def __init__(self, env: Env, *, real: bool = False, identity: str | None = None) -> None:
        self.env = env
        self.dir = env.tmp / "bundle"
        self.dir.mkdir()
        self.launch = self.dir / "cni-bridge-launch"
        compile_launcher(self.launch, identity or env.identity)
        self.engine = self.dir / "cni-bridge"
        self.record = env.tmp / "fallback.jsonl"
        script = REAL_ENGINE_SCRIPT if real else ENGINE_SCRIPT
        self.engine.write_text(
            script.format(
                python=sys.executable, root=str(ROOT), record=str(self.record), exit=FALLBACK_EXIT
            )
        )
        self.engine.chmod(0o755)

    def run(
        self,
        ns: str,
        env: Mapping[str, str],
        stdin: str,
        *,
        args: tuple[str, ...] = (),
        wrap: tuple[str, ...] = (),
    ) -> subprocess.CompletedProcess[str]:
        cmd = ["nsenter", f"--net={NETNS_DIR / ns}", *wrap, "env", "-i"]
        cmd += [f"{k}={v}" for k, v in env.items()]
        cmd += [str(self.dir / "link"), *args]
        if not (self.dir / "link").exists():  # runtimes exec it through a symlink
            (self.dir / "link").symlink_to(self.launch.name)
        return subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=60, cwd="/")

    def namespaces(self, *, serve: bool) -> tuple[str, str]:
        """A host and a container namespace; with `serve`, an agent in the host one."""
        host, ctr = self.env.netns("host"), self.env.netns("ctr")
        if serve:
            self.env.start_server(host)
        return host, ctr

    def fallbacks(self) -> list[dict[str, Any]]:
        if not self.record.exists():
            return []
        return [json.loads(line) for line in self.record.read_text().splitlines()]


@pytest.fixture
def bundle(tmp_path: Path) -> Iterator[Bundle]:
    env = Env(tmp_path)
    try:
        yield Bundle(env)
    finally:
        env.cleanup()


def _netns_ino(ns: str) -> int:
    return os.stat(NETNS_DIR / ns).st_ino


def test_a_request_is_relayed_to_the_agent_without_the_bundle(bundle: Bundle) -> None:
    env = bundle.env
    host, ctr = bundle.namespaces(serve=True)
    req_env, stdin, rid = env.request("ADD", netns=str(NETNS_DIR / ctr), exit=3)
    done = bundle.run(host, {**req_env, "PATH": "/usr/bin:/bin"}, stdin)
    assert done.returncode == 3, done.stderr  # the engine's exit code, relayed
    assert json.loads(done.stdout)["id"] == rid  # written by the worker to our stdout
    assert f"fake engine log for {rid}" in done.stderr  # and to our stderr
    (call,) = env.calls(rid)
    assert call["netns_ino"] == _netns_ino(ctr)  # the namespace arrived as a descriptor
    assert call["original_netns"] == str(NETNS_DIR / ctr)
    assert call["cni_args"] == req_env["CNI_ARGS"]
    assert call["secret"] is None  # the agent lets only CNI_* and a few locale variables in
    assert bundle.fallbacks() == []
    # VERSION too: the agent decides what it serves, and it serves every CNI verb.
    version, vstdin, vid = env.request("VERSION", netns="dummy")
    assert bundle.run(host, version, vstdin).returncode == 0
    assert len(env.calls(vid)) == 1 and bundle.fallbacks() == []


def test_umask_and_a_large_stdin_travel_whole(bundle: Bundle) -> None:
    env = bundle.env
    host, ctr = bundle.namespaces(serve=True)
    req_env, stdin, rid = env.request("ADD", netns=str(NETNS_DIR / ctr))
    conf = json.loads(stdin)
    conf["padding"] = "x" * 300_000  # several pipe buffers, read by the worker from our stdin
    done = bundle.run(
        host, req_env, json.dumps(conf), wrap=("sh", "-c", 'umask 027; exec "$@"', "-")
    )
    assert done.returncode == 0, done.stderr
    (call,) = env.calls(rid)
    assert call["umask"] == 0o027
    assert bundle.fallbacks() == []


def test_without_an_agent_the_bundle_gets_the_request_untouched(bundle: Bundle) -> None:
    env = bundle.env
    host, ctr = bundle.namespaces(serve=False)
    req_env, stdin, _ = env.request("ADD", netns=str(NETNS_DIR / ctr))
    done = bundle.run(host, req_env, stdin)
    assert done.returncode == FALLBACK_EXIT, done.stderr
    assert json.loads(done.stdout) == {"fallback": True}
    (fb,) = bundle.fallbacks()
    assert fb == {
        "argv": [],
        "relay": None,  # the bundle's client tries (and starts) an agent itself
        "launcher": env.identity,
        "command": "ADD",
        "stdin": stdin,
    }


def test_what_the_agent_does_not_run_goes_to_the_bundle_with_its_stdin(bundle: Bundle) -> None:
    env = bundle.env
    host, ctr = bundle.namespaces(serve=True)
    req_env, stdin, rid = env.request("ADD", netns=str(NETNS_DIR / ctr))
    conf = json.loads(stdin)
    conf["padding"] = "y" * 200_000
    stdin = json.dumps(conf)
    # An operator command, the agent turned off, a CNI_NETNS that is no namespace: the agent
    # says so (EXEC) before anything ran; stdin is untouched and goes to the bundle whole.
    assert bundle.run(host, {}, "", args=("ls", "--network", "x")).returncode == FALLBACK_EXIT
    off = bundle.run(host, {**req_env, "CNI_BRIDGE_RESIDENT": " Off "}, stdin)
    assert off.returncode == FALLBACK_EXIT
    bad = bundle.run(host, {**req_env, "CNI_NETNS": "/etc/hostname"}, stdin)
    assert bad.returncode == FALLBACK_EXIT
    got = bundle.fallbacks()
    assert [f["argv"] for f in got] == [["ls", "--network", "x"], [], []]
    assert [f["relay"] for f in got] == [
        "in-process:operator command 'ls'",
        "in-process:CNI_BRIDGE_RESIDENT= Off ",
        "in-process:the network descriptor sent is not a namespace",
    ]
    assert got[1]["stdin"] == stdin and got[2]["stdin"] == stdin
    assert env.calls(rid) == []
    assert "the network descriptor sent is not a namespace" in env.server_log(host)


def test_an_environment_beyond_the_agents_bound_goes_to_the_bundle_whole(bundle: Bundle) -> None:
    env = bundle.env
    host, ctr = bundle.namespaces(serve=True)
    req_env, stdin, rid = env.request("ADD", netns=str(NETNS_DIR / ctr))
    # Sent whole, refused whole (one variable may not exceed 128 KiB: execve's own bound).
    big = {**req_env, **{f"HUGE{i}": "z" * (120 << 10) for i in range(5)}}
    assert sum(len(v) for v in big.values()) > protocol.MAX_ENV_BYTES
    done = bundle.run(host, big, stdin)
    assert done.returncode == FALLBACK_EXIT, done.stderr
    (fb,) = bundle.fallbacks()
    assert fb["stdin"] == stdin and not (fb["relay"] or "").startswith("lost")
    assert env.calls(rid) == []


def test_a_caller_in_a_fresh_mount_namespace_is_served_by_the_agent(bundle: Bundle) -> None:
    """`unshare -m` with a private tmpfs: the worker joins the caller's mount namespace, so a
    file only the caller sees is read, and a CNI_NETNS bound where only the caller sees it
    is the namespace it names there."""
    env = bundle.env
    host, ctr = bundle.namespaces(serve=True)
    private = env.tmp / "private"
    private.mkdir()
    script = (
        'mount -t tmpfs cbF "$1" && echo "seen by $1" > "$1/marker" && touch "$1/ns" && '
        'mount --bind "$2" "$1/ns" && shift 2 && exec "$@"'
    )
    wrap: tuple[str, ...] = ("unshare", "-m", "--propagation", "private", "sh", "-c", script)
    wrap += ("-", str(private), str(NETNS_DIR / ctr))
    for _ in range(2):
        req_env, stdin, rid = env.request(
            "ADD", netns=str(private / "ns"), read=str(private / "marker")
        )
        done = bundle.run(host, req_env, stdin, wrap=wrap)
        assert done.returncode == 0, (done.stderr, env.server_log(host))
        out = json.loads(done.stdout)
        assert out["read"] == f"seen by {private}\n"
        assert out["netns_ino"] == _netns_ino(ctr)
        (call,) = env.calls(rid)
        assert call["mnt_ino"] != os.stat("/proc/self/ns/mnt").st_ino
    assert not (private / "marker").exists()  # it never was, here
    assert bundle.fallbacks() == []


def test_a_worker_dying_after_go_is_reported_and_never_rerun(bundle: Bundle) -> None:
    env = bundle.env
    host, ctr = bundle.namespaces(serve=True)
    req_env, stdin, rid = env.request("ADD", netns=str(NETNS_DIR / ctr), mode="crash")
    done = bundle.run(host, req_env, stdin)
    assert done.returncode == FALLBACK_EXIT
    (fb,) = bundle.fallbacks()
    # The worker had read stdin and said RUNNING with the request's version: the bundle words
    # "try again later" in it, with stdin gone.
    assert fb["relay"] == "lost:1.0.0:closed"
    assert fb["stdin"] == ""
    assert len(env.calls(rid)) == 1


def test_a_hung_request_times_out_and_runs_once(bundle: Bundle) -> None:
    env = bundle.env
    host, ctr = bundle.namespaces(serve=True)
    req_env, stdin, rid = env.request("ADD", netns=str(NETNS_DIR / ctr), mode="hang", seconds=5)
    # The timeout is the agent's decision from the caller's environment, sent with READY.
    done = bundle.run(host, {**req_env, "CNI_BRIDGE_RESIDENT_TIMEOUT": "1"}, stdin)
    assert done.returncode == FALLBACK_EXIT
    (fb,) = bundle.fallbacks()
    assert fb["relay"] == "lost:1.0.0:timeout"
    assert len(env.calls(rid)) == 1


def test_the_bundle_words_a_lost_request_as_try_again_later(tmp_path: Path) -> None:
    env = Env(tmp_path)
    try:
        real = Bundle(env, real=True)
        host = env.netns("host")
        env.start_server(host)
        req_env, stdin, rid = env.request("ADD", mode="crash")
        done = real.run(host, req_env, stdin)
        assert done.returncode == 1
        assert json.loads(done.stdout) == {
            "cniVersion": "1.0.0",
            "code": 11,
            "msg": "the cni-bridge resident did not complete the request",
            "details": "connection lost mid-request: peer closed",
        }
        assert len(env.calls(rid)) == 1
    finally:
        env.cleanup()


def test_a_launcher_of_another_build_is_reported_not_silently_slow(tmp_path: Path) -> None:
    """build.sh writes one identity into the launcher and the bundle. A launcher built for
    another finds no agent of its own, so every call would go through the bundle: the bundle
    says so on every call (and build.sh fails on it)."""
    env = Env(tmp_path)
    try:
        host = env.netns("host")
        version = {"CNI_COMMAND": "VERSION", "CNI_NETNS": "dummy"}
        stdin = '{"cniVersion": "1.0.0"}'
        matched = Bundle(env, real=True, identity=naming.build_identity())
        done = matched.run(host, version, stdin)
        assert done.returncode == 0 and "supportedVersions" in done.stdout
        assert "mismatch" not in done.stderr
        shutil.rmtree(matched.dir)
        other = Bundle(env, real=True, identity="v2|build:0ther")
        done = other.run(host, version, stdin)
        assert done.returncode == 0 and "supportedVersions" in done.stdout  # still answered
        assert "launcher/bundle mismatch" in done.stderr
        assert "v2|build:0ther" in done.stderr
    finally:
        env.cleanup()


def test_an_agent_that_is_not_root_gets_nothing(bundle: Bundle) -> None:
    env = bundle.env
    host, ctr = bundle.namespaces(serve=False)
    squatter = env.start_squatter(host)
    assert squatter.stdout is not None
    req_env, stdin, _ = env.request("ADD", netns=str(NETNS_DIR / ctr))
    done = bundle.run(host, req_env, stdin)
    assert done.returncode == FALLBACK_EXIT
    # The squatter reports once the launcher has connected and gone; if it never connected
    # (a socket name that drifted from the Python side's), the squatter waits forever.
    ready, _, _ = select.select([squatter.stdout], [], [], 15)
    assert ready, "the launcher never connected to the squatter's socket"
    assert squatter.stdout.readline().strip() == "0"  # not one byte of the request was sent
    (fb,) = bundle.fallbacks()
    assert fb["stdin"] == stdin and fb["relay"] is None


def test_closed_standard_descriptors_do_not_become_the_socket(bundle: Bundle) -> None:
    env = bundle.env
    host = env.netns("host")
    env.start_server(host)
    req_env, _, _ = env.request("STATUS")
    # Exec'd with fds 0-2 closed, the launcher would get its socket as fd 0 and pass it as
    # stdin. It puts /dev/null there: the agent reads an empty stdin and answers (its fake
    # engine fails to parse it).
    done = bundle.run(host, req_env, "", wrap=("sh", "-c", 'exec "$@" <&- >&- 2>&-', "-"))
    assert done.returncode not in (0, FALLBACK_EXIT)
    assert bundle.fallbacks() == []
