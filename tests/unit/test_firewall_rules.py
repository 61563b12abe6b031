"""The firewall renderers and plans, without root: golden JSON for the transactions,
and a fake libnftables (a tiny in-memory kernel) to drive `Firewall` end to end.

Regenerate the golden files with UPDATE_GOLDEN=1 and review the diff by eye.
"""

from __future__ import annotations

import copy
import inspect
import json
import os
from ipaddress import ip_address, ip_network
from pathlib import Path
from typing import Any

import pytest

from cni_bridge.errors import INVALID_CONFIG, PORT_CONFLICT, CNIError
from cni_bridge.firewall import elements, layout, ports, rules
from cni_bridge.firewall.listing import parse_foreign_drop_chains, parse_table
from cni_bridge.firewall.model import (
    AttachmentFw,
    ForeignChain,
    ForeignView,
    InvalidConfig,
    NetworkFw,
    PortConflict,
    Rule,
    TableView,
    mapping_from_dict,
)
from cni_bridge.firewall.nft import Firewall
from cni_bridge.firewall.ops import FirewallOps
from tests.firewall_json import (
    attachment_from_dict,
    attachment_to_dict,
    fw_net,
    network_from_dict,
    network_to_dict,
    port_map,
)
from tests.unit.fakes import FakeFirewall

GOLDEN = Path(__file__).parent / "golden" / "firewall"

NET = fw_net("netA", "cni0", [ip_network("10.88.0.0/16"), ip_network("fd00:88::/64")], True)
NET_B = fw_net("netB", "cni1", [ip_network("10.89.0.0/24")], False, isolate=False)
ATT = AttachmentFw(
    "a1b2c3",
    "netA/0123456789abcdef/eth0",
    [ip_address("10.88.0.2"), ip_address("fd00:88::2")],
    (
        port_map(8080, 80),
        port_map(5353, 53, "udp", ip_address("192.0.2.1")),
        port_map(9000, 9100, "sctp", host_port_end=9001),
    ),
)
ATT2 = AttachmentFw("d4e5f6", "netA/fedcba/eth0", [ip_address("10.88.0.3")], (port_map(8081, 80),))
ATT_B = AttachmentFw("b0b0b0", "netB/cafe/eth0", [ip_address("10.89.0.2")], (port_map(7000, 7000),))
IPTABLES_FORWARD = ForeignChain("ip", "filter", "FORWARD")


def golden(name: str, data: Any) -> None:
    path = GOLDEN / f"{name}.json"
    text = json.dumps(data, indent=2) + "\n"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"{path} missing: run with UPDATE_GOLDEN=1"
    assert json.loads(path.read_text()) == json.loads(text), f"{path} differs"


# ------------------------------------------------------------------ a fake libnftables


