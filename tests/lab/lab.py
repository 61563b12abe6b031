"""A Lab: the namespaces and processes of one test, benchmark run or demo.

Namespaces are named `<prefix>-<tag>-<role>` with a random tag per Lab, so parallel runs (other
tests, other checkouts) never collide, and a prefix per user, so a run killed hard can be swept
(`netns.stale`). `close()` kills what the Lab started and what lives in its namespaces, by pid,
then deletes the namespaces; it runs even when the test failed (`with Lab(...)`, or a fixture's
`finally`), and a half-made namespace or link is still removed.
"""

from __future__ import annotations

import contextlib
import os
import select
import subprocess
import uuid
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import IO, Any

from tests.lab import netns, procs, traffic
from tests.lab.netns import Netns

TEST_NET_1 = ("192.0.2.1", "192.0.2.2")  # the host and outside ends of a link to the outside


class Lab:
    def __init__(self, prefix: str, tag: str | None = None) -> None:
        self.prefix = prefix
        self.tag = tag or uuid.uuid4().hex[:6]
        self.id = f"{prefix}-{self.tag}"
        self.namespaces: list[Netns] = []
        self.procs: list[subprocess.Popen[Any]] = []
        self._links = 0

    # ------------------------------------------------------------------ namespaces

    def netns(self, role: str, *, dad: bool = True) -> Netns:
        """A new namespace, loopback up. dad=False turns IPv6 duplicate address detection off:
        a tentative address delays the first IPv6 packets by a second or more."""
        (ns,) = self.bare([role])
        if not dad:
            for conf in ("all", "default"):
                ns.sysctl(f"net.ipv6.conf.{conf}.accept_dad", 0)
        ns.ip("link", "set", "lo", "up")
        return ns

    def bare(self, roles: Sequence[str]) -> list[Netns]:
        """Many namespaces at once, untouched (loopback down), for a plugin to fill."""
        names = [f"{self.id}-{role}" for role in roles]
        made = [Netns(n) for n in names]
        # Recorded before creation, so a half-done batch is still removed.
        self.namespaces.extend(made)
        netns.add(names)
        for ns in made:
            if (ident := ns.identity()) is not None:
                procs.CREATED[ident] = ns.name
        return made

    def container(self) -> Netns:
        return self.netns(f"c{len(self.namespaces)}")

    def remove(self, namespaces: Sequence[Netns]) -> None:
        """Delete some of the namespaces now (the processes inside them are killed first)."""
        _delete(namespaces)
        gone = set(namespaces)
        self.namespaces = [ns for ns in self.namespaces if ns not in gone]

    # ------------------------------------------------------------------ links

    def veth(self, a: Netns, a_if: str, b: Netns, b_if: str) -> None:
        """A veth pair with one end in each namespace, both up. Made inside `a` with the peer
        born in `b`: no name is ever taken in the root namespace, and `b_if` may exist in `a`."""
        a.ip("link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", b.name)
        a.ip("link", "set", a_if, "up")
        b.ip("link", "set", b_if, "up")

    def outside(
        self, host: Netns, host_addr: str = f"{TEST_NET_1[0]}/24",
        out_addr: str = f"{TEST_NET_1[1]}/24", role: str = "out",
    ) -> Netns:
        """A namespace linked to `host` by a veth: the "outside world" (its eth0, default route
        via the host). The host's end is `up<tag>`."""
        out = self.netns(role)
        self.veth(host, f"up{self.tag}", out, "eth0")
        host.ip("addr", "add", host_addr, "dev", f"up{self.tag}")
        out.ip_batch([f"addr add {out_addr} dev eth0",
                      f"route add default via {host_addr.split('/')[0]}"])
        return out

    # ------------------------------------------------------------------ processes

    def spawn(
        self, ns: Netns, argv: Sequence[str], *, env: Mapping[str, str] | None = None,
        stdout: int | IO[Any] | None = subprocess.DEVNULL,
        stderr: int | IO[Any] | None = subprocess.DEVNULL, ready: str | None = None,
        ready_timeout: float = 10,
    ) -> subprocess.Popen[str]:
        """A process inside `ns`, killed by close(). With `ready`, waits for that first line of
        its output (stdout must then be left to this method)."""
        p = subprocess.Popen(
            ns.command(*argv), stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if ready is not None else stdout, stderr=stderr, text=True,
            env=None if env is None else dict(env), start_new_session=True,
        )
        self.procs.append(p)
        if ready is not None:
            assert p.stdout is not None
            got, _, _ = select.select([p.stdout], [], [], ready_timeout)
            line = p.stdout.readline() if got else ""
            if line.strip() != ready:
                p.kill()
                err = p.stderr.read() if p.wait(5) is not None and p.stderr else ""
                raise RuntimeError(f"{argv[0]} in {ns.name} did not start: {line!r} {err}")
        return p

    def server(self, ns: Netns, proto: str, port: int, host: str = "::", reply: str = "") -> None:
        """An echo server (see traffic) in `ns`, once it listens."""
        self.spawn(ns, traffic.echo_server(proto, port, host, reply), stderr=subprocess.PIPE,
                   ready="ready")

    def probe(self, ns: Netns, proto: str, host: str, port: int, src_port: int = 0) -> str | None:
        return traffic.probe(ns, proto, host, port, src_port)

    def python(self, ns: Netns, code: str, stdin: str = "", pythonpath: str = "") -> str:
        """Python code (this interpreter) inside `ns`; its stdout."""
        env = dict(os.environ)
        if pythonpath:
            env["PYTHONPATH"] = pythonpath + os.pathsep + env.get("PYTHONPATH", "")
        return ns.exec(traffic.PYTHON, "-c", code, input=stdin, env=env).stdout

    def stop_processes(self, grace: float = 0.0) -> list[int]:
        """Kill what the lab started, and what lives in its namespaces (a resident a plugin
        started there), by pid; the pids that would not die."""
        victims = {i for p in self.procs if (i := procs.identity(p.pid)) is not None}
        victims |= set(procs.in_netns(self.namespaces))
        survivors = procs.kill(victims, grace=grace)
        for p in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=5)
            for stream in (p.stdout, p.stderr):
                if stream:
                    stream.close()
        self.procs.clear()
        return survivors

    def close(self, grace: float = 0.0) -> list[int]:
        """Everything away, whatever state it is in; the pids that would not die."""
        try:
            survivors = self.stop_processes(grace)
        finally:
            survivors += _delete(list(reversed(self.namespaces)))
            self.namespaces.clear()
        return survivors

    def __enter__(self) -> Lab:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _delete(namespaces: Sequence[Netns]) -> list[int]:
    """Kill what lives in the namespaces, delete them, then kill what started inside them
    meanwhile (a plugin call in flight can still spawn an agent there): such a process would
    keep the nameless namespace, and itself, alive for good. The pids that would not die."""
    idents = {ident: ns for ns in namespaces if (ident := ns.identity()) is not None}
    procs.kill(procs.in_identities(idents))
    netns.delete(namespaces)
    return procs.kill(procs.in_identities(idents))
