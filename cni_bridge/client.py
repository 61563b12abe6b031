"""A small CNI client, like the reference `cnitool`, following libcni's rules.

Standard library only, and lean even there: `make demo`, the tests and the benchmark exec it
once per command, so heavy imports (pyroute2, nftables, pydantic, but also subprocess,
tempfile, dataclasses, typing) are kept out. Plugins are started with `os.posix_spawn` and
reaped with `os.wait4`, which also reports each exec's wall time and ru_maxrss.

Library:
    load_conflist(netconf_dir, name) -> NetworkConfigList
    Client(cni_path, cache_dir, ...).add / check / delete / gc / status / version
    run_chain(command, conflist, netns, container_id, ifname, cni_path, cap_args, cache_dir,
              cni_args) -> dict | None
Front end:
    main(argv) -> int with argv = [add|check|del <network> <netns>] or [gc|status|version <network>]

Behaviour follows libcni (`libcni/api.go`, `libcni/conf.go`, `pkg/invoke`). Deliberate
differences, each explained where it happens:
- DEL removes the cache entry whatever the cniVersion (libcni leaks it below 0.4.0);
- the CLI reuses the cached capability args on CHECK/DEL when CAP_ARGS is unset;
- client-side failures are reported as CNI error objects too, so callers parse one shape.
"""

from __future__ import annotations

import binascii
import errno
import json
import os
import select
import signal
import sys
import time

from cni_bridge.childenv import child_env
from cni_bridge.errors import (
    DECODE_FAILURE,
    INCOMPATIBLE_VERSION,
    INTERNAL,
    INVALID_CONFIG,
    INVALID_ENV,
    IO_FAILURE,
    CNIError,
)
from cni_bridge.protocol.names import ifname_problem, is_id

# `typing` and `collections.abc` cost milliseconds at start-up; only the type checker needs them.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable, Mapping, Sequence
    from typing import IO, Any, TextIO

    Json = dict[str, Any]
    CniArgs = list[tuple[str, str]]

DEFAULT_NETCONF_DIR = "/etc/cni/net.d"
DEFAULT_CNI_PATH = "/opt/cni/bin"
DEFAULT_CACHE_DIR = "/var/lib/cni"
DEFAULT_TIMEOUT = 60.0
CACHE_KIND = "cniCacheV1"
CURRENT_VERSION = "1.1.0"  # what libcni sends on VERSION (`version.Current()`)
VALID_ATTACHMENTS_KEY = "cni.dev/valid-attachments"



# --------------------------------------------------------------------------- configuration


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