class FakeNft:
    """Just enough of libnftables and the kernel: tables, sets/maps with elements and
    comments, chains with rules and handles; one call is one all-or-nothing batch."""

    def __init__(self) -> None:
        self.tables: dict[tuple[str, str], dict[str, Any]] = {}
        self.handle = 0
        self.writes: list[list[dict[str, Any]]] = []
        self.lists: list[dict[str, Any]] = []
        self.fail_next_write = ""
        self.terse = False

    def set_json_output(self, on: bool) -> None:
        pass

    def set_terse_output(self, on: bool) -> None:
        self.terse = on

    def set_handle_output(self, on: bool) -> None:
        pass

    def cmd(self, text: str) -> tuple[int, str, str]:
        cmds = json.loads(text)["nftables"]
        if all("list" in c for c in cmds):
            self.lists += [c["list"] for c in cmds]
            try:
                return (
                    0,
                    "\n".join(json.dumps({"nftables": self._list(c["list"])}) for c in cmds),
                    "",
                )
            except KeyError:
                return 1, "", "Error: No such file or directory"
        self.writes.append(cmds)
        if self.fail_next_write:
            err, self.fail_next_write = self.fail_next_write, ""
            return 1, "", err
        saved = copy.deepcopy((self.tables, self.handle))
        try:
            for c in cmds:
                self._apply(c)
        except (KeyError, ValueError) as exc:
            self.tables, self.handle = saved
            return 1, "", f"Error: Could not process rule: {exc}"
        return 0, "", ""

    # listing
    def _list(self, what: dict[str, Any]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = [{"metainfo": {"json_schema_version": 1}}]
        if "chains" in what:
            for t in self.tables.values():
                out += [{"chain": c["decl"]} for c in t["chains"].values()]
        elif "tables" in what:
            out += [{"table": {"family": f, "name": n}} for f, n in self.tables]
        elif "table" in what:
            out += self._table(self.tables[(what["table"]["family"], what["table"]["name"])])
        elif "ruleset" in what:
            for (fam, _), t in self.tables.items():
                if fam == (what["ruleset"] or {}).get("family", fam):
                    out += self._table(t, elements=not self.terse)
        elif "set" in what or "map" in what:
            w = what.get("set") or what["map"]
            out += self._sets(self.tables[(w["family"], w["table"])]["sets"][w["name"]])
        elif "chain" in what:
            w = what["chain"]
            c = self.tables[(w["family"], w["table"])]["chains"][w["name"]]
            out += [{"chain": c["decl"]}, *({"rule": r} for r in c["rules"])]
        return out

    def _table(self, t: dict[str, Any], elements: bool = True) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = [{"table": {"family": t["family"], "name": t["name"]}}]
        for s in t["sets"].values():
            out += self._sets(s, elements)
        for c in t["chains"].values():
            out.append({"chain": c["decl"]})
            out += [{"rule": r} for r in c["rules"]]
        return out

    def _sets(self, s: dict[str, Any], elements: bool = True) -> list[dict[str, Any]]:
        kind = "map" if "map" in s["decl"] else "set"
        elems = [self._elem_out(s, e) for e in s["elems"]] if elements else []
        return [{kind: {**s["decl"], "elem": elems} if elems else dict(s["decl"])}]

    @staticmethod
    def _elem_out(s: dict[str, Any], e: dict[str, Any]) -> Any:
        key = {"elem": {"val": e["key"], "comment": e["comment"]}} if e["comment"] else e["key"]
        return [key, e["data"]] if "map" in s["decl"] else key

    # writing
    def _apply(self, c: dict[str, Any]) -> None:
        ((op, body),) = c.items()
        ((kind, obj),) = body.items()
        fam = obj["family"]
        if kind == "table":
            self.tables.setdefault(
                (fam, obj["name"]), {"family": fam, "name": obj["name"], "sets": {}, "chains": {}}
            )
            return
        t = self.tables[(fam, obj["table"])]
        if kind in ("set", "map"):
            t["sets"].setdefault(obj["name"], {"decl": obj, "elems": []})
        elif kind == "chain" and op == "add":
            t["chains"].setdefault(obj["name"], {"decl": obj, "rules": []})
        elif kind == "chain" and op == "flush":
            t["chains"][obj["name"]]["rules"].clear()
        elif kind == "rule" and op in ("add", "insert"):
            self.handle += 1
            rule = {**obj, "handle": self.handle}
            rules_ = t["chains"][obj["chain"]]["rules"]
            if "handle" in obj:  # after (add) or before (insert) the rule of that handle
                at = [r["handle"] for r in rules_].index(obj["handle"])
                rules_.insert(at + (op == "add"), rule)
            else:
                rules_.insert(0, rule) if op == "insert" else rules_.append(rule)
        elif kind == "rule" and op == "delete":
            rules_ = t["chains"][obj["chain"]]["rules"]
            match = [r for r in rules_ if r["handle"] == obj["handle"]]
            if not match:
                raise KeyError(obj["handle"])
            rules_.remove(match[0])
        elif kind == "element":
            s = t["sets"][obj["name"]]
            interval = "interval" in s["decl"].get("flags", [])
            for raw in obj["elem"]:
                data = None
                if isinstance(raw, list):
                    raw, data = raw
                if isinstance(raw, dict) and "elem" in raw:
                    key, comment = raw["elem"]["val"], raw["elem"].get("comment", "")
                else:
                    key, comment = raw, ""
                found = [
                    e
                    for e in s["elems"]
                    if elements.canon(e["key"], interval) == elements.canon(key, interval)
                ]
                if op == "delete":
                    if not found:
                        raise KeyError(f"element {key}")
                    s["elems"].remove(found[0])
                elif found and (op == "create" or found[0]["data"] != data):
                    raise ValueError("File exists")
                elif not found:
                    s["elems"].append({"key": key, "data": data, "comment": comment})
        else:
            raise ValueError(f"unsupported {op} {kind}")

    def add_foreign_drop_chain(self, chain: ForeignChain) -> None:
        self._apply({"add": {"table": {"family": chain.family, "name": chain.table}}})
        decl = {
            "family": chain.family,
            "table": chain.table,
            "name": chain.name,
            "type": "filter",
            "hook": "forward",
            "prio": 0,
            "policy": "drop",
        }
        self._apply({"add": {"chain": decl}})

    def comments(self) -> list[str]:
        out = []
        for t in self.tables.values():
            for s in t["sets"].values():
                out += [e["comment"] for e in s["elems"]]
            for c in t["chains"].values():
                out += [
                    r.get("comment", "")
                    for r in c["rules"]
                    if not r.get("comment", "").startswith("v1 ")
                ]
        return out


@pytest.fixture
def fake() -> FakeNft:
    return FakeNft()


@pytest.fixture
def fw(fake: FakeNft, monkeypatch: pytest.MonkeyPatch) -> Firewall:
    flushed: list[tuple[list[int], list[int]]] = []
    monkeypatch.setattr(
        Firewall, "_flush_udp", staticmethod(lambda ports, fams: flushed.append((ports, fams)))
    )
    firewall = Firewall(fake)
    firewall.flushed = flushed  # type: ignore[attr-defined]
    return firewall


# ------------------------------------------------------------------ golden transactions


def test_golden_layout() -> None:
    golden("layout", layout.render_layout())


def test_golden_first_add() -> None:
    cmds, _ = rules.plan_add(NET, ATT, TableView(), [])
    golden("add_first", cmds)


def fast_view(fw: Firewall, att: AttachmentFw) -> tuple[TableView, list[ForeignView]]:
    read = fw._read_for_add(NET, att)
    assert read is not None
    return read


def test_golden_second_add_touches_only_elements(fake: FakeNft, fw: Firewall) -> None:
    fw.add_attachment(NET, ATT)
    cmds, _ = rules.plan_add(NET, ATT2, *fast_view(fw, ATT2))
    assert all(set(c) <= {"add", "create"} and "element" in next(iter(c.values())) for c in cmds)
    golden("add_second", cmds)


def test_golden_add_behind_foreign_drop(fake: FakeNft, fw: Firewall) -> None:
    fw.add_attachment(NET, ATT2)
    fake.add_foreign_drop_chain(IPTABLES_FORWARD)
    cmds, _ = rules.plan_add(NET, ATT, *fast_view(fw, ATT))
    golden("add_foreign", cmds)


def test_golden_del(fake: FakeNft, fw: Firewall) -> None:
    fake.add_foreign_drop_chain(IPTABLES_FORWARD)
    for net, att in ((NET, ATT), (NET, ATT2), (NET_B, ATT_B)):
        fw.add_attachment(net, att)
    specific = TableView(exists=True)
    fw._read_specific(specific)
    golden("del_one", rules.plan_del_fast(NET, ATT, specific))
    view, foreign = fw.read()
    golden("del_last", rules.plan_del(NET, {ATT.tag}, True, view, foreign))


# ------------------------------------------------------------------ the Firewall, on the fake


def test_each_add_and_del_is_one_transaction(fake: FakeNft, fw: Firewall) -> None:
    fw.add_attachment(NET, ATT)
    fw.add_attachment(NET, ATT2)
    fw.del_attachment(NET, ATT, last_in_network=False)
    assert len(fake.writes) == 3
    assert fw.flushed == [([5353], [4])]  # type: ignore[attr-defined]


def test_add_and_del_never_read_the_growing_maps(fake: FakeNft, fw: Firewall) -> None:
    fw.add_attachment(NET, ATT)
    fake.lists.clear()
    fw.add_attachment(NET, ATT2)
    fw.del_attachment(NET, ATT, last_in_network=False)
    fw.del_attachment(NET, ATT2, last_in_network=False)
    growing = {layout.PORTS, *(layout.PUB[(fam, False)].addr for fam in (4, 6))}
    growing |= {layout.PUB[(fam, False)].port for fam in (4, 6)}
    assert not [w for w in fake.lists if "table" in w]
    assert not [
        w for w in fake.lists if (w.get("set") or w.get("map") or {}).get("name") in growing
    ]
    assert fw.owned_tags(NET) == set()


def test_readd_changes_nothing(fake: FakeNft, fw: Firewall) -> None:
    fw.add_attachment(NET, ATT)
    before = copy.deepcopy(fake.tables)
    fw.add_attachment(NET, ATT)  # the fast transaction is refused, the full plan is empty
    assert fake.tables == before
    assert fw.check_attachment(NET, ATT) == []


def test_stale_del_spares_the_next_owner_of_the_same_ip(fake: FakeNft, fw: Firewall) -> None:
    fw.add_attachment(NET, ATT)
    fw.del_attachment(NET, ATT, last_in_network=False)
    successor = AttachmentFw("n3w", "netA/next/eth0", ATT.ips, ATT.port_mappings)
    fw.add_attachment(NET, successor)
    fw.del_attachment(NET, ATT, last_in_network=False)  # late, repeated DEL of the first
    assert fw.check_attachment(NET, successor) == []
    assert fw.owned_tags(NET) == {"n3w"}


def test_del_removes_exactly_its_tag_and_last_removes_the_network(
    fake: FakeNft, fw: Firewall
) -> None:
    fake.add_foreign_drop_chain(IPTABLES_FORWARD)
    fw.add_attachment(NET, ATT)
    fw.add_attachment(NET, ATT2)
    fw.add_attachment(NET_B, ATT_B)
    assert sorted(c for c in fake.comments() if c.startswith("cni-bridge:")) == [
        "cni-bridge:netA",
        "cni-bridge:netA",
        "cni-bridge:netB",
        "cni-bridge:netB",
    ]
    fw.del_attachment(NET, ATT, last_in_network=False)
    assert fw.owned_tags(NET) == {ATT2.tag}
    assert not [c for c in fake.comments() if ATT.tag in c.split()]
    fw.del_attachment(NET, ATT2, last_in_network=True)
    assert not [c for c in fake.comments() if c.startswith("netA") or c == "cni-bridge:netA"]
    assert fw.owned_tags(NET_B) == {ATT_B.tag}
    assert "cni-bridge:netB" in fake.comments()
    writes = len(fake.writes)
    fw.del_attachment(NET, ATT2, last_in_network=True)  # DEL again: nothing to do, no call
    assert len(fake.writes) == writes


def test_port_conflicts(fw: Firewall) -> None:
    fw.add_attachment(NET, ATT)
    taken = [
        port_map(8080, 81),  # same port, any address
        port_map(8080, 81, host_ip=ip_address("10.0.0.1")),  # specific against any
        port_map(5353, 53, "udp"),  # any against specific
        port_map(5353, 54, "udp", ip_address("192.0.2.1")),
        port_map(8990, 1, "sctp", host_port_end=9000),  # range overlapping a range
    ]
    for pm in taken:
        att = AttachmentFw("zz", "netB/other/eth0", [ip_address("10.89.0.9")], (pm,))
        with pytest.raises(CNIError) as exc:
            fw.add_attachment(NET_B, att)
        assert exc.value.code == PORT_CONFLICT
        assert "is already published by netA/0123456789abcdef/eth0" in exc.value.msg
    free = [
        port_map(8080, 80, "udp"),
        port_map(5353, 53, "udp", ip_address("192.0.2.2")),
        port_map(9002, 1, "sctp"),
    ]
    fw.add_attachment(NET_B, AttachmentFw("zz", "netB/other/eth0", [ip_address("10.89.0.9")], tuple(free)))
    # an IPv6-only container does not clash with an IPv4 "any" mapping... but ATT has IPv6
    with pytest.raises(CNIError, match="tcp/8080"):
        fw.add_attachment(
            NET,
            AttachmentFw("v6", "netA/v6/eth0", [ip_address("fd00:88::9")], (port_map(8080, 1),)),
        )


def test_conflict_message_mentions_host_ip(fw: Firewall) -> None:
    fw.add_attachment(NET, ATT)
    att = AttachmentFw("zz", "netA/x/eth0", [ip_address("10.88.0.9")], (port_map(5353, 1, "udp"),))
    with pytest.raises(
        CNIError,
        match=r"host port udp/5353 is already published by netA/0123456789abcdef/eth0 on 192\.0\.2\.1$",
    ):
        fw.add_attachment(NET, att)


def test_failed_write_is_retried_once_after_a_fresh_read(fake: FakeNft, fw: Firewall) -> None:
    fake.fail_next_write = "Error: Could not process rule: No such file or directory"
    fw.add_attachment(NET, ATT)
    assert len(fake.writes) == 2
    assert fw.check_attachment(NET, ATT) == []


def test_kernel_busy_twice_is_a_port_conflict(
    fake: FakeNft, fw: Firewall, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = fake.cmd

    def busy(text: str) -> tuple[int, str, str]:
        if '"add"' in text:
            fake.writes.append([])
            return 1, "", "Error: Could not process rule: File exists"
        return real(text)

    monkeypatch.setattr(fake, "cmd", busy)
    with pytest.raises(CNIError) as exc:
        fw.add_attachment(NET, ATT)
    assert exc.value.code == PORT_CONFLICT


def test_subnets_learnt_one_add_at_a_time_pair_up(fake: FakeNft, fw: Firewall) -> None:
    first = fw_net("netS", "cni5", [ip_network("10.5.1.0/24")], True)
    second = fw_net("netS", "cni5", [ip_network("10.5.2.0/24")], True)
    fw.add_attachment(first, AttachmentFw("s1", "netS/s1/eth0", [ip_address("10.5.1.2")]))
    fw.add_attachment(second, AttachmentFw("s2", "netS/s2/eth0", [ip_address("10.5.2.2")]))
    view, _ = fw.read()
    pairs = sorted(elements.net_str(k) for k in elements.keys(view, layout.SAME[4]))
    assert pairs == [f"10.5.{a}.0/24 . 10.5.{b}.0/24" for a, b in ((1, 1), (1, 2), (2, 1), (2, 2))]


def test_network_resources_cannot_be_shared(fw: Firewall) -> None:
    fw.add_attachment(NET, ATT)
    same_subnet = fw_net("netC", "cni9", [ip_network("10.88.0.0/16")], True)
    with pytest.raises(CNIError) as exc:
        fw.add_attachment(same_subnet, AttachmentFw("c", "netC/c/eth0", [ip_address("10.88.0.7")]))
    assert exc.value.code == INVALID_CONFIG and "network netA" in exc.value.msg
    same_bridge = fw_net("netC", "cni0", [ip_network("10.90.0.0/16")], True)
    with pytest.raises(CNIError, match="bridge cni0"):
        fw.add_attachment(same_bridge, AttachmentFw("c", "netC/c/eth0", [ip_address("10.90.0.7")]))


def test_check_reports_what_is_missing(fake: FakeNft, fw: Firewall) -> None:
    assert fw.check_attachment(NET, ATT) == [f"nftables table inet {layout.TABLE} is missing"]
    fw.add_attachment(NET, ATT)
    assert fw.check_attachment(NET, ATT) == []
    table = fake.tables[("inet", layout.TABLE)]
    table["sets"]["pub4_port"]["elems"].clear()
    table["sets"]["masq6"]["elems"].clear()
    table["chains"]["guard"]["rules"].clear()
    fake.add_foreign_drop_chain(ForeignChain("inet", "admin", "fwd"))
    msgs = fw.check_attachment(NET, ATT)
    assert "chain guard of table inet cni_bridge does not hold the expected rules" in msgs
    assert "subnet fd00:88::/64 of network netA is missing from set masq6" in msgs
    assert "port mapping host port tcp/8080 -> 10.88.0.2:80 is missing" in msgs
    assert (
        "forward chain inet admin fwd (policy drop) lacks the accept rules of network netA" in msgs
    )
    assert "bridge cni0 of network netA is missing from set strict" in msgs
    # ADD repairs it all, rules of the static chains included
    fw.add_attachment(NET, ATT)
    assert fw.check_attachment(NET, ATT) == []


def test_gc_keeps_listed_tags_and_tears_down_when_none(fake: FakeNft, fw: Firewall) -> None:
    fw.add_attachment(NET, ATT)
    fw.add_attachment(NET, ATT2)
    fw.add_attachment(NET_B, ATT_B)
    assert fw.gc(NET, {ATT2.tag}) == []
    assert fw.owned_tags(NET) == {ATT2.tag}
    assert fw.gc(NET, set()) == []
    assert not [c for c in fake.comments() if c.startswith("netA")]
    assert fw.owned_tags(NET_B) == {ATT_B.tag}


def test_gc_continues_past_errors(
    fake: FakeNft, fw: Firewall, monkeypatch: pytest.MonkeyPatch
) -> None:
    fw.add_attachment(NET, ATT)
    fw.add_attachment(NET, ATT2)
    real = fake.cmd
    calls = {"n": 0}

    def flaky(text: str) -> tuple[int, str, str]:
        if '"delete"' in text:
            calls["n"] += 1
            if calls["n"] <= 2:  # the whole batch, then the first single command
                return 1, "", "Error: boom"
        return real(text)

    monkeypatch.setattr(fake, "cmd", flaky)
    errors = fw.gc(NET, set())
    assert len(errors) == 1 and "boom" in errors[0]
    assert len(fake.comments()) > 0  # what failed is left; the rest went
    monkeypatch.setattr(fake, "cmd", real)
    assert fw.gc(NET, set()) == []
    assert not [c for c in fake.comments() if c.startswith("netA")]


def test_status(fw: Firewall) -> None:
    assert fw.status() is None

    class Broken(FakeNft):
        def cmd(self, text: str) -> tuple[int, str, str]:
            return 1, "", "Error: Operation not permitted"

    assert "Operation not permitted" in (Firewall(Broken()).status() or "")


@pytest.mark.parametrize("impl", [Firewall, FakeFirewall])
def test_implementations_have_the_protocols_signatures(impl: type) -> None:
    # mypy checks Firewall (nft._conforms) but not the tests: this keeps the commands' fake
    # honest, so a test through it calls what the real firewall offers
    methods = [m for m in vars(FirewallOps) if not m.startswith("_")]
    assert "add_attachment" in methods
    for name in methods:
        want = inspect.signature(getattr(FirewallOps, name))
        assert inspect.signature(getattr(impl, name)) == want, name


# ------------------------------------------------------------------ pure pieces


def test_expand_mappings() -> None:
    att = AttachmentFw(
        "t",
        "n/c/eth0",
        [ip_address("10.0.0.2"), ip_address("10.0.0.3"), ip_address("fd00::2")],
        (
            port_map(80, 8080),
            port_map(53, 53, "udp", ip_address("0.0.0.0")),  # any IPv4 address only
            port_map(443, 443, host_ip=ip_address("2001:db8::1")),
            port_map(1000, 2000, host_port_end=1002),
        ),
    )
    got = [str(e) for e in ports.expand_mappings(att)]
    assert got == [
        "host port tcp/80 -> 10.0.0.2:8080",
        "host port tcp/80 -> [fd00::2]:8080",
        "host port udp/53 -> 10.0.0.2:53",
        "host port tcp/443 on 2001:db8::1 -> [fd00::2]:443",
        "host port tcp/1000 -> 10.0.0.2:2000",
        "host port tcp/1001 -> 10.0.0.2:2001",
        "host port tcp/1002 -> 10.0.0.2:2002",
        "host port tcp/1000 -> [fd00::2]:2000",
        "host port tcp/1001 -> [fd00::2]:2001",
        "host port tcp/1002 -> [fd00::2]:2002",
    ]
    v4only = AttachmentFw(
        "t", "o", [ip_address("10.0.0.2")], (port_map(1, 1, host_ip=ip_address("::1")),)
    )
    assert ports.expand_mappings(v4only) == []  # nothing of that family to publish


def test_duplicate_mappings() -> None:
    same = AttachmentFw("t", "o", [ip_address("10.0.0.2")], (port_map(80, 80), port_map(80, 80)))
    assert len(ports.expand_mappings(same)) == 1
    clash = AttachmentFw("t", "o", [ip_address("10.0.0.2")], (port_map(80, 80), port_map(80, 81)))
    with pytest.raises(PortConflict, match="mapped twice"):
        ports.expand_mappings(clash)
    with pytest.raises(CNIError) as exc:  # through the Firewall: the CNI code, same message
        Firewall(FakeNft()).add_attachment(NET, clash)
    assert exc.value.code == PORT_CONFLICT and exc.value.msg == "host port tcp/80 is mapped twice"


def test_del_of_a_bad_record_falls_back_to_deleting_by_tag(fake: FakeNft, fw: Firewall) -> None:
    fw.add_attachment(NET, ATT)
    # the record now lists mappings that cannot be expanded: the fast DEL cannot start
    bad = AttachmentFw(ATT.tag, ATT.owner, ATT.ips, (port_map(80, 80), port_map(80, 81)))
    fw.del_attachment(NET, bad, last_in_network=False)
    assert fw.owned_tags(NET) == set()


@pytest.mark.parametrize(
    ("net", "att", "needle"),
    [
        (NET, AttachmentFw("bad tag", "o", []), "tag"),
        (NET, AttachmentFw("t", "o", [], (port_map(1, 1, host_port_end=5000),)), "more than"),
    ],
)
def test_validation(net: NetworkFw, att: AttachmentFw | None, needle: str) -> None:
    with pytest.raises(InvalidConfig) as refused:
        rules.validate(net, att)
    assert needle in str(refused.value)
    # the Firewall reports it as INVALID_CONFIG with the same message, before any write
    fake = FakeNft()
    with pytest.raises(CNIError) as exc:
        if att is None:
            Firewall(fake).gc(net, set())
        else:
            Firewall(fake).add_attachment(net, att)
    assert exc.value.code == INVALID_CONFIG and exc.value.msg == str(refused.value)
    assert fake.writes == []


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda: fw_net("bad name", "cni0", [], True), "network name"),
        (lambda: fw_net("n" * 65, "cni0", [], True), "at most 64"),
        (lambda: fw_net("n", "bridge-name-too-long", [], True), "longer than 15"),
        (lambda: fw_net("n", "br%d", [], True), "'%'"),
        (lambda: port_map(0, 80), "outside 1-65535"),
        (
            lambda: mapping_from_dict({"hostPort": 80, "containerPort": 80, "hostPortEnd": 79}),
            "below",
        ),
        (
            lambda: mapping_from_dict(
                {"hostPort": 100, "containerPort": 65535, "hostPortEnd": 101}
            ),
            "beyond",
        ),
        (
            lambda: mapping_from_dict({"hostPort": 80, "containerPort": 80, "protocol": "icmp"}),
            "protocol",
        ),
    ],
)
def test_names_and_ports_are_domain_values(make: Any, needle: str) -> None:
    """The firewall takes names and ports as domain.py's types and does not check them again:
    a bad one cannot even be handed to it (config.py refuses it as code 7, tests/unit/test_config.py),
    and a record's mappings are read through the same rules."""
    with pytest.raises(ValueError, match=needle):
        make()


