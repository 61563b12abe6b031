"""What the verbs share: opening a network's stores, the firewall model, error mapping."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterable, Mapping

from cni_bridge.domain import IPAddress
from cni_bridge.errors import (
    ADDRESS_CONFLICT,
    ADDRESS_EXHAUSTED,
    INTERFACE_EXISTS,
    INVALID_CONFIG,
    INVALID_ENV,
    IO_FAILURE,
    NETWORK_FAILURE,
    PERMISSION_DENIED,
    TRY_AGAIN_LATER,
    CNIError,
)
from cni_bridge.ipam.disk import DiskStore
from cni_bridge.netconf import NetConf
from cni_bridge.state import Attachment, StateStore

TYPE_CHECKING = False
if TYPE_CHECKING:
    from contextlib import AbstractContextManager
    from typing import Any

    from cni_bridge.firewall.model import AttachmentFw, NetworkFw, PortMapping
    from cni_bridge.protocol.request import Request

# Set by the resident's worker (resident/worker.py ORIGINAL_NETNS_VAR), whose CNI_NETNS is a
# /proc/<worker>/fd/<n> path to the descriptor the client sent: valid only while the worker runs.
ORIGINAL_NETNS_ENV = "CNI_BRIDGE_ORIGINAL_NETNS"


class NetworkStores:
    """The IPAM reservations and attachment records of one network, under one flock."""

    def __init__(self, conf: NetConf, *, teardown: bool = False) -> None:
        # teardown: DEL and GC, which bad state must never block (see DiskStore).
        self.ipam = DiskStore(conf.name, conf.ipam.data_dir, teardown=teardown)
        self.state = StateStore(self.ipam.dir)

    def lock(self) -> AbstractContextManager[None]:
        return self.ipam.lock()


def sandbox_path(request: Request, env: Mapping[str, str]) -> str:
    """The container's netns as the runtime named it: what results report as `sandbox` and
    records keep for later liveness checks. Netlink work still uses request.netns."""
    original = env.get(ORIGINAL_NETNS_ENV, "")
    if original and request.netns.startswith("/proc/"):
        return original
    return request.netns


class mapped_errors:
    """Turns the lower layers' exceptions into CNI errors with codes (once, at one place). A
    class, not a contextlib.contextmanager: contextlib stays off the exec path (~5 M
    instructions of a cold ADD)."""

    __slots__ = ()

    def __enter__(self) -> None:
        pass

    def __exit__(self, typ: object, exc: BaseException | None, tb: object) -> None:
        if exc is None or isinstance(exc, CNIError):
            return
        from cni_bridge.ipam.allocator import IPAMConflict, IPAMError, IPAMExhausted
        from cni_bridge.ipam.disk import StoreUnusable
        from cni_bridge.net.ops import (
            AddressConflict,
            LinkExists,
            LinkNotReady,
            NetError,
            NetnsUnavailable,
            NotABridge,
            SubnetInUse,
        )

        if isinstance(exc, PermissionError):
            raise CNIError(PERMISSION_DENIED, f"permission denied: {exc}") from None
        if isinstance(exc, IPAMExhausted):
            raise CNIError(ADDRESS_EXHAUSTED, str(exc)) from None
        if isinstance(exc, IPAMConflict):
            raise CNIError(ADDRESS_CONFLICT, str(exc)) from None
        if isinstance(exc, IPAMError):
            raise CNIError(INVALID_CONFIG, str(exc)) from None
        if isinstance(exc, StoreUnusable):
            raise CNIError(IO_FAILURE, str(exc)) from None
        if isinstance(exc, NetnsUnavailable):
            raise CNIError(INVALID_ENV, f"CNI_NETNS: {exc.msg}") from None
        if isinstance(exc, LinkExists):
            raise CNIError(INTERFACE_EXISTS, exc.msg) from None
        if isinstance(exc, LinkNotReady):
            raise CNIError(TRY_AGAIN_LATER, exc.msg) from None
        if isinstance(exc, NotABridge | AddressConflict | SubnetInUse):
            raise CNIError(INVALID_CONFIG, exc.msg) from None
        if isinstance(exc, NetError):
            raise CNIError(NETWORK_FAILURE, exc.msg) from None


def record_fw(conf: NetConf, att: Attachment) -> tuple[NetworkFw, AttachmentFw]:
    """The firewall's inputs as a record describes them: for the verbs that have only the
    record (DEL, GC, CHECK, a failed ADD's undo works from its plan instead)."""
    from cni_bridge.firewall.model import AttachmentFw, mapping_from_dict
    from cni_bridge.plan import attachment_owner, network_fw, network_subnets

    addresses = [ipaddress.ip_interface(ip) for ip in att.ips]
    return network_fw(conf, network_subnets(conf, addresses)), AttachmentFw(
        tag=att.tag,
        owner=attachment_owner(att.network, att.container_id, att.ifname),
        ips=[a.ip for a in addresses],
        port_mappings=tuple(mapping_from_dict(pm) for pm in att.port_mappings),
    )


def guarded_addresses(conf: NetConf, att: Attachment) -> list[IPAddress]:
    """What ipspoofchk lets the attachment send from (firewall/ipspoof.py)."""
    from cni_bridge.firewall.ipspoof import own_addresses

    return own_addresses(
        [ipaddress.ip_interface(ip).ip for ip in att.ips], att.mac, conf.ipv6_link_local
    )


def mapping_records(mappings: Iterable[PortMapping]) -> list[dict[str, Any]]:
    """Port mappings in the firewall's JSON form, as records keep them."""
    from cni_bridge.firewall.model import mapping_to_dict

    return [mapping_to_dict(pm) for pm in mappings]


def bridge_mark(network: str) -> str:
    """The alias of a bridge cni-bridge created for `network`: only such a bridge is ever
    deleted, with the network's last attachment (an operator's own bridge is left alone)."""
    return f"cni-bridge network {network}"


def last_in_network(stores: NetworkStores, att: Attachment) -> bool:
    """No other attachment of the network exists: its shared firewall elements may go.

    Asked of the records and, in case a record was lost, of host-local's reservations too.
    The caller holds the network lock, so no ADD of this network runs meanwhile."""
    if not os.path.isdir(stores.ipam.dir):
        # Nothing recorded here (DEL of a network unknown to this data dir, which takes no
        # lock): deciding "last" unlocked could strip a concurrent first ADD's elements.
        # Leave the network's shared elements to the network's own last DEL or to GC.
        return False
    if stores.state.has_other(att.tag):
        return False
    mine = {ipaddress.ip_interface(ip).ip for ip in att.ips}
    return not stores.ipam.has_other_owner((att.container_id, att.ifname), mine)
