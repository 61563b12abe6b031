"""Slotted: the equality, hashability and repr a (non-frozen) dataclass gave the mutable records
that replaced theirs with it."""

from ipaddress import ip_network

import pytest

from cni_bridge.protocol.result import DNS, Result, Route
from cni_bridge.slotted import Slotted


class _Rec(Slotted):
    __slots__ = ("a", "b", "secret")
    _hidden = ("secret",)

    def __init__(self, a: int, b: list[int], secret: object = None) -> None:
        self.a = a
        self.b = b
        self.secret = secret


class _Other(Slotted):
    __slots__ = ("a", "b", "secret")

    def __init__(self, a: int, b: list[int]) -> None:
        self.a, self.b, self.secret = a, b, None


def test_equal_by_class_and_fields() -> None:
    assert _Rec(1, [2]) == _Rec(1, [2])
    assert _Rec(1, [2]) != _Rec(1, [3])
    assert _Rec(1, [2], "x") != _Rec(1, [2], "y")  # hidden from repr, not from equality
    assert _Rec(1, [2]) != _Other(1, [2])  # same fields, another class
    assert _Rec(1, [2]) != (1, [2], None)


def test_unhashable_and_no_stray_attributes() -> None:
    with pytest.raises(TypeError):
        hash(_Rec(1, []))
    with pytest.raises(AttributeError):
        _Rec(1, []).c = 3  # type: ignore[attr-defined]


def test_repr_names_the_shown_fields() -> None:
    assert repr(_Rec(1, [2], "pw")) == "_Rec(a=1, b=[2])"


def test_result_defaults_are_fresh_lists() -> None:
    one, two = Result(), Result()
    one.dns.search.append("x")
    one.routes.append(Route(ip_network("0.0.0.0/0")))
    assert two.dns == DNS() and two.routes == [] and one != two


def test_not_taken_for_a_namedtuple() -> None:
    # hasattr(x, "_fields") is the usual namedtuple test (json encoders, pretty printers).
    assert not hasattr(_Rec(1, [2]), "_fields")
