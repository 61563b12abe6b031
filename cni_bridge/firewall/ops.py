"""The firewall side effects the commands need, as a Protocol the unit tests can fake.

Standard library only: importing this module must not pull in libnftables. `nft.Firewall` is
the real implementation (tests/unit/fakes.py holds the fake). Every method is one libnftables
transaction or a read; none of them changes links, addresses or routes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from cni_bridge.firewall.layout import Json
from cni_bridge.firewall.model import AttachmentFw, FirewallView, ForeignChain, IPAddress, NetworkFw


class FirewallOps(Protocol):
    def add_attachment(self, net: NetworkFw, att: AttachmentFw) -> None:
        """Ensure the static layout and the network's elements and publish the attachment's
        port mappings, all in one transaction. Idempotent. Raises CNIError(PORT_CONFLICT)
        naming the owner of a host port that is taken. The caller undoes it with
        del_attachment."""
        ...

    def del_attachment(
        self, net: NetworkFw, att: AttachmentFw, last_in_network: bool, *, thorough: bool = False
    ) -> None:
        """Delete the attachment's elements; when last_in_network also the network's own
        elements and its accept rules in foreign chains. Idempotent. `thorough` finds the
        elements by the attachment's tag instead of by the keys `att` lists (its record, and
        with it its port mappings, may be lost)."""
        ...

    def check_attachment(self, net: NetworkFw, att: AttachmentFw) -> list[str]:
        """Human messages of what add_attachment would have put in place and is missing."""
        ...

    def gc(self, net: NetworkFw, keep_tags: set[str]) -> list[str]:
        """Delete the network's attachment elements whose tag is not kept (with none kept,
        the network's own elements too), ipspoofchk's included. Continues past errors and returns them."""
        ...

    def add_macspoof(self, port: str, mac: str) -> None:
        """Only frames from `mac` enter the bridge through host veth `port`. The caller
        undoes it with del_macspoof."""
        ...

    def del_macspoof(self, port: str, mac: str) -> None:
        """Idempotent: a guard already gone is fine. With `mac` "" (a record lost or
        unreadable), every MAC allowed through `port` goes with it."""
        ...

    def gc_macspoof(self, port_exists: Callable[[str], bool]) -> list[str]:
        """Remove the guards of host veths that no longer exist; the failures."""
        ...

    def add_ipspoof(
        self,
        net: NetworkFw,
        att: AttachmentFw,
        port: str,
        addrs: Sequence[IPAddress],
        *,
        relayout: bool = False,
    ) -> None:
        """Frames entering the bridge through host veth `port` carry only `addrs` as their
        IPv4/IPv6 source, ARP sender and ND target (ipspoof.py), elements tagged with `att`'s
        comment. The static chain is written when missing, or always with `relayout` (a sync
        that found a rule missing). The caller undoes it with del_ipspoof."""
        ...

    def del_ipspoof(self, port: str, addrs: Sequence[IPAddress], *, thorough: bool = False) -> None:
        """Idempotent. `thorough` also finds the port's elements whatever their addresses."""
        ...

    def check_ipspoof(self, port: str, addrs: Sequence[IPAddress]) -> list[str]:
        """Human messages of the guard's elements that are missing."""
        ...

    def foreign_forward_drop(self) -> list[ForeignChain]:
        """Other tables' base chains hooked at forward that block what they do not accept:
        policy drop (Docker's) or final drop/reject rules (firewalld's)."""
        ...

    def drift_seen(self) -> bool:
        """Whether this object's last add_attachment, del_attachment (full read) or
        check_attachment saw the ruleset changed behind our back (rules.drifted): the verb
        then has the host synced (converge/trigger.py)."""
        ...

    def observe(self) -> FirewallView:
        """Everything of ours in the ruleset, read in full (the converge package's input)."""
        ...

    def apply(self, cmds: Sequence[Json], what: str = "transaction") -> None:
        """Run libnftables JSON commands as one atomic transaction (a sync's repairs)."""
        ...

    def status(self) -> str | None:
        """None when the firewall can be used here, else the reason."""
        ...
