"""The ADD result: one model at the newest spec, rendered down to any supported version.

Also parses a `prevResult` of any version into the model (up-conversion), because chained
plugins and CHECK/DEL hand us results written in the config's version. Pure, standard library.
"""

from __future__ import annotations

import ipaddress

from cni_bridge.domain import IPAddress, IPInterface, IPNetwork
from cni_bridge.errors import DECODE_FAILURE, CNIError
from cni_bridge.protocol.versions import at_least, require_supported
from cni_bridge.slotted import Slotted
from cni_bridge.tuples import NamedTuple

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

# Not dataclasses (see slotted.py): what is never changed once made is a NamedTuple (Interface,
# IPConfig, Route); DNS and Result, filled in place, are Slotted.


class Interface(NamedTuple):
    name: str
    mac: str = ""
    mtu: int = 0
    sandbox: str = ""
    socket_path: str = ""
    pci_id: str = ""


class IPConfig(NamedTuple):
    address: IPInterface
    gateway: IPAddress | None = None
    interface: int | None = None

    @property
    def version(self) -> str:
        return str(self.address.version)


class Route(NamedTuple):
    dst: IPNetwork
    gw: IPAddress | None = None
    mtu: int = 0
    advmss: int = 0
    priority: int = 0
    table: int | None = None
    scope: int | None = None


class DNS(Slotted):
    __slots__ = ("domain", "nameservers", "options", "search")

    def __init__(
        self,
        nameservers: list[str] | None = None,
        domain: str = "",
        search: list[str] | None = None,
        options: list[str] | None = None,
    ) -> None:
        self.nameservers: list[str] = [] if nameservers is None else nameservers
        self.domain = domain
        self.search: list[str] = [] if search is None else search
        self.options: list[str] = [] if options is None else options

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.nameservers:
            out["nameservers"] = list(self.nameservers)
        if self.domain:
            out["domain"] = self.domain
        if self.search:
            out["search"] = list(self.search)
        if self.options:
            out["options"] = list(self.options)
        return out

    @classmethod
    def from_dict(cls, data: Any) -> DNS:
        if not isinstance(data, dict):
            return cls()
        return cls(
            nameservers=[str(x) for x in data.get("nameservers") or []],
            domain=str(data.get("domain") or ""),
            search=[str(x) for x in data.get("search") or []],
            options=[str(x) for x in data.get("options") or []],
        )


class Result(Slotted):
    __slots__ = ("dns", "interfaces", "ips", "routes")

    def __init__(
        self,
        interfaces: list[Interface] | None = None,
        ips: list[IPConfig] | None = None,
        routes: list[Route] | None = None,
        dns: DNS | None = None,
    ) -> None:
        self.interfaces: list[Interface] = [] if interfaces is None else interfaces
        self.ips: list[IPConfig] = [] if ips is None else ips
        self.routes: list[Route] = [] if routes is None else routes
        self.dns = DNS() if dns is None else dns

    def render(self, version: str) -> dict[str, Any]:
        """The result as the given spec version writes it (Go's omitempty rules included)."""
        require_supported(version)
        if not at_least(version, "0.3.0"):
            return self._render_020(version)
        with_v11 = at_least(version, "1.1.0")
        with_ip_version = not at_least(version, "1.0.0")
        out: dict[str, Any] = {"cniVersion": version}
        if self.interfaces:
            out["interfaces"] = [_render_interface(i, with_v11) for i in self.interfaces]
        if self.ips:
            out["ips"] = [_render_ip(ip, with_ip_version) for ip in self.ips]
        if self.routes:
            out["routes"] = [_render_route(r, with_v11) for r in self.routes]
        out["dns"] = self.dns.to_dict()
        return out

    def _render_020(self, version: str) -> dict[str, Any]:
        # 0.1/0.2 know one address per family and hang the routes off it.
        out: dict[str, Any] = {"cniVersion": version}
        for fam, key in ((4, "ip4"), (6, "ip6")):
            ip = next((i for i in self.ips if i.address.version == fam), None)
            if ip is None:
                continue
            entry: dict[str, Any] = {"ip": str(ip.address)}
            if ip.gateway is not None:
                entry["gateway"] = str(ip.gateway)
            routes = [_render_route(r, False) for r in self.routes if r.dst.version == fam]
            if routes:
                entry["routes"] = routes
            out[key] = entry
        out["dns"] = self.dns.to_dict()
        return out