def test_comment_is_bounded() -> None:
    att = AttachmentFw("t" * 48, "n/" + "é" * 200 + "/eth0", [])
    comment = elements.attachment_comment(NET, att)
    assert len(comment.encode()) <= elements.COMMENT_MAX
    assert comment.startswith(f"netA {'t' * 48} n/")


def test_canon_matches_listed_forms() -> None:
    assert elements.canon({"prefix": {"addr": "10.0.0.5", "len": 32}}, True) == elements.canon(
        "10.0.0.5", True
    )
    assert elements.canon({"elem": {"val": {"concat": ["tcp", 80]}}}) == ("tcp", 80)
    assert elements.canon("cni0", True) == "cni0"


def test_parse_foreign_drop_chains() -> None:
    listing = [
        {
            "chain": {
                "family": "ip",
                "table": "filter",
                "name": "FORWARD",
                "hook": "forward",
                "policy": "drop",
            }
        },
        {
            "chain": {
                "family": "ip",
                "table": "filter",
                "name": "INPUT",
                "hook": "input",
                "policy": "drop",
            }
        },
        {
            "chain": {
                "family": "ip6",
                "table": "filter",
                "name": "FORWARD",
                "hook": "forward",
                "policy": "accept",
            }
        },
        {
            "chain": {
                "family": "bridge",
                "table": "f",
                "name": "fwd",
                "hook": "forward",
                "policy": "drop",
            }
        },
        {
            "chain": {
                "family": "inet",
                "table": "cni_bridge",
                "name": "forward",
                "hook": "forward",
                "policy": "drop",
            }
        },
        {
            "chain": {
                "family": "inet",
                "table": "admin",
                "name": "fwd",
                "hook": "forward",
                "policy": "drop",
            }
        },
        {"chain": {"family": "inet", "table": "admin", "name": "regular"}},
    ]
    assert [str(c) for c in parse_foreign_drop_chains(listing)] == [
        "ip filter FORWARD",
        "inet admin fwd",
    ]


