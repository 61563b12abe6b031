"""Applies cni-bridge's firewall through libnftables' JSON API: the real `FirewallOps` (ops.py)
and the only importer of `nftables`. Every ADD, DEL and GC is one transaction (one libnftables
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

import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from cni_bridge.errors import INTERNAL, INVALID_CONFIG, PORT_CONFLICT, CNIError
from cni_bridge.firewall import layout, listing, ports, rules
from cni_bridge.firewall.layout import Json
from cni_bridge.firewall.model import (
    AttachmentFw,
    Element,
    FirewallError,
    FirewallView,
    ForeignChain,
    ForeignView,
    InvalidConfig,
    IPAddress,
    NetworkFw,
    PortConflict,
    TableView,
)

if TYPE_CHECKING:
    from cni_bridge.firewall.ops import FirewallOps

log = logging.getLogger(__name__)


class NftablesError(CNIError):
    def __init__(self, what: str, error: str) -> None:
        super().__init__(INTERNAL, f"nftables: {what} failed", error.strip())
        self.error = error


@contextmanager
def _cni_codes() -> Iterator[None]:
    """The pure layer's refusals as the CNI errors the runtime sees, messages unchanged."""
    try:
        yield
    except PortConflict as exc:
        raise CNIError(PORT_CONFLICT, str(exc)) from exc
    except InvalidConfig as exc:
        raise CNIError(INVALID_CONFIG, str(exc)) from exc


# ---------------------------------------------------------------- the firewall


def _new_context() -> Any:
    import nftables

    nft = nftables.Nftables()
    # JSON input is parsed only when JSON output is on (1.0.6).
    nft.set_json_output(True)
    nft.set_handle_output(True)
    return nft


# This process's context: (pid, context). A resident worker serves several requests one after
# the other and keeps it (its creation costs ~1.2 ms); the pid check keeps a forked child from
# using its parent's netlink socket.
_process_context: tuple[int, Any] | None = None


def process_context() -> Any:
    global _process_context
    pid = os.getpid()
    if _process_context is None or _process_context[0] != pid:
        _process_context = (pid, _new_context())
    return _process_context[1]


def prepare() -> None:
    """Create this process's libnftables context ahead of its first request (a resident's
    pooled worker does this while it waits for one)."""
    process_context()


