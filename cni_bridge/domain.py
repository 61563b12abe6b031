"""What a value of the CNI domain may be: interface and network names, container IDs, MAC
addresses, ports, VLAN ids, IP addresses. One definition of each rule for every layer.

Each checked value is a type: `InterfaceName("eth0")` checks its argument (DomainError, a
ValueError, if it breaks the rule) and is a `str` from then on, so a layer that takes an
`InterfaceName` knows it was checked and does not check again. The same classes are pydantic
field types (pydantic's documented `__get_pydantic_core_schema__` hook): config.py validates a
network config through them once, and reports a violation under the field's name. Callers that
word their own CNI error use `ifname_problem`, `container_id_problem` and `is_id`.

Imports nothing at load time, not even `typing` or `ipaddress`: the libcni client (exec'd once
per command, tests/unit/test_libcni.py) and the protocol layer use the name rules, and pydantic
is imported only when a model is built. The bounds the thin client needs live in `limits.py`.
"""

from __future__ import annotations

# `typing` and `ipaddress` cost milliseconds at start-up; mypy honours any name TYPE_CHECKING.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from ipaddress import (
        IPv4Address,
        IPv4Interface,
        IPv4Network,
        IPv6Address,
        IPv6Interface,
        IPv6Network,
    )
    from typing import Any

    IPAddress = IPv4Address | IPv6Address
    IPNetwork = IPv4Network | IPv6Network
    IPInterface = IPv4Interface | IPv6Interface
else:

    def __getattr__(name: str) -> object:
        # The IP aliases, made on first use (PEP 562), as spelled for mypy above: only the
        # modules that handle addresses pay for `ipaddress`.
        if name not in ("IPAddress", "IPNetwork", "IPInterface"):
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        import ipaddress as ip

        globals().update(
            IPAddress=ip.IPv4Address | ip.IPv6Address,
            IPNetwork=ip.IPv4Network | ip.IPv6Network,
            IPInterface=ip.IPv4Interface | ip.IPv6Interface,
        )
        return globals()[name]


# host-local's default, where reservations (and our records beside them) live.
DEFAULT_DATA_DIR = "/var/lib/cni/networks"

MAX_IFNAME = 15  # IFNAMSIZ - 1
MAX_CONTAINER_ID = 1024
# The firewall puts the network name in nftables comments (at most 127 bytes with a tag and
# an owner beside it), which bounds it; libcni sets no limit.
MAX_NETWORK_NAME = 64
MIN_PORT, MAX_PORT = 1, 65535
MIN_VLAN, MAX_VLAN = 1, 4094  # 0 and 4095 are reserved (802.1Q)
_ID_EXTRA_CHARS = frozenset("_.-")
_HEX = frozenset("0123456789abcdef")


class DomainError(ValueError):
    """A value that breaks one of the rules here. A ValueError, so that pydantic reports it as
    a validation error of the field; plain callers turn it into their CNI error code."""


# --- the rules ------------------------------------------------------------------------------


