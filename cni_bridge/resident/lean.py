"""Process-wide settings of the agent (`cni-bridge serve`), made before it imports anything
else, so that it and every process it forks (workers, the ports holder, heals) keep fewer pages
of their own. Measured on the bundle, the agent with its holder and one idle worker:

- hashlib without OpenSSL: the agent's imports (pydantic's `secrets` -> `hmac`) load
  `_hashlib`, which maps and initialises libcrypto: ~3.3 MiB resident, shared by the agent and
  its workers, for nothing the engine needs (its SHA-256 names go through digest.py). With `_hashlib`
  unimportable, hashlib and hmac use CPython's own implementations (same digests).
- one malloc arena: a thread (a worker's caller watch, a background call) would get a 64 MiB
  arena of its own, ~1 MiB of it still resident in the worker after the thread ended.
"""

from __future__ import annotations

import contextlib
import ctypes
import sys

M_ARENA_MAX = -8  # glibc's mallopt parameter


def agent_process() -> None:
    if "_hashlib" not in sys.modules:
        sys.modules["_hashlib"] = None  # type: ignore[assignment]  # import raises ImportError
    with contextlib.suppress(OSError, AttributeError):  # not glibc: its allocator's defaults
        ctypes.CDLL(None).mallopt(M_ARENA_MAX, 1)
