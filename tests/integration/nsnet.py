"""Throwaway network namespaces and real traffic for integration tests (no pytest here,
so any test module can import it).

Everything happens inside namespaces created through a `Lab`, whose names start with
the caller's prefix; the Lab deletes them and kills the processes it started, even when
the test fails. Nothing here touches the root namespace.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import subprocess
import sys
import uuid
from types import TracebackType
from typing import Any

PYTHON = sys.executable
CLIENT_TIMEOUT = 2.0

# A server that answers every TCP connection / UDP datagram with the peer's address.
_SERVER = r"""
import socket, sys
proto, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
fam = socket.AF_INET6 if ":" in host else socket.AF_INET
kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
s = socket.socket(fam, kind)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
if fam == socket.AF_INET6:
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.bind((host, port))
if proto == "tcp":
    s.listen(16)
print("ready", flush=True)
def peer(a):
    ip = a[0]
    return ip[7:] if ip.startswith("::ffff:") else ip
while True:
    if proto == "tcp":
        c, a = s.accept()
        c.settimeout(2)
        try:
            c.sendall((peer(a) + "\n").encode())
        finally:
            c.close()
    else:
        data, a = s.recvfrom(2048)
        s.sendto((peer(a) + "\n").encode(), a)
"""

_CLIENT = r"""
import socket, sys
proto, host, port, sport, timeout = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
fam = socket.AF_INET6 if ":" in host else socket.AF_INET
kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
s = socket.socket(fam, kind)
s.settimeout(timeout)
try:
    if sport:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("::" if fam == socket.AF_INET6 else "0.0.0.0", sport))
    if proto == "tcp":
        s.connect((host, port))
        data = s.recv(256)
    else:
        s.sendto(b"hello", (host, port))
        data, _ = s.recvfrom(256)
    print("OK " + data.decode().strip())
except OSError as e:
    print("ERR " + type(e).__name__ + " " + str(e))
    sys.exit(1)
"""


def run(
    args: list[str],
    ns: str | None = None,
    check: bool = True,
    input: str | None = None,
    timeout: float = 20,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command, inside netns ns when given."""
    full = ["ip", "netns", "exec", ns, *args] if ns else list(args)
    res = subprocess.run(
        full, input=input, capture_output=True, text=True, timeout=timeout, env=env
    )
    if check and res.returncode != 0:
        raise RuntimeError(f"{' '.join(full)} failed ({res.returncode}): {res.stderr.strip()}")
    return res


def ip_batch(ns: str, lines: list[str]) -> None:
    """Run `ip` commands in one process inside ns (fails on the first error)."""
    run(["ip", "-n", ns, "-b", "-"], input="\n".join(lines) + "\n")


def sysctl(ns: str, key: str, value: str | int) -> None:
    run(["sysctl", "-qw", f"{key}={value}"], ns=ns)


def nft_ruleset(ns: str) -> list[dict[str, Any]]:
    """`nft -j list ruleset` in ns, as the list of objects."""
    out = run(["nft", "-j", "list", "ruleset"], ns=ns).stdout
    return list(json.loads(out)["nftables"]) if out.strip() else []


def nft_comments(ns: str) -> list[str]:
    """Every element and rule comment in the ruleset of ns."""
    found: list[str] = []
    for obj in nft_ruleset(ns):
        for kind in ("set", "map"):
            for el in obj.get(kind, {}).get("elem", []):
                el = el[0] if isinstance(el, list) else el
                if isinstance(el, dict) and "elem" in el and "comment" in el["elem"]:
                    found.append(el["elem"]["comment"])
        if "rule" in obj and "comment" in obj["rule"]:
            found.append(obj["rule"]["comment"])
    return found


def nft_counter(ns: str, table: str, chain: str, comment_prefix: str) -> int:
    """Packets counted by the rule of table/chain whose comment starts with the prefix."""
    for obj in nft_ruleset(ns):
        rule = obj.get("rule")
        if not rule or (rule["table"], rule["chain"]) != (table, chain):
            continue
        if not str(rule.get("comment", "")).startswith(comment_prefix):
            continue
        for expr in rule["expr"]:
            if "counter" in expr:
                return int(expr["counter"]["packets"])
    raise LookupError(f"no counted rule {comment_prefix!r} in {table}/{chain}")


class Lab:
    """Namespaces and processes of one test; `with Lab(prefix) as lab:` cleans up."""

    def __init__(self, prefix: str) -> None:
        self.id = f"{prefix}-{uuid.uuid4().hex[:6]}"
        self.namespaces: list[str] = []
        self.procs: list[subprocess.Popen[str]] = []

    def netns(self, short: str) -> str:
        name = f"{self.id}-{short}"
        run(["ip", "netns", "add", name])
        self.namespaces.append(name)
        # no duplicate address detection: a tentative link-local address delays the
        # first IPv6 packets by a second or more
        for conf in ("all", "default"):
            sysctl(name, f"net.ipv6.conf.{conf}.accept_dad", 0)
        ip_batch(name, ["link set lo up"])
        return name

    def veth(self, ns_a: str, name_a: str, ns_b: str, name_b: str) -> None:
        """A veth pair with one end in each namespace, both up."""
        tmp = f"cbt{uuid.uuid4().hex[:8]}"
        ip_batch(
            ns_a, [f"link add {name_a} type veth peer name {tmp}", f"link set {tmp} netns {ns_b}"]
        )
        ip_batch(ns_b, [f"link set {tmp} name {name_b}", f"link set {name_b} up"])
        ip_batch(ns_a, [f"link set {name_a} up"])

    def server(self, ns: str, proto: str, port: int, host: str = "::") -> None:
        """Start a peer-address echo server in ns and wait until it listens."""
        p = subprocess.Popen(
            ["ip", "netns", "exec", ns, PYTHON, "-c", _SERVER, proto, host, str(port)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.procs.append(p)
        assert p.stdout is not None
        ready, _, _ = select.select([p.stdout], [], [], 10)
        line = p.stdout.readline() if ready else ""
        if line.strip() != "ready":
            err = p.stderr.read() if p.poll() is not None and p.stderr else ""
            raise RuntimeError(f"server {proto}/{port} in {ns} did not start: {line!r} {err}")

    def client(self, ns: str, proto: str, host: str, port: int, src_port: int = 0) -> str | None:
        """The peer address the server reported, or None when no answer came."""
        res = run(
            [PYTHON, "-c", _CLIENT, proto, host, str(port), str(src_port), str(CLIENT_TIMEOUT)],
            ns=ns,
            check=False,
            timeout=CLIENT_TIMEOUT + 10,
        )
        out = res.stdout.strip()
        return out[3:] if res.returncode == 0 and out.startswith("OK ") else None

    def python(self, ns: str, code: str, stdin: str = "", cwd_path: str = "") -> str:
        """Run python code (this interpreter) inside ns; return its stdout."""
        env = dict(os.environ)
        if cwd_path:
            env["PYTHONPATH"] = cwd_path + os.pathsep + env.get("PYTHONPATH", "")
        return run([PYTHON, "-c", code], ns=ns, input=stdin, env=env).stdout

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=5)
            for stream in (p.stdout, p.stderr):
                if stream:
                    stream.close()
        for ns in reversed(self.namespaces):
            run(["ip", "netns", "delete", ns], check=False)

    def __enter__(self) -> Lab:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
