"""The executable's entry point: the only reader of the environment and stdin, the only writer
of stdout. Standard library only until a verb needs more, so the thin-client path stays fast.
"""

import os
import sys

from cni_bridge.limits import MAX_STDIN_BYTES

# pydantic scans every installed distribution's entry points for plugins when it builds the
# first model (importlib.metadata): a cold-start cost for a feature this program never uses.
# PYDANTIC_DISABLE_PLUGINS is pydantic's documented switch; setdefault keeps an operator's own
# value. Set here, before any pydantic import, so the in-process path and the resident share it.
os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")

# Not `from typing import ...`: typing (with re, enum, collections) costs ~13 ms at every exec,
# more than everything else the thin client imports. mypy honours any name TYPE_CHECKING.
# Annotations naming what is imported below are strings, without `from __future__ import
# annotations`: on the thin path every import counts (that one is ~0.15 ms).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import BinaryIO, NoReturn

RESIDENT_VERBS = frozenset({"ADD", "DEL", "CHECK", "STATUS", "GC"})
RELAY_FAILED_VAR = "CNI_BRIDGE_RELAY_FAILED"


def _read_stdin(stream: "BinaryIO") -> bytes:
    # One byte over the bound is enough to tell "too large" without reading an endless stream.
    return stream.read(MAX_STDIN_BYTES + 1)


def plugin_main(env: "Mapping[str, str]", stdin: "BinaryIO", stdout: "BinaryIO") -> int:
    from cni_bridge.resident import policy

    data = _read_stdin(stdin)
    answer: tuple[int, bytes] | None = None
    launcher = env.get(policy.LAUNCHER_VAR)
    if launcher is not None:
        _check_launcher(launcher)
    # What the native launcher (build/launcher.c) passes on when it execs us: the agent's
    # verdict (run it here, without asking again), or that it lost the agent after GO (the
    # request may have run, so it must not run again: this only words "try again later").
    kind, version, reason = policy.plugin_directive(env)
    if kind == policy.LOST:
        from cni_bridge.resident.protocol import request_version

        answer = policy.try_again_later(version or request_version(data), reason)
    elif env.get("CNI_COMMAND") == "VERSION":
        # Runtimes send VERSION before most commands; its answer needs no engine (logging,
        # dataclasses, typing: ~45 ms of imports from source). Errors are the engine's to word.
        from cni_bridge.protocol.versions import lean_version

        lean = lean_version(env, data)
        answer = (0, lean) if lean is not None else None
    elif not kind and env.get("CNI_COMMAND") in policy.RESIDENT_VERBS:
        from cni_bridge.resident.client import try_resident

        answer = try_resident(env, data)
    if answer is None:
        from cni_bridge.engine import handle

        answer = handle(env, data)
    code, out = answer
    stdout.write(out)
    stdout.flush()
    return code


def _check_launcher(launcher: str) -> None:
    """The launcher and the bundle come from one build (build.sh writes its identity into
    both). If they do not, the launcher looks for an agent nobody starts and every call comes
    here: say so on every call rather than be slow in silence."""
    from cni_bridge.resident.naming import build_identity

    own = build_identity()
    if launcher != own:
        sys.stderr.write(
            f"cni-bridge: launcher/bundle mismatch: the launcher was built for {launcher!r}, "
            f"this bundle is {own!r}; every call runs through the bundle (slow): install the "
            "launcher and the bundle of one build\n"
        )
        sys.stderr.flush()


def main(
    argv: "Sequence[str] | None" = None,
    *,
    environ: "Mapping[str, str] | None" = None,
    stdin: "BinaryIO | None" = None,
    stdout: "BinaryIO | None" = None,
) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    env = os.environ if environ is None else environ
    if args:
        from cni_bridge.engine import setup_logging

        setup_logging(env, plugin=False)
        return operator_main(args, env)
    return plugin_main(env, stdin or sys.stdin.buffer, stdout or sys.stdout.buffer)


def operator_main(args: list[str], env: "Mapping[str, str]") -> int:
    cmd, rest = args[0], args[1:]
    if cmd in ("-h", "--help", "help"):
        from cni_bridge.manual import usage  # the manual: argparse and the commands' parsers

        try:
            sys.stdout.write(usage(rest[0] if cmd == "help" and rest else None))
        except KeyError:
            sys.stderr.write(f"unknown command {rest[0]!r}; `cni-bridge --help` lists them\n")
            return 2
        return 0
    if cmd == "--version":
        from cni_bridge import __version__

        sys.stdout.write(f"cni-bridge {__version__}\n")
        return 0
    if cmd == "client":
        from cni_bridge.libcni.cli import main as client_main

        return client_main(rest)
    if cmd == "serve":
        from cni_bridge.resident import lean

        lean.agent_process()  # before the agent imports anything else
        from cni_bridge.resident.server import main as serve_main

        return serve_main(rest)
    if cmd == "routes":
        from cni_bridge.nodes.routes import main as routes_main

        return routes_main(rest)
    if cmd == "kube":
        from cni_bridge.nodes.kube import main as kube_main

        return kube_main(rest)
    if cmd in ("ls", "status", "gc", "sync"):
        from cni_bridge.admin import main as admin_main

        return admin_main([cmd, *rest])
    sys.stderr.write(f"unknown command {cmd!r}; `cni-bridge --help` lists them\n")
    return 2


def run() -> "NoReturn":
    if len(sys.argv) > 1:  # operator commands (the agent among them) end as any program does
        sys.exit(main())
    # One request, then os._exit below: the cyclic collector would only walk, again and again,
    # the objects the imports make (pydantic's above all) and free nothing before the exit
    # frees it all. Off from here: ~3% of a cold in-process ADD's instructions (callgrind).
    import gc

    gc.disable()
    # hashlib without OpenSSL, as in the agent (resident/lean.py). The plugin's own digests
    # (state.py, datadirs.py) go through digest.py, without hashlib; should anything a request
    # loads import hashlib or hmac (pydantic's `secrets` does), it then gets CPython's own
    # implementations without mapping and initialising libcrypto (~7 M instructions, ~1.5 % of
    # a cold ADD, callgrind, when hashlib was on the path).
    if "_hashlib" not in sys.modules:
        sys.modules["_hashlib"] = None  # type: ignore[assignment]  # import raises ImportError
    code = main()
    # The plugin's answer is written and flushed, and the engine has closed what it opened.
    # Interpreter finalization would only free memory the kernel frees anyway: 2.5 ms on the
    # thin path (PyInstaller's bootloader and the interpreter tearing down), more after an
    # in-process request with pydantic and pyroute2 loaded.
    for stream in (sys.stdout, sys.stderr):
        try:  # noqa: SIM105 - contextlib is one more import on the thin path
            stream.flush()
        except (OSError, ValueError):
            pass
    if "logging" in sys.modules:  # log files configured by the engine
        sys.modules["logging"].shutdown()
    # The agent this call claimed the name of (resident.spawn): forked now, the answer written,
    # it execs once we have exited; os._exit skips the atexit hook that would do it otherwise.
    spawn = sys.modules.get("cni_bridge.resident.spawn")
    try:
        if spawn is not None:
            spawn.start_pending()
    finally:  # whatever happens there, the exit code is the answer's
        os._exit(code)
