"""libcni's CNIConfig: conflists run against plugins, with the result cache (`libcni/api.go`).

Deliberate differences from libcni, each explained where it happens:
- DEL removes the cache entry whatever the cniVersion (libcni leaks it below 0.4.0);
- client-side failures are CNIErrors too, so callers handle one shape.
"""

from __future__ import annotations

import json
import os

from cni_bridge.errors import INCOMPATIBLE_VERSION, INTERNAL, INVALID_ENV, CNIError
from cni_bridge.invoke import decode_object, invoke
from cni_bridge.libcni.cache import (
    cached_attachments,
    delete_cache,
    read_cache,
    result_as_version,
    write_cache,
)
from cni_bridge.libcni.conf import NetworkConfigList, conflist_from_dict, loads
from cni_bridge.libcni.runtime import (
    RuntimeConf,
    format_cni_args,
    parse_cni_args,
    validate_container_id,
    validate_ifname,
    validate_network_name,
)
from cni_bridge.protocol.versions import (
    CURRENT_VERSION,
    DEFAULT_CONFIG_VERSION,
    MINIMUM_VERSION,
    at_least,
)

# `typing` and `collections.abc` cost milliseconds at start-up; only the type checker needs them.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence
    from typing import IO, Any

    from cni_bridge.invoke import ExecRecord

    Json = dict[str, Any]

DEFAULT_CNI_PATH = "/opt/cni/bin"
DEFAULT_CACHE_DIR = "/var/lib/cni"
DEFAULT_TIMEOUT = 60.0
VALID_ATTACHMENTS_KEY = "cni.dev/valid-attachments"
# libcni hands DEL the cached result as prevResult from this version on.
DEL_PREV_RESULT_VERSION = "0.4.0"


def _supports(conf: NetworkConfigList, verb: str) -> bool:
    # A conflist without cniVersion is read as the oldest version, as libcni does.
    return at_least(conf.cni_version or DEFAULT_CONFIG_VERSION, MINIMUM_VERSION[verb])


