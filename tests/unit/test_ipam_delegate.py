from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from cni_bridge.errors import CNIError
from cni_bridge.invoke import find_in_path
from cni_bridge.ipam.delegate import exec_plugin

# A fake IPAM plugin: echoes what it was given, or fails the way FAKE_MODE says.
FAKE = f"""#!{sys.executable}
import json, os, sys, time
data = sys.stdin.buffer.read()
mode = os.environ.get("FAKE_MODE", "ok")
if mode == "ok":
    print(json.dumps({{"cniVersion": "1.0.0", "env": dict(os.environ), "stdin": data.decode(),
                      "ips": [{{"address": "10.0.0.5/24"}}]}}))
elif mode == "cnierror":
    print(json.dumps({{"cniVersion": "1.0.0", "code": 11, "msg": "lease pending", "details": "dhcp"}}))
    sys.exit(1)
elif mode == "garbage":
    print("panic: runtime error")
    sys.exit(2)
elif mode == "stderr":
    sys.stderr.write("something broke\\n")
    sys.exit(1)
elif mode == "silent-fail":
    sys.exit(1)
elif mode == "empty":
    pass
elif mode == "badjson":
    print("{{not json")
elif mode == "list":
    print("[1, 2]")
elif mode == "hang":
    time.sleep(60)
elif mode == "fds":
    print(json.dumps({{"open": sorted(int(fd) for fd in os.listdir("/proc/self/fd"))}}))
"""


@pytest.fixture
def plugin_dirs(tmp_path: Path) -> tuple[Path, Path]:
    d1, d2 = tmp_path / "bin1", tmp_path / "bin2"
    d1.mkdir()
    d2.mkdir()
    (d1 / "fake").write_text("not executable")  # skipped: no x bit
    plugin = d2 / "fake"
    plugin.write_text(FAKE)
    plugin.chmod(0o755)
    return d1, d2


def path_of(dirs: tuple[Path, Path]) -> str:
    return f"{dirs[0]}:{dirs[1]}"


def run(dirs: tuple[Path, Path], mode: str, command: str = "ADD", **kw: float) -> dict[str, object]:
    env = {"FAKE_MODE": mode, "CNI_CONTAINERID": "c1", "PATH": "/usr/bin:/bin"}
    return exec_plugin("fake", command, env, b'{"name": "n"}', path_of(dirs), **kw)


def test_runs_the_first_executable_in_cni_path(
    plugin_dirs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SECRET_OF_PARENT", "1")
    out = run(plugin_dirs, "ok", "DEL")
    env = out["env"]
    assert isinstance(env, dict)
    assert env["CNI_COMMAND"] == "DEL"
    assert env["CNI_CONTAINERID"] == "c1"
    assert env["CNI_PATH"] == path_of(plugin_dirs)
    assert "SECRET_OF_PARENT" not in env  # only the env we pass
    assert out["stdin"] == '{"name": "n"}'
    assert out["ips"] == [{"address": "10.0.0.5/24"}]
    assert find_in_path("fake", [str(d) for d in plugin_dirs]) == str(plugin_dirs[1] / "fake")


def test_plugin_error_object_is_passed_through(plugin_dirs: tuple[Path, Path]) -> None:
    with pytest.raises(CNIError) as exc:
        run(plugin_dirs, "cnierror")
    assert (exc.value.code, exc.value.msg, exc.value.details) == (11, "lease pending", "dhcp")


def test_unparsable_failure_is_999(plugin_dirs: tuple[Path, Path]) -> None:
    with pytest.raises(CNIError) as exc:
        run(plugin_dirs, "garbage")
    assert exc.value.code == 999
    assert "panic: runtime error" in exc.value.msg  # libcni's wording quotes what it printed


def test_failure_with_stderr_only(
    plugin_dirs: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(CNIError) as exc:
        run(plugin_dirs, "stderr")
    assert exc.value.code == 999
    assert exc.value.msg == "netplugin failed: 'something broke': exit status 1"
    assert "something broke" in capsys.readouterr().err  # its log goes on to ours
    with pytest.raises(CNIError, match="failed with no error message: exit status 1"):
        run(plugin_dirs, "silent-fail")


def test_output_shapes(plugin_dirs: tuple[Path, Path]) -> None:
    assert run(plugin_dirs, "empty", "DEL") == {}
    with pytest.raises(CNIError) as exc:
        run(plugin_dirs, "badjson")
    assert exc.value.code == 6
    with pytest.raises(CNIError) as exc:
        run(plugin_dirs, "list")
    assert exc.value.code == 6


def test_only_stdio_is_passed_on(plugin_dirs: tuple[Path, Path]) -> None:
    # An inheritable descriptor of ours (one a runtime left open, say) must not reach the plugin.
    r, w = os.pipe()
    os.dup2(r, 100, inheritable=True)
    try:
        out = run(plugin_dirs, "fds")
    finally:
        for fd in (r, w, 100):
            os.close(fd)
    opened = out["open"]
    assert isinstance(opened, list)
    assert 100 not in opened
    assert opened[:3] == [0, 1, 2]


def test_timeout(plugin_dirs: tuple[Path, Path]) -> None:
    with pytest.raises(CNIError, match="timed out") as exc:
        run(plugin_dirs, "hang", timeout=0.5)
    assert exc.value.code == 999


def test_missing_plugin_like_libcni(tmp_path: Path) -> None:
    with pytest.raises(CNIError) as exc:
        exec_plugin("dhcp", "ADD", {}, b"{}", f"{tmp_path}/a:{tmp_path}/b")
    assert exc.value.code == 7
    assert exc.value.msg == f'failed to find plugin "dhcp" in path [{tmp_path}/a {tmp_path}/b]'


@pytest.mark.parametrize("name", ["../fake", "/bin/sh", "a/b", "", ".."])
def test_names_with_a_path_are_refused(plugin_dirs: tuple[Path, Path], name: str) -> None:
    with pytest.raises(CNIError) as exc:
        exec_plugin(name, "ADD", {}, b"{}", path_of(plugin_dirs))
    assert exc.value.code == 7


def test_empty_cni_path() -> None:
    with pytest.raises(CNIError, match="no paths provided") as exc:
        exec_plugin("fake", "ADD", {}, b"{}", "")
    assert exc.value.code == 7
