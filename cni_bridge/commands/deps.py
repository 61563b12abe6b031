"""The side-effect interfaces a command uses, built once per request.

Unit tests pass fakes; the real ones are imported only here, lazily, so each verb pays only for
what it touches. The crash-test hook comes from the environment (CNI_BRIDGE_TEST_KILL_AT=<step>)
and lives in this per-request object, never in a module global.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from cni_bridge.dns.ops import DnsOps
    from cni_bridge.firewall.ops import FirewallOps
    from cni_bridge.net.ops import NetOps
    from cni_bridge.ports.ops import HostPorts

KILL_AT_ENV = "CNI_BRIDGE_TEST_KILL_AT"


def _no_hook(step: str) -> None:
    return None


def _real_dns() -> DnsOps:
    from cni_bridge.dns.ops import AardvarkOps

    return AardvarkOps()


def kill_hook(target: str) -> Callable[[str], None]:
    def hook(step: str) -> None:
        if step == target:
            import signal  # a test's hook: signal (its enums) stays off the exec path

            os.kill(os.getpid(), signal.SIGKILL)

    return hook


class Deps:
    """A plain class, not a dataclass (see cni_bridge/slotted.py): built on every request of
    the exec'd plugin, which then need not import `dataclasses`."""

    __slots__ = (
        "_dns", "_fw", "_net", "dns_factory", "firewall_factory", "hook", "net_factory",
        "ports_factory",
    )  # fmt: skip

    def __init__(
        self,
        net_factory: Callable[[], NetOps],
        firewall_factory: Callable[[], FirewallOps],
        hook: Callable[[str], None] = _no_hook,
        ports_factory: Callable[[], HostPorts] | None = None,  # None: no held ports
        dns_factory: Callable[[], DnsOps] = _real_dns,
    ) -> None:
        self.net_factory = net_factory
        self.firewall_factory = firewall_factory
        self.hook = hook
        self.ports_factory = ports_factory or _no_ports
        self.dns_factory = dns_factory
        self._net: Any = None
        self._fw: Any = None
        self._dns: Any = None

    @property
    def net(self) -> NetOps:
        if self._net is None:
            self._net = self.net_factory()
        net: NetOps = self._net
        return net

    @property
    def firewall(self) -> FirewallOps:
        if self._fw is None:
            self._fw = self.firewall_factory()
        fw: FirewallOps = self._fw
        return fw

    @property
    def ports(self) -> HostPorts:
        return self.ports_factory()

    @property
    def dns(self) -> DnsOps:
        if self._dns is None:
            self._dns = self.dns_factory()
        dns: DnsOps = self._dns
        return dns

    def firewall_if_used(self) -> FirewallOps | None:
        """The firewall, if this request used it (nothing is created to ask)."""
        fw: FirewallOps | None = self._fw
        return fw

    def close(self) -> None:
        if self._net is not None:
            self._net.close()
            self._net = None


def _real_net() -> NetOps:
    from cni_bridge.net.links import NetlinkOps

    return NetlinkOps()


def _real_firewall() -> FirewallOps:
    from cni_bridge.firewall.nft import Firewall

    return Firewall()


def _no_ports() -> HostPorts:
    from cni_bridge.ports.ops import NoHostPorts

    return NoHostPorts()


def _real_ports() -> HostPorts:
    from cni_bridge.ports.ops import RealHostPorts

    return RealHostPorts()


def real_deps(env: Mapping[str, str]) -> Deps:
    target = env.get(KILL_AT_ENV, "")
    return Deps(
        net_factory=_real_net,
        firewall_factory=_real_firewall,
        ports_factory=_real_ports,
        hook=kill_hook(target) if target else _no_hook,
    )