def is_id(text: str) -> bool:
    """libcni's rule for container IDs and network names: ^[a-zA-Z0-9][a-zA-Z0-9_.-]*$, ASCII.
    (Checked by hand: a regex `$` would also accept a trailing newline.)"""
    return (
        bool(text)
        and text.isascii()
        and text[0].isalnum()
        and all(c.isalnum() or c in _ID_EXTRA_CHARS for c in text)
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


def container_id_problem(value: str) -> str | None:
    if not value:
        return "is empty"
    # The spec (and pkg/skel) allow only these characters; anything else could escape a path.
    if len(value) > MAX_CONTAINER_ID or not is_id(value):
        return f"must match ^[a-zA-Z0-9][a-zA-Z0-9_.-]*$ and be at most {MAX_CONTAINER_ID} bytes"
    return None


def network_name_problem(value: str) -> str | None:
    if len(value) > MAX_NETWORK_NAME or not is_id(value):
        return (
            "must start with a letter or digit and hold only letters, digits, '_', '.', '-' "
            f"(at most {MAX_NETWORK_NAME})"
        )
    return None


MAX_DNS_NAME = 253
_DNS_LABEL_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_")


def dns_name_problem(value: str) -> str | None:
    """A name the container DNS server answers for (a container name, an alias, a domain):
    dot-separated labels of letters, digits, '-' and '_' (as container names may hold), each 1
    to 63 long and not starting or ending with '-'; at most 253 in all."""
    if not value or len(value) > MAX_DNS_NAME:
        return f"must be 1 to {MAX_DNS_NAME} characters"
    for label in value.lower().split("."):
        if not 1 <= len(label) <= 63 or not set(label) <= _DNS_LABEL_CHARS:
            return "must be dot-separated labels of 1-63 letters, digits, '-' or '_'"
        if label[0] == "-" or label[-1] == "-":
            return "must not have a label starting or ending with '-'"
    return None


def _mac_text(text: str) -> str:
    return text.strip().lower().replace("-", ":")


def mac_problem(text: str) -> str | None:
    parts = _mac_text(text).split(":")
    if len(parts) != 6 or not all(len(p) == 2 and set(p) <= _HEX for p in parts):
        return "is not a MAC address"
    if int(parts[0], 16) & 1:
        return "is a multicast MAC address"
    return None


def port_range_count(first: int, last: int | None, target: int) -> int:
    """Ports first..last (inclusive; None: first alone) onto target..: how many. The ports
    themselves are `Port`s; this checks that the range is one, and that its image fits."""
    if last is None:
        return 1
    if last < first:
        raise DomainError(f"port range {first}-{last} ends below its start")
    count = last - first + 1
    if target + count - 1 > MAX_PORT:
        end = target + count - 1
        raise DomainError(f"the target port range {target}-{end} ends beyond {MAX_PORT}")
    return count


# --- the checked values ---------------------------------------------------------------------


class _Checked:
    """A value that passed its class's rule. Pydantic validates a field of such a type as the
    base type first (so 5 is still "not a valid string"), then by calling the class."""

    __slots__ = ()

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Callable[[Any], Any]) -> Any:
        from pydantic_core import core_schema

        base = core_schema.int_schema() if issubclass(cls, int) else core_schema.str_schema()
        return core_schema.no_info_after_validator_function(cls, base)


class InterfaceName(_Checked, str):
    __slots__ = ()

    def __new__(cls, value: str) -> InterfaceName:
        problem = ifname_problem(value)
        if problem:
            raise DomainError(f"interface name {value!r} {problem}")
        return super().__new__(cls, value)


class NetworkName(_Checked, str):
    __slots__ = ()

    def __new__(cls, value: str) -> NetworkName:
        problem = network_name_problem(value)
        if problem:
            raise DomainError(f"network name {value!r} {problem}")
        return super().__new__(cls, value)


class ContainerID(_Checked, str):
    __slots__ = ()

    def __new__(cls, value: str) -> ContainerID:
        problem = container_id_problem(value)
        if problem:
            raise DomainError(f"container ID {value!r} {problem}")
        return super().__new__(cls, value)


class MacAddress(_Checked, str):
    """A unicast Ethernet address, normalised to ':'-separated lower case ('-' is accepted)."""

    __slots__ = ()

    def __new__(cls, value: str) -> MacAddress:
        problem = mac_problem(value)
        if problem:
            raise DomainError(f"{value!r} {problem}")
        return super().__new__(cls, _mac_text(value))


class VlanId(_Checked, int):
    __slots__ = ()

    def __new__(cls, value: int) -> VlanId:
        if not MIN_VLAN <= value <= MAX_VLAN:
            raise DomainError(f"VLAN id {value} is outside {MIN_VLAN}-{MAX_VLAN}")
        return super().__new__(cls, value)


class Port(_Checked, int):
    __slots__ = ()

    def __new__(cls, value: int) -> Port:
        if not MIN_PORT <= value <= MAX_PORT:
            raise DomainError(f"port {value} is outside {MIN_PORT}-{MAX_PORT}")
        return super().__new__(cls, value)
