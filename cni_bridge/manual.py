"""The manual, from one source: `cni-bridge --help`, `cni-bridge help COMMAND` and the man page
docs/cni-bridge.1 are rendered from the commands' own argparse parsers plus the tables below
(plugin mode, environment, exit status, files), so none can describe an option the code lacks.

`python -m cni_bridge.manual > docs/cni-bridge.1` (`make man`) writes the page; a unit test holds
that the committed page is exactly what this renders, and that every CNI_BRIDGE_* variable the
code reads is in ENVIRONMENT. Standard library only, and imported only for help: cli.py's plugin
path never loads it. Each command's parser factory is imported when its help is rendered.
"""

from __future__ import annotations

import argparse
import importlib
import re
from collections.abc import Iterator

PROG = "cni-bridge"
SUMMARY = "a CNI bridge plugin and its node tools"

# name, "module:factory" returning the parser (one with sub-commands: the one of that name),
# and a one-line summary. Order is the order of --help and the man page.
COMMANDS: tuple[tuple[str, str, str], ...] = (
    ("ls", "cni_bridge.admin:build_parser", "list the attachments the records hold"),
    ("status", "cni_bridge.admin:build_parser", "networks, pools, firewall health"),
    ("gc", "cni_bridge.admin:build_parser", "remove the attachments whose container is gone"),
    ("sync", "cni_bridge.converge.sync:build_parser", "make the host match the records again"),
    ("serve", "cni_bridge.resident.server:build_parser", "run the warm resident (node agent)"),
    ("routes", "cni_bridge.nodes.routes:build_parser", "routes to other nodes' pod CIDRs"),
    ("kube", "cni_bridge.nodes.kube:build_parser", "Kubernetes mode: conflist and routes"),
    ("client", "cni_bridge.libcni.cli:build_parser", "run a network config list, like cnitool"),
)

PLUGIN_MODE = (
    "Run by a container runtime with no arguments: the request in the environment "
    "(CNI_COMMAND ADD, DEL, CHECK, GC, STATUS or VERSION; CNI_CONTAINERID, CNI_NETNS, "
    "CNI_IFNAME, CNI_ARGS, CNI_PATH), the network configuration as JSON on standard input. "
    "The result, or an error object {cniVersion, code, msg, details}, is the only thing "
    "written to standard output; logs go to standard error and CNI_BRIDGE_LOG_FILE. "
    "Configuration fields are described in README.md (Writing a network config)."
)

# Variable, default, meaning. Internal ones (set by cni-bridge for itself, or by tests) are
# in INTERNAL_VARIABLES instead, so the completeness test knows them.
ENVIRONMENT: tuple[tuple[str, str, str], ...] = (
    ("CNI_BRIDGE_LOG_FILE", "none",
     "file appended to beside standard error; each ADD, DEL and GC writes one INFO line "
     "saying what it created or removed"),
    ("CNI_BRIDGE_LOG_LEVEL", "WARNING on stderr, INFO in the file",
     "DEBUG, INFO, WARNING or ERROR, for both; an unknown name counts as unset"),
    ("CNI_BRIDGE_RESIDENT", "1",
     "1: hand requests to the warm resident, starting it if needed; connect: use a running "
     "one, never start one; 0: always run in-process"),
    ("CNI_BRIDGE_RESIDENT_IDLE", "300",
     "seconds without work after which a resident with no attachments in its namespace "
     "leaves (also serve --idle)"),
    ("CNI_BRIDGE_RESIDENT_TIMEOUT", "120",
     "seconds a request may take in the resident before the caller gives up (error 11)"),
    ("CNI_BRIDGE_RESIDENT_READY_TIMEOUT", "1",
     "seconds to wait for a starting resident to listen before running in-process"),
    ("CNI_BRIDGE_RESIDENT_LOG", "none", "log file of a resident started by a call"),
    ("CNI_BRIDGE_WATCH", "1",
     "0: the agent does not watch the ruleset (healing after a firewall reload is then "
     "`cni-bridge sync`'s, or the next ADD's)"),
    ("CNI_BRIDGE_AARDVARK_DNS", "found in PATH, else podman's libexec directories",
     "the aardvark-dns executable that serves containerDNS"),
)
INTERNAL_VARIABLES = frozenset(
    {
        "CNI_BRIDGE_ORIGINAL_NETNS",  # the resident's worker, for its own engine
        "CNI_BRIDGE_RELAY_FAILED",  # the native launcher, for the bundle it execs
        "CNI_BRIDGE_LAUNCHER",  # the same
        "CNI_BRIDGE_RELAY",  # the same
        "CNI_BRIDGE_TEST_KILL_AT",  # crash tests
    }
)

