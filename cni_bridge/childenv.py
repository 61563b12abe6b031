"""The environment for programs we start (delegated IPAM, chained plugins from the client).

The frozen binary's bootloader points LD_LIBRARY_PATH at its own bundle and sets _PYI_*
variables; another program must get the caller's original environment, not those.
Standard library only.
"""

from __future__ import annotations

from collections.abc import Mapping


def child_env(env: Mapping[str, str]) -> dict[str, str]:
    out = {k: v for k, v in env.items() if not k.startswith("_PYI_") and k != "_MEIPASS2"}
    if "LD_LIBRARY_PATH_ORIG" in out:
        out["LD_LIBRARY_PATH"] = out.pop("LD_LIBRARY_PATH_ORIG")
    elif "_PYI_APPLICATION_HOME_DIR" in env or "_PYI_ARCHIVE_FILE" in env:
        out.pop("LD_LIBRARY_PATH", None)
    return out
