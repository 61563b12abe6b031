"""The peer list of `cni-bridge routes --peers FILE`: one node a line.

    # comment
    <node-ip> <pod-cidr> [<pod-cidr>...]

A dual-stack node whose pod CIDRs need addresses of both families gets one line per family
(a route goes via an address of its own family). Standard library only.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from cni_bridge.domain import IPAddress, IPNetwork


@dataclass(frozen=True)
class Peer:
    node_ip: IPAddress
    cidrs: tuple[IPNetwork, ...]
    source: str = ""  # where it came from, for messages: "line 3", "node worker-1"

    def label(self) -> str:
        return f"peer {self.node_ip}" + (f" ({self.source})" if self.source else "")


class PeerFileError(ValueError):
    pass


def parse_peers(text: str) -> list[Peer]:
    """Every line checked; all problems reported at once, naming their lines."""
    peers: list[Peer] = []
    problems: list[str] = []
    for n, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].split()
        if not line:
            continue
        where = f"line {n}"
        if len(line) < 2:
            problems.append(f"{where}: expected `<node-ip> <pod-cidr> [<pod-cidr>...]`")
            continue
        try:
            node_ip = ipaddress.ip_address(line[0])
        except ValueError:
            problems.append(f"{where}: {line[0]!r} is not an IP address")
            continue
        cidrs: list[IPNetwork] = []
        for word in line[1:]:
            try:
                cidr = ipaddress.ip_network(word, strict=True)
            except ValueError as exc:
                problems.append(f"{where}: {word!r} is not a pod CIDR ({exc})")
                continue
            if cidr.version != node_ip.version:
                problems.append(
                    f"{where}: pod CIDR {cidr} is IPv{cidr.version} but node address {node_ip} "
                    f"is IPv{node_ip.version} (give a dual-stack node one line per family)"
                )
                continue
            cidrs.append(cidr)
        peers.append(Peer(node_ip, tuple(dict.fromkeys(cidrs)), where))
    if problems:
        raise PeerFileError("; ".join(problems))
    return peers
