"""What the agent path decides, written once: modes, timeouts, which variables travel, which
requests the agent serves, and the directives a caller passes to the bundle.

The native launcher (build/launcher.c) decides none of this: it sends everything to the agent,
which answers with `bundle_reason`'s verdict, and it hands the bundle the agent's directive or
the bare facts of a lost exchange, which `plugin_directive` reads and `try_again_later` words.
Standard library only, cheapest modules only: the exec'd plugin imports it.
"""

from cni_bridge.resident import protocol

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

MODE_VAR = "CNI_BRIDGE_RESIDENT"
IDLE_VAR = "CNI_BRIDGE_RESIDENT_IDLE"
TIMEOUT_VAR = "CNI_BRIDGE_RESIDENT_TIMEOUT"
READY_TIMEOUT_VAR = "CNI_BRIDGE_RESIDENT_READY_TIMEOUT"
LOG_VAR = "CNI_BRIDGE_RESIDENT_LOG"
# Set by the launcher when it execs the bundle: the identity it was built with (a mismatch with
# the bundle's is reported, see cli), and what the agent said or what happened to the exchange.
LAUNCHER_VAR = "CNI_BRIDGE_LAUNCHER"
RELAY_VAR = "CNI_BRIDGE_RELAY"

MODE_OFF = "off"
MODE_AUTO = "auto"
MODE_CONNECT = "connect"
_MODES = {
    **dict.fromkeys(("0", "off", "no", "false"), MODE_OFF),
    **dict.fromkeys(("", "1", "auto", "on", "yes", "true"), MODE_AUTO),
    MODE_CONNECT: MODE_CONNECT,
}

DEFAULT_IDLE = 300.0
DEFAULT_TIMEOUT = 120.0
DEFAULT_READY_TIMEOUT = 1.0
MAX_SECONDS = 1e9  # beyond this a socket timeout overflows

# The verbs for which the thin client uses (and starts) an agent; VERSION runs in the bundle
# unless an agent is already there to answer it.
RESIDENT_VERBS = frozenset({"ADD", "DEL", "CHECK", "STATUS", "GC"})
# Commands whose CNI_NETNS names a namespace to work in; for the others (VERSION with podman's
# "dummy", GC, STATUS) the variable is forwarded as it is.
NETNS_COMMANDS = frozenset({"ADD", "DEL", "CHECK"})
# Variables a request runs with besides CNI_*: what a library might consult in-process. The
# rest of the caller's environment stays out of the worker.
EXTRA_FORWARDED = frozenset({"PATH", "LANG", "LC_ALL", "TZ"})

IN_PROCESS = "in-process"
LOST = "lost"


def env_seconds(env: "Mapping[str, str]", name: str, default: float) -> float:
    """A decimal number of seconds from 0 to MAX_SECONDS, else the default."""
    raw = env.get(name, "")
    if "_" in raw:  # float() takes 1_000: not a way anyone writes seconds
        return default
    try:
        value = float(raw)
    except ValueError:
        return default
    return value if 0 <= value <= MAX_SECONDS else default


def mode_of(env: "Mapping[str, str]") -> str:
    return _MODES.get(env.get(MODE_VAR, "").strip().lower(), MODE_AUTO)


def request_timeout(env: "Mapping[str, str]") -> float:
    return env_seconds(env, TIMEOUT_VAR, DEFAULT_TIMEOUT)


def is_forwarded(name: str) -> bool:
    """Whether a caller's variable reaches the worker (replacing the worker's own)."""
    return name.startswith("CNI_") or name in EXTRA_FORWARDED


def forwarded(env: "Mapping[str, str]") -> dict[str, str]:
    return {k: v for k, v in env.items() if is_forwarded(k)}


def bundle_reason(argv: "Sequence[str]", env: "Mapping[str, str]") -> str:
    """Why the agent leaves a request to the bundle ("": it serves it). Operator commands are
    the bundle's; so is everything when the caller turned the agent off."""
    if argv:
        return f"operator command {argv[0]!r}"
    if mode_of(env) == MODE_OFF:
        return f"{MODE_VAR}={env.get(MODE_VAR, '')}"
    return ""


def in_process(reason: str) -> str:
    """The directive for a request the agent did not run: the bundle runs it, without asking
    the agent again."""
    return f"{IN_PROCESS}:{reason}"


def plugin_directive(env: "Mapping[str, str]") -> tuple[str, str, str]:
    """(kind, cniVersion, reason) from RELAY_VAR: kind IN_PROCESS, LOST or "" (none). LOST is
    the launcher's `lost:<cniVersion from RUNNING>:<timeout|closed|bad>` after GO."""
    value = env.get(RELAY_VAR)
    if value is None:
        return "", "", ""
    kind, _, rest = value.partition(":")
    if kind == IN_PROCESS:
        return kind, "", rest
    if kind != LOST:  # set by hand, or garbled: treat it as the worst case, never rerun
        return LOST, "", f"unknown relay state {value!r}"
    version, _, what = rest.partition(":")
    if what == "timeout":
        reason = f"no answer within {request_timeout(env):g}s"
    else:
        reason = f"connection lost mid-request: {'peer closed' if what == 'closed' else what}"
    return LOST, version, reason


def try_again_later(version: str, reason: str) -> tuple[int, bytes]:
    """CNI error 11 for a request that reached the agent but got no answer: it may have run,
    so it must not run again; the runtime may retry."""
    from cni_bridge.errors import TRY_AGAIN_LATER

    msg = "the cni-bridge resident did not complete the request"
    _write_all(2, f"cni-bridge: {msg}: {reason}\n".encode("utf-8", "replace"))
    return 1, protocol.error_reply(version, TRY_AGAIN_LATER, msg, reason)


def _write_all(fd: int, data: bytes) -> None:
    import os

    view = memoryview(data)
    try:
        while view:
            view = view[os.write(fd, view) :]
    except OSError:
        pass