def test_published_parses_numeric_protocols() -> None:
    listing: list[dict[str, Any]] = [
        {"table": {"family": "inet", "name": "cni_bridge"}},
        {
            "map": {
                "family": "inet",
                "table": "cni_bridge",
                "name": "pub4_addr",
                "elem": [
                    [{"elem": {"val": {"concat": [132, 99]}, "comment": "n t o"}}, "10.0.0.2"]
                ],
            }
        },
        {
            "map": {
                "family": "inet",
                "table": "cni_bridge",
                "name": "pub4_port",
                "elem": [[{"elem": {"val": {"concat": [132, 99]}, "comment": "n t o"}}, 98]],
            }
        },
    ]
    ((entry, el, _),) = ports.published(parse_table(listing))
    assert str(entry) == "host port sctp/99 -> 10.0.0.2:98"
    assert (el.network, el.tag, el.owner) == ("n", "t", "o")


def test_foreign_rules_are_iptables_compatible() -> None:
    view = ForeignView(IPTABLES_FORWARD, [Rule(7, "something else", [])])
    cmds = rules.foreign_rules(view, NET)
    exprs = [c["add"]["rule"]["expr"] for c in cmds]
    # only meta iifname/oifname and a verdict: iptables-nft can still read the chain
    assert all({"match", "accept"} >= {k for e in ex for k in e} for ex in exprs)
    assert all(c["add"]["rule"]["comment"] == "cni-bridge:netA" for c in cmds)


