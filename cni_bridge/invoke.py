"""Running another CNI plugin, as libcni's `pkg/invoke` does: the libcni client runs every
plugin of a chain with it, and the plugin runs a delegated IPAM plugin (dhcp, static...) with it.

Standard library only, and lean even there: the client is exec'd once per command (by
`make demo`, the tests and the benchmark), so subprocess (and the selectors, threading and
signal machinery it imports) is kept out. Plugins are started with `os.posix_spawn` and
reaped with `os.wait4`, which also reports each exec's wall time and ru_maxrss.

One set of failure codes for every caller:
- a type that names no executable in CNI_PATH: 7 (invalid network config). libcni's
  FindInPath returns an untyped error there (which a plugin built on skel turns into 999); the
  spec's 7 is the code for a configuration that cannot be used, and it is the configuration
  that names the type. 5 (I/O failure) is the spec's code for failing to read or write data,
  such as the config on stdin, which is not what happened.
- a plugin that exits non-zero: its own error object (PluginError keeps it verbatim), else
  libcni's wording (RawExec.pluginErr) with code 999.
- a plugin that cannot be started, or does not finish in time: 999.
"""

from __future__ import annotations

import errno
import json
import os
import select
import signal
import time

from cni_bridge.errors import DECODE_FAILURE, INTERNAL, INVALID_CONFIG, CNIError

# `typing` and `collections.abc` cost milliseconds at start-up; only the type checker needs them.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence
    from typing import IO, Any

# A plugin that prints megabytes of garbage should not make an error object of that size.
MAX_QUOTED_OUTPUT = 4096
# libcni retries an exec that fails with "text file busy" (the binary is being replaced) five
# times, a second apart.
ETXTBSY_RETRIES = 5


def child_env(env: Mapping[str, str]) -> dict[str, str]:
    """The environment for a program we start, without what our own frozen binary added.

    The binary's bootloader points LD_LIBRARY_PATH at its own bundle and sets _PYI_*
    variables; another program must get the caller's original environment, not those.
    """
    out = {k: v for k, v in env.items() if not k.startswith("_PYI_") and k != "_MEIPASS2"}
    if "LD_LIBRARY_PATH_ORIG" in out:
        out["LD_LIBRARY_PATH"] = out.pop("LD_LIBRARY_PATH_ORIG")
    elif "_PYI_APPLICATION_HOME_DIR" in env or "_PYI_ARCHIVE_FILE" in env:
        out.pop("LD_LIBRARY_PATH", None)
    return out


def find_in_path(plugin_type: str, paths: Sequence[str]) -> str:
    """Path of the executable named `plugin_type` in the first directory of `paths` holding it."""
    if not plugin_type or "/" in plugin_type or plugin_type in (".", ".."):
        # A type with a path in it would run something outside CNI_PATH.
        raise CNIError(INVALID_CONFIG, f"invalid plugin name {plugin_type!r}")
    dirs = [d for d in paths if d]
    if not dirs:
        raise CNIError(INVALID_CONFIG, "no paths provided")
    for directory in dirs:
        candidate = os.path.join(directory, plugin_type)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    # libcni's wording, with Go's formatting of a []string.
    msg = f'failed to find plugin "{plugin_type}" in path [{" ".join(dirs)}]'
    raise CNIError(INVALID_CONFIG, msg)


class ExecRecord:
    """One plugin exec: whole-process wall time, exit code and ru_maxrss from os.wait4.

    `maxrss_kib` is an upper bound, not the plugin's own peak: Linux carries the exec'ing
    process's peak RSS across exec (exec_mmap), so it is at least the caller's own RSS. To
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

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}

    def __repr__(self) -> str:
        return f"ExecRecord({self.as_dict()})"


class PluginError(CNIError):
    """A plugin's own error object, kept verbatim in `raw` so a client can print it unchanged."""

    def __init__(self, plugin: str, command: str, raw: dict[str, Any]) -> None:
        code = raw.get("code")
        super().__init__(
            code if isinstance(code, int) and code > 0 else INTERNAL,
            str(raw.get("msg", "")),
            str(raw.get("details", "")),
        )
        self.plugin = plugin
        self.command = command
        self.raw = raw

    def to_dict(self, cni_version: str) -> dict[str, object]:
        out = dict(self.raw)
        out.setdefault("cniVersion", cni_version)
        return out


def invoke(
    plugin_type: str,
    command: str,
    paths: Sequence[str],
    stdin: bytes,
    env: Mapping[str, str],
    *,
    timeout: float | None,
    stderr: IO[str] | None = None,
    on_exec: Callable[[ExecRecord], None] | None = None,
) -> bytes:
    """Run the plugin `plugin_type` found in `paths` with `env` (CNI_COMMAND=`command` already
    in it) and `stdin`; its stdout when it exits 0, else raises PluginError.

    What the plugin prints on stderr is a log: it goes on to `stderr` (None drops it).
    `on_exec` sees every exec (the benchmark's probe).
    """
    path = find_in_path(plugin_type, paths)
    code, out, err, wall, rss = execute(path, stdin, env, timeout)
    if on_exec is not None:
        on_exec(ExecRecord(plugin_type, command, wall, rss, code))
    if err and stderr is not None:
        text = err.decode(errors="replace")
        stderr.write(text if text.endswith("\n") else text + "\n")
    if code != 0:
        raise plugin_failure(plugin_type, command, code, out, err)
    return out


