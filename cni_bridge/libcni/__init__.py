"""A CNI client library and command line, like libcni and the reference `cnitool`.

Not part of the plugin: nothing under cni_bridge imports it but the `cni-bridge client`
command. `make demo`, the tests and the benchmark drive chains of plugins through it.

Modules, one concern each:
    conf     conflists: parsing, and choosing one by name in a directory (libcni conf.go)
    runtime  RuntimeConf, the per-attachment inputs, and their checks
    cache    the cniCacheV1 result cache, and cached results in the config's version
    api      Client (libcni's CNIConfig: add / check / delete / gc / status / version), run_chain
    cli      the cnitool-like front end (`python -m cni_bridge.libcni`)
Running one plugin is cni_bridge.invoke's, shared with the plugin's delegated IPAM.

Standard library only, and lean even there: the client is exec'd once per command, so heavy
imports (pyroute2, nftables, pydantic, but also subprocess, tempfile, dataclasses, typing)
are kept out.
"""

from cni_bridge.invoke import ExecRecord, PluginError
from cni_bridge.libcni.api import Client, run_chain
from cni_bridge.libcni.conf import (
    NetworkConfigList,
    conflist_from_bytes,
    conflist_from_dict,
    load_conflist,
)
from cni_bridge.libcni.runtime import RuntimeConf

__all__ = [
    "Client",
    "ExecRecord",
    "NetworkConfigList",
    "PluginError",
    "RuntimeConf",
    "conflist_from_bytes",
    "conflist_from_dict",
    "load_conflist",
    "run_chain",
]
