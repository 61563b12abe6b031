"""Both config validators on one input: the pydantic models (config.py, the agent's) and the
lean one (leanconf.py, an exec'd process's). `load_netconf` here is a drop-in for the tests:
it runs both, fails unless they agree (accept/reject, equal values down to each leaf's type,
same CNI code and message), and returns the lean object."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from cni_bridge import config, leanconf
from cni_bridge.errors import CNIError

Outcome = tuple[str, Any]


def dump(obj: Any) -> Any:
    """A canonical form: each object's fields by name, each leaf with its type's name, so an
    `InterfaceName` is not a `str`, nor an `IPv4Network` its text."""
    if isinstance(obj, BaseModel):
        return ("model", {n: dump(getattr(obj, n)) for n in type(obj).model_fields})
    if isinstance(obj, leanconf._Frozen):
        return ("model", {n: dump(getattr(obj, n)) for n in obj._names()})
    if isinstance(obj, list):
        return [dump(x) for x in obj]
    if isinstance(obj, dict):
        return {k: dump(v) for k, v in obj.items()}
    return (type(obj).__name__, repr(obj))


def outcome(load: Any, data: Any) -> tuple[Outcome, Any]:
    try:
        obj = load(data)
    except CNIError as exc:
        return ("error", (exc.code, exc.msg, exc.details)), exc
    return ("value", (type(obj).__name__, dump(obj))), obj


def compare(data: Any) -> tuple[Outcome, Any]:
    """Both validators' outcomes, asserted equal; the lean one's (object or CNIError)."""
    heavy, _ = outcome(config.load_netconf, data)
    lean, obj = outcome(leanconf.load_netconf, data)
    assert lean == heavy, f"validators disagree on {data!r}"
    return lean, obj


def load_netconf(data: dict[str, Any]) -> leanconf.NetConf:
    _, obj = compare(data)
    if isinstance(obj, CNIError):
        raise obj
    assert isinstance(obj, leanconf.NetConf)
    return obj
