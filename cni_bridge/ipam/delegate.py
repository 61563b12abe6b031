"""Run a foreign IPAM plugin (dhcp, static, whereabouts...) the way libcni's invoke package does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from typing import Any

from cni_bridge.childenv import child_env
from cni_bridge.errors import DECODE_FAILURE, INTERNAL, INVALID_CONFIG, CNIError

_MAX_DETAIL = 4096
# The caller holds the network's lock while a delegated plugin runs: a hung one (dhcp without
# its daemon, say) must not stall every ADD and DEL of the network for good.
DEFAULT_TIMEOUT = 60.0


def find_in_path(plugin_type: str, cni_path: str) -> str:
    """Path of the executable named plugin_type in the first CNI_PATH directory holding it."""
    if not plugin_type or "/" in plugin_type or plugin_type in (".", ".."):
        raise CNIError(INVALID_CONFIG, f"invalid plugin name {plugin_type!r}")
    dirs = [d for d in cni_path.split(os.pathsep) if d]
    if not dirs:
        raise CNIError(INVALID_CONFIG, "no paths provided")
    for d in dirs:
        candidate = os.path.join(d, plugin_type)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    # libcni's wording, with Go's []string formatting.
    raise CNIError(
        INVALID_CONFIG, f'failed to find plugin "{plugin_type}" in path [{" ".join(dirs)}]'
    )


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

    A failing plugin's own error object (code, msg, details) is raised as a CNIError; output
    that is not one becomes code 999. The plugin's stderr is passed on to ours (it is a log).
    """
    path = find_in_path(plugin_type, cni_path)
    child = child_env(env)
    child["CNI_COMMAND"] = command
    child.setdefault("CNI_PATH", cni_path)
    try:
        proc = subprocess.run(
            [path],
            input=stdin,
            env=child,
            capture_output=True,
            timeout=timeout,
            check=False,
            close_fds=True,
        )
    except subprocess.TimeoutExpired:
        raise CNIError(INTERNAL, f"plugin {plugin_type} {command} timed out") from None
    except OSError as exc:
        raise CNIError(INTERNAL, f"failed to run plugin {path}: {exc}") from None
    stderr = proc.stderr.decode("utf-8", errors="replace")
    if stderr:
        sys.stderr.write(stderr if stderr.endswith("\n") else stderr + "\n")
    if proc.returncode != 0:
        raise _plugin_error(plugin_type, proc.stdout, stderr)
    if not proc.stdout.strip():
        return {}  # DEL, CHECK, GC print nothing
    try:
        out = json.loads(proc.stdout)
    except ValueError as exc:
        raise CNIError(
            DECODE_FAILURE,
            f"failed to decode the output of plugin {plugin_type}: {exc}",
            _clip(proc.stdout.decode("utf-8", errors="replace")),
        ) from None
    if not isinstance(out, dict):
        raise CNIError(DECODE_FAILURE, f"plugin {plugin_type} printed JSON that is not an object")
    return out


def _plugin_error(plugin_type: str, stdout: bytes, stderr: str) -> CNIError:
    text = stdout.decode("utf-8", errors="replace").strip()
    if text:
        try:
            err = json.loads(text)
        except ValueError:
            err = None
        if isinstance(err, dict) and isinstance(err.get("code"), int) and err["code"] > 0:
            return CNIError(err["code"], str(err.get("msg", "")), str(err.get("details", "")))
        return CNIError(
            INTERNAL,
            f"plugin {plugin_type} failed but error parsing its diagnostic message",
            _clip(text),
        )
    if stderr.strip():
        return CNIError(INTERNAL, f"plugin {plugin_type} failed", _clip(stderr.strip()))
    return CNIError(INTERNAL, f"plugin {plugin_type} failed with no output")


def _clip(text: str) -> str:
    return text if len(text) <= _MAX_DETAIL else text[:_MAX_DETAIL] + "..."
