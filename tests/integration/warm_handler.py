"""The engine as an agent's handler, recording what each request imported that the worker did
not already have (tests/integration/test_warm_imports.py). Imports nothing of cni_bridge but
the engine, so that what the engine's warm() leaves out is not preloaded by this module."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping

from cni_bridge import engine

RECORD = os.environ.get("CNI_BRIDGE_TEST_IMPORTS", "")
warm = engine.warm
prepare = engine.prepare
reusable = engine.reusable


def handle(env: Mapping[str, str], stdin: bytes) -> tuple[int, bytes]:
    before = set(sys.modules)
    code, out = engine.handle(env, stdin)
    entry = {
        "command": env.get("CNI_COMMAND"),
        "code": code,
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "late": sorted(set(sys.modules) - before),
    }
    with open(RECORD, "a", encoding="utf-8") as f:
        f.write(json.dumps(entry) + "\n")
    return code, out
