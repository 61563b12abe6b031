"""Network configuration lists, read and chosen by name as libcni's `conf.go` does."""

from __future__ import annotations

import json
import os

from cni_bridge.errors import DECODE_FAILURE, INVALID_CONFIG, IO_FAILURE, CNIError

# `typing` and `collections.abc` cost milliseconds at start-up; only the type checker needs them.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

    Json = dict[str, Any]


class NetworkConfigList:
    """A parsed conflist; `raw` is what goes into the cache, as libcni stores it."""

    __slots__ = ("cni_version", "disable_check", "disable_gc", "name", "plugins", "raw")

    def __init__(
        self,
        name: str,
        cni_version: str,
        plugins: list[Json],
        raw: bytes,
        disable_check: bool = False,
        disable_gc: bool = False,
    ) -> None:
        self.name = name
        self.cni_version = cni_version
        self.plugins = plugins
        self.raw = raw
        self.disable_check = disable_check
        self.disable_gc = disable_gc

    def __repr__(self) -> str:
        types = [p.get("type") for p in self.plugins]
        return f"NetworkConfigList({self.name!r}, {self.cni_version!r}, {types})"


def loads(data: bytes | str, what: str) -> Any:
    """JSON, or the spec's "failed to decode content" naming `what` could not be read."""
    try:
        return json.loads(data)
    except ValueError as exc:
        raise CNIError(DECODE_FAILURE, f"error parsing {what}: {exc}") from None


def _parse_bool(value: object, key: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise CNIError(INVALID_CONFIG, f"error parsing configuration list: invalid {key} {value!r}")


def conflist_from_bytes(data: bytes) -> NetworkConfigList:
    """libcni ConfListFromBytes: a name, and a non-empty plugin list each with a type."""
    raw = loads(data, "configuration list")
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
        raise CNIError(INVALID_CONFIG, "error parsing configuration list: no name")
    version = raw.get("cniVersion", "")
    if not isinstance(version, str):
        raise CNIError(INVALID_CONFIG, "error parsing configuration list: invalid cniVersion")
    plugins = raw.get("plugins")
    if not isinstance(plugins, list) or not plugins:
        raise CNIError(INVALID_CONFIG, "error parsing configuration list: no plugins in list")
    for i, plugin in enumerate(plugins):
        if not isinstance(plugin, dict) or not plugin.get("type"):
            raise CNIError(INVALID_CONFIG, f"failed to parse plugin config {i}: missing 'type'")
    return NetworkConfigList(
        raw["name"],
        version,
        plugins,
        data,
        _parse_bool(raw.get("disableCheck", False), "disableCheck"),
        _parse_bool(raw.get("disableGC", False), "disableGC"),
    )


def conflist_from_conf(data: bytes) -> NetworkConfigList:
    """libcni ConfListFromConf: a single plugin config becomes a one-plugin list."""
    conf = loads(data, "configuration")
    if not isinstance(conf, dict) or not conf.get("type"):
        raise CNIError(INVALID_CONFIG, "error parsing configuration: missing 'type'")
    wrapped = {
        "name": conf.get("name"),
        "cniVersion": conf.get("cniVersion", ""),
        "plugins": [conf],
    }
    return conflist_from_bytes(json.dumps(wrapped).encode())


def conflist_from_dict(conflist: Mapping[str, Any]) -> NetworkConfigList:
    return conflist_from_bytes(json.dumps(conflist).encode())


def _conf_files(directory: str, extensions: tuple[str, ...]) -> list[str]:
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise CNIError(IO_FAILURE, f"cannot read {directory}: {exc}") from None
    paths = [os.path.join(directory, n) for n in names if os.path.splitext(n)[1] in extensions]
    return sorted(p for p in paths if os.path.isfile(p))


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError as exc:
        raise CNIError(IO_FAILURE, f"error reading {path}: {exc}") from None


def load_conflist(netconf_dir: str, name: str) -> NetworkConfigList:
    """libcni LoadConfList: the first *.conflist (sorted) of that name, else a *.conf/*.json."""
    lists = _conf_files(netconf_dir, (".conflist",))
    for path in lists:
        conf = conflist_from_bytes(_read(path))
        if conf.name == name:
            return conf
    singles = _conf_files(netconf_dir, (".conf", ".json"))
    if not lists and not singles:
        raise CNIError(INVALID_CONFIG, f"no net configurations found in {netconf_dir}")
    for path in singles:
        single = conflist_from_conf(_read(path))
        if single.name == name:
            return single
    raise CNIError(INVALID_CONFIG, f'no net configuration with name "{name}" in {netconf_dir}')