class Client:
    """libcni's CNIConfig: runs conflists against plugins found in `cni_path`.

    `on_exec` sees every plugin exec (the benchmark's probe); `stderr` receives what plugins
    print there (None drops it).
    """

    def __init__(
        self,
        cni_path: Sequence[str],
        cache_dir: str = DEFAULT_CACHE_DIR,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        environ: Mapping[str, str] | None = None,
        stderr: IO[str] | None = None,
        on_exec: Callable[[ExecRecord], None] | None = None,
    ) -> None:
        self.cni_path = [p for p in cni_path if p]
        self.cache_dir = cache_dir
        self.timeout = timeout
        self.environ = dict(os.environ if environ is None else environ)
        self.stderr = stderr
        self.on_exec = on_exec

    # -- one plugin

    def _env(self, command: str, rt: RuntimeConf | None, path: str | None = None) -> dict[str, str]:
        # pkg/invoke Args.AsEnv: the caller's environment with the CNI_* values forced.
        env = dict(self.environ)
        env["CNI_COMMAND"] = command
        env["CNI_CONTAINERID"] = rt.container_id if rt else ""
        env["CNI_NETNS"] = rt.netns if rt else ""
        env["CNI_ARGS"] = format_cni_args(rt.cni_args) if rt else ""
        env["CNI_IFNAME"] = rt.ifname if rt else ""
        env["CNI_PATH"] = ":".join(self.cni_path) if path is None else path
        return env

    def _run(self, plugin: Json, command: str, stdin: bytes, env: Mapping[str, str]) -> bytes:
        return invoke(
            str(plugin["type"]),
            command,
            self.cni_path,
            stdin,
            env,
            timeout=self.timeout,
            stderr=self.stderr,
            on_exec=self.on_exec,
        )

    @staticmethod
    def build_config(
        conf: NetworkConfigList, plugin: Json, prev_result: Json | None, rt: RuntimeConf | None
    ) -> Json:
        """libcni buildOneConfig: name and cniVersion from the list, prevResult, runtimeConfig.

        Only capabilities the plugin declares (`"capabilities": {"portMappings": true}`) are
        passed on, and `runtimeConfig` is left out when none applies.
        """
        out = dict(plugin, name=conf.name, cniVersion=conf.cni_version)
        if prev_result is not None:
            out["prevResult"] = prev_result
        caps = plugin.get("capabilities")
        if rt is not None and isinstance(caps, dict):
            runtime = {
                cap: rt.cap_args[cap]
                for cap, enabled in caps.items()
                if enabled is True and cap in rt.cap_args
            }
            if runtime:
                out["runtimeConfig"] = runtime
        return out

    def _invoke(
        self,
        conf: NetworkConfigList,
        plugin: Json,
        command: str,
        prev: Json | None,
        rt: RuntimeConf,
    ) -> bytes:
        stdin = json.dumps(self.build_config(conf, plugin, prev, rt)).encode()
        return self._run(plugin, command, stdin, self._env(command, rt))

    @staticmethod
    def _decode_result(plugin: Json, out: bytes, cni_version: str) -> Json:
        result = decode_object(out, str(plugin["type"]))
        # pkg/invoke fixupResultVersion: a result without a version is in the config's.
        if not result.get("cniVersion"):
            result["cniVersion"] = cni_version
        return result

    # -- cached state

    def cached_entry(self, conf: NetworkConfigList, rt: RuntimeConf) -> Json | None:
        return read_cache(self.cache_dir, conf.name, rt.container_id, rt.ifname)

    def cached_result(self, conf: NetworkConfigList, rt: RuntimeConf) -> Json | None:
        entry = self.cached_entry(conf, rt)
        if entry is None or not isinstance(entry.get("result"), dict):
            return None
        return result_as_version(entry["result"], conf.cni_version)

    # -- verbs

    def add(self, conf: NetworkConfigList, rt: RuntimeConf) -> Json:
        """AddNetworkList: plugins in order, each given the previous one's result; cached."""
        validate_container_id(rt.container_id)
        validate_network_name(conf.name)
        validate_ifname(rt.ifname)
        result: Json | None = None
        for plugin in conf.plugins:
            out = self._invoke(conf, plugin, "ADD", result, rt)
            result = self._decode_result(plugin, out, conf.cni_version)
        assert result is not None  # a conflist has at least one plugin
        write_cache(self.cache_dir, conf, rt, result)
        return result

    def check(self, conf: NetworkConfigList, rt: RuntimeConf) -> None:
        """CheckNetworkList: 0.4.0+ only; in order, each given the cached result."""
        if not _supports(conf, "CHECK"):
            msg = f'configuration version "{conf.cni_version}" does not support the CHECK command'
            raise CNIError(INCOMPATIBLE_VERSION, msg)
        if conf.disable_check:
            return
        validate_container_id(rt.container_id)
        prev = self.cached_result(conf, rt)
        for plugin in conf.plugins:
            self._invoke(conf, plugin, "CHECK", prev, rt)

    def delete(self, conf: NetworkConfigList, rt: RuntimeConf) -> None:
        """DelNetworkList: reverse order, cached result as prevResult (0.4.0+); stops at the
        first failure, like libcni, so the runtime retries the whole DEL."""
        validate_container_id(rt.container_id)
        prev: Json | None = None
        if at_least(conf.cni_version or DEFAULT_CONFIG_VERSION, DEL_PREV_RESULT_VERSION):
            try:
                prev = self.cached_result(conf, rt)
            except CNIError:
                # libcni: an unusable cache entry is dropped and DEL goes on without it.
                delete_cache(self.cache_dir, conf.name, rt.container_id, rt.ifname)
        for plugin in reversed(conf.plugins):
            self._invoke(conf, plugin, "DEL", prev, rt)
        # libcni removes the entry only when it had a result to pass on, so below 0.4.0 it
        # leaks; after a successful DEL the attachment is gone whatever the version.
        delete_cache(self.cache_dir, conf.name, rt.container_id, rt.ifname)

    def gc(self, conf: NetworkConfigList, valid: Sequence[Mapping[str, str]] | None = None) -> None:
        """GCNetworkList: DEL the cached attachments not in `valid`, then GC each plugin once
        (1.1.0+, unless disableGC). Best effort: errors are collected and raised together.

        `valid=None` means every attachment this cache holds for the network, so GC removes
        only what plugins keep beyond it.
        """
        entries = cached_attachments(self.cache_dir, conf.name)
        if valid is None:
            valid = [{"containerID": e["containerId"], "ifname": e["ifName"]} for e in entries]
        keep = {(v.get("containerID"), v.get("ifname")) for v in valid}
        errors: list[str] = []
        for entry in entries:
            if (entry.get("containerId"), entry["ifName"]) in keep:
                continue
            rt = RuntimeConf(
                str(entry.get("containerId", "")),
                str(entry.get("netns", "")),
                str(entry["ifName"]),
                [(str(k), str(v)) for k, v in entry.get("cniArgs") or []],
                dict(entry.get("capabilityArgs") or {}),
            )
            try:
                self.delete(conf, rt)
            except CNIError as exc:
                errors.append(f"failed to delete stale attachment {rt.container_id}: {exc.msg}")
        if _supports(conf, "GC") and not conf.disable_gc:
            attachments = [{"containerID": v["containerID"], "ifname": v["ifname"]} for v in valid]
            for plugin in conf.plugins:
                stdin = dict(plugin, name=conf.name, cniVersion=conf.cni_version)
                stdin[VALID_ATTACHMENTS_KEY] = attachments
                try:
                    self._run(plugin, "GC", json.dumps(stdin).encode(), self._env("GC", None))
                except CNIError as exc:
                    errors.append(f"failed to GC plugin {plugin['type']}: {exc.msg}")
        if errors:
            raise CNIError(INTERNAL, "; ".join(errors))

    def status(self, conf: NetworkConfigList) -> None:
        """GetStatusNetworkList: nothing below 1.1.0; stops at the first plugin not ready."""
        if not _supports(conf, "STATUS"):
            return
        for plugin in conf.plugins:
            stdin = dict(plugin, name=conf.name, cniVersion=conf.cni_version)
            self._run(plugin, "STATUS", json.dumps(stdin).encode(), self._env("STATUS", None))

    def version(self, conf: NetworkConfigList) -> list[Json]:
        """GetVersionInfo of every plugin, with what libcni (and podman) send."""
        answers = []
        rt = RuntimeConf("", "dummy", "dummy")
        stdin = json.dumps({"cniVersion": CURRENT_VERSION}).encode()
        for plugin in conf.plugins:
            out = self._run(plugin, "VERSION", stdin, self._env("VERSION", rt, path="dummy"))
            answer = loads(out, f"VERSION answer of {plugin['type']!r}")
            answers.append({"type": plugin["type"], "version": answer})
        return answers


