"""`cni-bridge kube`: the Kubernetes mode, one process per node (the DaemonSet's container).

It lists the Node objects, writes this node's network config from its spec.podCIDRs into the
CNI config directory (temp file, then rename) and keeps the routes to every other node's pod
CIDRs in step (`routes.sync_routes`), then follows a watch of the nodes: a node added,
removed or re-addressed changes the routes at once, and each change is logged. A watch the
server ends is resumed from the last resourceVersion seen (by lightkube); one that answers
410 Gone (the version was compacted away) is followed by a fresh list, so events missed
meanwhile (a node deleted) are not missed. Routes are healed on a timer as well.

This is a process of its own, never part of the agent (which must start no threads because
it forks workers): here one reader thread feeds the watch events into a queue, and all the
work happens in the main thread.

lightkube is the client (see README "Kubernetes"): it reads in-cluster service-account
credentials and kubeconfig files, decodes the API's objects and does the watch protocol,
for a fraction of the official client's import time, memory and dependencies.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import queue
import socket
import sys
import threading
from collections.abc import Iterator
from typing import Any, Protocol

from cni_bridge.nodes.kubestate import (
    ConfOptions,
    NodeInfo,
    node_changes,
    node_info,
    peers_of,
    render_conflist,
)
from cni_bridge.nodes.netlink import RouteTable
from cni_bridge.nodes.routes import sync_routes

log = logging.getLogger("cni_bridge.kube")


class Gone(Exception):
    """The watch's resourceVersion is too old (410): list again."""


class NodeSource(Protocol):
    def list(self) -> tuple[list[NodeInfo], str]: ...  # the nodes and the list's resourceVersion
    def watch(self, version: str) -> Iterator[tuple[str, NodeInfo]]: ...  # raises Gone
    def close(self) -> None: ...


def write_atomic(path: str, data: bytes) -> bool:
    """Replace path with data in one rename (a runtime never reads half a config);
    False when it already holds exactly that."""
    try:
        with open(path, "rb") as f:
            if f.read() == data:
                return False
    except FileNotFoundError:
        pass
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    # a name runtimes ignore: libcni loads only *.conf, *.conflist and *.json
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp.{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), 0o644)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return True


