"""CNI_ARGS: "K=V;K2=V2", with IgnoreUnknown as libcni/pkg/types.LoadArgs defines it."""

from __future__ import annotations

import ipaddress

from cni_bridge.domain import DomainError, IPAddress, MacAddress
from cni_bridge.errors import INVALID_ENV, CNIError
from cni_bridge.tuples import NamedTuple

KNOWN_KEYS = frozenset(
    {
        "IgnoreUnknown",
        "IP",
        "MAC",
        "K8S_POD_NAME",
        "K8S_POD_NAMESPACE",
        "K8S_POD_INFRA_CONTAINER_ID",
        "K8S_POD_UID",
    }
)
_TRUE = {"1", "true", "True", "TRUE", "t", "T"}
_FALSE = {"0", "false", "False", "FALSE", "f", "F", ""}


# A NamedTuple, not a frozen dataclass (see protocol/request.py); built in one place
# (parse_cni_args), every field given: no shared default for `pod`.
class CniArgs(NamedTuple):
    ips: tuple[IPAddress, ...]
    mac: MacAddress | None
    pod: dict[str, str]
    ignore_unknown: bool


def parse_cni_args(text: str) -> CniArgs:
    pairs: dict[str, str] = {}
    for item in text.split(";"):
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CNIError(INVALID_ENV, f"CNI_ARGS: invalid pair {item!r}, want KEY=VALUE")
        pairs[key] = value
    ignore = pairs.get("IgnoreUnknown", "")
    if ignore not in _TRUE | _FALSE:
        raise CNIError(INVALID_ENV, f"CNI_ARGS: IgnoreUnknown={ignore!r} is not a boolean")
    ignore_unknown = ignore in _TRUE
    unknown = sorted(k for k in pairs if k not in KNOWN_KEYS)
    if unknown and not ignore_unknown:
        raise CNIError(INVALID_ENV, f"CNI_ARGS: unknown args {unknown}")
    ips: list[IPAddress] = []
    for raw in filter(None, pairs.get("IP", "").split(",")):
        try:
            ips.append(ipaddress.ip_address(raw.strip()))
        except ValueError:
            raise CNIError(INVALID_ENV, f"CNI_ARGS: IP={raw!r} is not an IP address") from None
    mac = normalize_mac(pairs["MAC"], "CNI_ARGS MAC") if pairs.get("MAC") else None
    pod = {k: v for k, v in pairs.items() if k.startswith("K8S_POD_")}
    return CniArgs(ips=tuple(ips), mac=mac, pod=pod, ignore_unknown=ignore_unknown)


def normalize_mac(text: str, what: str) -> MacAddress:
    """A MAC address the request names (`what`, e.g. "CNI_ARGS MAC"); a bad one is CNI error 4."""
    try:
        return MacAddress(text)
    except DomainError as exc:
        raise CNIError(INVALID_ENV, f"{what}: {exc}") from None
