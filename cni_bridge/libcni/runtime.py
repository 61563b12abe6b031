"""The per-attachment inputs of one invocation (libcni's RuntimeConf), and their checks."""

from __future__ import annotations

from cni_bridge.domain import container_id_problem, ifname_problem, network_name_problem
from cni_bridge.errors import INVALID_CONFIG, INVALID_ENV, CNIError
from cni_bridge.libcni.conf import loads

# `typing` and `collections.abc` cost milliseconds at start-up; only the type checker needs them.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

    Json = dict[str, Any]
    CniArgs = list[tuple[str, str]]


class RuntimeConf:
    """libcni RuntimeConf: the per-attachment arguments of one invocation."""

    __slots__ = ("cap_args", "cni_args", "container_id", "ifname", "netns")

    def __init__(
        self,
        container_id: str,
        netns: str,
        ifname: str = "eth0",
        cni_args: CniArgs | None = None,
        cap_args: Json | None = None,
    ) -> None:
        self.container_id = container_id
        self.netns = netns
        self.ifname = ifname
        self.cni_args: CniArgs = list(cni_args or [])
        self.cap_args: Json = dict(cap_args or {})

    def __repr__(self) -> str:
        return f"RuntimeConf({self.container_id!r}, {self.netns!r}, {self.ifname!r})"


def parse_cni_args(value: str) -> CniArgs:
    """cnitool's parser: `K=V;K2=V2` with both sides non-empty, kept as pairs in order (the
    plugin-side meaning of the keys is protocol/cniargs.py's business, not a client's)."""
    pairs: CniArgs = []
    for pair in value.split(";") if value else ():
        key, sep, val = pair.partition("=")
        if not sep or not key or not val:
            raise CNIError(INVALID_ENV, f"invalid CNI_ARGS pair {pair!r}")
        pairs.append((key, val))
    return pairs


def format_cni_args(pairs: Sequence[tuple[str, str]]) -> str:
    return ";".join(f"{k}={v}" for k, v in pairs)


def parse_cap_args(value: str) -> Json:
    caps = loads(value, "CAP_ARGS") if value else {}
    if not isinstance(caps, dict):
        raise CNIError(INVALID_ENV, "CAP_ARGS must be a JSON object")
    return caps


def container_id_for(netns: str) -> str:
    """cnitool's container ID, a hash of the absolute netns path, so both tools agree."""
    import hashlib  # only the CLI needs it; it loads OpenSSL

    return "cnitool-" + hashlib.sha512(netns.encode()).digest()[:10].hex()


# What the runtime and the conflist give the client is checked here, at the client's trust
# boundary, by domain.py's rules (the plugin checks its own inputs again: it trusts no caller).


def validate_container_id(cid: str) -> None:
    # Also keeps the cache path inside the cache directory.
    problem = container_id_problem(cid)
    if problem:
        raise CNIError(INVALID_ENV, f"invalid containerID {cid!r}: {problem}")


def validate_network_name(name: str) -> None:
    problem = network_name_problem(name)
    if problem:
        raise CNIError(INVALID_CONFIG, f"invalid network name {name!r}: {problem}")


def validate_ifname(ifname: str) -> None:
    problem = ifname_problem(ifname)
    if problem:
        raise CNIError(INVALID_ENV, f"invalid interface name {ifname!r}: {problem}")