def test_model_json_round_trip() -> None:
    assert network_from_dict(network_to_dict(NET)) == NET
    assert attachment_from_dict(attachment_to_dict(ATT)) == ATT
    assert attachment_from_dict(
        {
            "tag": "t",
            "owner": "o",
            "ips": [],
            "portMappings": [{"hostPort": 1, "containerPort": 2, "protocol": "UDP", "hostIP": ""}],
        }
    ).port_mappings == (port_map(1, 2, "udp"),)


# ------------------------------------------------------------------ what ADD's fast path reads


def test_add_reads_only_the_sets_of_its_network_and_the_maps_of_its_families() -> None:
    sets, families = rules.reads_for_add(NET_B, ATT_B, strict=False)
    assert sets == {layout.BRIDGES, layout.BRIDGE_SELF, layout.SAME[4]}  # no masq, no isolation
    assert families == {4}
    sets, families = rules.reads_for_add(NET, ATT, strict=True)
    assert sets == {
        layout.BRIDGES,
        layout.BRIDGE_SELF,
        layout.ISOLATED,
        layout.STRICT,
        *layout.MASQ.values(),
        *layout.SAME.values(),
    }
    assert families == {4, 6}
    no_ports = AttachmentFw("e0e0e0", "netA/none/eth0", [ip_address("10.88.0.9")], ())
    assert rules.reads_for_add(NET, no_ports, strict=False)[1] == set()


