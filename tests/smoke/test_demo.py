"""`make demo` is the project's main job: run it as make does (the built binary, throwaway
namespaces) and hold what it shows, so a change that breaks it fails `make test`."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.smoke.test_binary import BINARY, REPO


def test_the_demo_shows_everything_working() -> None:
    if os.geteuid() != 0:
        pytest.skip("the demo needs root (network namespaces)")
    if not BINARY.exists():
        pytest.fail(f"{BINARY} missing: run build/build.sh (or make) first")
    proc = subprocess.run([sys.executable, "-m", "demo"], cwd=REPO, capture_output=True,
                          text=True, timeout=300, stdin=subprocess.DEVNULL)
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert "Traceback" not in out + proc.stderr
    served = out.split("published as host port 8080")[1].split("== ")[0]
    rows = [r for r in served.splitlines() if r.strip().startswith("from ")]
    # outside, 127.0.0.1, the host's address, the other container, hairpin, [::1]
    assert len(rows) == 6 and "[::1]:8080" in served, served
    for row in rows:
        assert "hello from container c1" in row, row
    assert "a host program binding 0.0.0.0:8080: Address already in use" in out
    assert "a host program binding 0.0.0.0:8080 now: bound" in out
    for name in ("nslookup web", "nslookup www", "nslookup db"):
        (row,) = [r for r in out.splitlines() if name in r]
        assert "10.123.0." in row and "fd00:123::" in row, row
    assert "after the flush (no command was run)" in out
    assert out.rstrip().endswith("clean\x1b[0m"), out[-300:]
