"""One sync: read the records, read the host, plan, apply, look again. `cni-bridge sync`.

It holds the locks of every network it looks at (in name order, so two syncs cannot deadlock;
ADD, DEL and GC take one lock at a time) from the first read to the last write: a DEL that
removes an attachment meanwhile would otherwise see its elements re-created from a record it has
just deleted. ADD's firewall work runs outside the lock, but only adds, and an attachment is
desired only once its ADD finished (its record says ready).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from cni_bridge.commands import report as verb_report
from cni_bridge.commands.deps import Deps
from cni_bridge.converge import desired as desired_mod
from cni_bridge.converge.apply import apply
from cni_bridge.converge.observe import observe
from cni_bridge.converge.planner import Plan, plan
from cni_bridge.domain import DomainError, InterfaceName
from cni_bridge.log import getLogger
from cni_bridge.net.ops import NetError

log = getLogger(__name__)


@dataclass
class Report:
    healed: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # repairs that failed
    remaining: list[str] = field(default_factory=list)  # drift still there afterwards
    stale: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)

    @property
    def converged(self) -> bool:
        return not self.errors and not self.remaining


@contextlib.contextmanager
def locked(networks: Iterable[tuple[str, str]]) -> Iterator[dict[tuple[str, str], str]]:
    """Hold the locks of (data dir, network) in order; yields those that could not be locked
    and why (such a network is left out of the sync: its lock keeps DEL from racing us)."""
    from cni_bridge.ipam.disk import DiskStore

    failed: dict[tuple[str, str], str] = {}
    with contextlib.ExitStack() as stack:
        for data_dir, name in sorted(set(networks)):
            try:
                stack.enter_context(DiskStore(name, data_dir).lock())
            except OSError as exc:
                failed[(data_dir, name)] = f"network {name}: cannot take its lock: {exc}"
        yield failed


def _here(n: desired_mod.Network, deps: Deps) -> bool:
    """The network has a bridge or an attachment's veth in this network namespace (data dirs
    in use are listed for every namespace of the host)."""
    for name in (n.bridge, *(m.record.host_veth for m in n.members)):
        try:
            if deps.net.link_exists(InterfaceName(name)):
                return True
        except (DomainError, NetError):
            continue
    return False


def look(
    data_dirs: Sequence[str],
    deps: Deps,
    only: str | None = None,
    among: set[tuple[str, str]] | None = None,
) -> tuple[desired_mod.Desired, Plan]:
    """Desired state and the plan that would heal the host (no change made); `among` limits
    it to those (data dir, network)."""
    want = desired_mod.load(data_dirs, only)
    if among is not None:
        want.networks = [n for n in want.networks if (n.data_dir, n.name) in among]
    return want, plan(want, observe(want, deps.firewall, deps.net))


def sync(
    data_dirs: Sequence[str], deps: Deps, *, dry_run: bool = False, only: str | None = None
) -> Report:
    report = Report()
    here = {(n.data_dir, n.name) for n in desired_mod.load(data_dirs, only).networks if _here(n, deps)}
    if not dry_run:
        # A first look without the locks: most syncs (the agent's periodic one, one after a
        # foreign change that touched nothing of ours) find nothing to heal, and holding every
        # network's lock for the whole read would make ADDs and DELs wait for it.
        want, p = look(data_dirs, deps, only, here)
        if p.empty:
            report.stale, report.unreadable = p.stale, want.unreadable + want.unconfigured
            report.remaining = p.drift  # what a sync must not heal (blocked), if anything
            verb_report.synced(report.healed, report.errors, report.remaining)
            return report
    with locked(here) as failed:
        report.errors += failed.values()
        among = here - failed.keys()
        want, p = look(data_dirs, deps, only, among)
        report.stale, report.unreadable = p.stale, want.unreadable + want.unconfigured
        if dry_run:
            report.remaining = p.drift
            return report
        for attempt in (1, 2):
            if p.empty:
                break
            done = apply(p, deps.firewall, deps.net)
            report.healed += done.healed
            if not done.errors or attempt == 2:
                report.errors += done.errors
                break
            # The ruleset changed between the read and the transaction: once more.
            _, p = look(data_dirs, deps, only, among)
        _, after = look(data_dirs, deps, only, among)
        report.remaining = after.drift
        if not dry_run:
            verb_report.synced(report.healed, report.errors, report.remaining)
    return report


def main(argv: Sequence[str]) -> int:
    from cni_bridge import datadirs
    from cni_bridge.commands.deps import real_deps

    args = build_parser().parse_args(argv)
    data_dirs = args.data_dir or datadirs.in_use()
    deps = real_deps({})
    try:
        report = sync(data_dirs, deps, dry_run=args.dry_run, only=args.network)
    finally:
        deps.close()
    if not args.dry_run:
        # containerDNS: every network's aardvark-dns file from the records, the server
        # started or reloaded (its own locks, taken after sync released the networks').
        from cni_bridge.dns.rebuild import rebuild

        report.errors += [f"containerDNS: {p}" for p in rebuild(data_dirs)]
    return _print(args, report)


def build_parser() -> argparse.ArgumentParser:
    """Also the source of `cni-bridge --help` and the man page (cni_bridge/manual.py)."""
    from cni_bridge.manual import Formatter

    parser = argparse.ArgumentParser(
        prog="cni-bridge sync",
        formatter_class=Formatter,
        description="Make the host match the attachment records: our nftables table and its "
        "elements, accept rules in foreign forward chains, the 127.0.0.0/8 guard, bridges, "
        "gateway addresses, sysctls, macspoofchk and ipspoofchk guards, the containerDNS server and its "
        "files. Idempotent. Exit 0 when the host "
        "matches the records afterwards (with --dry-run: already), 1 otherwise.",
    )
    parser.add_argument(
        "--data-dir", action="append", default=None,
        help="a data dir holding records (repeatable; default: /var/lib/cni/networks and "
        "every data dir an ADD on this host used)",
    )  # fmt: skip
    parser.add_argument("--network", default=None, help="only this network (default: all)")
    parser.add_argument("--dry-run", action="store_true", help="print the drift, change nothing")
    return parser


def _print(args: argparse.Namespace, report: Report) -> int:
    for line in report.unreadable:
        print(f"unreadable: {line}", file=sys.stderr)
    for line in report.stale:
        print(f"stale: {line}")
    if args.dry_run:
        for line in report.remaining:
            print(f"drift: {line}")
        print(f"{len(report.remaining)} difference(s)")
        return 0 if not report.remaining else 1
    for line in report.healed:
        print(f"healed: {line}")
    for line in report.errors:
        print(f"error: {line}", file=sys.stderr)
    for line in report.remaining:
        print(f"still: {line}", file=sys.stderr)
    print(f"{len(report.healed)} repair(s); " + ("converged" if report.converged else "NOT converged"))
    return 0 if report.converged else 1
