"""The result cache, in libcni's cniCacheV1 layout, so either tool reads the other's entries.

    <cache_dir>/results/<network>-<containerID>-<ifname>
"""

from __future__ import annotations

import binascii
import json
import os

from cni_bridge import atomic
from cni_bridge.errors import DECODE_FAILURE, IO_FAILURE, CNIError
from cni_bridge.libcni.conf import loads

# `typing` costs milliseconds at start-up; only the type checker needs it.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from cni_bridge.libcni.conf import NetworkConfigList
    from cni_bridge.libcni.runtime import RuntimeConf

    Json = dict[str, Any]

CACHE_KIND = "cniCacheV1"


def cache_path(cache_dir: str, network: str, container_id: str, ifname: str) -> str:
    return os.path.join(cache_dir, "results", f"{network}-{container_id}-{ifname}")


def write_cache(cache_dir: str, conf: NetworkConfigList, rt: RuntimeConf, result: Json) -> None:
    """libcni cacheAdd: the same cniCacheV1 JSON, so either tool can read the other's entries."""
    entry: Json = {
        "kind": CACHE_KIND,
        "containerId": rt.container_id,
        # Go marshals []byte as base64.
        "config": binascii.b2a_base64(conf.raw, newline=False).decode(),
        "ifName": rt.ifname,
        "networkName": conf.name,
    }
    if rt.netns:
        entry["netns"] = rt.netns
    if rt.cni_args:
        entry["cniArgs"] = [list(p) for p in rt.cni_args]
    if rt.cap_args:
        entry["capabilityArgs"] = rt.cap_args
    entry["result"] = result
    path = cache_path(cache_dir, conf.name, rt.container_id, rt.ifname)
    # Concurrent writers of one entry (the same attachment added twice at once) each use a
    # name of their own; the last rename wins, as with libcni.
    tmp = f"{path}.tmp-{os.getpid()}-{os.urandom(4).hex()}"
    try:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        atomic.replace(path, json.dumps(entry).encode(), tmp)
    except OSError as exc:
        msg = f'failed to set network "{conf.name}" cached result: {exc}'
        raise CNIError(IO_FAILURE, msg) from None


def read_cache(cache_dir: str, network: str, container_id: str, ifname: str) -> Json | None:
    """The cache entry, or None when there is none (a missing entry is not an error)."""
    try:
        with open(cache_path(cache_dir, network, container_id, ifname), "rb") as fh:
            data = fh.read()
    except OSError:
        return None
    entry = loads(data, f'cached network "{network}"')
    if not isinstance(entry, dict):
        raise CNIError(DECODE_FAILURE, f'cached network "{network}" is not a JSON object')
    if entry.get("kind") != CACHE_KIND:
        # Before cniCacheV1 the file held the bare result (libcni getLegacyCachedResult).
        return {"kind": "legacy", "result": entry}
    return entry


def delete_cache(cache_dir: str, network: str, container_id: str, ifname: str) -> None:
    atomic.remove(cache_path(cache_dir, network, container_id, ifname))


def cached_attachments(cache_dir: str, network: str | None = None) -> list[Json]:
    """libcni GetCachedAttachments, optionally for one network: readable cniCacheV1 entries."""
    directory = os.path.join(cache_dir, "results")
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return []
    found = []
    for name in names:
        try:
            with open(os.path.join(directory, name), "rb") as fh:
                entry = json.loads(fh.read())
        except (OSError, ValueError):
            continue
        if (
            isinstance(entry, dict)
            and entry.get("kind") == CACHE_KIND
            and entry.get("ifName")
            and entry.get("networkName")
            and (network is None or entry["networkName"] == network)
        ):
            found.append(entry)
    return found


def result_as_version(result: Json, to_version: str) -> Json:
    """A cached result in the config's version, as libcni's GetAsVersion renders it.

    A result already in that version is passed on as it was stored; another is converted
    through the plugin's own result model (protocol/result.py), the one definition of what
    each version holds, which drops fields no version defines, as libcni's typed results do.
    """
    from_version = str(result.get("cniVersion") or to_version)
    if from_version == to_version:
        return result
    # Only a conversion needs the model (ipaddress, dataclasses): the common path skips it.
    from cni_bridge.protocol.result import parse_result

    return parse_result(result, from_version).render(to_version)
