"""typing.NamedTuple's class syntax for less than collections.namedtuple's cost.

`class Point(NamedTuple): x: int; y: int = 0` with `NamedTuple` from here makes the class
typing.NamedTuple makes (collections.namedtuple's, with the body's defaults, methods, docstring
and annotations), and mypy sees typing.NamedTuple itself. What it skips is typing's check of
each annotation: under `from __future__ import annotations` every one is a string that typing
compiles into a ForwardRef. That made a typing.NamedTuple ~0.95 M instructions to define against
collections.namedtuple's ~0.38 M (callgrind, 4 fields), and an exec'd ADD defines ~27 of them.
The annotations stay as written (strings): typing.get_type_hints resolves them as before.
Nor does it compile a __new__ for each class as collections.namedtuple does (see below).

Class syntax only (the functional form is typing's), and no Generic named tuples.
"""

from __future__ import annotations

import collections

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NamedTuple as NamedTuple
else:
    # collections.namedtuple's class, without its eval: it compiles a `lambda _cls, a, b:
    # _tuple_new(_cls, (a, b))` for every class (~0.3 M instructions; ~30 classes on a cold
    # ADD). Here the lambda of the class's arity, compiled with this module (its .pyc), gets the
    # field names as its parameters' (CodeType.replace: the bytecode reads them by position),
    # and the other methods are shared, reading the class's _fields. Same class otherwise:
    # tuple subclass, __slots__ (), _fields, _field_defaults, __match_args__, the fields as
    # _tuplegetter properties, the same repr, _make, _replace, _asdict, __getnewargs__.
    _tuple_new = tuple.__new__
    _NEW = (
        lambda _cls, a: _tuple_new(_cls, (a,)),
        lambda _cls, a, b: _tuple_new(_cls, (a, b)),
        lambda _cls, a, b, c: _tuple_new(_cls, (a, b, c)),
        lambda _cls, a, b, c, d: _tuple_new(_cls, (a, b, c, d)),
        lambda _cls, a, b, c, d, e: _tuple_new(_cls, (a, b, c, d, e)),
        lambda _cls, a, b, c, d, e, f: _tuple_new(_cls, (a, b, c, d, e, f)),
        lambda _cls, a, b, c, d, e, f, g: _tuple_new(_cls, (a, b, c, d, e, f, g)),
        lambda _cls, a, b, c, d, e, f, g, h: _tuple_new(_cls, (a, b, c, d, e, f, g, h)),
        lambda _cls, a, b, c, d, e, f, g, h, i: _tuple_new(_cls, (a, b, c, d, e, f, g, h, i)),
        lambda _cls, a, b, c, d, e, f, g, h, i, j: _tuple_new(_cls, (a, b, c, d, e, f, g, h, i, j)),
        lambda _cls, a, b, c, d, e, f, g, h, i, j, k: _tuple_new(
            _cls, (a, b, c, d, e, f, g, h, i, j, k)),
        lambda _cls, a, b, c, d, e, f, g, h, i, j, k, l: _tuple_new(  # noqa: E741
            _cls, (a, b, c, d, e, f, g, h, i, j, k, l)),
        lambda _cls, a, b, c, d, e, f, g, h, i, j, k, l, m: _tuple_new(  # noqa: E741
            _cls, (a, b, c, d, e, f, g, h, i, j, k, l, m)),
        lambda _cls, a, b, c, d, e, f, g, h, i, j, k, l, m, n: _tuple_new(  # noqa: E741
            _cls, (a, b, c, d, e, f, g, h, i, j, k, l, m, n)),
        lambda _cls, a, b, c, d, e, f, g, h, i, j, k, l, m, n, o: _tuple_new(  # noqa: E741
            _cls, (a, b, c, d, e, f, g, h, i, j, k, l, m, n, o)),
        lambda _cls, a, b, c, d, e, f, g, h, i, j, k, l, m, n, o, p: _tuple_new(  # noqa: E741
            _cls, (a, b, c, d, e, f, g, h, i, j, k, l, m, n, o, p)),
    )
    _function = type(lambda: None)

    @classmethod
    def _make(cls, iterable):
        result = _tuple_new(cls, iterable)
        if len(result) != len(cls._fields):
            raise TypeError(f"Expected {len(cls._fields)} arguments, got {len(result)}")
        return result

    def _replace(self, /, **kwds):
        result = self._make(map(kwds.pop, self._fields, self))
        if kwds:
            raise ValueError(f"Got unexpected field names: {list(kwds)!r}")
        return result

    def __repr__(self):
        return self.__class__.__name__ + "(" + ", ".join(
            f"{name}={value!r}" for name, value in zip(self._fields, self, strict=True)) + ")"

    def _asdict(self):
        return dict(zip(self._fields, self, strict=True))

    def __getnewargs__(self):
        return tuple(self)

    def _namedtuple(typename, fields, defaults, module):
        if not 0 < len(fields) <= len(_NEW):
            return collections.namedtuple(typename, fields, defaults=defaults, module=module)
        args = ", ".join(fields) + ("," if len(fields) == 1 else "")
        code = _NEW[len(fields) - 1].__code__.replace(
            co_varnames=("_cls", *fields), co_name="__new__", co_qualname=f"{typename}.__new__"
        )
        new = _function(code, {"_tuple_new": _tuple_new}, "__new__", tuple(defaults) or None)
        new.__doc__ = f"Create new instance of {typename}({args})"
        namespace = {
            "__doc__": f"{typename}({args})", "__slots__": (), "_fields": fields,
            "_field_defaults": dict(zip(fields[len(fields) - len(defaults) :], defaults, strict=True)),
            "__new__": new, "_make": _make, "_replace": _replace, "__repr__": __repr__,
            "_asdict": _asdict, "__getnewargs__": __getnewargs__, "__match_args__": fields,
            "__module__": module,
        }
        for index, name in enumerate(fields):
            namespace[name] = collections._tuplegetter(index, f"Alias for field number {index}")
        return type(typename, (tuple,), namespace)

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
            tpl = _namedtuple(
                typename, tuple(fields), [ns[n] for n in default_names], ns["__module__"]
            )
            tpl.__annotations__ = tpl.__new__.__annotations__ = dict(fields)
            for key, value in ns.items():
                if key in _PROHIBITED:
                    raise AttributeError("Cannot overwrite NamedTuple attribute " + key)
                if key not in _SPECIAL and key not in tpl._fields:
                    setattr(tpl, key, value)
            return tpl

    NamedTuple = type.__new__(_NamedTupleMeta, "NamedTuple", (), {"__module__": __name__})