def test_a_second_add_of_a_v4_network_lists_only_what_it_needs(fake: FakeNft, fw: Firewall) -> None:
    fw.add_attachment(NET_B, ATT_B)
    fake.lists.clear()
    other = AttachmentFw(
        "b1b1b1", "netB/beef/eth0", [ip_address("10.89.0.3")], (port_map(7001, 80),)
    )
    fw.add_attachment(NET_B, other)
    listed = {next(iter(c.values()))["name"] for c in fake.lists if "set" in c or "map" in c}
    assert listed == {
        layout.BRIDGES,
        layout.BRIDGE_SELF,
        layout.SAME[4],
        *layout.PUB[(4, True)],
    }
    assert {"chains", "ruleset"} <= {k for c in fake.lists for k in c}
    assert other.tag in json.dumps(fake.writes[-1])  # and the transaction went through


# ------------------------------------------------------------------ nonMasqueradeCIDRs


NET_K = fw_net(
    "kube",
    "cni0",
    [ip_network("10.244.1.0/24"), ip_network("fd00:10:244:1::/64")],
    True,
    non_masq=[
        ip_network("10.244.0.0/16"),
        ip_network("10.244.7.0/24"),  # inside the first: collapsed away
        ip_network("192.168.50.0/24"),
        ip_network("fd00:10:244::/56"),
    ],
)


