"""The kernel side of the peer routes (pyroute2): this node's addresses, the main table's
routes, and one change at a time. `RouteTable` is what the planner's callers need; unit
tests give a fake."""

from __future__ import annotations

import ipaddress
import socket
from typing import Any, Protocol

from cni_bridge.nodes.routeplan import PROTO, Change, KernelRoute, LocalAddr

MAIN_TABLE = 254
RTN_UNICAST = 1


class RouteError(Exception):
    pass


class RouteTable(Protocol):
    def addresses(self) -> list[LocalAddr]: ...
    def routes(self) -> list[KernelRoute]: ...
    def apply(self, change: Change) -> None: ...  # raises RouteError
    def close(self) -> None: ...


class NetlinkRoutes:
    """The calling process's network namespace."""

    def __init__(self) -> None:
        from pyroute2 import IPRoute

        self._ipr: Any = IPRoute()

    def close(self) -> None:
        self._ipr.close()

    def addresses(self) -> list[LocalAddr]:
        names = {link["index"]: link.get("ifname") or "" for link in self._ipr.get_links()}
        out = []
        for msg in self._ipr.get_addr():
            addr = msg.get("address")
            if addr is None:
                continue
            iface = ipaddress.ip_interface(f"{addr}/{msg['prefixlen']}")
            out.append(LocalAddr(msg["index"], names.get(msg["index"], ""), iface))
        return out

    def routes(self) -> list[KernelRoute]:
        out = []
        for family, any_dst in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
            for msg in self._ipr.get_routes(family=family, table=MAIN_TABLE):
                if msg["type"] != RTN_UNICAST:
                    continue
                dst = ipaddress.ip_network(f"{msg.get('dst') or any_dst}/{msg['dst_len']}")
                gw = msg.get("gateway")
                out.append(
                    KernelRoute(
                        dst,
                        ipaddress.ip_address(gw) if gw else None,
                        msg.get("oif"),
                        msg["proto"],
                        msg.get("priority"),
                    )
                )
        return out

    def apply(self, change: Change) -> None:
        from pyroute2.netlink.exceptions import NetlinkError

        kw: dict[str, Any] = {"dst": str(change.dst), "proto": PROTO, "table": MAIN_TABLE}
        if change.gateway is not None:
            kw["gateway"] = str(change.gateway)
        if change.oif is not None:
            kw["oif"] = change.oif
        if change.op == "delete" and change.priority is not None:
            kw["priority"] = change.priority
        try:
            self._ipr.route(change.op, **kw)
        except NetlinkError as exc:
            raise RouteError(f"{change}: {exc.args[1] if len(exc.args) > 1 else exc}") from None
