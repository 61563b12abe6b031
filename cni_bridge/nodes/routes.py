"""`cni-bridge routes --peers FILE`: make this node's routes to the other nodes' pod CIDRs
match the file (host-gw), withdrawing routes of peers no longer listed (see routeplan)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterable

from cni_bridge.nodes.netlink import RouteError, RouteTable
from cni_bridge.nodes.peers import Peer, PeerFileError, parse_peers
from cni_bridge.nodes.routeplan import RoutePlan, plan_routes

log = logging.getLogger("cni_bridge.routes")


def sync_routes(peers: Iterable[Peer], table: RouteTable, *, dry_run: bool = False) -> RoutePlan:
    """One pass: plan, apply each change (a failed one becomes a problem, the rest go on)."""
    plan = plan_routes(peers, table.addresses(), table.routes())
    if dry_run:
        return plan
    for change in plan.changes:
        try:
            table.apply(change)
        except RouteError as exc:
            plan.problems.append(str(exc))
            continue
        log.info("%s", change)
    return plan


def build_parser() -> argparse.ArgumentParser:
    """Also the source of `cni-bridge --help` and the man page (cni_bridge/manual.py)."""
    from cni_bridge.manual import Formatter

    parser = argparse.ArgumentParser(
        prog="cni-bridge routes",
        description="Make this node's routes to the other nodes' pod CIDRs (via their "
        "addresses, host-gw; route protocol 203) match the file, withdrawing those of peers "
        "no longer listed. Exit 1 when a line was skipped, 2 when the file is unreadable.",
        formatter_class=Formatter,
    )
    parser.add_argument(
        "--peers", required=True, metavar="FILE",
        help="lines `<node-ip> <pod-cidr> [<pod-cidr>...]`, # comments (required)",
    )  # fmt: skip
    parser.add_argument("--dry-run", action="store_true", help="print the changes only")
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        with open(args.peers, encoding="utf-8") as f:
            peers = parse_peers(f.read())
    except OSError as exc:
        print(f"cni-bridge routes: cannot read {args.peers}: {exc.strerror}", file=sys.stderr)
        return 2
    except PeerFileError as exc:
        print(f"cni-bridge routes: {args.peers}: {exc}", file=sys.stderr)
        return 2
    from cni_bridge.nodes.netlink import NetlinkRoutes

    table = NetlinkRoutes()
    try:
        plan = sync_routes(peers, table, dry_run=args.dry_run)
    finally:
        table.close()
    for change in plan.changes:
        print(("would " if args.dry_run else "") + str(change))
    for peer in plan.local:
        print(f"skipped {peer.label()}: an address of this node")
    for problem in plan.problems:
        print(f"cni-bridge routes: {problem}", file=sys.stderr)
    print(f"{len(plan.changes)} change(s), {plan.kept} route(s) already in place")
    return 1 if plan.problems else 0
