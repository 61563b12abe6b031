"""ADD's check: no host program may hold a port the attachment publishes.

Run in the plugin (or the agent's worker), in the host network namespace, before any change:
each socket the holder would hold is bound and closed again. A bind refused with EADDRINUSE is
a conflict unless the socket in the way is our own holder's (a repeated ADD of an attachment,
or a port a DEL just released that the holder has not let go yet); the error names the
processes holding it. Works with no agent too (the ports are then checked, not held).
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Collection, Iterable

from cni_bridge.errors import PORT_CONFLICT, CNIError
from cni_bridge.firewall.model import PortMapping
from cni_bridge.log import getLogger
from cni_bridge.ports import control, sockets
from cni_bridge.ports.model import HoldKey, keys_for

log = getLogger(__name__)

Holders = Callable[[HoldKey], list[tuple[int, str]]]


def _held_by_our_holder() -> Collection[str]:
    answer = control.status()
    held = answer.get("held") if answer else None
    return {str(k) for k in held} if isinstance(held, list) else set()


def check(
    mappings: Iterable[PortMapping],
    runtime_holds: bool = False,
    holders: Holders | None = None,
    ours: Callable[[], Collection[str]] = _held_by_our_holder,
) -> None:
    """Raises CNIError(PORT_CONFLICT) naming the holder of the first port a host program holds.
    A socket our holder holds on the very key is not a conflict (nothing else can hold it
    beside it); `ours` is asked only on a conflict, and the holder's answer spares the scan of
    every process's descriptors. Sockets the runtime holds itself (model.bind_addresses) are
    its to check: podman's conmon holds them already when `podman network reload` repeats
    the ADD. `holders` defaults to lookup.holders_of."""
    held: Collection[str] | None = None
    for key in keys_for(mappings, runtime_holds):
        try:
            sockets.bind(key, listen=False).close()
            continue
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                # No IPv6 on this host, an address the kernel refuses: nothing can hold it.
                log.info("not checking %s: %s", key, exc.strerror)
                continue
        if held is None:
            held = ours()
        if str(key) in held:
            continue
        # Imported only here, on a conflict: its /proc parsing (a dataclass, ipaddress) is ~1 %
        # of every cold ADD's instructions otherwise.
        from cni_bridge.ports import lookup

        found = (holders or lookup.holders_of)(key)
        raise CNIError(
            PORT_CONFLICT,
            f"host port {key} is already held by a host program: "
            f"{lookup.describe(found)}",
            "a process on the host listens on (or is bound to) the published port; stop it or "
            "publish another host port",
        )
