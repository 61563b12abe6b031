"""Applies cni-bridge's firewall through libnftables' JSON API: the real `FirewallOps` (ops.py).
Its calls go through nftcall.py (the only importer of `nftables`); the bridge-family guards
(macspoofchk, ipspoofchk) are guards.py, which it extends. Every ADD, DEL and GC is one transaction (one libnftables
call), planned by the pure functions of rules.py from what the kernel holds right before
(listed here, parsed by listing.py).

Reads are sized so that ADD and DEL cost the same with 1 or 1000 containers:
- ADD reads the layout without set elements (terse listing) and the small per-network
  sets, never the port maps: the kernel itself refuses a conflicting or duplicate port
  inside the transaction. Only if that transaction fails does ADD read everything
  (to name the owner of a taken port, to see the attachment is already in place, or
  to repair), plan again and retry once.
- DEL of one attachment reads only the small specific-address maps and deletes its
  every-address mappings by key, guarded in the transaction by their claims (see
  claims.py); anything unexpected falls back to reading everything.
- the last DEL of a network, GC and CHECK read the whole table.

ADD runs without the network's lock: static chains are written as add+flush+rules (idempotent
and race-free), elements are added idempotently and port claims are refused by the kernel.
DEL decides "last attachment of the network" under the network's lock.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from cni_bridge.errors import INVALID_CONFIG, PORT_CONFLICT, CNIError
from cni_bridge.firewall import layout, listing, ports, rules
from cni_bridge.firewall.guards import BridgeGuards
from cni_bridge.firewall.layout import Json
from cni_bridge.firewall.model import (
    AttachmentFw,
    Element,
    FirewallError,
    FirewallView,
    ForeignChain,
    ForeignView,
    InvalidConfig,
    NetworkFw,
    PortConflict,
    TableView,
)
from cni_bridge.firewall.nftcall import NftablesError
from cni_bridge.log import getLogger

TYPE_CHECKING = False
if TYPE_CHECKING:
    from cni_bridge.firewall.ops import FirewallOps

log = getLogger(__name__)


class _cni_codes:
    """The pure layer's refusals as the CNI errors the runtime sees, messages unchanged. A
    class, not a contextlib.contextmanager: contextlib stays off the exec path."""

    __slots__ = ()

    def __enter__(self) -> None:
        pass

    def __exit__(self, typ: object, exc: BaseException | None, tb: object) -> None:
        if isinstance(exc, PortConflict):
            raise CNIError(PORT_CONFLICT, str(exc)) from exc
        if isinstance(exc, InvalidConfig):
            raise CNIError(INVALID_CONFIG, str(exc)) from exc


class Firewall(BridgeGuards):
    def _foreign(self, chains: Sequence[Json], listed: Sequence[Json] = ()) -> list[ForeignView]:
        """The foreign forward chains that block (foreign.py) or hold rules of ours."""
        out = []
        for c in listing.parse_forward_chains(chains):
            rows: Sequence[Json] = listed
            if c.family != layout.FAMILY or not listed:
                cmd = {"chain": {"family": c.family, "table": c.table, "name": c.name}}
                rows = self._list("listing a foreign forward chain", cmd)
            fv = listing.parse_foreign_rules(c, rows)
            if fv.blocking or any(r.comment.startswith(rules.FOREIGN_TAG) for r in fv.rules):
                out.append(fv)
        return out

    def read(self) -> tuple[TableView, list[ForeignView]]:
        """Everything: our table with all elements, and the foreign forward chains that block
        or hold rules of ours, with their rules."""
        chains = self._list("listing chains", {"chains": None})
        view = TableView()
        if any(listing.is_ours(o["chain"]) for o in chains if "chain" in o):
            try:
                table = {"table": {"family": layout.FAMILY, "name": layout.TABLE}}
                view = listing.parse_table(self._list("listing our table", table))
            except NftablesError as exc:
                if "No such file or directory" not in exc.error:  # gone meanwhile: empty
                    raise
        return view, self._foreign(chains)

    def _read_for_add(
        self, net: NetworkFw, att: AttachmentFw
    ) -> tuple[TableView, list[ForeignView]] | None:
        """The layout and the small per-network sets this ADD needs (rules.reads_for_add);
        None when our table is missing."""
        chains = self._list("listing chains", {"chains": None})
        if not any(listing.is_ours(o["chain"]) for o in chains if "chain" in o):
            return None
        with self._terse():
            inet = self._list("listing inet tables", {"ruleset": {"family": layout.FAMILY}})
        view = listing.parse_table(inet)
        foreign = self._foreign(chains, inet)
        sets, families = rules.reads_for_add(net, att, bool(rules.blocking(foreign)))
        for name in layout.NETWORK_SETS:
            if name in view.sets and name in sets:
                cmd = {"set": {"family": layout.FAMILY, "table": layout.TABLE, "name": name}}
                listing.parse_table(self._list("listing a set", cmd), view)
        if all(layout.PUB[(fam, True)].port in view.sets for fam in families):
            self._read_specific(view, families)
        return view, foreign

    def _read_specific(self, view: TableView, families: Iterable[int] = (4, 6)) -> None:
        """The specific-address maps into view: few elements, unlike the others."""
        for fam in families:
            for name in (layout.PUB[(fam, True)].addr, layout.PUB[(fam, True)].port):
                cmd = {"map": {"family": layout.FAMILY, "table": layout.TABLE, "name": name}}
                listing.parse_table(self._list("listing a map", cmd), view)

    # ------------------------------------------------------------ public API

    def add_attachment(self, net: NetworkFw, att: AttachmentFw) -> None:
        """Ensure the layout and the network's elements and publish the attachment's
        ports, in one transaction. Raises CNIError(PORT_CONFLICT) naming the owner of
        a host port that is taken."""
        with _cni_codes():
            rules.validate(net, att)
            entries = None
            fast = self._read_for_add(net, att)
            self._drift = fast is None or rules.drifted(net, *fast)
            if fast is not None:
                cmds, entries = rules.plan_add(net, att, *fast)
                try:
                    self.apply(cmds, f"ADD of {att.owner}")
                except NftablesError as exc:
                    log.debug("fast ADD refused, reading everything: %s", exc.error.strip())
                    entries = None
            for attempt in (1, 2):
                if entries is not None:
                    break
                cmds, entries = rules.plan_add(net, att, *self.read())
                try:
                    self.apply(cmds, f"ADD of {att.owner}")
                except NftablesError as exc:
                    if attempt == 2:
                        if "File exists" in exc.error or "resource busy" in exc.error:
                            raise CNIError(
                                PORT_CONFLICT, f"a host port of {att.owner} is already published"
                            ) from exc
                        raise
                    entries = None  # the ruleset changed between read and write: once more
            udp = [e.key for e in entries or [] if e.key.protocol == "udp"]
            if udp:
                self._flush_udp(sorted({k.port for k in udp}), sorted({k.family for k in udp}))

    @staticmethod
    def _flush_udp(udp_ports: list[int], families: list[int]) -> None:
        # Stale entries (a client that sent before the mapping existed) would keep
        # steering its datagrams past the new DNAT. Failure only costs that; log it.
        from cni_bridge.firewall import conntrack

        try:
            conntrack.delete_udp_dport(udp_ports, families)
        except OSError as exc:
            log.warning("could not delete stale UDP conntrack entries: %s", exc)

    def del_attachment(
        self, net: NetworkFw, att: AttachmentFw, last_in_network: bool, *, thorough: bool = False
    ) -> None:
        """Delete the attachment's elements (those carrying its tag); when
        last_in_network also every element of the network and its accept rules in
        foreign chains. Idempotent: what is missing is fine. `thorough` finds them by tag
        in the whole table instead of by the keys `att` lists (for an attachment whose
        record was lost: its mappings are unknown)."""
        with _cni_codes():
            rules.validate(net)
        if not last_in_network and not thorough:
            try:
                entries = ports.expand_mappings(att)
                view = TableView(exists=True)
                if any(e.key.host_ip is not None for e in entries):
                    self._read_specific(view)
                self.apply(rules.plan_del_fast(net, att, view), f"DEL of {att.owner}")
                return
            except (CNIError, FirewallError) as exc:  # a bad record, the table gone, a key taken
                why = exc.details if isinstance(exc, CNIError) and exc.details else str(exc)
                log.debug("fast DEL failed, reading everything: %s", why)
        for attempt in (1, 2):
            view, foreign = self.read()
            self._drift = rules.drifted(net, view, foreign)
            cmds = rules.plan_del(net, {att.tag}, last_in_network, view, foreign)
            try:
                self.apply(cmds, f"DEL of {att.owner}")
                return
            except NftablesError:
                if attempt == 2:
                    raise

    def check_attachment(self, net: NetworkFw, att: AttachmentFw) -> list[str]:
        view, foreign = self.read()
        self._drift = rules.drifted(net, view, foreign)
        with _cni_codes():
            return rules.check(net, att, view, foreign)

    def gc(self, net: NetworkFw, keep_tags: set[str]) -> list[str]:
        """Delete the elements of this network whose tag is not kept; with nothing kept,
        tear the network down. Continues past errors and returns them."""
        with _cni_codes():
            rules.validate(net)
        try:
            view, foreign = self.read()
        except NftablesError as exc:
            return [f"{exc.msg}: {exc.details}"]
        stale = rules.owned_tags(net, view) - keep_tags
        cmds = rules.plan_del(net, stale, not keep_tags, view, foreign)
        errors = self._gc_ipspoof(net, keep_tags)
        try:
            self.apply(cmds, f"GC of network {net.name}")
            return errors
        except NftablesError:
            pass
        for cmd in cmds:  # one by one, so one bad element does not keep the rest
            try:
                self.apply([cmd], f"GC of network {net.name}")
            except NftablesError as exc:
                errors.append(f"{exc.msg}: {exc.details}")
        return errors

    def drift_seen(self) -> bool:
        return self._drift

    def observe(self) -> FirewallView:
        view, foreign = self.read()
        return FirewallView(view, foreign, self._spoofchk(), self._ipspoof_observed())

    def _ipspoof_observed(self) -> dict[str, list[Element]] | None:
        from cni_bridge.firewall import ipspoof

        if not self._has_bridge_chain(ipspoof.CHAIN):
            return None
        try:
            table = {"table": {"family": ipspoof.FAMILY, "name": ipspoof.TABLE}}
            return listing.parse_ipspoof(self._list("listing the bridge table", table))
        except NftablesError:
            return None

    def _spoofchk(self) -> set[tuple[str, str]] | None:
        from cni_bridge.firewall import macspoof

        if not self._has_macspoof_table():
            return None
        try:
            rows = self._list("listing the bridge table", {"table": {"family": macspoof.FAMILY, "name": macspoof.TABLE}})
        except NftablesError:
            return None
        return listing.parse_spoofchk(rows)

    def owned_tags(self, net: NetworkFw) -> set[str]:
        view, _ = self.read()
        return rules.owned_tags(net, view)

    def foreign_forward_drop(self) -> list[ForeignChain]:
        chains = self._list("listing chains", {"chains": None})
        return [fv.chain for fv in self._foreign(chains) if fv.blocking]

    def status(self) -> str | None:
        """None when nftables can be used here, else the reason."""
        try:
            self._list("listing tables", {"tables": None})
        except (OSError, ImportError) as exc:
            return f"libnftables is not usable: {exc}"
        except NftablesError as exc:
            return f"{exc.msg}: {exc.details}"
        return None


def _conforms(fw: Firewall) -> FirewallOps:
    return fw  # mypy checks here that Firewall implements the FirewallOps protocol
