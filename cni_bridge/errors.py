"""The one error type of the plugin, and a name for every CNI error code it uses.

Standard library only and importing nothing: every layer, and the libcni client, imports it.
"""

from __future__ import annotations

# The specification's codes (SPEC.md, "Error"); 1-99 are reserved for it.
INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
UNKNOWN_CONTAINER = 3
INVALID_ENV = 4
IO_FAILURE = 5
DECODE_FAILURE = 6
INVALID_CONFIG = 7
TRY_AGAIN_LATER = 11
STATUS_UNAVAILABLE = 50  # STATUS: the plugin cannot serve ADD requests
STATUS_LIMITED = 51  # STATUS: as 50, and existing containers may have limited connectivity
# Plugin-specific codes live at 100+ per the spec.
PORT_CONFLICT = 100  # a host port is already published by another attachment
ADDRESS_EXHAUSTED = 101  # no free address left in a range set
ADDRESS_CONFLICT = 102  # a requested address belongs to another attachment
INTERFACE_EXISTS = 103  # CNI_IFNAME exists in the container, or the attachment is already there
NETWORK_FAILURE = 104  # a netlink operation failed (message says which)
CHECK_MISMATCH = 105  # CHECK found the attachment differs from prevResult or is incomplete
CLEANUP_FAILED = 106  # DEL or GC could not remove everything (details list what)
PERMISSION_DENIED = 107  # the caller lacks root's capabilities (or a file's permissions)
# Not in the specification: libcni's ErrInternal, for an error that has no code of its own.
INTERNAL = 999


class CNIError(Exception):
    """A failure that is reported to the runtime as a CNI error object."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details

    def to_dict(self, cni_version: str) -> dict[str, object]:
        return {
            "cniVersion": cni_version,
            "code": self.code,
            "msg": self.msg,
            "details": self.details,
        }

    def __repr__(self) -> str:
        return f"CNIError({self.code}, {self.msg!r}, {self.details!r})"

