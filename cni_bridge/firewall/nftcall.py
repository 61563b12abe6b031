"""One libnftables context per process and the calls through it: what every part of the real
firewall (nft.py, guards.py) sends nftables goes through `NftCalls`."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

from cni_bridge.errors import INTERNAL, CNIError
from cni_bridge.firewall.layout import Json

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class NftablesError(CNIError):
    def __init__(self, what: str, error: str) -> None:
        super().__init__(INTERNAL, f"nftables: {what} failed", error.strip())
        self.error = error


def _new_context() -> Any:
    import nftables

    nft = nftables.Nftables()
    # JSON input is parsed only when JSON output is on (1.0.6).
    nft.set_json_output(True)
    nft.set_handle_output(True)
    return nft


# This process's context: (pid, context). A resident worker serves several requests one after
# the other and keeps it (its creation costs ~1.2 ms); the pid check keeps a forked child from
# using its parent's netlink socket.
_process_context: tuple[int, Any] | None = None


def process_context() -> Any:
    global _process_context
    pid = os.getpid()
    if _process_context is None or _process_context[0] != pid:
        _process_context = (pid, _new_context())
    return _process_context[1]


def prepare() -> None:
    """Create this process's libnftables context ahead of its first request (a resident's
    pooled worker does this while it waits for one)."""
    process_context()


class NftCalls:
    def __init__(self, nft: Any = None) -> None:
        self._nft = nft  # an nftables.Nftables, created on first use
        self._drift = False

    def _ctx(self) -> Any:
        if self._nft is None:
            self._nft = process_context()
        return self._nft

    def _call(self, what: str, cmds: Sequence[Json]) -> list[list[Json]]:
        """One libnftables call; returns the "nftables" arrays it printed (one per list)."""
        rc, out, err = self._ctx().cmd(json.dumps({"nftables": list(cmds)}))
        if rc != 0:
            raise NftablesError(what, str(err))
        docs: list[list[Json]] = []
        decoder = json.JSONDecoder()
        text, pos = str(out), 0
        while True:
            while pos < len(text) and text[pos].isspace():
                pos += 1
            if pos >= len(text):
                return docs
            doc, pos = decoder.raw_decode(text, pos)
            docs.append(list(doc.get("nftables", [])))

    def _list(self, what: str, cmd: Json) -> list[Json]:
        # One list command per call: libnftables 1.0.6 builds one cache filter for a
        # whole batch, so a second list in the same call sees only the first's table.
        (doc,) = self._call(what, [{"list": cmd}])
        return doc

    def _terse(self) -> _Terse:
        """Listings without set elements (honoured by `list ruleset`, not `list table`)."""
        return _Terse(self._ctx())

    def apply(self, cmds: Sequence[Json], what: str = "transaction") -> None:
        """Run the commands as one atomic transaction (nothing to do: no call)."""
        if cmds:
            self._call(what, cmds)

    def _apply_text(self, text: str, what: str) -> None:
        """Native nft syntax, for what libnftables 1.0.6's JSON cannot say (a `typeof` set);
        its JSON parser hands anything that is not JSON to the native one."""
        rc, _out, err = self._ctx().cmd(text)
        if rc != 0:
            raise NftablesError(what, str(err))


class _Terse:
    """NftCalls._terse's block. A class, not a contextlib.contextmanager: contextlib stays off
    the exec path (net/netns.py's entered)."""

    __slots__ = ("_ctx",)

    def __init__(self, ctx: Any) -> None:
        self._ctx = ctx

    def __enter__(self) -> None:
        self._ctx.set_terse_output(True)

    def __exit__(self, *exc: object) -> None:
        self._ctx.set_terse_output(False)
