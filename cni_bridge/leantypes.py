"""The field types of leanconf.py's table, each validating a decoded JSON value as pydantic's
lax mode does (pydantic-core 2.x: the conversions, the messages and the error paths), so the
lean validator answers what config.py's models answer. Only what the config's models use.

Every `validate(value, loc, errors)` returns the value of the type, or BAD after appending
(path, reason) to `errors`; all errors of an object are collected, as pydantic does.
"""

from __future__ import annotations

import math
from collections.abc import Callable

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

Loc = tuple[int | str, ...]
Errors = list[tuple[Loc, str]]


class _Bad:
    __slots__ = ()


BAD: Any = _Bad()
REQUIRED: Any = object()


class Type:
    text = ""  # the annotation as config.py spells it (tests compare it with the models')

    def validate(self, value: Any, loc: Loc, errors: Errors) -> Any:
        raise NotImplementedError


class _Str(Type):
    text = "str"

    def validate(self, value: Any, loc: Loc, errors: Errors) -> Any:
        if isinstance(value, str):
            return str(value)
        errors.append((loc, "Input should be a valid string"))
        return BAD


_TRUE = frozenset(("1", "on", "t", "true", "y", "yes"))
_FALSE = frozenset(("0", "off", "f", "false", "n", "no"))
_BOOL_PARSING = "Input should be a valid boolean, unable to interpret input"


class _Bool(Type):
    text = "bool"

    def validate(self, value: Any, loc: Loc, errors: Errors) -> Any:
        if isinstance(value, bool):
            return value
        if isinstance(value, str):
            low = value.lower()
            if low in _TRUE or low in _FALSE:
                return low in _TRUE
            errors.append((loc, _BOOL_PARSING))
            return BAD
        if isinstance(value, float) and value.is_integer() and -(2.0**63) < value < 2.0**63:
            value = int(value)  # pydantic goes through the integer: 2.0 is unparsable, 0.5 no bool
        if isinstance(value, int) and -(2**63) <= value < 2**63:  # pydantic's i64
            if value in (0, 1):
                return value == 1
            errors.append((loc, _BOOL_PARSING))
            return BAD
        errors.append((loc, "Input should be a valid boolean"))
        return BAD