def test_non_masquerade_cidrs_are_pairs_with_the_subnets() -> None:
    keys = elements.network_keys(NET_K, strict=False)

    def pairs(name: str) -> list[tuple[str, str]]:
        canon = [elements.canon(k, True) for k in keys[name]]
        assert all(isinstance(c, tuple) and len(c) == 2 for c in canon)
        return [(str(c[0]), str(c[1])) for c in canon if isinstance(c, tuple)]

    assert pairs("nomasq4") == [
        ("10.244.1.0/24", "10.244.0.0/16"),
        ("10.244.1.0/24", "192.168.50.0/24"),
    ]
    assert pairs("nomasq6") == [("fd00:10:244:1::/64", "fd00:10:244::/56")]
    # without ipMasq nothing is masqueraded, so there is nothing to exempt
    plain = fw_net(NET_K.name, NET_K.bridge, NET_K.subnets, False, non_masq=NET_K.non_masq)
    assert not {"nomasq4", "nomasq6"} & set(elements.network_keys(plain, strict=False))


def test_masquerade_rule_skips_the_non_masquerade_pairs() -> None:
    (chain,) = [c for c in layout.STATIC_CHAINS if c.name == "postrouting"]
    for fam in (4, 6):
        (expr,) = [e for c, e in chain.rules if c.startswith(f"v1 masq{fam}:")]
        assert {
            "match": {"op": "!=", "left": expr[2]["match"]["left"], "right": f"@nomasq{fam}"}
        } in expr


