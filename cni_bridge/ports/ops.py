"""The plugin's side effects on held ports, behind a Protocol so unit tests run without them."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

from cni_bridge.firewall.model import PortMapping

log = logging.getLogger(__name__)


class HostPorts(Protocol):
    def check(self, mappings: Sequence[PortMapping], runtime_holds: bool) -> None:
        """Raises CNIError(PORT_CONFLICT) when a host program holds one of the ports."""

    def changed(self, network_dir: str, tag: str) -> None:
        """An attachment record with port mappings was written or removed: tell the holder."""


class NoHostPorts:
    def check(self, mappings: Sequence[PortMapping], runtime_holds: bool) -> None:
        return None

    def changed(self, network_dir: str, tag: str) -> None:
        return None


class RealHostPorts:
    def check(self, mappings: Sequence[PortMapping], runtime_holds: bool) -> None:
        from cni_bridge.ports.check import check

        check(mappings, runtime_holds)

    def changed(self, network_dir: str, tag: str) -> None:
        from cni_bridge.ports import control

        answer = control.changed(network_dir, tag)
        if answer is None:
            log.info("no agent holds the published ports here")
        elif answer.get("failed"):
            log.warning("published ports not held: %s", answer["failed"])
