"""What a container ID and an interface name may be. Standard library only, no `re`: the
plugin, the client and the thin path all use it."""

from __future__ import annotations

ID_EXTRA_CHARS = frozenset("_.-")
MAX_CONTAINER_ID = 1024
MAX_IFNAME = 15  # IFNAMSIZ - 1


def is_id(text: str) -> bool:
    """libcni's rule for container IDs and network names: ^[a-zA-Z0-9][a-zA-Z0-9_.-]*$, ASCII.
    (Checked by hand: a regex `$` would also accept a trailing newline.)"""
    return (
        bool(text)
        and text.isascii()
        and text[0].isalnum()
        and all(c.isalnum() or c in ID_EXTRA_CHARS for c in text)
    )


def ifname_problem(value: str) -> str | None:
    """Why a Linux interface name is unusable, or None. The kernel's own rules (dev_valid_name)."""
    raw = value.encode("utf-8", "surrogateescape")
    if not raw:
        return "is empty"
    if len(raw) > MAX_IFNAME:
        return f"is longer than {MAX_IFNAME} bytes"
    if value in (".", ".."):
        return "may not be '.' or '..'"
    if "/" in value or ":" in value:
        return "may not contain '/' or ':'"
    if "%" in value:
        # The kernel reads "%d" as a template and picks the next free name: every ADD would
        # then make a new bridge.
        return "may not contain '%'"
    if any(c.isspace() or ord(c) < 0x20 for c in value):
        return "may not contain whitespace or control characters"
    return None
