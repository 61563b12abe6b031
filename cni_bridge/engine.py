"""One CNI request in, one answer out: `handle(env, stdin) -> (exit code, stdout bytes)`.

The same function serves the in-process path and the resident process. It never raises:
every failure becomes one CNI error JSON object. Heavy modules are imported only by the verbs
that need them, so VERSION stays cheap.
"""

from __future__ import annotations

from collections.abc import Mapping

from cni_bridge.errors import INTERNAL, CNIError
from cni_bridge.log import getLogger
from cni_bridge.log import setup_logging as setup_logging  # cli.py's operator commands
from cni_bridge.protocol.request import parse_request
from cni_bridge.protocol.versions import (
    CURRENT_VERSION,
    reply_version_for,
    require_supported,
    require_verb_allowed,
    version_answer,
)
from cni_bridge.protocol.versions import dump as _dump

log = getLogger("cni_bridge")


def warm() -> None:
    """Run once by the resident before it forks workers: load what the verbs import lazily,
    so each worker starts with everything in memory. Opens no socket and no nftables context."""
    import ctypes
    import encodings.ascii  # noqa: F401 - sysctl and sysfs files are read as ascii text

    import nftables  # noqa: F401

    import cni_bridge.commands.add
    import cni_bridge.commands.check
    import cni_bridge.commands.delete
    import cni_bridge.commands.gc
    import cni_bridge.commands.status
    import cni_bridge.config
    import cni_bridge.converge.nfgen  # the agent's watch imports it after the pool's start
    import cni_bridge.converge.sync  # the heal after a verb that saw drift
    import cni_bridge.converge.trigger  # every ADD/DEL/CHECK (commands.dispatch)
    import cni_bridge.datadirs
    import cni_bridge.dns.aardvark
    import cni_bridge.dns.ops
    import cni_bridge.dns.rebuild
    import cni_bridge.firewall.conntrack
    import cni_bridge.firewall.ipspoof
    import cni_bridge.firewall.nft
    import cni_bridge.firewall.rules
    import cni_bridge.ipam.allocator
    import cni_bridge.ipam.delegate
    import cni_bridge.net.links
    import cni_bridge.net.netns
    import cni_bridge.net.sysctl
    import cni_bridge.ports.check
    import cni_bridge.ports.ops
    import cni_bridge.privileges  # every verb's first step (commands.dispatch)
    import cni_bridge.resident.rehearsal  # a pooled worker's dry run (prepare)

    ctypes.CDLL("libnftables.so.1")
    # One validation of a full config exercises what pydantic-core builds lazily.
    cni_bridge.config.load_netconf(
        {
            "cniVersion": "1.1.0",
            "name": "warm",
            "type": "cni-bridge",
            "isGateway": True,
            "ipMasq": True,
            "capabilities": {"portMappings": True, "ips": True, "mac": True},
            "runtimeConfig": {
                "portMappings": [{"hostPort": 1, "containerPort": 1, "protocol": "udp"}],
                "ips": ["10.0.0.2/24"],
            },
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": "10.0.0.0/24"}], [{"subnet": "fd00::/64"}]],
                "routes": [{"dst": "0.0.0.0/0"}],
            },
        }
    )


def prepare() -> None:
    """Run once by each pooled resident worker after its fork, before its first request:
    per-process set-up its requests would otherwise pay for (see firewall.nftcall.prepare).
    It also fills the boot id's cache here, in the agent's own mount namespace: a worker whose
    first request comes from a fresh mount namespace would otherwise fill it there, and
    resident.mounts then retires the worker (a light rehearsal does not read it)."""
    from cni_bridge.firewall import nftcall
    from cni_bridge.state import boot_id

    nftcall.prepare()
    boot_id()


def rehearse(light: bool = False) -> None:
    """Run by a resident's spare worker after prepare(), before it says it is free: a dry run
    of ADD and DEL with no effect on the host (resident/rehearsal.py)."""
    from cni_bridge.resident import rehearsal

    rehearsal.rehearse(light)


# Internal errors caught at the boundary below, in this process.
_internal_errors: list[str] = []


def reusable() -> bool:
    """Whether this process may serve another request (a resident worker asks after each):
    not after an internal error, which may have left in-memory state half-changed."""
    return not _internal_errors


def handle(env: Mapping[str, str], stdin: bytes) -> tuple[int, bytes]:
    reply_version = CURRENT_VERSION
    try:
        setup_logging(env)
        request = parse_request(env, stdin)
        reply_version = reply_version_for(request.config)
        if request.command == "VERSION":
            return 0, _dump(version_answer(request.config))
        require_supported(request.cni_version)
        require_verb_allowed(request.command, request.cni_version)
        from cni_bridge.commands import dispatch
        from cni_bridge.netconf import load_netconf

        conf = load_netconf(request.config)
        result = dispatch(request, conf, env)
        return 0, (_dump(result) if result is not None else b"")
    except CNIError as exc:
        log.info("%s failed: %s (%s)", env.get("CNI_COMMAND", "?"), exc.msg, exc.details)
        return 1, _dump(exc.to_dict(reply_version))
    except Exception as exc:  # the boundary: nothing escapes as a traceback
        log.exception("internal error")
        detail = f"{type(exc).__name__}: {exc}"
        _internal_errors.append(detail)
        err = CNIError(INTERNAL, f"internal error: {detail}")
        return 1, _dump(err.to_dict(reply_version))
