"""The native launcher (build/launcher.c) against a real resident, in namespaces cbF-*.

The launcher is compiled here beside a stand-in for the bundle (`cni-bridge`, a script that
records how it was exec'd and answers `{"fallback": ...}` with exit code 7), so each test can
tell which path served a request: the resident (its fake engine records every call, see
test_resident.fake_handle) or the bundle. The resident is the real server, started with the
identity the Python client computes for that stand-in, so the socket names must agree.
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

from cni_bridge.resident import client
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
    "relay": os.environ.get("CNI_BRIDGE_RELAY_FAILED"),
    "command": os.environ.get("CNI_COMMAND"),
    "stdin": sys.stdin.buffer.read().decode("utf-8", "replace"),
}}
with open({record!r}, "a") as f:
    f.write(json.dumps(record) + "\\n")
print(json.dumps({{"fallback": True}}))
sys.exit({exit})
"""


@pytest.fixture(scope="module")
def launcher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cbN-launcher") / "cni-bridge-launch"
    subprocess.run(
        [
            "cc",
            "-O2",
            "-std=gnu11",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-o",
            str(out),
            str(ROOT / "build" / "launcher.c"),
        ],
        check=True,
    )
    return out


class Bundle:
    """A launcher beside a recording stand-in for the bundle, and a resident for it."""

    def __init__(self, env: Env, launcher: Path) -> None:
        self.env = env
        self.dir = env.tmp / "bundle"
        self.dir.mkdir()
        self.launch = self.dir / "cni-bridge-launch"
        shutil.copy2(launcher, self.launch)
        self.engine = self.dir / "cni-bridge"
        self.record = env.tmp / "fallback.jsonl"
        self.engine.write_text(
            ENGINE_SCRIPT.format(python=sys.executable, record=str(self.record), exit=FALLBACK_EXIT)
        )
        self.engine.chmod(0o755)
        # What the bundle's own client would use: the resident must be found under this name.
        env.identity = client.executable_identity(str(self.engine))

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
        """A host and a container namespace; with `serve`, a resident in the host one."""
        host, ctr = self.env.netns("host"), self.env.netns("ctr")
        if serve:
            self.env.start_server(host)
        return host, ctr

    def fallbacks(self) -> list[dict[str, Any]]:
        if not self.record.exists():
            return []
        return [json.loads(line) for line in self.record.read_text().splitlines()]


@pytest.fixture
def bundle(tmp_path: Path, launcher: Path) -> Iterator[Bundle]:
    env = Env(tmp_path)
    try:
        yield Bundle(env, launcher)
    finally:
        env.cleanup()


def _netns_ino(ns: str) -> int:
    return os.stat(NETNS_DIR / ns).st_ino


def test_a_request_is_relayed_to_the_resident_without_the_bundle(bundle: Bundle) -> None:
    env = bundle.env
    host, ctr = bundle.namespaces(serve=True)
    req_env, stdin, rid = env.request("ADD", netns=str(NETNS_DIR / ctr), exit=3)
    done = bundle.run(host, {**req_env, "PATH": "/usr/bin:/bin"}, stdin)
    assert done.returncode == 3, done.stderr  # the engine's exit code, relayed
    assert json.loads(done.stdout)["id"] == rid
    assert f"fake engine log for {rid}" in done.stderr
    (call,) = env.calls(rid)
    assert call["netns_ino"] == _netns_ino(ctr)  # the namespace arrived as a descriptor
    assert call["cni_args"] == req_env["CNI_ARGS"]
    assert call["secret"] is None  # only CNI_* and a few locale variables travel
    assert bundle.fallbacks() == []


def test_umask_and_a_large_stdin_travel_whole(bundle: Bundle) -> None:
    env = bundle.env
    host, ctr = bundle.namespaces(serve=True)
    req_env, stdin, rid = env.request("ADD", netns=str(NETNS_DIR / ctr))
    conf = json.loads(stdin)
    conf["padding"] = "x" * 300_000  # several socket buffers: the rest follows the descriptor
    done = bundle.run(
        host, req_env, json.dumps(conf), wrap=("sh", "-c", 'umask 027; exec "$@"', "-")
    )
    assert done.returncode == 0, done.stderr
    (call,) = env.calls(rid)
    assert call["umask"] == 0o027
    assert bundle.fallbacks() == []


def test_without_a_resident_the_bundle_gets_the_request_untouched(bundle: Bundle) -> None:
    env = bundle.env
    host, ctr = bundle.namespaces(serve=False)
    req_env, stdin, _ = env.request("ADD", netns=str(NETNS_DIR / ctr))
    done = bundle.run(host, req_env, stdin)
    assert done.returncode == FALLBACK_EXIT, done.stderr
    assert json.loads(done.stdout) == {"fallback": True}
    (fb,) = bundle.fallbacks()
    assert fb == {"argv": [], "relay": None, "command": "ADD", "stdin": stdin}


