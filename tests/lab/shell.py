"""The lab's one way to run a command: text in and out, a timeout always, a clear error."""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path


class CommandError(RuntimeError):
    def __init__(self, cmd: Sequence[str], proc: subprocess.CompletedProcess[str]) -> None:
        super().__init__(
            f"{shlex.join(cmd)} exited {proc.returncode}\n"
            f"stdout: {proc.stdout.strip()}\nstderr: {proc.stderr.strip()}"
        )
        self.proc = proc


def run(
    cmd: Sequence[str],
    *,
    check: bool = True,
    input: str | None = None,
    timeout: float = 60,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `cmd` to completion; with `check`, a non-zero exit raises CommandError."""
    proc = subprocess.run(
        list(cmd),
        input=input,
        # No stdin at all unless one is given: a command that reads it must not hang a test.
        stdin=None if input is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=None if env is None else dict(env),
        cwd=cwd,
        check=False,
    )
    if check and proc.returncode != 0:
        raise CommandError(cmd, proc)
    return proc
