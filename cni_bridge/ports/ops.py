"""The plugin's side effects on held ports, behind a Protocol so unit tests run without them."""

from __future__ import annotations

from collections.abc import Sequence

from cni_bridge.errors import PORT_CONFLICT, CNIError
from cni_bridge.firewall.model import PortMapping
from cni_bridge.hints import Protocol
from cni_bridge.log import getLogger

log = getLogger(__name__)


class HostPorts(Protocol):
    def check(self, mappings: Sequence[PortMapping], runtime_holds: bool) -> None:
        """Raises CNIError(PORT_CONFLICT) when a host program holds one of the ports."""

    def hold(self, network_dir: str, tag: str) -> None:
        """A ready record with port mappings was written: the holder (if an agent runs) takes
        its sockets; raises CNIError(PORT_CONFLICT) for one it could not take, as docker-proxy
        failing to bind fails `docker run` (a host program took the port since the check)."""

    def changed(self, network_dir: str, tag: str) -> None:
        """An attachment record with port mappings was removed or rewritten: tell the holder.
        Never raises."""


class NoHostPorts:
    def check(self, mappings: Sequence[PortMapping], runtime_holds: bool) -> None:
        return None

    def hold(self, network_dir: str, tag: str) -> None:
        return None

    def changed(self, network_dir: str, tag: str) -> None:
        return None


class RealHostPorts:
    def check(self, mappings: Sequence[PortMapping], runtime_holds: bool) -> None:
        from cni_bridge.ports.check import check

        check(mappings, runtime_holds)

    def hold(self, network_dir: str, tag: str) -> None:
        from cni_bridge.ports import control

        answer = control.changed(network_dir, tag)
        if answer is None:
            log.info("no agent holds the published ports here")
            return
        failed = answer.get("failed")
        if isinstance(failed, dict) and failed:
            key, why = sorted(failed.items())[0]
            raise CNIError(
                PORT_CONFLICT,
                f"host port {key} could not be held: {why}",
                "; ".join(f"{k}: {w}" for k, w in sorted(failed.items())),
            )

    def changed(self, network_dir: str, tag: str) -> None:
        from cni_bridge.ports import control

        if control.changed(network_dir, tag) is None:
            log.info("no agent holds the published ports here")
