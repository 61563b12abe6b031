"""Verb dispatch. Each verb's module is imported only when that verb runs."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from cni_bridge.config import NetConf
from cni_bridge.protocol.request import Request

_MODULES = {
    "ADD": "cni_bridge.commands.add",
    "DEL": "cni_bridge.commands.delete",
    "CHECK": "cni_bridge.commands.check",
    "STATUS": "cni_bridge.commands.status",
    "GC": "cni_bridge.commands.gc",
}


def dispatch(request: Request, conf: NetConf, env: Mapping[str, str]) -> dict[str, Any] | None:
    module = importlib.import_module(_MODULES[request.command])
    result: dict[str, Any] | None = module.run(request, conf, env)
    return result