EXIT_STATUS = (
    ("0", "success"),
    ("1", "plugin mode: a CNI error object is on standard output; "
          "commands: the work failed or the host differs (status, sync)"),
    ("2", "a usage error (unknown command or option, unreadable input file)"),
)

FILES = (
    ("/var/lib/cni/networks/NETWORK/", "host-local reservations, and the attachment records "
     "in .cni-bridge/ (ipam.dataDir moves them)"),
    ("/run/cni-bridge/", "the resident's socket (root only)"),
    ("/etc/cni/net.d/", "network configurations of runtimes (and of cni-bridge client)"),
    ("/etc/cni-bridge/peers", "the usual --peers file of cni-bridge routes"),
)


# ---------------------------------------------------------------- the one rule for defaults


def help_text(action: argparse.Action) -> str:
    """An option's help with its default, as --help and the man page both print it: the
    default is appended unless the help already says it or there is none to say."""
    text = action.help or ""
    if "%(default)" in text or "default" in text.lower():
        return text
    d = action.default
    if d is None or d is False or d == [] or d == "" or d is argparse.SUPPRESS:
        return text
    return f"{text} (default: %(default)s)" if text else "(default: %(default)s)"


class Formatter(argparse.HelpFormatter):
    """The parsers' formatter_class: their --help shows defaults by help_text's rule."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        return help_text(action)


def expand(action: argparse.Action, prog: str) -> str:
    params = dict(vars(action), prog=prog)
    for name in list(params):
        if params[name] is argparse.SUPPRESS:
            del params[name]
    if params.get("choices") is not None:
        params["choices"] = ", ".join(map(str, params["choices"]))
    return help_text(action) % params


# ---------------------------------------------------------------- the parsers


def parser(name: str) -> argparse.ArgumentParser:
    for cmd, where, _ in COMMANDS:
        if cmd == name:
            module, factory = where.split(":")
            p: argparse.ArgumentParser = getattr(importlib.import_module(module), factory)()
            for action in p._actions:
                if isinstance(action, argparse._SubParsersAction) and name in action.choices:
                    return action.choices[name]  # type: ignore[no-any-return]
            return p
    raise KeyError(name)


def _options(p: argparse.ArgumentParser) -> Iterator[tuple[str, str]]:
    """(synopsis of the option, its help) for every documented argument."""
    for a in p._actions:
        if isinstance(a, argparse._HelpAction) or a.help is argparse.SUPPRESS:
            continue
        name = a.metavar if isinstance(a.metavar, str) else a.dest.upper()
        if a.option_strings:
            metavar = "" if a.nargs == 0 else " " + name
            flags = ", ".join(f"{s}{metavar}" for s in a.option_strings)
        elif a.choices and not isinstance(a.metavar, str):
            flags = "{" + ",".join(map(str, a.choices)) + "}"
        else:
            flags = name
        yield flags, expand(a, p.prog)


def _synopsis(p: argparse.ArgumentParser) -> str:
    usage = p.format_usage().strip()
    return re.sub(r"\s+", " ", usage.removeprefix("usage: "))


# ---------------------------------------------------------------- --help


def usage(command: str | None = None) -> str:
    """`cni-bridge --help` (everything), or one command's own --help."""
    if command is not None:
        return parser(command).format_help()
    out = [
        f"{PROG}: {SUMMARY}.",
        "",
        f"usage: {PROG}                     (plugin mode, run by a runtime)",
        f"       {PROG} COMMAND [OPTIONS]   ({PROG} help COMMAND: that command alone)",
        f"       {PROG} --version | --help",
        "",
        _wrap(PLUGIN_MODE, "  "),
        "",
        "commands:",
    ]
    for name, _, summary in COMMANDS:
        p = parser(name)
        out += ["", f"  {_synopsis(p)}", f"      {summary}"]
        for flags, text in _options(p):
            out.append(f"      {flags}")
            if text:
                out.append(_wrap(text, "          "))
        if p.epilog:
            out.append(_wrap(p.epilog, "      "))
    out += ["", "environment (plugin mode; `serve` reads them too):"]
    for var, default, meaning in ENVIRONMENT:
        out += [f"  {var}  (default: {default})", _wrap(meaning, "      ")]
    out += ["", "exit status:"]
    out += [f"  {code}  {what}" for code, what in EXIT_STATUS]
    out += ["", f"See `man {PROG}` and README.md for the network configuration fields.", ""]
    return "\n".join(out)


