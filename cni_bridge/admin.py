"""Operator commands: `cni-bridge ls`, `cni-bridge status`, `cni-bridge gc`.

They read the records that ADD writes beside host-local's reservations, so they need no runtime
and no config files: each network's config is saved with its records at ADD.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cni_bridge.domain import DEFAULT_DATA_DIR
from cni_bridge.errors import CNIError
from cni_bridge.netconf import NetConf, load_netconf
from cni_bridge.state import (
    HOST_VETH_PREFIX,
    Attachment,
    StateStore,
    Unusable,
    attachment_tag,
    stand_in,
    unusable_files,
)

if TYPE_CHECKING:
    from cni_bridge.converge.planner import Plan


def networks(data_dir: str, only: str | None) -> Iterator[tuple[str, StateStore]]:
    from cni_bridge.converge.desired import stores

    return stores(data_dir, only)


def _row(att: Attachment, alive: bool) -> dict[str, Any]:
    ports = [
        f"{pm.get('hostIP', '')}:{pm['hostPort']}->{pm['containerPort']}/{pm.get('protocol', 'tcp')}"
        for pm in att.port_mappings
    ]
    return {
        "network": att.network,
        "containerID": att.container_id,
        "ifname": att.ifname,
        "addresses": att.ips,
        "hostVeth": att.host_veth,
        "bridge": att.bridge,
        "ports": ports,
        "phase": att.phase,
        "netns": att.netns,
        "netnsAlive": alive,
    }


def _unusable_row(network: str, u: Unusable, alive: bool) -> dict[str, Any]:
    """A file that is not a usable record: set aside (kept for the operator) or to be set
    aside by the network's next DEL or GC. Same columns as an attachment's row, plus the file."""
    return {
        "network": network,
        "containerID": "",
        "ifname": "",
        "addresses": [],
        "hostVeth": HOST_VETH_PREFIX + u.tag if u.tag else "",
        "bridge": "",
        "ports": [],
        "phase": "unreadable" if u.reason else "set-aside",
        "netns": "",
        "netnsAlive": alive,
        "file": u.path,
        "problem": u.reason,
    }


def unusable(data_dir: str, only: str | None) -> list[tuple[str, Unusable]]:
    """(network, file) for every record or reservation file that cannot be used."""
    out = []
    for name, st in networks(data_dir, only):
        net_dir = os.path.dirname(st.dir)
        out += [(name, u) for u in unusable_files(net_dir)]
        from cni_bridge.ipam.disk import DiskStore

        out += [(name, Unusable(p, "reservation with no readable owner"))
                for p in DiskStore(name, data_dir).unreadable()]
    return out


def cmd_ls(args: argparse.Namespace) -> int:
    from cni_bridge.commands.deps import real_deps
    from cni_bridge.liveness import Liveness

    deps = real_deps({})
    try:
        live = Liveness(deps.net)
        rows = [
            _row(a, live.alive(a))
            for _, st in networks(args.data_dir, args.network)
            for a in st.all()
        ]
        rows += [
            _unusable_row(net, u, bool(u.tag) and live.alive(stand_in(net, u.tag)))
            for net, u in unusable(args.data_dir, args.network)
        ]
    finally:
        deps.close()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'NETWORK':<16} {'CONTAINER':<14} {'IF':<6} {'ADDRESSES':<34} {'VETH':<16} {'PORTS':<24} STATE")
    for r in rows:
        if "file" in r:
            what = f"{r['phase']}: {r['file']}" + (f" ({r['problem']})" if r["problem"] else "")
            print(f"{r['network']:<16} {'?':<14} {'?':<6} {'?':<34} {r['hostVeth'] or '-':<16} "
                  f"{'?':<24} {what}")
            continue
        state = r["phase"] if r["netnsAlive"] else f"{r['phase']} (netns gone)"
        print(
            f"{r['network']:<16} {r['containerID'][:14]:<14} {r['ifname']:<6} "
            f"{','.join(r['addresses']):<34} {r['hostVeth']:<16} {','.join(r['ports']) or '-':<24} {state}"
        )
    return 0


def _conf(st: StateStore) -> NetConf | None:
    raw = st.load_network()
    if raw is None:
        return None
    try:
        return load_netconf(raw)
    except CNIError:
        return None


def cmd_status(args: argparse.Namespace) -> int:
    from cni_bridge.commands.deps import real_deps
    from cni_bridge.commands.status import problems
    from cni_bridge.liveness import Liveness
    from cni_bridge.ports import control, report

    holder = control.status()
    out = []
    worst = 0
    for name, st in networks(args.data_dir, args.network):
        conf = _conf(st)
        atts = st.all()
        deps = real_deps({})
        try:
            live = Liveness(deps.net)
            entry: dict[str, Any] = {
                "network": name,
                "attachments": len(atts),
                "stale": sum(1 for a in atts if not live.alive(a)),
            }
            bad = [u.path for _, u in unusable(args.data_dir, name)]
            if bad:
                entry["unusableFiles"] = bad
            if conf is not None:
                fatal, limited = problems(conf, deps)
                entry.update(bridge=conf.bridge, fatal=fatal, limited=limited)
                entry["foreignDropChains"] = [str(c) for c in deps.firewall.foreign_forward_drop()]
                from cni_bridge.ipam.allocator import free_count
                from cni_bridge.ipam.disk import DiskStore, StoreUnusable

                sets = conf.effective_range_sets()
                if conf.ipam.type == "host-local":
                    with contextlib.suppress(StoreUnusable):  # problems() named it
                        entry["free"] = free_count(DiskStore(name, args.data_dir), sets)
            entry["heldPorts"] = report.held_ports(name, holder)
            if conf is not None:
                entry["limited"] += report.problems(entry["heldPorts"])
        finally:
            deps.close()
        if conf is not None:
            worst = max(worst, 2 if entry["fatal"] else 1 if entry["limited"] else 0)
        if entry.get("unusableFiles"):
            worst = max(worst, 1)
        out.append(entry)
    look = _drift(args)
    for e in out:
        e["drift"] = look.plan.drift_of(e["network"]) if look.plan else []
        e["unreadable"] = [u for u in look.unreadable if u.startswith(f"network {e['network']}:")]
        e["healing"] = look.healing
        if e["drift"] or e["unreadable"]:
            worst = 2 if worst == 2 else 3
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        for e in out:
            health = "unavailable: " + "; ".join(e["fatal"]) if e.get("fatal") else (
                "limited: " + "; ".join(e["limited"]) if e.get("limited") else "ok"
            )
            if e["drift"] or e["unreadable"]:
                health += f"; differs from its records ({len(e['drift']) + len(e['unreadable'])})"
            print(
                f"{e['network']}: bridge {e.get('bridge', '?')}, {e['attachments']} attachments "
                f"({e['stale']} with netns gone), free addresses per range set {e.get('free', '?')}, "
                f"foreign forward-drop chains given accept rules: {e.get('foreignDropChains') or 'none'}; {health}"
            )
            held = e["heldPorts"]
            print(f"  published ports: held by pid {held['holderPid']}" if held["agent"] else f"  {held['note']}")
            for path in e.get("unusableFiles", []):
                print(f"{e['network']}: unusable file (see `cni-bridge ls`): {path}")
            for line in e["drift"]:
                print(f"  drift: {line}")
            for line in e["unreadable"]:
                print(f"  unreadable: {line}")
        print(f"healing: {look.healing}")
    return worst


@dataclass
class _Look:
    plan: Plan | None
    unreadable: list[str]
    healing: str


def _drift(args: argparse.Namespace) -> _Look:
    """Desired (the records) against actual (the host): what `cni-bridge sync` would heal."""
    from cni_bridge.commands.deps import real_deps
    from cni_bridge.converge import watch
    from cni_bridge.converge.sync import look

    deps = real_deps({})
    try:
        want, plan = look([args.data_dir], deps, args.network)
    except CNIError as exc:
        return _Look(None, [f"cannot compare with the host: {exc.msg}"], watch.healing())
    finally:
        deps.close()
    # Unreadable records are in unusableFiles already (state.unusable_files).
    return _Look(plan, want.unconfigured, watch.healing())


def cmd_gc(args: argparse.Namespace) -> int:
    from cni_bridge.commands.common import NetworkStores
    from cni_bridge.commands.deps import real_deps
    from cni_bridge.commands.gc import collect
    from cni_bridge.liveness import Liveness

    failed = False
    for name, st in networks(args.data_dir, args.network):
        conf = _conf(st)
        if conf is None:
            print(f"{name}: no readable network config saved; skipped", file=sys.stderr)
            continue
        stale: list[Attachment] = []
        deps = real_deps({})
        live = Liveness(deps.net)

        def alive_tag(tag: str, net: str = name, live: Liveness = live) -> bool:
            return live.alive(stand_in(net, tag))

        def valid(
            stores: NetworkStores, stale: list[Attachment] = stale, live: Liveness = live,
            alive_tag: Callable[[str], bool] = alive_tag,
        ) -> set[tuple[str, str]]:
            # Decided under the network's lock: an ADD recorded a moment ago counts.
            atts, bad = stores.state.scan()
            stale.extend(a for a in atts if not a.add_in_progress() and not live.alive(a))
            dead = {a.key for a in stale}
            # An unreadable record's attachment is judged by its veth: its reservations (found
            # by the tag their owner derives) go with it when that is gone.
            dead_tags = {b.tag for b in bad if b.tag and not alive_tag(b.tag)}
            # Reservations no record of ours describes belong to another plugin sharing the
            # directory: a manual GC removes only what it knows is dead.
            owners = {o for o in stores.ipam.reservations().values()
                      if attachment_tag(stores.state.network, *o) not in dead_tags}
            return ({a.key for a in atts} | owners) - dead

        try:
            env = {"CNI_PATH": os.environ.get("CNI_PATH", "")}
            errors = collect(conf, valid, deps, env, b"", alive_tag)
        finally:
            deps.close()
        print(f"{name}: removed {len(stale)} attachment(s) whose netns is gone")
        for e in errors:
            failed = True
            print(f"{name}: {e}", file=sys.stderr)
    return 1 if failed else 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["sync"]:
        from cni_bridge.converge.sync import main as sync_main

        return sync_main(argv[1:])
    args = build_parser().parse_args(argv)
    result: int = args.fn(args)
    return result


_DESCRIPTIONS = {
    "ls": "List the attachments the records hold: network, container, interface, addresses, "
    "host veth, ports, alive or not (as the kernel tells).",
    "status": "Each network's attachments and free addresses, whether the firewall is usable, "
    "and every difference between the records and the host (drift: our table, its elements, "
    "the 127.0.0.0/8 guard, accept rules in foreign forward chains, bridges, sysctls, guards) "
    "and whether the agent heals it by itself. Exit 2 when a network cannot take attachments, "
    "else 3 when the host differs from the records (`cni-bridge sync` heals it), else 1 when "
    "connectivity is limited or a file is unusable, else 0.",
    "gc": "Remove the attachments whose container is gone (judged by the kernel: the veth's "
    "peer, the recorded netns inode), as a runtime's CNI GC would.",
}


def build_parser() -> argparse.ArgumentParser:
    """Also the source of `cni-bridge --help` and the man page (cni_bridge/manual.py)."""
    from cni_bridge.manual import Formatter

    parser = argparse.ArgumentParser(prog="cni-bridge", formatter_class=Formatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name, fn in (("ls", cmd_ls), ("status", cmd_status), ("gc", cmd_gc)):
        p = sub.add_parser(name, description=_DESCRIPTIONS[name], formatter_class=Formatter)
        p.add_argument("--network", default=None, help="only this network (default: all)")
        p.add_argument(
            "--data-dir", default=DEFAULT_DATA_DIR, help="host-local's data dir, with the records"
        )
        p.add_argument("--json", action="store_true", help="JSON output (ls and status)")
        p.set_defaults(fn=fn)
    return parser
