"""The netlink side effects the commands need, as a Protocol the unit tests can fake.

Standard library only: importing this module must not pull in pyroute2. `links.NetlinkOps` is the
real implementation. "Host" means the network namespace the calling process is in; a container
namespace is always given as a path (`/run/netns/x`, `/proc/<pid>/ns/net`).
"""

from __future__ import annotations

from collections.abc import Sequence

from cni_bridge.domain import InterfaceName, MacAddress, VlanId

# Re-exported for the netlink modules that take them from here.
from cni_bridge.domain import IPAddress as IPAddress
from cni_bridge.domain import IPInterface as IPInterface
from cni_bridge.domain import IPNetwork as IPNetwork
from cni_bridge.hints import Protocol
from cni_bridge.tuples import NamedTuple

# (destination, gateway); a default route has destination 0.0.0.0/0 or ::/0; no gateway = on-link.
Route = tuple[IPNetwork, IPAddress | None]


# --- errors ---------------------------------------------------------------------------------


class NetError(Exception):
    """A netlink or sysctl operation failed. `errno` is the kernel's, when there was one."""

    def __init__(self, msg: str, *, errno: int | None = None) -> None:
        super().__init__(msg)
        self.msg = msg
        self.errno = errno


class NetnsUnavailable(NetError):
    """The netns path is empty, missing, or not a network namespace. Nothing was changed."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"network namespace {path!r} {reason}")
        self.path = path
        self.reason = reason


class LinkExists(NetError):
    """A link we were asked to create already exists. `netns` is None for the host."""

    def __init__(self, name: str, netns: str | None) -> None:
        where = "the host" if netns is None else f"network namespace {netns!r}"
        super().__init__(f"link {name!r} already exists in {where}")
        self.name = name
        self.netns = netns


class LinkNotFound(NetError):
    """A link the operation works on does not exist (e.g. the bridge for a new port)."""

    def __init__(self, name: str, netns: str | None) -> None:
        where = "the host" if netns is None else f"network namespace {netns!r}"
        super().__init__(f"link {name!r} not found in {where}")
        self.name = name
        self.netns = netns


class NotABridge(NetError):
    def __init__(self, name: str, kind: str | None) -> None:
        super().__init__(f"{name!r} already exists but is not a bridge (kind {kind or 'none'})")
        self.name = name
        self.kind = kind


class AddressConflict(NetError):
    """The bridge holds another address of the family (IPv4) or an overlapping one (IPv6)."""

    def __init__(self, bridge: str, wanted: IPInterface, existing: IPInterface) -> None:
        super().__init__(
            f'"{bridge}" already has an IP address different from {wanted} ({existing})'
        )
        self.bridge = bridge
        self.wanted = wanted
        self.existing = existing


class SubnetInUse(NetError):
    """A gateway address's subnet overlaps an address or route the host has elsewhere."""

    def __init__(self, bridge: str, wanted: IPInterface, holder: str) -> None:
        super().__init__(
            f"subnet {wanted.network} (gateway {wanted.ip} on {bridge}) is already in use on "
            f"this host: {holder}"
        )
        self.holder = holder


class LinkNotReady(NetError):
    """The link did not come up, or IPv6 duplicate address detection did not finish, in time."""


# --- results --------------------------------------------------------------------------------


# NamedTuples, not frozen dataclasses: the same immutable, hashable records without the methods
# a dataclass compiles at import, and no `dataclasses` (nor the `inspect` it imports) on the
# exec'd path. A NamedTuple's field cannot be called `index` (tuple's method): hence `ifindex`.
class LinkInfo(NamedTuple):
    name: str
    ifindex: int
    mac: str  # lower-case, colon separated
    mtu: int
    created: bool = False  # ensure_bridge made it (rather than found it)


class HostLink(NamedTuple):  # a NamedTuple: see LinkInfo
    """A host link as CHECK needs to see it."""

    name: str
    ifindex: int
    mac: str
    mtu: int
    kind: str | None  # "bridge", "veth", ...; None for devices without a kind (physical)
    master: int | None  # ifindex of the bridge it is attached to
    up: bool  # administratively up
    oper_up: bool
    promisc: bool
    peer_index: int | None  # a veth's peer ifindex (in the peer's namespace)
    hairpin: bool | None = None  # bridge-port flags, None when not a bridge port
    isolated: bool | None = None
    peer_netnsid: int | None = None  # set when a veth's peer is in another namespace


class ContainerView(NamedTuple):  # a NamedTuple: see LinkInfo
    """The container interface as it is now (for CHECK)."""

    name: str
    ifindex: int
    mac: str
    mtu: int
    kind: str | None
    oper_up: bool
    peer_index: int | None  # ifindex of the host end, for a veth
    addresses: tuple[IPInterface, ...] = ()
    routes: tuple[Route, ...] = ()  # main-table routes through this interface


