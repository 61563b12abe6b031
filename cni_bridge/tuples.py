"""typing.NamedTuple's class syntax at collections.namedtuple's cost.

`class Point(NamedTuple): x: int; y: int = 0` with `NamedTuple` from here makes the class
typing.NamedTuple makes (collections.namedtuple's, with the body's defaults, methods, docstring
and annotations), and mypy sees typing.NamedTuple itself. What it skips is typing's check of
each annotation: under `from __future__ import annotations` every one is a string that typing
compiles into a ForwardRef. That made a typing.NamedTuple ~0.95 M instructions to define against
collections.namedtuple's ~0.38 M (callgrind, 4 fields), and an exec'd ADD defines ~27 of them.
The annotations stay as written (strings): typing.get_type_hints resolves them as before.

Class syntax only (the functional form is typing's), and no Generic named tuples.
"""

from __future__ import annotations

import collections

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NamedTuple as NamedTuple
else:
    # As typing (3.11): what a body may not define, and what is not copied onto the class.
    _PROHIBITED = frozenset({
        "__new__", "__init__", "__slots__", "__getnewargs__", "_fields", "_field_defaults",
        "_make", "_replace", "_asdict", "_source",
    })
    _SPECIAL = frozenset({"__module__", "__name__", "__annotations__"})

    class _NamedTupleMeta(type):
        def __new__(cls, typename, bases, ns):
            if bases != (NamedTuple,):
                raise TypeError("can only inherit from NamedTuple")
            fields = ns.get("__annotations__", {})
            default_names = []
            for name in fields:
                if name in ns:
                    default_names.append(name)
                elif default_names:
                    raise TypeError(
                        f"Non-default namedtuple field {name} cannot follow default field"
                        f"{'s' if len(default_names) > 1 else ''} {', '.join(default_names)}"
                    )
            tpl = collections.namedtuple(
                typename, list(fields), defaults=[ns[n] for n in default_names],
                module=ns["__module__"],
            )
            tpl.__annotations__ = tpl.__new__.__annotations__ = dict(fields)
            for key, value in ns.items():
                if key in _PROHIBITED:
                    raise AttributeError("Cannot overwrite NamedTuple attribute " + key)
                if key not in _SPECIAL and key not in tpl._fields:
                    setattr(tpl, key, value)
            return tpl

    NamedTuple = type.__new__(_NamedTupleMeta, "NamedTuple", (), {"__module__": __name__})
