"""Mutable records as plain classes: `__slots__`, an explicit `__init__`, and from here the
equality and repr a (non-frozen) dataclass would give them.

Why not dataclasses: a dataclass compiles its generated methods with exec when its module is
imported (~0.1 ms each), and `import dataclasses` pulls in `inspect` (ast, dis, tokenize); on
the exec'd plugin's path (every cold ADD/DEL/CHECK) that was ~20 ms. Immutable records are
NamedTuples (class syntax from cni_bridge/tuples.py); the mutable ones subclass Slotted, which
costs less still to define (no code generated at all). Standard library only, no imports.
"""

from __future__ import annotations


class Slotted:
    """Equal when of the same class with equal fields (the names in `__slots__`), and
    so unhashable, as a dataclass with eq=True; repr `Name(field=value, ...)` without the
    fields named in `_hidden` (a dataclass's repr=False)."""

    __slots__: tuple[str, ...] = ()
    _hidden: tuple[str, ...] = ()

    def _values(self) -> tuple[object, ...]:  # not `_fields`: a NamedTuple's attribute
        return tuple(getattr(self, name) for name in self.__slots__)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Slotted) or other.__class__ is not self.__class__:
            return NotImplemented
        return self._values() == other._values()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{name}={getattr(self, name)!r}" for name in self.__slots__ if name not in self._hidden
        )
        return f"{self.__class__.__qualname__}({shown})"