def test_what_is_not_a_plugin_request_goes_to_the_bundle(bundle: Bundle) -> None:
    env = bundle.env
    host, ctr = bundle.namespaces(serve=True)
    req_env, stdin, rid = env.request("ADD", netns=str(NETNS_DIR / ctr))
    # operator commands, the resident turned off, VERSION, a netns that is not one
    assert bundle.run(host, {}, "", args=("ls", "--network", "x")).returncode == FALLBACK_EXIT
    off = bundle.run(host, {**req_env, "CNI_BRIDGE_RESIDENT": " Off "}, stdin)
    assert off.returncode == FALLBACK_EXIT
    version, vstdin, _ = env.request("VERSION", netns="dummy")
    assert bundle.run(host, version, vstdin).returncode == FALLBACK_EXIT
    bad = bundle.run(host, {**req_env, "CNI_NETNS": "/etc/hostname"}, stdin)
    assert bad.returncode == FALLBACK_EXIT
    got = bundle.fallbacks()
    assert [f["argv"] for f in got] == [["ls", "--network", "x"], [], [], []]
    assert [f["command"] for f in got] == [None, "ADD", "VERSION", "ADD"]
    assert all(f["relay"] is None for f in got)
    assert got[1]["stdin"] == stdin and got[3]["stdin"] == stdin
    assert env.calls(rid) == []


def test_a_refused_request_falls_back_with_its_stdin(bundle: Bundle) -> None:
    env = bundle.env
    host, ctr = bundle.namespaces(serve=True)
    req_env, stdin, rid = env.request("ADD", netns=str(NETNS_DIR / ctr))
    conf = json.loads(stdin)
    conf["padding"] = "y" * 200_000
    stdin = json.dumps(conf)
    # Another mount namespace: the resident answers REFUSE after reading the request, so the
    # launcher has consumed stdin and must hand the same bytes to the bundle.
    done = bundle.run(host, req_env, stdin, wrap=("unshare", "--mount"))
    assert done.returncode == FALLBACK_EXIT, done.stderr
    (fb,) = bundle.fallbacks()
    assert fb["relay"] is None and fb["stdin"] == stdin
    assert env.calls(rid) == []
    assert "another mnt namespace" in env.server_log(host)


def test_a_worker_dying_after_go_is_reported_and_never_rerun(bundle: Bundle) -> None:
    env = bundle.env
    host, ctr = bundle.namespaces(serve=True)
    req_env, stdin, rid = env.request("ADD", netns=str(NETNS_DIR / ctr), mode="crash")
    done = bundle.run(host, req_env, stdin)
    assert done.returncode == FALLBACK_EXIT
    (fb,) = bundle.fallbacks()
    assert fb["relay"] and fb["relay"].startswith("connection lost mid-request")
    assert fb["stdin"] == stdin  # the bundle words the error in the request's cniVersion
    assert len(env.calls(rid)) == 1


def test_a_hung_request_times_out_and_runs_once(bundle: Bundle) -> None:
    env = bundle.env
    host, ctr = bundle.namespaces(serve=True)
    req_env, stdin, rid = env.request("ADD", netns=str(NETNS_DIR / ctr), mode="hang", seconds=5)
    done = bundle.run(host, {**req_env, "CNI_BRIDGE_RESIDENT_TIMEOUT": "1"}, stdin)
    assert done.returncode == FALLBACK_EXIT
    (fb,) = bundle.fallbacks()
    assert fb["relay"] == "no answer within 1s"
    assert len(env.calls(rid)) == 1


def test_a_resident_that_is_not_root_gets_nothing(bundle: Bundle) -> None:
    env = bundle.env
    host, ctr = bundle.namespaces(serve=False)
    squatter = env.start_squatter(host)
    assert squatter.stdout is not None
    req_env, stdin, _ = env.request("ADD", netns=str(NETNS_DIR / ctr))
    done = bundle.run(host, req_env, stdin)
    assert done.returncode == FALLBACK_EXIT
    # The squatter reports once the launcher has connected and gone; if it never connected
    # (a socket name that drifted from the Python client's), the squatter waits forever.
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
    # Exec'd with fds 0-2 closed, a STATUS (no netns descriptor opened first) would get the
    # resident's socket as fd 0 and read its request from it. The launcher puts /dev/null
    # there: the resident gets an empty stdin, and answers (its fake engine fails to parse it).
    done = bundle.run(host, req_env, "", wrap=("sh", "-c", 'exec "$@" <&- >&- 2>&-', "-"))
    assert done.returncode not in (0, FALLBACK_EXIT)
    assert bundle.fallbacks() == []


def test_a_preset_relay_failure_is_left_to_the_bundle(bundle: Bundle) -> None:
    env = bundle.env
    host, ctr = bundle.namespaces(serve=True)
    req_env, stdin, rid = env.request("ADD", netns=str(NETNS_DIR / ctr))
    done = bundle.run(host, {**req_env, "CNI_BRIDGE_RELAY_FAILED": "x"}, stdin)
    assert done.returncode == FALLBACK_EXIT
    assert env.calls(rid) == []  # as the Python client: such a request never runs
