"""cni_bridge/tuples.py: the class typing.NamedTuple makes, without typing's annotation checks."""

from __future__ import annotations

import pickle
import typing
from typing import Any

import pytest

from cni_bridge.tuples import NamedTuple


class Ours(NamedTuple):
    """A record."""

    a: int
    b: str = "x"
    c: list[int] | None = None

    def twice(self) -> int:
        return 2 * self.a

    @property
    def tag(self) -> str:
        return f"{self.a}{self.b}"


class Typings(typing.NamedTuple):
    """A record."""

    a: int
    b: str = "x"
    c: list[int] | None = None

    def twice(self) -> int:
        return 2 * self.a

    @property
    def tag(self) -> str:
        return f"{self.a}{self.b}"


@pytest.mark.parametrize("cls", [Ours, Typings])
def test_the_same_class_as_typing_makes(cls: type[Ours]) -> None:
    r = cls(1)
    assert tuple(r) == (1, "x", None) and tuple in cls.__mro__
    assert cls._fields == ("a", "b", "c") and cls._field_defaults == {"b": "x", "c": None}
    assert tuple(r._replace(b="y")) == (1, "y", None) and r._asdict() == {"a": 1, "b": "x", "c": None}
    assert cls._make([2, "z", [3]]).c == [3]
    assert r.twice() == 2 and r.tag == "1x"
    assert repr(r) == f"{cls.__name__}(a=1, b='x', c=None)"
    assert cls.__doc__ == "A record." and cls.__module__ == __name__
    assert cls.__qualname__ == cls.__name__
    assert pickle.loads(pickle.dumps(r)) == r
    assert typing.get_type_hints(cls) == {"a": int, "b": str, "c": list[int] | None}
    with pytest.raises(TypeError):
        cls()  # type: ignore[call-arg]


def test_a_subclass_may_define_new() -> None:
    class Base(NamedTuple):
        a: int

    class Checked(Base):
        __slots__ = ()

        def __new__(cls, a: int) -> Checked:
            if a < 0:
                raise ValueError(a)
            return super().__new__(cls, a)

    assert Checked(1).a == 1
    with pytest.raises(ValueError):
        Checked(-1)


def test_what_typing_refuses_is_refused() -> None:
    with pytest.raises(TypeError, match="Non-default namedtuple field b cannot follow default field a"):
        class Bad(NamedTuple):
            a: int = 0
            b: int  # type: ignore[misc]  # mypy refuses it too
    with pytest.raises(AttributeError, match="Cannot overwrite NamedTuple attribute _replace"):
        class Worse(NamedTuple):
            a: int

            def _replace(self) -> None:  # type: ignore[misc]  # mypy refuses it too
                pass


def _pair(n: int) -> tuple[Any, Any]:
    """A class of n fields (the last two with defaults) from here and from typing."""
    fields = [f"f{i}" for i in range(n)]
    ns: dict[str, Any] = {"__module__": __name__, "__annotations__": dict.fromkeys(fields, "int")}
    ns.update(dict.fromkeys(fields[-2:], 7) if n > 2 else {})
    ours: Any = type(NamedTuple)
    typings: Any = typing.NamedTupleMeta  # type: ignore[attr-defined]
    return ours(f"Ours{n}", (NamedTuple,), dict(ns)), typings(f"Ours{n}", (typing._NamedTuple,), dict(ns))  # type: ignore[attr-defined]


@pytest.mark.parametrize("n", [1, 2, 3, 11, 16, 17, 25])
def test_every_arity_makes_typings_class(n: int) -> None:
    ours, typings = _pair(n)
    for attr in ("_fields", "_field_defaults", "__match_args__", "__doc__", "__module__"):
        assert getattr(ours, attr) == getattr(typings, attr), attr
    args = list(range(n))
    assert ours(*args) == typings(*args) and repr(ours(*args)) == repr(typings(*args))
    kwargs = {f"f{i}": i for i in range(n)}
    assert ours(**kwargs) == tuple(args) and ours(**kwargs).f0 == 0
    if n > 2:
        assert ours(*args[:-2]) == typings(*args[:-2]) == (*args[:-2], 7, 7)
    r = ours(*args)
    assert r._replace(f0=9) == typings(*args)._replace(f0=9) and r._asdict() == kwargs
    bad: list[tuple[list[int], dict[str, int]]] = [([*args, 0], {}), (args, {"f0": 1}), ([], {"nope": 1})]
    for pos, kw in bad:
        with pytest.raises(TypeError):
            ours(*pos, **kw)
    with pytest.raises(TypeError, match=f"Expected {n} arguments, got {n + 1}"):
        ours._make([*args, 0])
    with pytest.raises(ValueError, match="unexpected field names: \\['nope'\\]"):
        r._replace(nope=1)
    with pytest.raises(AttributeError):
        r.f0 = 1
