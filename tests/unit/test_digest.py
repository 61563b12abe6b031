"""cni_bridge/digest.py: the digests hashlib gives."""

import hashlib

from cni_bridge.digest import sha256_hex


def test_the_same_digest_as_hashlib() -> None:
    for data in (b"", b"net\0c1\0eth0", bytes(range(256)) * 5):
        assert sha256_hex(data) == hashlib.sha256(data).hexdigest()