def _wrap(text: str, indent: str, width: int = 79) -> str:
    import textwrap

    return textwrap.fill(text, width, initial_indent=indent, subsequent_indent=indent)


# ---------------------------------------------------------------- the man page


def _roff(text: str) -> str:
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join(("\\&" + line if line[:1] in ".'" else line) for line in text.split("\n"))


def manpage() -> str:
    from cni_bridge import __version__

    out = [
        f'.TH CNI\\-BRIDGE 1 "" "{PROG} {_roff(__version__)}" "User Commands"',
        ".SH NAME",
        f"{PROG} \\- {_roff(SUMMARY)}",
        ".SH SYNOPSIS",
        f".B {PROG}",
        "(plugin mode)",
        ".br",
        f".B {PROG}",
        ".I COMMAND",
        "[\\fIOPTIONS\\fR]",
        ".br",
        f".B {PROG}",
        "\\-\\-version | \\-\\-help | help [\\fICOMMAND\\fR]",
        ".SH DESCRIPTION",
        _roff(PLUGIN_MODE),
        ".SH COMMANDS",
    ]
    for name, _, summary in COMMANDS:
        p = parser(name)
        out += [".SS " + _roff(f"{PROG} {name}"), _roff(_synopsis(p).removeprefix("usage: ")), ".PP"]
        out.append(_roff(p.description or summary))
        for flags, text in _options(p):
            out += [".TP", "\\fB" + _roff(flags) + "\\fR", _roff(text) if text else ""]
        if p.epilog:
            out += [".PP", _roff(p.epilog)]
    out.append(".SH ENVIRONMENT")
    for var, default, meaning in ENVIRONMENT:
        out += [".TP", f"\\fB{_roff(var)}\\fR (default: {_roff(default)})", _roff(meaning)]
    out.append(".SH EXIT STATUS")
    for code, what in EXIT_STATUS:
        out += [".TP", f"\\fB{code}\\fR", _roff(what)]
    out.append(".SH FILES")
    for path, what in FILES:
        out += [".TP", f"\\fI{_roff(path)}\\fR", _roff(what)]
    out += [
        ".SH SEE ALSO",
        "The README.md of the source tree (network configuration fields, the resident, "
        "published ports, Kubernetes); the CNI specification, "
        "https://github.com/containernetworking/cni/blob/main/SPEC.md",
    ]
    return "\n".join(line for line in out if line != "") + "\n"


if __name__ == "__main__":
    import sys

    sys.stdout.write(manpage())
