"""CNI specification versions, the per-verb tables, and version comparison.

Standard library only: VERSION is answered without importing anything heavy.
"""

from __future__ import annotations

from cni_bridge.errors import INCOMPATIBLE_VERSION, CNIError
from cni_bridge.limits import MAX_CNI_ARGS, MAX_STDIN_BYTES

TYPE_CHECKING = False
if TYPE_CHECKING:  # not `typing`: it costs VERSION, which imports this module only, ~5 ms
    from collections.abc import Mapping

SUPPORTED_VERSIONS: tuple[str, ...] = (
    "0.1.0",
    "0.2.0",
    "0.3.0",
    "0.3.1",
    "0.4.0",
    "1.0.0",
    "1.1.0",
)
CURRENT_VERSION = "1.1.0"
# A config without cniVersion is read as the oldest version, as libcni does.
DEFAULT_CONFIG_VERSION = "0.1.0"

VERBS = ("ADD", "DEL", "CHECK", "VERSION", "STATUS", "GC")

# Which CNI_* variables each verb needs; the spec's table, the same one cni's pkg/skel uses.
REQUIRED_ENV: dict[str, tuple[str, ...]] = {
    "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "DEL": ("CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"),
    "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "VERSION": (),
    "STATUS": ("CNI_PATH",),
    "GC": ("CNI_PATH",),
}

# The oldest config version in which a verb exists.
MINIMUM_VERSION: dict[str, str] = {
    "ADD": "0.1.0",
    "DEL": "0.1.0",
    "VERSION": "0.1.0",
    "CHECK": "0.4.0",
    "STATUS": "1.1.0",
    "GC": "1.1.0",
}


def parse_version(text: str) -> tuple[int, int, int]:
    """Parses a semantic version "X.Y.Z" (a missing part counts as 0)."""
    parts = text.strip().split(".")
    if not 1 <= len(parts) <= 3 or not all(p.isdigit() for p in parts):
        raise CNIError(INCOMPATIBLE_VERSION, f"invalid version {text!r}")
    nums = [int(p) for p in parts] + [0] * (3 - len(parts))
    return nums[0], nums[1], nums[2]


def at_least(version: str, minimum: str) -> bool:
    return parse_version(version) >= parse_version(minimum)


def require_supported(version: str) -> str:
    """Returns the version if we can speak it, else raises the spec's "incompatible version"."""
    parse_version(version)
    if version not in SUPPORTED_VERSIONS:
        raise CNIError(
            INCOMPATIBLE_VERSION,
            f"incompatible CNI versions: config is {version!r}, plugin supports "
            f"{list(SUPPORTED_VERSIONS)}",
        )
    return version


def require_verb_allowed(command: str, version: str) -> None:
    minimum = MINIMUM_VERSION[command]
    if not at_least(version, minimum):
        raise CNIError(
            INCOMPATIBLE_VERSION,
            f"config version {version} does not allow {command} (needs {minimum} or newer)",
        )


def reply_version_for(config: Mapping[str, object]) -> str:
    """The cniVersion of an answer: the config's if we speak it, else ours."""
    v = config.get("cniVersion")
    return v if isinstance(v, str) and v in SUPPORTED_VERSIONS else CURRENT_VERSION


def version_answer(config: Mapping[str, object]) -> dict[str, object]:
    """VERSION's result."""
    return {"cniVersion": reply_version_for(config), "supportedVersions": list(SUPPORTED_VERSIONS)}


def dump(obj: object) -> bytes:
    """An answer as the plugin writes it to stdout (every verb, every error)."""
    import json  # only when answering: VERSION imports nothing else (json pulls in re, enum)

    return (json.dumps(obj, indent=2) + "\n").encode()


def lean_version(env: Mapping[str, str], stdin: bytes) -> bytes | None:
    """The answer to a well-formed VERSION call, without the engine (logging, the request's
    dataclass, typing): runtimes send VERSION before most commands (podman: to every plugin of
    a network), from namespaces where no agent runs. None for anything the engine would refuse
    (a stdin that is not a JSON object, an oversized CNI_ARGS): the engine words that error.
    The same checks as protocol/request.parse_request, which a unit test keeps in step."""
    if env.get("CNI_COMMAND") != "VERSION" or len(env.get("CNI_ARGS", "")) > MAX_CNI_ARGS:
        return None
    config: object = {}
    if stdin.strip():
        if len(stdin) > MAX_STDIN_BYTES:
            return None
        import json

        try:
            config = json.loads(stdin)
        except (ValueError, RecursionError):  # UnicodeDecodeError, JSONDecodeError
            return None
    if not isinstance(config, dict):
        return None
    return dump(version_answer(config))