class Firewall:
    def __init__(self, nft: Any = None) -> None:
        self._nft = nft  # an nftables.Nftables, created on first use
        self._drift = False

    def _ctx(self) -> Any:
        if self._nft is None:
            self._nft = process_context()
        return self._nft

    def _call(self, what: str, cmds: Sequence[Json]) -> list[list[Json]]:
        """One libnftables call; returns the "nftables" arrays it printed (one per list)."""
        rc, out, err = self._ctx().cmd(json.dumps({"nftables": list(cmds)}))
        if rc != 0:
            raise NftablesError(what, str(err))
        docs: list[list[Json]] = []
        decoder = json.JSONDecoder()
        text, pos = str(out), 0
        while True:
            while pos < len(text) and text[pos].isspace():
                pos += 1
            if pos >= len(text):
                return docs
            doc, pos = decoder.raw_decode(text, pos)
            docs.append(list(doc.get("nftables", [])))

    def _list(self, what: str, cmd: Json) -> list[Json]:
        # One list command per call: libnftables 1.0.6 builds one cache filter for a
        # whole batch, so a second list in the same call sees only the first's table.
        (doc,) = self._call(what, [{"list": cmd}])
        return doc

    @contextmanager
    def _terse(self) -> Iterator[None]:
        """Listings without set elements (honoured by `list ruleset`, not `list table`)."""
        ctx = self._ctx()
        ctx.set_terse_output(True)
        try:
            yield
        finally:
            ctx.set_terse_output(False)

    def apply(self, cmds: Sequence[Json], what: str = "transaction") -> None:
        """Run the commands as one atomic transaction (nothing to do: no call)."""
        if cmds:
            self._call(what, cmds)

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

    # ------------------------------------------------------------ macspoofchk

    def add_macspoof(self, port: str, mac: str) -> None:
        """Guard host veth `port`: only frames from `mac` enter the bridge through it."""
        from cni_bridge.firewall import macspoof

        self.apply(
            macspoof.add(port, mac, with_layout=not self._has_macspoof_table()),
            f"macspoofchk of {port}",
        )

    def del_macspoof(self, port: str, mac: str) -> None:
        from cni_bridge.firewall import macspoof

        if not self._has_macspoof_table():  # nothing to remove, and nothing to create
            return
        if mac:
            self.apply(macspoof.delete(port, mac), f"macspoofchk removal of {port}")
            return
        for attempt in (1, 2):  # the MAC is unknown: read what the port allows
            guarded, allowed = self._macspoof_listing()
            mine = [(p, m) for p, m in allowed if p == port]
            try:
                self.apply(macspoof.delete_ports({port} & guarded, mine),
                           f"macspoofchk removal of {port}")
                return
            except NftablesError:
                if attempt == 2:  # else changed meanwhile: read again
                    raise

    def _macspoof_listing(self) -> tuple[set[str], list[tuple[str, str]]]:
        from cni_bridge.firewall import macspoof

        try:
            table = {"table": {"family": macspoof.FAMILY, "name": macspoof.TABLE}}
            return macspoof.guarded(self._list("listing the macspoofchk table", table))
        except NftablesError as exc:
            if "No such file or directory" in exc.error:
                return set(), []
            raise

    def gc_macspoof(self, port_exists: Callable[[str], bool]) -> list[str]:
        from cni_bridge.firewall import macspoof

        try:
            if not self._has_macspoof_table():
                return []
            guarded, allowed = self._macspoof_listing()
        except NftablesError as exc:
            return [f"{exc.msg}: {exc.details}"]
        gone = {p for p in guarded | {p for p, _ in allowed} if not port_exists(p)}
        stale = [(p, m) for p, m in allowed if p in gone]
        try:
            self.apply(macspoof.delete_ports(gone & guarded, stale),
                       "GC of macspoofchk guards")
        except NftablesError as exc:
            return [f"{exc.msg}: {exc.details}"]
        return []

    def _has_macspoof_table(self) -> bool:
        from cni_bridge.firewall import macspoof

        return self._has_bridge_chain(macspoof.CHAIN)

    # ------------------------------------------------------------ ipspoofchk

    def add_ipspoof(
        self,
        net: NetworkFw,
        att: AttachmentFw,
        port: str,
        addrs: Sequence[IPAddress],
        *,
        relayout: bool = False,
    ) -> None:
        """Guard host veth `port`: frames through it carry only `addrs` as their source."""
        from cni_bridge.firewall import ipspoof
        from cni_bridge.firewall.elements import attachment_comment

        if relayout or not self._has_bridge_chain(ipspoof.CHAIN):
            self._apply_text(ipspoof.layout(), "ipspoofchk layout")
        comment = attachment_comment(net, att)
        self.apply(ipspoof.add(port, addrs, comment), f"ipspoofchk of {port}")

    def del_ipspoof(self, port: str, addrs: Sequence[IPAddress], *, thorough: bool = False) -> None:
        """Idempotent. `thorough`: every element of the port, whatever its addresses (the
        record that lists them may be lost)."""
        from cni_bridge.firewall import ipspoof

        if not self._has_bridge_chain(ipspoof.CHAIN):
            return  # nothing to remove, and nothing to create
        if thorough:  # what the kernel holds for the port, read (a key deleted twice fails)
            cmds = ipspoof.delete_elements(ipspoof.of_port(self._ipspoof_sets(), port))
        else:
            cmds = ipspoof.delete(port, addrs)
        self.apply(cmds, f"ipspoofchk removal of {port}")

    def check_ipspoof(self, port: str, addrs: Sequence[IPAddress]) -> list[str]:
        from cni_bridge.firewall import ipspoof

        if not self._has_bridge_chain(ipspoof.CHAIN):
            return [f"ipspoofchk chain {ipspoof.FAMILY} {ipspoof.TABLE} {ipspoof.CHAIN} is missing"]
        # One `get` per element: libnftables 1.0.6 still loads the set's elements for each
        # (~13 ms at 1000 ports; listing the table instead costs ~0.3 s there).
        missing = []
        for message, command in ipspoof.lookups(port, addrs):
            rc, _out, err = self._ctx().cmd(command)
            if rc != 0:
                if "No such file or directory" not in str(err):
                    raise NftablesError("ipspoofchk CHECK", str(err))
                missing.append(message)
        return missing

    def _gc_ipspoof(self, net: NetworkFw, keep_tags: set[str]) -> list[str]:
        from cni_bridge.firewall import ipspoof

        try:
            if not self._has_bridge_chain(ipspoof.CHAIN):
                return []
            stale = ipspoof.stale(self._ipspoof_sets(), net.name, keep_tags)
            self.apply(ipspoof.delete_elements(stale), f"ipspoofchk GC of network {net.name}")
        except NftablesError as exc:
            return [f"{exc.msg}: {exc.details}"]
        return []

    def _ipspoof_sets(self) -> dict[str, list[Element]]:
        from cni_bridge.firewall import ipspoof

        table = {"table": {"family": ipspoof.FAMILY, "name": ipspoof.TABLE}}
        return listing.parse_sets(
            self._list("listing the bridge table", table), ipspoof.FAMILY, ipspoof.TABLE
        )

    def _has_bridge_chain(self, name: str) -> bool:
        from cni_bridge.firewall import macspoof

        return any(
            "chain" in o
            and o["chain"].get("family") == macspoof.FAMILY
            and o["chain"].get("table") == macspoof.TABLE
            and o["chain"].get("name") == name
            for o in self._list("listing chains", {"chains": None})
        )

    def _apply_text(self, text: str, what: str) -> None:
        """Native nft syntax, for what libnftables 1.0.6's JSON cannot say (a `typeof` set);
        its JSON parser hands anything that is not JSON to the native one."""
        rc, _out, err = self._ctx().cmd(text)
        if rc != 0:
            raise NftablesError(what, str(err))

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