def _parse_bool(value: object, key: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise CNIError(INVALID_CONFIG, f"error parsing configuration list: invalid {key} {value!r}")


def _loads(data: bytes | str, what: str) -> Any:
    try:
        return json.loads(data)
    except ValueError as exc:
        raise CNIError(DECODE_FAILURE, f"error parsing {what}: {exc}") from None


def conflist_from_bytes(data: bytes) -> NetworkConfigList:
    """libcni ConfListFromBytes: a name, and a non-empty plugin list each with a type."""
    raw = _loads(data, "configuration list")
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
    conf = _loads(data, "configuration")
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


# --------------------------------------------------------------------------- runtime inputs


class RuntimeConf:
    """libcni RuntimeConf: the per-attachment arguments of one invocation."""

    __slots__ = ("cap_args", "cni_args", "container_id", "ifname", "netns")

    def __init__(
        self,
        container_id: str,
        netns: str,
        ifname: str = "eth0",
        cni_args: CniArgs | None = None,
        cap_args: Json | None = None,
    ) -> None:
        self.container_id = container_id
        self.netns = netns
        self.ifname = ifname
        self.cni_args: CniArgs = list(cni_args or [])
        self.cap_args: Json = dict(cap_args or {})

    def __repr__(self) -> str:
        return f"RuntimeConf({self.container_id!r}, {self.netns!r}, {self.ifname!r})"


def parse_cni_args(value: str) -> CniArgs:
    """cnitool's parser: `K=V;K2=V2` with both sides non-empty."""
    pairs: CniArgs = []
    for pair in value.split(";") if value else ():
        key, sep, val = pair.partition("=")
        if not sep or not key or not val:
            raise CNIError(INVALID_ENV, f"invalid CNI_ARGS pair {pair!r}")
        pairs.append((key, val))
    return pairs


def format_cni_args(pairs: Sequence[tuple[str, str]]) -> str:
    return ";".join(f"{k}={v}" for k, v in pairs)


def parse_cap_args(value: str) -> Json:
    caps = _loads(value, "CAP_ARGS") if value else {}
    if not isinstance(caps, dict):
        raise CNIError(INVALID_ENV, "CAP_ARGS must be a JSON object")
    return caps


def container_id_for(netns: str) -> str:
    """cnitool's container ID, a hash of the absolute netns path, so both tools agree."""
    import hashlib  # only the CLI needs it; it loads OpenSSL

    return "cnitool-" + hashlib.sha512(netns.encode()).digest()[:10].hex()


def validate_container_id(cid: str) -> None:
    # Also keeps the cache path inside the cache directory.
    if not is_id(cid):
        raise CNIError(INVALID_ENV, f"invalid characters in containerID {cid!r}")


def validate_network_name(name: str) -> None:
    if not is_id(name):
        raise CNIError(INVALID_CONFIG, f"invalid characters found in network name {name!r}")


def validate_ifname(ifname: str) -> None:
    if ifname_problem(ifname):
        raise CNIError(INVALID_ENV, f"invalid interface name {ifname!r}")


# --------------------------------------------------------------------------- versions


def version_tuple(version: str) -> tuple[int, int, int]:
    parts = (version or "0.1.0").split(".")  # the spec's default for a missing version
    try:
        major, minor, patch = (int(p) for p in parts)
    except ValueError:
        raise CNIError(INCOMPATIBLE_VERSION, f"invalid version {version!r}") from None
    return major, minor, patch


def convert_result(result: Json, to_version: str) -> Json:
    """Render a cached result in the config's version, as libcni's GetAsVersion does.

    Within the 0.3.0+ family the only difference is `ips[].version` (gone in 1.0.0); the flat
    0.1/0.2 form is passed on only when the versions already match.
    """
    from_version = result.get("cniVersion") or to_version
    if from_version == to_version:
        return result
    if version_tuple(from_version) < (0, 3, 0) or version_tuple(to_version) < (0, 3, 0):
        raise CNIError(
            INCOMPATIBLE_VERSION, f"cannot convert result from {from_version} to {to_version}"
        )
    out = dict(result, cniVersion=to_version)
    if isinstance(result.get("ips"), list):
        ips = []
        for ip in result["ips"]:
            entry = dict(ip)
            if version_tuple(to_version) >= (1, 0, 0):
                entry.pop("version", None)
            else:
                entry["version"] = "6" if ":" in str(entry.get("address", "")) else "4"
            ips.append(entry)
        out["ips"] = ips
    return out


# --------------------------------------------------------------------------- result cache


def cache_path(cache_dir: str, network: str, container_id: str, ifname: str) -> str:
    return os.path.join(cache_dir, "results", f"{network}-{container_id}-{ifname}")


def _write_atomic(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}-{os.urandom(4).hex()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        with open(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        _unlink(tmp)
        raise


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        return  # already gone: fine (contextlib.suppress would cost an import)


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
    try:
        _write_atomic(path, json.dumps(entry).encode())
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
    entry = _loads(data, f'cached network "{network}"')
    if not isinstance(entry, dict):
        raise CNIError(DECODE_FAILURE, f'cached network "{network}" is not a JSON object')
    if entry.get("kind") != CACHE_KIND:
        # Before cniCacheV1 the file held the bare result (libcni getLegacyCachedResult).
        return {"kind": "legacy", "result": entry}
    return entry


def delete_cache(cache_dir: str, network: str, container_id: str, ifname: str) -> None:
    _unlink(cache_path(cache_dir, network, container_id, ifname))


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


# --------------------------------------------------------------------------- plugin execution


class ExecRecord:
    """One plugin exec: whole-process wall time, exit code and ru_maxrss from os.wait4.

    `maxrss_kib` is an upper bound, not the plugin's own peak: Linux carries the exec'ing
    process's peak RSS across exec (exec_mmap), so it is at least this client's own RSS. To
    measure a plugin alone, exec it from a small process (the benchmark uses GNU time).
    """

    __slots__ = ("command", "exit_code", "maxrss_kib", "plugin", "wall_s")

    def __init__(
        self, plugin: str, command: str, wall_s: float, maxrss_kib: int, exit_code: int
    ) -> None:
        self.plugin = plugin
        self.command = command
        self.wall_s = wall_s
        self.maxrss_kib = maxrss_kib
        self.exit_code = exit_code

    def as_dict(self) -> Json:
        return {name: getattr(self, name) for name in self.__slots__}

    def __repr__(self) -> str:
        return f"ExecRecord({self.as_dict()})"


class PluginError(CNIError):
    """A plugin's own error object, kept verbatim in `raw` so it is printed unchanged."""

    def __init__(self, plugin: str, command: str, raw: Json) -> None:
        code = raw.get("code")
        super().__init__(
            code if isinstance(code, int) else INTERNAL,
            str(raw.get("msg", "")),
            str(raw.get("details", "")),
        )
        self.plugin = plugin
        self.command = command
        self.raw = raw

    def to_dict(self, cni_version: str) -> Json:
        out = dict(self.raw)
        out.setdefault("cniVersion", cni_version)
        return out


def find_in_path(plugin: str, paths: Sequence[str]) -> str:
    if not plugin or "/" in plugin or plugin in (".", ".."):
        # A type with a path in it would run something outside CNI_PATH.
        raise CNIError(INVALID_CONFIG, f"invalid plugin type {plugin!r}")
    for directory in paths:
        candidate = os.path.join(directory, plugin)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise CNIError(IO_FAILURE, f'failed to find plugin "{plugin}" in path {list(paths)}')


def _spawn(path: str, env: Mapping[str, str]) -> tuple[int, int, int, int]:
    """Start `path` with pipes on 0/1/2: (pid, stdin writer, stdout reader, stderr reader)."""
    in_r, in_w = os.pipe()  # os.pipe fds are close-on-exec; dup2 onto 0/1/2 clears that
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    actions = [
        (os.POSIX_SPAWN_DUP2, in_r, 0),
        (os.POSIX_SPAWN_DUP2, out_w, 1),
        (os.POSIX_SPAWN_DUP2, err_w, 2),
    ]
    try:
        for attempt in range(6):
            try:
                # Python ignores SIGPIPE and the ignore survives exec: give plugins the default.
                pid = os.posix_spawn(
                    path, [path], child_env(env), file_actions=actions, setsigdef=(signal.SIGPIPE,)
                )
                break
            except OSError as exc:
                # libcni retries "text file busy": the plugin binary is being replaced.
                if exc.errno != errno.ETXTBSY or attempt == 5:
                    raise CNIError(IO_FAILURE, f"cannot exec {path}: {exc}") from None
                time.sleep(1)
    except BaseException:
        for fd in (in_w, out_r, err_r):
            os.close(fd)
        raise
    finally:
        for fd in (in_r, out_w, err_w):
            os.close(fd)
    return pid, in_w, out_r, err_r


def _pump(in_w: int, out_r: int, err_r: int, data: bytes, deadline: float) -> tuple[bytes, bytes]:
    """Feed stdin and drain stdout/stderr until both are at EOF (like Go's exec.Cmd.Run).

    Closes `in_w`. Raises TimeoutError at `deadline`.
    """
    sinks: dict[int, list[bytes]] = {out_r: [], err_r: []}
    poller = select.poll()
    poller.register(out_r, select.POLLIN)
    poller.register(err_r, select.POLLIN)
    view = memoryview(data)
    pos = 0
    try:
        if data:
            os.set_blocking(in_w, False)
            poller.register(in_w, select.POLLOUT)
        else:
            os.close(in_w)
            in_w = -1
        reading = 2
        while reading:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            for fd, _ in poller.poll(remaining * 1000):
                if fd == in_w:
                    try:
                        pos += os.write(in_w, view[pos : pos + 65536])
                    except BlockingIOError:
                        continue
                    except BrokenPipeError:
                        pos = len(data)  # the plugin did not read all of stdin: its business
                    if pos >= len(data):
                        poller.unregister(in_w)
                        os.close(in_w)
                        in_w = -1
                    continue
                chunk = os.read(fd, 65536)
                if chunk:
                    sinks[fd].append(chunk)
                else:
                    poller.unregister(fd)
                    reading -= 1
    finally:
        if in_w >= 0:
            os.close(in_w)
    return b"".join(sinks[out_r]), b"".join(sinks[err_r])


def _await_exit(pid: int, deadline: float) -> None:
    """Wait, bounded, for `pid` to exit without reaping it (so the wait4 after cannot hang)."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return  # no pidfd (old kernel): the pipes are closed, a blocking wait4 will do
    try:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        if not poller.poll(max(0.0, deadline - time.monotonic()) * 1000):
            raise TimeoutError
    finally:
        os.close(pidfd)


def exec_plugin(
    path: str, stdin: bytes, env: Mapping[str, str], timeout: float
) -> tuple[int, bytes, bytes, float, int]:
    """Run one plugin: (exit code, stdout, stderr, wall seconds, max RSS in KiB)."""
    start = time.perf_counter()
    deadline = time.monotonic() + timeout
    pid, in_w, out_r, err_r = _spawn(path, env)
    timed_out = False
    try:
        out, err = _pump(in_w, out_r, err_r, stdin, deadline)
        _await_exit(pid, deadline)
    except TimeoutError:
        timed_out = True
        out = err = b""
    except BaseException:
        os.kill(pid, signal.SIGKILL)
        os.wait4(pid, 0)
        raise
    finally:
        os.close(out_r)
        os.close(err_r)
    if timed_out:
        os.kill(pid, signal.SIGKILL)
    _, status, usage = os.wait4(pid, 0)
    wall = time.perf_counter() - start
    if timed_out:
        raise CNIError(IO_FAILURE, f"plugin {path} timed out after {timeout:g}s")
    return os.waitstatus_to_exitcode(status), out, err, wall, int(usage.ru_maxrss)


def _plugin_failure(plugin_type: str, command: str, code: int, out: bytes, err: bytes) -> CNIError:
    """libcni RawExec.pluginErr: the error object on stdout, else a message made of stderr."""
    if out.strip():
        try:
            raw = json.loads(out)
        except ValueError:
            raw = None
        if isinstance(raw, dict):
            return PluginError(plugin_type, command, raw)
        text = out.decode(errors="replace")
        msg = f"netplugin failed but error parsing its diagnostic message {text!r}"
    elif err.strip():
        msg = f"netplugin failed: {err.decode(errors='replace').strip()!r}: exit status {code}"
    else:
        msg = f"netplugin failed with no error message: exit status {code}"
    return PluginError(plugin_type, command, {"code": INTERNAL, "msg": msg})


# --------------------------------------------------------------------------- the client


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
        plugin_type = str(plugin["type"])
        path = find_in_path(plugin_type, self.cni_path)
        code, out, err, wall, rss = exec_plugin(path, stdin, env, self.timeout)
        if self.on_exec is not None:
            self.on_exec(ExecRecord(plugin_type, command, wall, rss, code))
        if err and self.stderr is not None:
            self.stderr.write(err.decode(errors="replace"))
        if code != 0:
            raise _plugin_failure(plugin_type, command, code, out, err)
        return out

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
        result = _loads(out, f"result of plugin {plugin['type']!r}")
        if not isinstance(result, dict):
            raise CNIError(DECODE_FAILURE, f"plugin {plugin['type']!r} returned a non-object")
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
        return convert_result(entry["result"], conf.cni_version)

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
        if version_tuple(conf.cni_version) < (0, 4, 0):
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
        if version_tuple(conf.cni_version) >= (0, 4, 0):
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
        if version_tuple(conf.cni_version) >= (1, 1, 0) and not conf.disable_gc:
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
        if version_tuple(conf.cni_version) < (1, 1, 0):
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
            answer = _loads(out, f"VERSION answer of {plugin['type']!r}")
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


# --------------------------------------------------------------------------- front end

_NEEDS_NETNS = ("add", "check", "del")


def _parser() -> argparse.ArgumentParser:
    import argparse  # only the CLI pays for it

    p = argparse.ArgumentParser(
        prog="cni-bridge client",
        description="Run a CNI network configuration list against a network namespace "
        "(like cnitool).",
        epilog="environment: NETCONFPATH (default /etc/cni/net.d), CNI_PATH (default "
        "/opt/cni/bin), CAP_ARGS (JSON object), CNI_ARGS (K=V;...), CNI_IFNAME (default eth0), "
        "CNI_CONTAINERID (default: a hash of the netns path, as cnitool), CNI_CACHE_DIR "
        "(default /var/lib/cni), CNI_CLIENT_TIMEOUT (seconds per plugin exec, default 60)",
    )
    p.add_argument("command", choices=("add", "check", "del", "gc", "status", "version"))
    p.add_argument("network", help="the name of a conflist (or single conf) in NETCONFPATH")
    p.add_argument("netns", nargs="?", default="", help="netns path, or a name in /run/netns")
    p.add_argument("-i", "--ifname", help="interface name (default $CNI_IFNAME, else eth0)")
    p.add_argument("--container-id", help="container ID (default $CNI_CONTAINERID)")
    p.add_argument(
        "--valid-attachments",
        metavar="JSON",
        help='gc: JSON list of {"containerID": ..., "ifname": ...} to keep '
        "(default: the network's cache entries)",
    )
    return p


def _resolve_netns(arg: str) -> str:
    # A bare name means an `ip netns add` namespace; cnitool would read it relative to the
    # working directory, which is rarely what is meant.
    if arg and "/" not in arg:
        for base in ("/run/netns", "/var/run/netns"):
            if os.path.exists(os.path.join(base, arg)):
                return os.path.join(base, arg)
    return os.path.abspath(arg) if arg else ""


def _valid_attachments(text: str | None) -> list[dict[str, str]] | None:
    if text is None:
        return None
    value = _loads(text, "--valid-attachments")
    if not isinstance(value, list) or not all(
        isinstance(v, dict)
        and isinstance(v.get("containerID"), str)
        and isinstance(v.get("ifname"), str)
        for v in value
    ):
        msg = '--valid-attachments must be a list of {"containerID": ..., "ifname": ...}'
        raise CNIError(INVALID_ENV, msg)
    return [{"containerID": v["containerID"], "ifname": v["ifname"]} for v in value]


def _timeout(environ: Mapping[str, str]) -> float:
    text = environ.get("CNI_CLIENT_TIMEOUT", "")
    try:
        value = float(text) if text else DEFAULT_TIMEOUT
    except ValueError:
        value = -1.0
    if value <= 0:
        raise CNIError(INVALID_ENV, f"CNI_CLIENT_TIMEOUT={text!r} is not a positive number")
    return value


def _dispatch(
    args: argparse.Namespace, conf: NetworkConfigList, environ: Mapping[str, str], client: Client
) -> Json | list[Json] | None:
    if args.command == "gc":
        client.gc(conf, _valid_attachments(args.valid_attachments))
        return None
    if args.command == "status":
        client.status(conf)
        return None
    if args.command == "version":
        return client.version(conf)
    netns = _resolve_netns(args.netns)
    cap_text = environ.get("CAP_ARGS")
    rt = RuntimeConf(
        args.container_id or environ.get("CNI_CONTAINERID") or container_id_for(netns),
        netns,
        args.ifname or environ.get("CNI_IFNAME") or "eth0",
        parse_cni_args(environ.get("CNI_ARGS", "")),
        parse_cap_args(cap_text or ""),
    )
    if args.command == "add":
        return client.add(conf, rt)
    if cap_text is None:
        # As runtimes do with libcni's GetNetworkListCachedConfig: CHECK and DEL reuse the
        # capability args of the ADD, so port mappings are checked and torn down.
        validate_container_id(rt.container_id)
        try:
            entry = client.cached_entry(conf, rt)
        except CNIError:
            entry = None  # an unreadable entry is DEL's to drop, not a reason to fail here
        if entry is not None and isinstance(entry.get("capabilityArgs"), dict):
            rt.cap_args = dict(entry["capabilityArgs"])
    if args.command == "check":
        client.check(conf, rt)
    else:
        client.delete(conf, rt)
    return None


def main(
    argv: Sequence[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """`add|check|del <network> <netns>`, `gc|status|version <network>`; 0 ok, 1 failure.

    ADD prints the result and VERSION the plugins' answers; a failure prints the CNI error
    object on stdout (the plugin's own when a plugin failed) and a one-line reason on stderr.
    """
    env = os.environ if environ is None else environ
    out = sys.stdout if stdout is None else stdout
    err = sys.stderr if stderr is None else stderr
    parser = _parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else list(argv))
    if args.command in _NEEDS_NETNS and not args.netns:
        parser.error(f"{args.command} needs a network namespace path")
    version = CURRENT_VERSION
    try:
        conf = load_conflist(env.get("NETCONFPATH") or DEFAULT_NETCONF_DIR, args.network)
        version = conf.cni_version or version
        client = Client(
            (env.get("CNI_PATH") or DEFAULT_CNI_PATH).split(":"),
            env.get("CNI_CACHE_DIR") or DEFAULT_CACHE_DIR,
            timeout=_timeout(env),
            environ=env,
            stderr=err,
        )
        answer = _dispatch(args, conf, env, client)
    except CNIError as exc:
        reason = exc.msg + (f"; {exc.details}" if exc.details else "")
        if isinstance(exc, PluginError):
            reason = f'plugin type="{exc.plugin}" failed ({exc.command.lower()}): {reason}'
        err.write(reason + "\n")
        out.write(json.dumps(exc.to_dict(version), indent=4) + "\n")
        return 1
    if answer is not None:
        # libcni's Result.Print indents with four spaces.
        out.write(json.dumps(answer, indent=4) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
