"""The bridge-family guards of the real firewall: macspoofchk (a port's frames carry only its
MAC) and ipspoofchk (only its addresses), in the `bridge cni_bridge` table (macspoof.py and
ipspoof.py plan them; this applies and reads them)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from cni_bridge.firewall import listing
from cni_bridge.firewall.model import AttachmentFw, Element, IPAddress, NetworkFw
from cni_bridge.firewall.nftcall import NftablesError, NftCalls


class BridgeGuards(NftCalls):
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
