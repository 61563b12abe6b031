"""The invocation as the runtime made it: CNI_* environment plus stdin, validated.

Pure and standard library only. Nothing here touches the system.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from cni_bridge.domain import container_id_problem, ifname_problem
from cni_bridge.errors import DECODE_FAILURE, INVALID_ENV, CNIError
from cni_bridge.limits import MAX_CNI_ARGS, MAX_STDIN_BYTES
from cni_bridge.protocol.versions import (
    DEFAULT_CONFIG_VERSION,
    REQUIRED_ENV,
    VERBS,
)
from cni_bridge.tuples import NamedTuple

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


# A NamedTuple, not a frozen dataclass: no `dataclasses` (nor the `inspect` it imports) and no
# compiled methods on the exec'd path. Built in one place (parse_request), every field given:
# no shared default for `config`.
class Request(NamedTuple):
    command: str
    container_id: str
    netns: str
    ifname: str
    args: str
    path: tuple[str, ...]
    stdin: bytes
    config: dict[str, Any]

    @property
    def cni_version(self) -> str:
        v = self.config.get("cniVersion")
        return v if isinstance(v, str) and v else DEFAULT_CONFIG_VERSION


def validate_container_id(value: str) -> None:
    if not value:
        raise CNIError(INVALID_ENV, "empty CNI_CONTAINERID")
    problem = container_id_problem(value)
    if problem:
        raise CNIError(INVALID_ENV, "invalid characters in CNI_CONTAINERID", problem)


def validate_ifname(value: str, what: str = "CNI_IFNAME") -> None:
    problem = ifname_problem(value)
    if problem:
        raise CNIError(INVALID_ENV, f"invalid {what} {value!r}: {problem}")


def decode_config(stdin: bytes) -> dict[str, Any]:
    if len(stdin) > MAX_STDIN_BYTES:
        raise CNIError(DECODE_FAILURE, f"network config on stdin exceeds {MAX_STDIN_BYTES} bytes")
    try:
        data = json.loads(stdin)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CNIError(DECODE_FAILURE, "failed to decode network config JSON", str(exc)) from None
    except RecursionError:
        raise CNIError(DECODE_FAILURE, "network config JSON is nested too deeply") from None
    if not isinstance(data, dict):
        raise CNIError(DECODE_FAILURE, "network config must be a JSON object")
    return data


def parse_request(env: Mapping[str, str], stdin: bytes) -> Request:
    """Validates the environment for the verb and decodes stdin; raises CNIError."""
    command = env.get("CNI_COMMAND", "")
    if not command:
        raise CNIError(INVALID_ENV, "required env variable CNI_COMMAND missing")
    if command not in VERBS:
        raise CNIError(INVALID_ENV, f"unknown CNI_COMMAND: {command!r}")

    missing = [name for name in REQUIRED_ENV[command] if not env.get(name)]
    if missing:
        raise CNIError(INVALID_ENV, f"required env variables {missing} missing")

    container_id = env.get("CNI_CONTAINERID", "")
    ifname = env.get("CNI_IFNAME", "")
    if command in ("ADD", "DEL", "CHECK"):
        validate_container_id(container_id)
        validate_ifname(ifname)
    args = env.get("CNI_ARGS", "")
    if len(args) > MAX_CNI_ARGS:
        raise CNIError(INVALID_ENV, f"CNI_ARGS exceeds {MAX_CNI_ARGS} bytes")

    if command == "VERSION" and not stdin.strip():
        config: dict[str, Any] = {}
    else:
        config = decode_config(stdin)
    path = tuple(p for p in env.get("CNI_PATH", "").split(":") if p)
    return Request(
        command=command,
        container_id=container_id,
        netns=env.get("CNI_NETNS", ""),
        ifname=ifname,
        args=args,
        path=path,
        stdin=stdin,
        config=config,
    )