def run_chain(
    command: str,
    conflist: Mapping[str, Any] | NetworkConfigList,
    netns: str,
    container_id: str,
    ifname: str = "eth0",
    cni_path: str | Sequence[str] = DEFAULT_CNI_PATH,
    cap_args: Mapping[str, Any] | None = None,
    cache_dir: str = DEFAULT_CACHE_DIR,
    cni_args: str | Sequence[tuple[str, str]] = "",
    *,
    timeout: float = DEFAULT_TIMEOUT,
    on_exec: Callable[[ExecRecord], None] | None = None,
    environ: Mapping[str, str] | None = None,
    stderr: IO[str] | None = None,
) -> Json | None:
    """One verb (ADD, CHECK, DEL, GC, STATUS) over a whole conflist, as libcni runs it.

    Returns the final result for ADD, None otherwise; raises CNIError (PluginError when a
    plugin reported the failure).
    """
    conf = conflist if isinstance(conflist, NetworkConfigList) else conflist_from_dict(conflist)
    paths = cni_path.split(":") if isinstance(cni_path, str) else list(cni_path)
    pairs = parse_cni_args(cni_args) if isinstance(cni_args, str) else list(cni_args)
    client = Client(
        paths, cache_dir, timeout=timeout, environ=environ, stderr=stderr, on_exec=on_exec
    )
    rt = RuntimeConf(container_id, netns, ifname, pairs, dict(cap_args or {}))
    verb = command.upper()
    if verb == "ADD":
        return client.add(conf, rt)
    if verb == "CHECK":
        client.check(conf, rt)
    elif verb in ("DEL", "DELETE"):
        client.delete(conf, rt)
    elif verb == "GC":
        client.gc(conf)
    elif verb == "STATUS":
        client.status(conf)
    else:
        raise CNIError(INVALID_ENV, f"unknown command {command!r}")
    return None
