"""The command line, like the reference `cnitool`:
`add|check|del <network> <netns>`, `gc|status|version <network>`.

Runs as `cni-bridge client ...` or `python -m cni_bridge.libcni ...`. One deliberate difference
from cnitool: CHECK and DEL reuse the cached capability args when CAP_ARGS is unset, and every
failure is printed as a CNI error object, so callers parse one shape.
"""

from __future__ import annotations

import json
import os
import sys

from cni_bridge.errors import INVALID_ENV, CNIError
from cni_bridge.invoke import PluginError
from cni_bridge.libcni.api import DEFAULT_CACHE_DIR, DEFAULT_CNI_PATH, DEFAULT_TIMEOUT, Client
from cni_bridge.libcni.conf import NetworkConfigList, load_conflist, loads
from cni_bridge.libcni.runtime import (
    RuntimeConf,
    container_id_for,
    parse_cap_args,
    parse_cni_args,
    validate_container_id,
)
from cni_bridge.protocol.versions import CURRENT_VERSION

# `typing` and `collections.abc` cost milliseconds at start-up; only the type checker needs them.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Mapping, Sequence
    from typing import Any, TextIO

    Json = dict[str, Any]

DEFAULT_NETCONF_DIR = "/etc/cni/net.d"
_NEEDS_NETNS = ("add", "check", "del")
def build_parser() -> argparse.ArgumentParser:
    import argparse  # only the CLI pays for it

    from cni_bridge.manual import Formatter

    p = argparse.ArgumentParser(
        prog="cni-bridge client",
        formatter_class=Formatter,
        description="Run a CNI network configuration list against a network namespace "
        "(like cnitool).",
        epilog="environment: NETCONFPATH (default /etc/cni/net.d), CNI_PATH (default "
        "/opt/cni/bin), CAP_ARGS (JSON object), CNI_ARGS (K=V;...), CNI_IFNAME (default eth0), "
        "CNI_CONTAINERID (default: a hash of the netns path, as cnitool), CNI_CACHE_DIR "
        "(default /var/lib/cni), CNI_CLIENT_TIMEOUT (seconds per plugin exec, default 60)",
    )
    p.add_argument(
        "command",
        choices=("add", "check", "del", "gc", "status", "version"),
        help="the CNI verb to run through the list's plugins",
    )
    p.add_argument("network", help="the name of a conflist (or single conf) in NETCONFPATH")
    p.add_argument("netns", nargs="?", default="", help="netns path, or a name in /run/netns")
    p.add_argument("-i", "--ifname", help="interface name (default $CNI_IFNAME, else eth0)")
    p.add_argument("--container-id", help="container ID (default $CNI_CONTAINERID)")
    p.add_argument(
        "--valid-attachments",
        metavar="JSON",
        help='gc: JSON list of {"containerID": ..., "ifname": ...} to keep '
        "(default: the network's cache entries)",
    )
    return p


def _resolve_netns(arg: str) -> str:
    # A bare name means an `ip netns add` namespace; cnitool would read it relative to the
    # working directory, which is rarely what is meant.
    if arg and "/" not in arg:
        for base in ("/run/netns", "/var/run/netns"):
            if os.path.exists(os.path.join(base, arg)):
                return os.path.join(base, arg)
    return os.path.abspath(arg) if arg else ""


def _valid_attachments(text: str | None) -> list[dict[str, str]] | None:
    if text is None:
        return None
    value = loads(text, "--valid-attachments")
    if not isinstance(value, list) or not all(
        isinstance(v, dict)
        and isinstance(v.get("containerID"), str)
        and isinstance(v.get("ifname"), str)
        for v in value
    ):
        msg = '--valid-attachments must be a list of {"containerID": ..., "ifname": ...}'
        raise CNIError(INVALID_ENV, msg)
    return [{"containerID": v["containerID"], "ifname": v["ifname"]} for v in value]


def _timeout(environ: Mapping[str, str]) -> float:
    text = environ.get("CNI_CLIENT_TIMEOUT", "")
    try:
        value = float(text) if text else DEFAULT_TIMEOUT
    except ValueError:
        value = -1.0
    if value <= 0:
        raise CNIError(INVALID_ENV, f"CNI_CLIENT_TIMEOUT={text!r} is not a positive number")
    return value


def _dispatch(
    args: argparse.Namespace, conf: NetworkConfigList, environ: Mapping[str, str], client: Client
) -> Json | list[Json] | None:
    if args.command == "gc":
        client.gc(conf, _valid_attachments(args.valid_attachments))
        return None
    if args.command == "status":
        client.status(conf)
        return None
    if args.command == "version":
        return client.version(conf)
    netns = _resolve_netns(args.netns)
    cap_text = environ.get("CAP_ARGS")
    rt = RuntimeConf(
        args.container_id or environ.get("CNI_CONTAINERID") or container_id_for(netns),
        netns,
        args.ifname or environ.get("CNI_IFNAME") or "eth0",
        parse_cni_args(environ.get("CNI_ARGS", "")),
        parse_cap_args(cap_text or ""),
    )
    if args.command == "add":
        return client.add(conf, rt)
    if cap_text is None:
        # As runtimes do with libcni's GetNetworkListCachedConfig: CHECK and DEL reuse the
        # capability args of the ADD, so port mappings are checked and torn down.
        validate_container_id(rt.container_id)
        try:
            entry = client.cached_entry(conf, rt)
        except CNIError:
            entry = None  # an unreadable entry is DEL's to drop, not a reason to fail here
        if entry is not None and isinstance(entry.get("capabilityArgs"), dict):
            rt.cap_args = dict(entry["capabilityArgs"])
    if args.command == "check":
        client.check(conf, rt)
    else:
        client.delete(conf, rt)
    return None


def main(
    argv: Sequence[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """`add|check|del <network> <netns>`, `gc|status|version <network>`; 0 ok, 1 failure.

    ADD prints the result and VERSION the plugins' answers; a failure prints the CNI error
    object on stdout (the plugin's own when a plugin failed) and a one-line reason on stderr.
    """
    env = os.environ if environ is None else environ
    out = sys.stdout if stdout is None else stdout
    err = sys.stderr if stderr is None else stderr
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else list(argv))
    if args.command in _NEEDS_NETNS and not args.netns:
        parser.error(f"{args.command} needs a network namespace path")
    version = CURRENT_VERSION
    try:
        conf = load_conflist(env.get("NETCONFPATH") or DEFAULT_NETCONF_DIR, args.network)
        version = conf.cni_version or version
        client = Client(
            (env.get("CNI_PATH") or DEFAULT_CNI_PATH).split(":"),
            env.get("CNI_CACHE_DIR") or DEFAULT_CACHE_DIR,
            timeout=_timeout(env),
            environ=env,
            stderr=err,
        )
        answer = _dispatch(args, conf, env, client)
    except CNIError as exc:
        reason = exc.msg + (f"; {exc.details}" if exc.details else "")
        if isinstance(exc, PluginError):
            reason = f'plugin type="{exc.plugin}" failed ({exc.command.lower()}): {reason}'
        err.write(reason + "\n")
        out.write(json.dumps(exc.to_dict(version), indent=4) + "\n")
        return 1
    if answer is not None:
        # libcni's Result.Print indents with four spaces.
        out.write(json.dumps(answer, indent=4) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