# --- the operations -------------------------------------------------------------------------


class NetOps(Protocol):
    def ensure_bridge(
        self, name: InterfaceName, mtu: int | None, vlan_filtering: bool, mark: str = ""
    ) -> LinkInfo:
        """Create the bridge or reuse an existing one; set MTU, bring it up, pin its MAC.
        A bridge it creates carries `mark` as its alias (see remove_bridge).

        Raises NotABridge when `name` exists with another kind. Safe against a concurrent
        creator. The caller undoes a creation with remove_bridge(name, mark).
        """
        ...

    def ensure_bridge_addrs(
        self, name: InterfaceName, addrs: Sequence[IPInterface], force: bool
    ) -> list[IPInterface]:
        """Add gateway addresses to the bridge (present ones are fine); returns those added.

        Another IPv4 address, or an overlapping IPv6 one, raises AddressConflict unless `force`,
        which removes it. Addresses in `addrs` never conflict with each other.
        """
        ...

    def check_subnets_free(self, bridge: InterfaceName, addrs: Sequence[IPInterface]) -> None:
        """Raises SubnetInUse naming the holder when an address the bridge does not hold yet
        has a subnet that overlaps an address or main-table route of another link."""
        ...

    def del_bridge_addrs(self, name: InterfaceName, addrs: Sequence[IPInterface]) -> None:
        """Remove addresses from the bridge (absent ones, or no bridge, are fine)."""
        ...

    def remove_bridge(self, name: InterfaceName, mark: str) -> bool:
        """Delete the bridge if it carries `mark` (ensure_bridge made it) and has no port;
        False when it was left (not ours, still in use, or gone)."""
        ...

    def create_veth(
        self,
        netns_path: str,
        ifname: InterfaceName,
        host_name: InterfaceName,
        bridge: InterfaceName,
        *,
        mtu: int | None = None,
        container_mac: MacAddress | None = None,
        hairpin: bool = False,
        promisc: bool = False,
        port_isolation: bool = False,
        vlan: VlanId | None = None,
        vlan_trunk: Sequence[VlanId] | None = None,
    ) -> tuple[LinkInfo, LinkInfo]:
        """Create a veth pair: `host_name` on `bridge` (up) and `ifname` in the container (down).

        Returns (host end, container end). Raises LinkExists when either name is taken,
        NetnsUnavailable, LinkNotFound for a missing bridge. Atomic: on failure nothing is left.
        The caller undoes it with delete_link(host_name).
        """
        ...

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
        """Addresses, link up, routes; returns once the link (and the bridge port) carry traffic.
        `ipv6=False` gives the interface no IPv6 link-local address (addrgenmode none, set
        before it comes up).

        Raises LinkNotReady when that takes too long or IPv6 DAD fails.
        """
        ...

    def container_view(self, netns_path: str, ifname: InterfaceName) -> ContainerView | None:
        """None when the namespace or the link is gone."""
        ...

    def host_link(self, name: InterfaceName) -> HostLink | None: ...

    def delete_link(self, name: InterfaceName) -> bool:
        """Delete a host link (a veth end takes its peer along). False if it was missing."""
        ...

    def delete_container_link(self, netns_path: str, ifname: InterfaceName) -> bool:
        """False when the namespace or the link is missing; never raises for absence."""
        ...

    def link_exists(self, name: InterfaceName) -> bool: ...

    def host_links_with_prefix(self, prefix: str) -> list[str]: ...

    def bridge_ports(self, bridge: InterfaceName) -> list[InterfaceName]:
        """Names of the links whose master is `bridge` (empty if the bridge is missing)."""
        ...

    def set_forwarding(self, v4: bool, v6: bool) -> None: ...

    def set_route_localnet(self, bridge: InterfaceName) -> None: ...

    def set_sysctl(self, path: str, value: str) -> None:
        """Write /proc/sys/<path> in the host namespace (`net/ipv4/ip_forward` or dotted)."""
        ...

    def get_sysctl(self, path: str) -> str | None:
        """Read /proc/sys/<path> in the host namespace; None when it does not exist."""
        ...

    def link_addrs(self, name: InterfaceName) -> list[IPInterface]:
        """The addresses on a host link (none when it is missing)."""
        ...

    def attach_port(self, port: InterfaceName, bridge: InterfaceName, hairpin: bool) -> None:
        """Put host link `port` on `bridge` (up, hairpin as given): a veth whose bridge was
        deleted and created again. Raises LinkNotFound for either missing."""
        ...

    def close(self) -> None: ...
