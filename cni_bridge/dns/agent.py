"""The agent's duty for the name service: rebuild from the records once it listens, then look
every SUPERVISE_EVERY seconds that the server runs while it has networks.

Runs in the agent's parent between polls (no thread: the parent forks workers); each look is a
directory listing and a pid check, a restart only when the server is gone.
"""

from __future__ import annotations

from cni_bridge.log import getLogger

log = getLogger(__name__)

SUPERVISE_EVERY = 5.0


class DnsDuty:
    def __init__(self, data_dirs: tuple[str, ...] | None = None) -> None:
        self.data_dirs = data_dirs  # None: those in use (datadirs.py)
        self.next = 0.0  # the first look (the rebuild) as soon as the loop runs
        self.rebuilt = False

    def tick(self, now: float) -> None:
        """Does what is due at `now` (monotonic); `next` says when to come back."""
        if now < self.next:
            return
        self.next = now + SUPERVISE_EVERY
        try:
            from cni_bridge.dns import rebuild

            if not self.rebuilt:
                self.rebuilt = True
                rebuild.rebuild(self.data_dirs)
            else:
                rebuild.supervise()
        except Exception as exc:  # never the agent's end: the plugin manages the server too
            log.warning("dns duty: %s", exc)