# Rust's str::trim (Unicode White_Space), not Python's str.strip (which also strips \x1c-\x1f).
_WHITESPACE = (
    "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008"
    "\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)
_INT_PARSING = "Input should be a valid integer, unable to parse string as an integer"
_INT_SIZE = "Unable to parse input string as an integer, exceeded maximum size"
_DIGITS = frozenset("0123456789")


def _plain_int(text: str) -> int | None:
    """Rust's `str::parse` of an integer: one optional sign, then ASCII digits."""
    digits = text[1:] if text[:1] in ("+", "-") else text
    if not digits or not set(digits) <= _DIGITS:
        return None
    return int(text)


def _parse_int(text: str) -> int | None:
    value = _plain_int(text)
    # Python's rule for digit separators: not first or last, never two in a row.
    if value is None and "_" in text and not (text[0] == "_" or text[-1] == "_" or "__" in text):
        value = _plain_int(text.replace("_", ""))
    return value


def _str_int(text: str) -> int | str:
    text = text.strip(_WHITESPACE)
    if len(text) > 4300:
        return _INT_SIZE
    value = _parse_int(text)
    if value is None and "." in text:
        whole, _, zeros = text.partition(".")
        if zeros and set(zeros) == {"0"}:
            value = _parse_int(whole)
    return _INT_PARSING if value is None else value


class Int(Type):
    text = "int"

    def __init__(self, ge: int | None = None, le: int | None = None) -> None:
        self.ge, self.le = ge, le

    def _int(self, value: Any) -> int | str:
        if isinstance(value, int):  # bool too: True is 1, as pydantic's lax mode reads it
            return int(value)
        if isinstance(value, float):
            if not math.isfinite(value):
                return "Input should be a finite number"
            if not value.is_integer():
                return "Input should be a valid integer, got a number with a fractional part"
            if not -(2.0**63) < value < 2.0**63:
                return _INT_SIZE
            return int(value)
        if isinstance(value, str):
            return _str_int(value)
        return "Input should be a valid integer"

    def validate(self, value: Any, loc: Loc, errors: Errors) -> Any:
        out = self._int(value)
        if isinstance(out, str):
            errors.append((loc, out))
            return BAD
        if self.ge is not None and out < self.ge:
            errors.append((loc, f"Input should be greater than or equal to {self.ge}"))
            return BAD
        if self.le is not None and out > self.le:
            errors.append((loc, f"Input should be less than or equal to {self.le}"))
            return BAD
        return out


class _Any(Type):
    text = "Any"

    def validate(self, value: Any, loc: Loc, errors: Errors) -> Any:
        return value


class Instance(Type):
    """A value a `before` rule has already made (an ipaddress object)."""

    def __init__(self, *classes: type) -> None:
        self.classes = classes
        self.text = " | ".join(c.__name__ for c in classes)

    def validate(self, value: Any, loc: Loc, errors: Errors) -> Any:
        if isinstance(value, self.classes):
            return value
        errors.append((loc, f"Input should be an instance of {self.classes[0].__name__}"))
        return BAD


class IPAddressType(Type):
    """pydantic's own IPv4Address | IPv6Address (a field without a `before` rule, hostIP):
    either class from its text or its integer, IPv4 first; failing both, one error each."""

    text = "IPv4Address | IPv6Address"

    def validate(self, value: Any, loc: Loc, errors: Errors) -> Any:
        from ipaddress import IPv4Address, IPv6Address

        for cls in (IPv4Address, IPv6Address):
            if isinstance(value, cls):
                return value
        for cls in (IPv4Address, IPv6Address):
            try:
                return cls(value)
            except ValueError:
                pass
        errors.append((loc, "Input is not a valid IPv4 address"))
        errors.append((loc, "Input is not a valid IPv6 address"))
        return BAD


class Checked(Type):
    """A domain.py type: the base type first (5 is still "not a valid string"), then the class."""

    def __init__(self, cls: Callable[[Any], Any], base: Type) -> None:
        self.cls, self.base = cls, base
        self.text = getattr(cls, "__name__", "")

    def validate(self, value: Any, loc: Loc, errors: Errors) -> Any:
        value = self.base.validate(value, loc, errors)
        if value is BAD:
            return BAD
        try:
            return self.cls(value)
        except ValueError as exc:
            errors.append((loc, str(exc)))
            return BAD


class Optional(Type):
    def __init__(self, inner: Type) -> None:
        self.inner = inner
        self.text = f"{inner.text} | None"

    def validate(self, value: Any, loc: Loc, errors: Errors) -> Any:
        return None if value is None else self.inner.validate(value, loc, errors)


class Literal(Type):
    def __init__(self, *choices: str) -> None:
        self.choices = choices
        self.text = f"Literal[{', '.join(repr(c) for c in choices)}]"
        quoted = [repr(c) for c in choices]
        self.reason = f"Input should be {', '.join(quoted[:-1])} or {quoted[-1]}"

    def validate(self, value: Any, loc: Loc, errors: Errors) -> Any:
        if isinstance(value, str) and value in self.choices:
            return str(value)
        errors.append((loc, self.reason))
        return BAD


class List(Type):
    def __init__(self, item: Type) -> None:
        self.item = item
        self.text = f"list[{item.text}]"

    def validate(self, value: Any, loc: Loc, errors: Errors) -> Any:
        if not isinstance(value, list):
            errors.append((loc, "Input should be a valid list"))
            return BAD
        out = [self.item.validate(v, (*loc, i), errors) for i, v in enumerate(value)]
        return BAD if any(v is BAD for v in out) else out


class Dict(Type):
    def __init__(self, value: Type) -> None:
        self.value = value
        self.text = f"dict[str, {value.text}]"

    def validate(self, value: Any, loc: Loc, errors: Errors) -> Any:
        if not isinstance(value, dict):
            errors.append((loc, "Input should be a valid dictionary"))
            return BAD
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                errors.append(((*loc, str(k), "[key]"), "Input should be a valid string"))
                out[k] = BAD
            else:
                out[k] = self.value.validate(v, (*loc, k), errors)
        return BAD if any(v is BAD for v in out.values()) else out


class Field:
    __slots__ = ("after", "alias", "before", "default", "name", "type")

    def __init__(
        self,
        name: str,
        alias: str | None,
        type_: Type,
        default: Any,
        *,
        before: Callable[[Any], Any] | None = None,
        after: Callable[[Any], Any] | None = None,
    ) -> None:
        self.name, self.alias, self.type, self.default = name, alias, type_, default
        self.before, self.after = before, after

    def missing(self) -> Any:
        if isinstance(self.default, Model):
            return self.default.validate({}, (), [])
        if self.default is list or self.default is dict:
            return self.default()
        return self.default


class Model(Type):
    """A pydantic model's validation: the `before` rule on the raw value, a dict, each field
    (looked up by alias, then by name: populate_by_name), then, when every field is valid, the
    `after` rule on the object."""

    def __init__(
        self,
        title: str,
        cls: type,
        *fields: Field,
        before: Callable[[Any], Any] | None = None,
        after: Callable[[Any], None] | None = None,
    ) -> None:
        self.text = title
        self.cls, self.fields, self.before, self.after = cls, fields, before, after

    def validate(self, value: Any, loc: Loc, errors: Errors) -> Any:
        if self.before is not None:
            try:
                value = self.before(value)
            except ValueError as exc:
                errors.append((loc, str(exc)))
                return BAD
        if not isinstance(value, dict):
            errors.append((loc, f"Input should be a valid dictionary or instance of {self.text}"))
            return BAD
        before = len(errors)
        values: dict[str, Any] = {}
        for f in self.fields:
            key = f.alias if f.alias is not None and f.alias in value else f.name
            if key not in value:
                if f.default is REQUIRED:
                    errors.append(((*loc, f.alias or f.name), "Field required"))
                else:
                    values[f.name] = f.missing()
                continue
            floc = (*loc, key)
            v = value[key]
            try:
                if f.before is not None:
                    v = f.before(v)
                v = f.type.validate(v, floc, errors)
                if v is BAD:
                    continue
                if f.after is not None:
                    v = f.after(v)
            except ValueError as exc:
                errors.append((floc, str(exc)))
                continue
            values[f.name] = v
        if len(errors) > before:
            return BAD
        obj = self.cls(**values)
        if self.after is not None:
            try:
                self.after(obj)
            except ValueError as exc:
                errors.append((loc, str(exc)))
                return BAD
        return obj


STR: Type = _Str()
BOOL: Type = _Bool()
INT: Type = Int()
ANY: Type = _Any()


def _ip_types() -> tuple[Type, Type]:
    from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

    return Instance(IPv4Address, IPv6Address), Instance(IPv4Network, IPv6Network)


IP_ADDRESS, IP_NETWORK = _ip_types()