def decode_object(out: bytes, plugin_type: str) -> dict[str, Any]:
    """A plugin's stdout as the JSON object it must be."""
    try:
        value = json.loads(out)
    except ValueError as exc:
        msg = f"failed to decode the output of plugin {plugin_type}: {exc}"
        raise CNIError(DECODE_FAILURE, msg, _quote(out)) from None
    if not isinstance(value, dict):
        raise CNIError(DECODE_FAILURE, f"plugin {plugin_type} printed JSON that is not an object")
    return value


def plugin_failure(plugin_type: str, command: str, code: int, out: bytes, err: bytes) -> PluginError:
    """libcni RawExec.pluginErr: the error object on stdout, else a message made of stderr."""
    if out.strip():
        try:
            raw = json.loads(out)
        except ValueError:
            raw = None
        if isinstance(raw, dict):
            return PluginError(plugin_type, command, raw)
        msg = f"netplugin failed but error parsing its diagnostic message {_quote(out)!r}"
    elif err.strip():
        msg = f"netplugin failed: {_quote(err.strip())!r}: exit status {code}"
    else:
        msg = f"netplugin failed with no error message: exit status {code}"
    return PluginError(plugin_type, command, {"code": INTERNAL, "msg": msg})


def _quote(data: bytes) -> str:
    text = data.decode(errors="replace")
    return text if len(text) <= MAX_QUOTED_OUTPUT else text[:MAX_QUOTED_OUTPUT] + "..."


# --------------------------------------------------------------------------- the exec itself


def execute(
    path: str, stdin: bytes, env: Mapping[str, str], timeout: float | None
) -> tuple[int, bytes, bytes, float, int]:
    """Run one program: (exit code, stdout, stderr, wall seconds, max RSS in KiB).

    `timeout` (None: none) bounds the whole exec; at the deadline the program is killed.
    """
    start = time.perf_counter()
    deadline = None if timeout is None else time.monotonic() + timeout
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
        raise CNIError(INTERNAL, f"plugin {path} timed out after {timeout:g}s")
    return os.waitstatus_to_exitcode(status), out, err, wall, int(usage.ru_maxrss)


def _spawn(path: str, env: Mapping[str, str]) -> tuple[int, int, int, int]:
    """Start `path` with pipes on 0/1/2: (pid, stdin writer, stdout reader, stderr reader)."""
    in_r, in_w = os.pipe()  # os.pipe fds are close-on-exec; dup2 onto 0/1/2 clears that
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    actions: list[tuple[int, ...]] = [
        (os.POSIX_SPAWN_DUP2, in_r, 0),
        (os.POSIX_SPAWN_DUP2, out_w, 1),
        (os.POSIX_SPAWN_DUP2, err_w, 2),
    ]
    actions += [(os.POSIX_SPAWN_CLOSE, fd) for fd in _inheritable_fds()]
    try:
        for attempt in range(ETXTBSY_RETRIES + 1):
            try:
                # Python ignores SIGPIPE and the ignore survives exec: give plugins the default.
                pid = os.posix_spawn(
                    path, [path], child_env(env), file_actions=actions, setsigdef=(signal.SIGPIPE,)
                )
                break
            except OSError as exc:
                if exc.errno != errno.ETXTBSY or attempt == ETXTBSY_RETRIES:
                    raise CNIError(INTERNAL, f"failed to run plugin {path}: {exc}") from None
                time.sleep(1)
    except BaseException:
        for fd in (in_w, out_r, err_r):
            os.close(fd)
        raise
    finally:
        for fd in (in_r, out_w, err_w):
            os.close(fd)
    return pid, in_w, out_r, err_r


def _inheritable_fds() -> list[int]:
    """Descriptors above 2 that an exec would pass on (one the runtime gave us, say).

    A plugin gets 0, 1 and 2 only, as from libcni (Go opens everything close-on-exec) and from
    subprocess's close_fds. Closing one that another thread closed meanwhile is not an error.
    """
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return []
    found = []
    for name in names:
        fd = int(name)
        try:
            if fd > 2 and os.get_inheritable(fd):
                found.append(fd)
        except OSError:
            continue  # the listing's own descriptor, closed by now
    return found


def _remaining_ms(deadline: float | None) -> float | None:
    """What is left until `deadline`, for poll(); raises TimeoutError once it has passed."""
    if deadline is None:
        return None
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError
    return remaining * 1000


def _pump(
    in_w: int, out_r: int, err_r: int, data: bytes, deadline: float | None
) -> tuple[bytes, bytes]:
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
            for fd, _ in poller.poll(_remaining_ms(deadline)):
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


def _await_exit(pid: int, deadline: float | None) -> None:
    """Wait, bounded, for `pid` to exit without reaping it (so the wait4 after cannot hang)."""
    if deadline is None:
        return  # unbounded: the blocking wait4 after is the wait
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