class KubeMode:
    """The node's view of the cluster and what follows from it. Not thread-safe: the main
    thread alone calls resync, handle and apply."""

    def __init__(
        self,
        node_name: str,
        source: NodeSource,
        table: RouteTable,
        conf_path: str,
        opts: ConfOptions,
    ) -> None:
        self.node_name = node_name
        self.source = source
        self.table = table
        self.conf_path = conf_path
        self.opts = opts
        self.nodes: dict[str, NodeInfo] = {}
        self.problems: list[str] = []
        self._waiting_logged = False

    def resync(self) -> str:
        """List every node, apply, and return the list's resourceVersion."""
        items, version = self.source.list()
        fresh = {n.name: n for n in items}
        for name in sorted(set(self.nodes) | set(fresh)):
            line = node_changes(self.nodes.get(name), fresh.get(name))
            if line:
                log.info("%s", line)
        self.nodes = fresh
        self.apply()
        return version

    def handle(self, kind: str, node: NodeInfo) -> None:
        old = self.nodes.get(node.name)
        if kind == "DELETED":
            new = None
            self.nodes.pop(node.name, None)
        elif kind in ("ADDED", "MODIFIED"):
            new = node
            self.nodes[node.name] = node
        else:
            return  # BOOKMARK
        line = node_changes(old, new)
        if line is None:
            return  # a status update (heartbeat, conditions) that changes nothing here
        log.info("%s", line)
        self.apply()

    def apply(self) -> None:
        problems: list[str] = []
        for node in self.nodes.values():
            problems += node.problems
        local = self.nodes.get(self.node_name)
        if local is None or not local.pod_cidrs:
            what = "is not listed" if local is None else "has no spec.podCIDRs yet"
            problems.append(f"node {self.node_name} {what}: no network config written")
            if not self._waiting_logged:
                log.warning("node %s %s; waiting", self.node_name, what)
                self._waiting_logged = True
        else:
            self._waiting_logged = False
            try:
                self._write_conf(local)
            except (OSError, ValueError) as exc:
                problems.append(f"cannot write {self.conf_path}: {exc}")
                log.error("cannot write %s: %s", self.conf_path, exc)
        peers, peer_problems = peers_of(self.nodes.values(), self.node_name)
        plan = sync_routes(peers, self.table)
        for problem in peer_problems + plan.problems:
            if problem not in self.problems:
                log.warning("%s", problem)
        self.problems = problems + peer_problems + plan.problems

    def _write_conf(self, local: NodeInfo) -> None:
        from cni_bridge.errors import CNIError
        from cni_bridge.netconf import load_netconf

        conf = render_conflist(local, self.opts)
        for plugin in conf["plugins"]:
            if plugin.get("type") == "cni-bridge":
                try:  # never write a config the plugin would refuse
                    load_netconf({"cniVersion": conf["cniVersion"], "name": conf["name"], **plugin})
                except CNIError as exc:
                    raise ValueError(exc.msg) from None
        data = (json.dumps(conf, indent=2) + "\n").encode()
        if write_atomic(self.conf_path, data):
            cidrs = " ".join(map(str, local.pod_cidrs))
            log.info("wrote %s (pod CIDRs %s)", self.conf_path, cidrs)

    def run(self, heal_every: float = 60.0, stop: threading.Event | None = None) -> None:
        """Until stop is set: list, then follow the watch; relist on 410 or a lost watch."""
        stop = stop or threading.Event()
        backoff = 1.0
        while not stop.is_set():
            try:
                version = self.resync()
            except Gone as exc:  # pragma: no cover - a list is never 410 without a version
                log.warning("list: %s", exc)
                continue
            except Exception as exc:  # the API server unreachable, a refusal
                log.error("cannot list nodes: %s; retrying in %.0f s", exc, backoff)
                stop.wait(backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            backoff = 1.0
            events: queue.Queue[tuple[str, Any]] = queue.Queue()
            threading.Thread(
                target=self._pump, args=(version, events), name="watch", daemon=True
            ).start()
            while not stop.is_set():
                try:
                    kind, payload = events.get(timeout=heal_every)
                except queue.Empty:
                    self.apply()  # heal routes someone removed, pick up new local addresses
                    continue
                if kind == "event":
                    self.handle(*payload)
                    continue
                if kind == "gone":
                    log.info("watch: resourceVersion expired (410 Gone); listing again")
                else:
                    log.warning("watch failed: %s; listing again", payload)
                    stop.wait(1.0)
                break

    def _pump(self, version: str, events: queue.Queue[tuple[str, Any]]) -> None:
        try:
            for kind, node in self.source.watch(version):
                events.put(("event", (kind, node)))
            events.put(("error", "the watch stopped"))
        except Gone:
            events.put(("gone", None))
        except Exception as exc:
            events.put(("error", str(exc) or type(exc).__name__))


class LightkubeNodes:
    """Nodes from the API server: in-cluster service account, else the kubeconfig given,
    else $KUBECONFIG or ~/.kube/config."""

    def __init__(self, kubeconfig: str | None, server_timeout: int = 300) -> None:
        from lightkube import Client, KubeConfig

        config = KubeConfig.from_file(kubeconfig) if kubeconfig else KubeConfig.from_env()
        self._client: Any = Client(config, trust_env=False)
        self._server_timeout = server_timeout

    def close(self) -> None:
        self._client.close()

    def list(self) -> tuple[list[NodeInfo], str]:
        from lightkube.resources.core_v1 import Node

        listing = self._client.list(Node)
        nodes = [node_info(n.to_dict()) for n in listing]
        return nodes, listing.resourceVersion

    def watch(self, version: str) -> Iterator[tuple[str, NodeInfo]]:
        from lightkube.core.exceptions import ApiError
        from lightkube.resources.core_v1 import Node
        from lightkube.types import OnErrorAction, OnErrorResult

        gone = False

        def on_error(exc: Exception, count: int) -> OnErrorResult:
            nonlocal gone
            if isinstance(exc, ApiError) and exc.status.code == 410:
                gone = True
                return OnErrorResult(OnErrorAction.STOP)
            if count > 5:
                return OnErrorResult(OnErrorAction.RAISE)
            log.warning("watch: %s; retrying", exc)
            return OnErrorResult(OnErrorAction.RETRY, sleep=min(2.0**count, 30.0))

        stream = self._client.watch(
            Node, resource_version=version, server_timeout=self._server_timeout, on_error=on_error
        )
        for kind, node in stream:
            yield kind, node_info(node.to_dict())
        if gone:
            raise Gone(version)


def _cidrs(values: list[str]) -> tuple[Any, ...]:
    import ipaddress

    try:
        return tuple(ipaddress.ip_network(v, strict=True) for v in values)
    except ValueError as exc:
        raise SystemExit(f"cni-bridge kube: --cluster-cidr: {exc}") from None


def build_parser() -> argparse.ArgumentParser:
    """Also the source of `cni-bridge --help` and the man page (cni_bridge/manual.py)."""
    from cni_bridge.manual import Formatter

    p = argparse.ArgumentParser(
        prog="cni-bridge kube",
        formatter_class=Formatter,
        description="write this node's network config from its spec.podCIDRs and keep routes "
        "to the other nodes' pod CIDRs (host-gw) in step with the API server",
    )
    p.add_argument("--node-name", default=None, help="default $NODE_NAME, else the host name")
    p.add_argument("--kubeconfig", default=None, help="default: in-cluster, else $KUBECONFIG")
    p.add_argument("--cni-conf-dir", default="/etc/cni/net.d", help="where the conflist goes")
    p.add_argument("--conf-name", default="10-cni-bridge.conflist", help="its file name")
    p.add_argument("--network-name", default="cni-bridge", help="the network's name")
    p.add_argument("--bridge", default="cni0", help="the bridge")
    p.add_argument("--mtu", type=int, default=None, help="the MTU (default: the kernel's)")
    p.add_argument(
        "--cluster-cidr", action="append", default=[],
        help="the cluster's pod CIDR (repeat per family): nonMasqueradeCIDRs of the network "
        "(default: none)",
    )
    p.add_argument("--template", default=None, help="a conflist whose cni-bridge entry is used "
                   "(default: a plain one)")
    p.add_argument("--heal-every", type=float, default=60.0, help="seconds between route heals")
    p.add_argument("--watch-timeout", type=int, default=300, help="server-side watch timeout, seconds")
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.node_name is None:
        args.node_name = os.environ.get("NODE_NAME") or socket.gethostname()
    if not logging.getLogger().isEnabledFor(logging.INFO):
        logging.getLogger("cni_bridge").setLevel(logging.INFO)  # every change is logged
    template = None
    if args.template:
        try:
            with open(args.template, encoding="utf-8") as f:
                template = json.load(f)
        except (OSError, ValueError) as exc:
            print(f"cni-bridge kube: --template {args.template}: {exc}", file=sys.stderr)
            return 2
    opts = ConfOptions(
        name=args.network_name,
        bridge=args.bridge,
        cluster_cidrs=_cidrs(args.cluster_cidr),
        mtu=args.mtu,
        template=template,
    )
    try:
        source = LightkubeNodes(args.kubeconfig, args.watch_timeout)
    except Exception as exc:  # lightkube's ConfigError, a missing or malformed kubeconfig
        print(f"cni-bridge kube: no API server configuration: {exc}", file=sys.stderr)
        return 2
    from cni_bridge.nodes.netlink import NetlinkRoutes

    table = NetlinkRoutes()
    mode = KubeMode(
        args.node_name, source, table, os.path.join(args.cni_conf_dir, args.conf_name), opts
    )
    stop = threading.Event()
    import signal

    def _stop(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    log.info("kube mode for node %s (config %s)", args.node_name, mode.conf_path)
    try:
        mode.run(args.heal_every, stop)
    finally:
        source.close()
        table.close()
    log.info("stopped")
    return 0
