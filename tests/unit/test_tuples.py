"""cni_bridge/tuples.py: the class typing.NamedTuple makes, without typing's annotation checks."""

from __future__ import annotations

import pickle
import typing

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
