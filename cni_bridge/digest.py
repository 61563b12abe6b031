"""SHA-256 hex digests of the few names the plugin hashes (state.py, datadirs.py), without
hashlib: hashlib loads every hash module at import (six extension modules without OpenSSL, as
an exec'd plugin and the agent run, see cli.run), ~3 M instructions of a cold ADD (callgrind),
for the one algorithm CPython's _sha256 provides alone."""

from __future__ import annotations

try:  # CPython up to 3.11
    from _sha256 import sha256  # type: ignore[import-not-found, unused-ignore]
except ImportError:  # later CPythons (_sha2) and other interpreters
    from hashlib import sha256


def sha256_hex(data: bytes) -> str:
    return str(sha256(data).hexdigest())
