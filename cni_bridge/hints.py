"""The typing names an exec'd plugin's modules use at run time, without importing typing.

`import typing` costs a cold ADD ~13 M instructions (~8 %, callgrind) for names that, with
`from __future__ import annotations`, only mypy reads. Modules import annotation-only names
(Any, Callable, ...) from typing under `if TYPE_CHECKING:`; the few that appear in run-time
expressions come from here: the real ones for mypy, stand-ins at run time, where nothing
instantiates a protocol or checks one with isinstance, and a Literal alias only annotates.
NamedTuple's counterpart is cni_bridge/tuples.py.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Literal as Literal
    from typing import Protocol as Protocol
else:

    class Protocol:
        """A protocol's base at run time: a plain class (typing.Protocol for mypy)."""

        __slots__ = ()

    class _Literal:
        def __getitem__(self, values):
            return self

        def __repr__(self):
            return "Literal"

    Literal = _Literal()
