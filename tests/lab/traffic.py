"""Real traffic between lab namespaces: an echo server, a probe, ping and HTTP GET.

The echo server answers every TCP connection / UDP datagram with the peer's address as it saw
it (so a test can tell masquerade from a preserved source), or with a fixed reply. Scripts run
with this interpreter and the standard library only.
"""

from __future__ import annotations

import sys
import time

from tests.lab.netns import Netns

PYTHON = sys.executable
PROBE_TIMEOUT = 2.0

ECHO_SERVER = r"""
import socket, sys
proto, host, port, reply = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
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
def answer(a):
    ip = a[0]
    return (reply or (ip[7:] if ip.startswith("::ffff:") else ip)) + "\n"
while True:
    if proto == "tcp":
        c, a = s.accept()
        c.settimeout(2)
        try:
            c.sendall(answer(a).encode())
        finally:
            c.close()
    else:
        data, a = s.recvfrom(2048)
        s.sendto(answer(a).encode(), a)
"""

_PROBE = r"""
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

_HTTP_GET = """
import sys, urllib.request
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
with opener.open(sys.argv[1], timeout=float(sys.argv[2])) as response:
    sys.stdout.write(response.read().decode())
"""


def echo_server(proto: str, port: int, host: str = "::", reply: str = "") -> list[str]:
    """The command line of an echo server; it prints "ready" once it listens."""
    return [PYTHON, "-c", ECHO_SERVER, proto, host, str(port), reply]


def probe(ns: Netns, proto: str, host: str, port: int, src_port: int = 0,
          timeout: float = PROBE_TIMEOUT) -> str | None:
    """What the server at host:port answered a connection (a datagram) from `ns`, or None."""
    res = ns.exec(
        PYTHON, "-c", _PROBE, proto, host, str(port), str(src_port), str(timeout),
        check=False, timeout=timeout + 10,
    )
    out = res.stdout.strip()
    return out[3:] if res.returncode == 0 and out.startswith("OK ") else None


def ping(ns: Netns, addr: str, count: int = 1) -> bool:
    six = ["-6"] if ":" in addr else []
    return ns.exec("ping", *six, "-c", str(count), "-W", "2", addr, check=False).returncode == 0


def http_get(ns: Netns, url: str, *, within: float = 15, per_try: float = 2) -> str:
    """GET from inside `ns`, retrying until `within` seconds have passed; the body.

    Raises AssertionError with the last error when no answer came in time."""
    deadline = time.monotonic() + within
    while True:
        proc = ns.exec(PYTHON, "-c", _HTTP_GET, url, str(per_try), check=False,
                       timeout=per_try + 10)
        if proc.returncode == 0:
            return proc.stdout
        lines = proc.stderr.strip().splitlines()
        last = lines[-1] if lines else f"exit {proc.returncode}"
        if time.monotonic() >= deadline:
            raise AssertionError(f"GET {url} from {ns.name} failed: {last}")
        time.sleep(0.3)
