"""ADD's check: no host program may hold a port the attachment publishes.

Run in the plugin (or the agent's worker), in the host network namespace, before any change:
each socket the holder would hold is bound and closed again. A bind refused with EADDRINUSE is
a conflict unless the socket in the way is our own holder's (a repeated ADD of an attachment,
or a port a DEL just released that the holder has not let go yet); the error names the
processes holding it. Works with no agent too (the ports are then checked, not held).
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable, Iterable

from cni_bridge.errors import PORT_CONFLICT, CNIError
from cni_bridge.firewall.model import PortMapping
from cni_bridge.ports import control, lookup, sockets
from cni_bridge.ports.model import HoldKey, keys_for

log = logging.getLogger(__name__)

Holders = Callable[[HoldKey], list[tuple[int, str]]]


def check(
    mappings: Iterable[PortMapping],
    runtime_holds: bool = False,
    holders: Holders = lookup.holders_of,
    own_pid: Callable[[], int] = control.holder_pid,
) -> None:
    """Raises CNIError(PORT_CONFLICT) naming the holder of the first port a host program holds.
    Sockets the runtime holds itself (model.bind_addresses) are its to check: podman's conmon
    holds them already when `podman network reload` repeats the ADD."""
    ours: int | None = None
    for key in keys_for(mappings, runtime_holds):
        try:
            sockets.bind(key, listen=False).close()
            continue
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                # No IPv6 on this host, an address the kernel refuses: nothing can hold it.
                log.info("not checking %s: %s", key, exc.strerror)
                continue
        found = holders(key)
        if ours is None:
            ours = own_pid()
        if ours and found and all(pid == ours for pid, _ in found):
            continue
        raise CNIError(
            PORT_CONFLICT,
            f"host port {key} is already held by a host program: {lookup.describe(found)}",
            "a process on the host listens on (or is bound to) the published port; stop it or "
            "publish another host port",
        )
