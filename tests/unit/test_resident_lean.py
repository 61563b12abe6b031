"""The agent's process-wide settings (resident/lean.py): hashlib and hmac still give the same
digests without OpenSSL, and libcrypto is never loaded."""

from __future__ import annotations

import subprocess
import sys

_PROBE = r"""
from cni_bridge.resident import lean
lean.agent_process()
import hashlib, hmac, secrets
from cni_bridge import state
assert state.attachment_tag("n", "c", "eth0") == hashlib.sha256(b"n\0c\0eth0").hexdigest()[:12]
print(hashlib.sha256(b"abc").hexdigest())
print(hmac.new(b"k", b"m", "sha256").hexdigest())
print(any("libcrypto" in line for line in open("/proc/self/maps")))
"""


def test_digests_without_openssl() -> None:
    import hmac

    out = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == [
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",  # FIPS 180-2's "abc"
        hmac.new(b"k", b"m", "sha256").hexdigest(),  # OpenSSL's, in this process
        "False",
    ]
