"""Run a foreign IPAM plugin (dhcp, static, whereabouts...) the way libcni's invoke package does."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

from cni_bridge.errors import CNIError
from cni_bridge.invoke import PluginError, decode_object, invoke

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

# The caller holds the network's lock while a delegated plugin runs: a hung one (dhcp without
# its daemon, say) must not stall every ADD and DEL of the network for good.
DEFAULT_TIMEOUT = 60.0


def exec_plugin(
    plugin_type: str,
    command: str,
    env: Mapping[str, str],
    stdin: bytes,
    cni_path: str,
    *,
    timeout: float | None = DEFAULT_TIMEOUT,
) -> dict[str, Any]:
    """Run plugin_type with CNI_COMMAND=command; return its stdout JSON object ({} if empty).

    Only `env` is passed on (with CNI_PATH defaulting to `cni_path`), not our own environment.
    A failing plugin's error object is raised as a CNIError of its code, message and details
    (answered in our config's version, like any error of ours). The plugin's stderr is passed
    on to ours: it is a log.
    """
    child = dict(env)
    child["CNI_COMMAND"] = command
    child.setdefault("CNI_PATH", cni_path)
    paths = cni_path.split(os.pathsep)
    try:
        out = invoke(plugin_type, command, paths, stdin, child, timeout=timeout, stderr=sys.stderr)
    except PluginError as exc:
        raise CNIError(exc.code, exc.msg, exc.details) from None
    if not out.strip():
        return {}  # DEL, CHECK, GC print nothing
    return decode_object(out, plugin_type)
