"""JSON forms of the firewall model, to drive `nft.Firewall` in another process (a test's
network namespace) and to check that a model survives the trip. Tests only: the plugin
passes the model in memory, and its records keep port mappings (model.mapping_to_dict)."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Any

from cni_bridge.domain import InterfaceName, IPAddress, IPNetwork, NetworkName, Port
from cni_bridge.firewall.model import (
    AttachmentFw,
    NetworkFw,
    PortMapping,
    Protocol,
    mapping_from_dict,
    mapping_to_dict,
)


def fw_net(
    name: str,
    bridge: str,
    subnets: Sequence[IPNetwork],
    ip_masq: bool,
    *,
    isolate: bool = True,
    non_masq: Sequence[IPNetwork] = (),
) -> NetworkFw:
    """A network as config.py would hand it to the firewall (its names checked by domain.py)."""
    return NetworkFw(
        NetworkName(name), InterfaceName(bridge), list(subnets), ip_masq, isolate, tuple(non_masq)
    )


def port_map(
    host_port: int,
    container_port: int,
    protocol: Protocol = "tcp",
    host_ip: IPAddress | None = None,
    host_port_end: int | None = None,
) -> PortMapping:
    """A port mapping as config.py would hand it to the firewall (its ports domain.Port)."""
    end = Port(host_port_end) if host_port_end is not None else None
    return PortMapping(Port(host_port), Port(container_port), protocol, host_ip, end)


def network_to_dict(net: NetworkFw) -> dict[str, Any]:
    return {
        "name": net.name,
        "bridge": net.bridge,
        "subnets": [str(s) for s in net.subnets],
        "ipMasq": net.ip_masq,
        "isolate": net.isolate,
        "nonMasqueradeCIDRs": [str(s) for s in net.non_masq],
    }


def network_from_dict(d: dict[str, Any]) -> NetworkFw:
    return NetworkFw(
        name=NetworkName(d["name"]),
        bridge=InterfaceName(d["bridge"]),
        subnets=[ipaddress.ip_network(s, strict=False) for s in d["subnets"]],
        ip_masq=bool(d["ipMasq"]),
        isolate=bool(d.get("isolate", True)),
        non_masq=tuple(ipaddress.ip_network(s, strict=False) for s in d.get("nonMasqueradeCIDRs", [])),
    )


def attachment_to_dict(att: AttachmentFw) -> dict[str, Any]:
    return {
        "tag": att.tag,
        "owner": att.owner,
        "ips": [str(ip) for ip in att.ips],
        "portMappings": [mapping_to_dict(pm) for pm in att.port_mappings],
    }


def attachment_from_dict(d: dict[str, Any]) -> AttachmentFw:
    return AttachmentFw(
        tag=str(d["tag"]),
        owner=str(d["owner"]),
        ips=[ipaddress.ip_address(ip) for ip in d["ips"]],
        port_mappings=tuple(mapping_from_dict(pm) for pm in d.get("portMappings", [])),
    )
