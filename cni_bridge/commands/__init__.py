"""Verb dispatch: the one wrapper every verb runs in.

Each verb's module is imported only when that verb runs, and exposes
`run(request, conf, env, deps) -> result | None`. Here, once for all of them: the side-effect
interfaces are built (or the caller's fakes taken), the lower layers' exceptions become CNI
errors with their codes, and the netlink socket is closed whatever happens.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping

from cni_bridge.netconf import NetConf
from cni_bridge.protocol.request import Request

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from cni_bridge.commands.deps import Deps

_MODULES = {
    "ADD": "cni_bridge.commands.add",
    "DEL": "cni_bridge.commands.delete",
    "CHECK": "cni_bridge.commands.check",
    "STATUS": "cni_bridge.commands.status",
    "GC": "cni_bridge.commands.gc",
}


def dispatch(
    request: Request, conf: NetConf, env: Mapping[str, str], deps: Deps | None = None
) -> dict[str, Any] | None:
    from cni_bridge.commands.common import mapped_errors
    from cni_bridge.commands.deps import real_deps

    if deps is None:  # the real side effects: the kernel decides whether we may
        from cni_bridge import privileges

        privileges.require()
    module = importlib.import_module(_MODULES[request.command])
    deps = deps or real_deps(env)
    try:
        with mapped_errors():
            result: dict[str, Any] | None = module.run(request, conf, env, deps)
    finally:
        try:
            if request.command in ("ADD", "DEL", "CHECK"):
                from cni_bridge.converge.trigger import after_verb

                after_verb(conf, deps, request)  # heals if the verb saw drift; never raises
        finally:
            deps.close()
    return result