def test_non_masquerade_cidrs_add_and_del_touch_only_elements(fake: FakeNft, fw: Firewall) -> None:
    att = AttachmentFw("k1", "kube/c1/eth0", [ip_address("10.244.1.2")], ())
    att2 = AttachmentFw("k2", "kube/c2/eth0", [ip_address("10.244.1.3")], ())
    fw.add_attachment(NET_K, att)
    sets = fake.tables[("inet", "cni_bridge")]["sets"]
    assert len(sets["nomasq4"]["elems"]) == 2 and len(sets["nomasq6"]["elems"]) == 1
    fake.writes.clear()
    fw.add_attachment(NET_K, att2)
    fw.del_attachment(NET_K, att2, last_in_network=False)
    assert all("element" in next(iter(c.values())) for w in fake.writes for c in w)
    fw.del_attachment(NET_K, att, last_in_network=True)
    assert not sets["nomasq4"]["elems"] and not sets["nomasq6"]["elems"]


def test_model_round_trip_keeps_non_masquerade_cidrs() -> None:
    assert network_from_dict(network_to_dict(NET_K)) == NET_K
    old = network_to_dict(NET)
    del old["nonMasqueradeCIDRs"]  # a record written before the field existed
    assert network_from_dict(old).non_masq == ()


def test_a_foreign_chain_is_its_family_table_and_name() -> None:
    # Its policy is what a read saw, not part of which chain it is (as compare=False was).
    seen = ForeignChain("ip", "filter", "FORWARD", "accept")
    assert seen == IPTABLES_FORWARD
    assert not (seen != IPTABLES_FORWARD)  # noqa: SIM202 (tuple has its own __ne__)
    assert hash(seen) == hash(IPTABLES_FORWARD) and len({seen, IPTABLES_FORWARD}) == 1
    assert seen != ForeignChain("ip6", "filter", "FORWARD", "accept")
    assert str(seen) == "ip filter FORWARD" and seen.policy == "accept"