def _render_interface(i: Interface, with_v11: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"name": i.name}
    if i.mac:
        out["mac"] = i.mac
    if with_v11 and i.mtu:
        out["mtu"] = i.mtu
    if i.sandbox:
        out["sandbox"] = i.sandbox
    if with_v11 and i.socket_path:
        out["socketPath"] = i.socket_path
    if with_v11 and i.pci_id:
        out["pciID"] = i.pci_id
    return out


def _render_ip(ip: IPConfig, with_version: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if with_version:
        out["version"] = ip.version
    if ip.interface is not None:
        out["interface"] = ip.interface
    out["address"] = str(ip.address)
    if ip.gateway is not None:
        out["gateway"] = str(ip.gateway)
    return out


def _render_route(r: Route, with_v11: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"dst": str(r.dst)}
    if r.gw is not None:
        out["gw"] = str(r.gw)
    if with_v11:
        if r.mtu:
            out["mtu"] = r.mtu
        if r.advmss:
            out["advmss"] = r.advmss
        if r.priority:
            out["priority"] = r.priority
        if r.table is not None:
            out["table"] = r.table
        if r.scope is not None:
            out["scope"] = r.scope
    return out


def _bad(msg: str) -> CNIError:
    return CNIError(DECODE_FAILURE, f"invalid prevResult: {msg}")


def _iface(text: Any) -> IPInterface:
    try:
        return ipaddress.ip_interface(str(text))
    except ValueError as exc:
        raise _bad(str(exc)) from None


def _addr(text: Any) -> IPAddress | None:
    if text in (None, ""):
        return None
    try:
        return ipaddress.ip_address(str(text))
    except ValueError as exc:
        raise _bad(str(exc)) from None


def _int(value: Any, what: str) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        raise _bad(f"{what} {value!r} is not a number") from None


def _route(data: Any) -> Route:
    if not isinstance(data, dict) or "dst" not in data:
        raise _bad("route without dst")
    try:
        dst = ipaddress.ip_network(str(data["dst"]), strict=False)
    except ValueError as exc:
        raise _bad(str(exc)) from None
    return Route(
        dst=dst,
        gw=_addr(data.get("gw")),
        mtu=_int(data.get("mtu"), "route mtu"),
        advmss=_int(data.get("advmss"), "route advmss"),
        priority=_int(data.get("priority"), "route priority"),
        table=None if data.get("table") is None else _int(data["table"], "route table"),
        scope=None if data.get("scope") is None else _int(data["scope"], "route scope"),
    )


def parse_result(data: Any, version: str) -> Result:
    """Reads a result of any supported version (e.g. a prevResult) into the newest model."""
    if not isinstance(data, dict):
        raise _bad("not a JSON object")
    version = str(data.get("cniVersion") or version)
    require_supported(version)
    result = Result(dns=DNS.from_dict(data.get("dns")))
    if not at_least(version, "0.3.0"):
        for key in ("ip4", "ip6"):
            entry = data.get(key)
            if not isinstance(entry, dict):
                continue
            if "ip" not in entry:
                raise _bad(f"{key} without ip")
            result.ips.append(IPConfig(address=_iface(entry["ip"]), gateway=_addr(entry.get("gateway"))))
            result.routes.extend(_route(r) for r in entry.get("routes") or [])
        return result
    for i in data.get("interfaces") or []:
        if not isinstance(i, dict) or not i.get("name"):
            raise _bad("interface without name")
        result.interfaces.append(
            Interface(
                name=str(i["name"]),
                mac=str(i.get("mac") or ""),
                mtu=_int(i.get("mtu"), "interface mtu"),
                sandbox=str(i.get("sandbox") or ""),
                socket_path=str(i.get("socketPath") or ""),
                pci_id=str(i.get("pciID") or ""),
            )
        )
    for ip in data.get("ips") or []:
        if not isinstance(ip, dict) or "address" not in ip:
            raise _bad("ip without address")
        idx = ip.get("interface")
        if idx is not None and (not isinstance(idx, int) or not 0 <= idx < len(result.interfaces)):
            raise _bad(f"ip interface index {idx!r} out of range")
        result.ips.append(
            IPConfig(address=_iface(ip["address"]), gateway=_addr(ip.get("gateway")), interface=idx)
        )
    result.routes.extend(_route(r) for r in data.get("routes") or [])
    return result
