"""The container side of the real NetOps (links.py's NetlinkOps extends it): the container's
interface configured, waited for and read through a netlink socket opened inside its
namespace, so the process never stays outside the host namespace."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence

from cni_bridge.domain import InterfaceName
from cni_bridge.net import rtnl, sysctl
from cni_bridge.net.netlink import NetlinkSocket
from cni_bridge.net.netns import entered, open_netns
from cni_bridge.net.ops import (
    ContainerView,
    IPInterface,
    LinkNotFound,
    LinkNotReady,
    NetnsUnavailable,
    Route,
)
from cni_bridge.net.rtmsg import BR_STATE_DISABLED, IFA_F_DADFAILED, IFA_F_TENTATIVE
from cni_bridge.net.rtnl import dump_addrs, get_link


class ContainerSide:
    link_up_timeout: float
    dad_timeout: float

    def _rt(self) -> NetlinkSocket:
        """The host's socket (NetlinkOps keeps one)."""
        raise NotImplementedError


    def configure_container(
        self,
        netns_path: str,
        ifname: InterfaceName,
        addrs: Sequence[IPInterface],
        routes: Sequence[Route],
        *,
        enable_dad: bool = False,
        ipv6: bool = True,
    ) -> None:
        # Per-interface IPv6 sysctls of the container (netlink cannot set them), written from
        # inside its namespace before the addresses and the link-local one made at link up.
        # Only where IPv6 stays on: each /proc/sys lookup costs ~0.6 ms with 1000 namespaces
        # holding an `eth0` (see inet_conf); the rest goes through netlink.
        sysctls: list[tuple[str, str]] = []
        if ipv6:
            sysctls.append((f"net/ipv6/conf/{ifname}/accept_dad", "1" if enable_dad else "0"))
            if enable_dad:
                sysctls.append((f"net/ipv6/conf/{ifname}/enhanced_dad", "1"))
        nsfd = open_netns(netns_path)
        try:
            ct = _open_inside(nsfd, sysctls)
        finally:
            os.close(nsfd)
        with ct:
            link = get_link(ct, name=ifname)
            if link is None:
                raise LinkNotFound(ifname, netns_path)
            rtnl.set_container_af(ct, link.ifindex, ifname, link_local=ipv6)
            for iface in addrs:
                rtnl.add_addr(ct, link.ifindex, iface, ifname, nodad=not enable_dad)
            if not link.up:
                rtnl.set_link(ct, link.ifindex, f"bringing up {ifname}", up=True)
            for dst, gateway in routes:
                rtnl.add_route(ct, link.ifindex, dst, gateway, ifname)
            self._wait_ready(ct, link.ifindex, ifname, netns_path)
            wanted6: set[IPInterface] = {a for a in addrs if a.version == 6}
            if enable_dad and wanted6:
                self._wait_dad(ct, link.ifindex, ifname, wanted6)

    def _wait_ready(self, ct: NetlinkSocket, index: int, ifname: str, netns_path: str) -> None:
        """Until the container end is operationally up and the host end forwards on the bridge
        (port state left 'disabled'); the reference plugin polls the host end the same way."""
        host = self._rt()
        for _ in _polls(self.link_up_timeout):
            link = get_link(ct, index=index)
            if link is None:
                raise LinkNotFound(ifname, netns_path)
            if not link.oper_up:
                continue
            peer = get_link(host, index=link.peer_index) if link.peer_index else None
            if peer is None or peer.peer_index != index or peer.kind != "veth":
                return  # the peer is not in our namespace: nothing more we can check
            if peer.oper_up and peer.port_state != BR_STATE_DISABLED:
                return
        raise LinkNotReady(f"{ifname} did not come up within {self.link_up_timeout:g}s")

    def _wait_dad(
        self, ct: NetlinkSocket, index: int, ifname: str, wanted: set[IPInterface]
    ) -> None:
        for _ in _polls(self.dad_timeout):
            pending = False
            for addr in dump_addrs(ct, index):
                if addr.iface not in wanted:
                    continue
                if addr.flags & IFA_F_DADFAILED:
                    raise LinkNotReady(f"{addr.iface} on {ifname}: duplicate address detected")
                pending = pending or bool(addr.flags & IFA_F_TENTATIVE)
            if not pending:
                return
        raise LinkNotReady(f"IPv6 DAD on {ifname} did not finish within {self.dad_timeout:g}s")

    def container_view(self, netns_path: str, ifname: InterfaceName) -> ContainerView | None:
        with _ContainerSocket(netns_path) as ct:
            if ct is None:
                return None
            link = get_link(ct, name=ifname)
            if link is None:
                return None
            return ContainerView(
                name=link.name,
                ifindex=link.ifindex,
                mac=link.mac,
                mtu=link.mtu,
                kind=link.kind,
                oper_up=link.oper_up,
                peer_index=link.peer_index,
                addresses=tuple(a.iface for a in dump_addrs(ct, link.ifindex)),
                routes=tuple(rtnl.dump_routes(ct, link.ifindex)),
            )

    def delete_container_link(self, netns_path: str, ifname: InterfaceName) -> bool:
        with _ContainerSocket(netns_path) as ct:
            return ct is not None and rtnl.delete_link(ct, ifname)


def _open_inside(netns_fd: int, sysctls: Sequence[tuple[str, str]] = ()) -> NetlinkSocket:
    """A socket in the namespace; the sysctls (missing ones skipped) are written while inside."""
    with entered(netns_fd):
        for key, value in sysctls:
            sysctl.write(key, value, missing_ok=True)
        return NetlinkSocket.open()


class _ContainerSocket:
    """A socket in the container namespace, or None when the namespace is gone. A class, not a
    contextlib.contextmanager: contextlib stays off the exec path (net/netns.py's entered)."""

    __slots__ = ("_netns_path", "_sock")

    def __init__(self, netns_path: str) -> None:
        self._netns_path = netns_path
        self._sock: NetlinkSocket | None = None

    def __enter__(self) -> NetlinkSocket | None:
        try:
            nsfd = open_netns(self._netns_path)
        except NetnsUnavailable:
            return None
        try:
            self._sock = NetlinkSocket.open_in(nsfd)
        finally:
            os.close(nsfd)
        return self._sock

    def __exit__(self, *exc: object) -> None:
        if self._sock is not None:
            self._sock.close()


def _polls(timeout: float) -> Iterator[None]:
    """Yields at once, then with growing sleeps (0.2 ms to 50 ms) until `timeout` has passed.

    Fine steps first: carrier usually comes within a few ms, later with many links on the
    host (the kernel's linkwatch), and every oversleep is ADD latency."""
    deadline = time.monotonic() + timeout
    delay = 0.0002
    yield
    while time.monotonic() < deadline:
        time.sleep(delay)
        delay = min(delay * 2, 0.05)
        yield
