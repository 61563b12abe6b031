"""`make demo`: the built plugin attaching containers in throwaway namespaces.

Creates a "host" namespace (the plugin's world), two container namespaces and an "outside"
namespace linked to the host; attaches the containers through dist/bin/cni-bridge with its own
cnitool-like client; shows addresses and a published port answering from outside, from the host
(127.0.0.1 and [::1]) and from the other container; the containers finding each other by name;
the port held against host programs; the agent healing an `nft flush ruleset` by itself;
detaches; shows that nothing is left. The machine's own network
namespace is never touched: the namespaces, processes and traffic are the test lab's
(tests/lab/), which also cleans up, by pid, whatever happens.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.lab import TEST_NET_1, CommandError, Lab, Netns, http_get, run

ROOT = Path(__file__).resolve().parents[1]
BIN = ROOT / "dist" / "bin" / "cni-bridge"
HOST_ADDR = TEST_NET_1[0]  # only inside the lab's namespaces


def sh(*cmd: str, input: str | None = None, env: dict[str, str] | None = None) -> str:
    try:
        return run(cmd, input=input, env=env).stdout
    except CommandError as exc:
        raise SystemExit(f"demo: {exc}") from None


def ns(where: Netns, *cmd: str, env: dict[str, str] | None = None) -> str:
    # Netns.command is nsenter, not `ip netns exec`: no new mount namespace per call (the warm
    # resident serves callers of its own mount namespace).
    return sh(*where.command(*cmd), env=env)


HEAL_WAIT = 10.0  # seconds; the agent's watch heals within ~0.5 s of a flush here


def healed(host: Netns, tmp: Path, deadline: float) -> subprocess.CompletedProcess[str]:
    """`cni-bridge status` once it exits 0 (nothing differs from the records), or at the
    deadline its last answer."""
    while True:
        status = run(host.command(str(BIN), "status", "--data-dir", str(tmp / "ipam")),
                     check=False, timeout=60)
        if status.returncode == 0 or time.monotonic() >= deadline:
            return status
        time.sleep(0.1)


def title(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m", flush=True)


def show_configs() -> None:
    sys.path.insert(0, str(ROOT))
    from cni_bridge.errors import CNIError
    from cni_bridge.netconf import load_netconf

    for path in sorted((ROOT / "conf").glob("*.conflist")) + sorted((ROOT / "conf" / "invalid").glob("*.conflist")):
        conflist = json.loads(path.read_text())
        for plugin in conflist["plugins"]:
            if plugin["type"] != "cni-bridge":
                continue
            try:
                load_netconf({"cniVersion": conflist["cniVersion"], "name": conflist["name"], **plugin})
                verdict = "valid"
            except CNIError as exc:
                verdict = f"rejected (code {exc.code}): {exc.msg}"
            print(f"  {path.relative_to(ROOT)}: {verdict}")


def setup(tmp: Path) -> dict[str, str]:
    netconf = tmp / "net.d"
    netconf.mkdir()
    (netconf / "10-demo.conflist").write_text(json.dumps({
        "cniVersion": "1.1.0",
        "name": "demo",
        "plugins": [{
            "type": "cni-bridge",
            "bridge": "cbdemo0",
            "isGateway": True,
            "isDefaultGateway": True,
            "ipMasq": True,
            "containerDNS": True,
            "capabilities": {"portMappings": True, "ips": True, "aliases": True},
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": "10.123.0.0/24"}], [{"subnet": "fd00:123::/64"}]],
                "dataDir": str(tmp / "ipam"),
            },
        }],
    }, indent=2))
    www = tmp / "www"
    www.mkdir()
    (www / "index.html").write_text("hello from container c1\n")
    return {
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        "NETCONFPATH": str(netconf),
        "CNI_PATH": str(BIN.parent),
        "CNI_CACHE_DIR": str(tmp / "cache"),
        "CNI_BRIDGE_RESIDENT": os.environ.get("CNI_BRIDGE_RESIDENT", "1"),
    }


def client(host: Netns, env: dict[str, str], *args: str, cap: dict[str, object] | None = None,
           name: str = "") -> str:
    e = dict(env)
    if cap:
        e["CAP_ARGS"] = json.dumps(cap)
    if name:  # the container's name, as a CRI runtime (containerd, CRI-O) passes it
        e["CNI_ARGS"] = f"IgnoreUnknown=1;K8S_POD_NAMESPACE=demo;K8S_POD_NAME={name}"
    return ns(host, str(BIN), "client", *args, env=e)


_BIND = """
import socket, sys
s = socket.socket()
# As servers do: a relayed connection the holder closed first may linger in TIME_WAIT on the
# port, which only a bind without SO_REUSEADDR runs into; a listener still refuses it.
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind(("0.0.0.0", int(sys.argv[1])))
    print("bound")
except OSError as exc:
    print(exc.strerror)
"""


def try_bind(host: Netns, port: int) -> str:
    """What a host program gets when it binds the port now."""
    return ns(host, sys.executable, "-c", _BIND, str(port)).strip()


def lookup(where: Netns, name: str, server: str) -> str:
    """A real resolver (busybox nslookup) inside the container, asking the server the result's
    `dns` names (the lab's containers share the machine's files, so not its resolv.conf)."""
    try:
        text = run(where.command("busybox", "nslookup", name, server), timeout=10).stdout
    except CommandError as exc:
        return f"(not found: {str(exc).splitlines()[0]})"
    addrs = [line.split()[-1] for line in text.splitlines()[2:] if line.startswith("Address")]
    return ", ".join(addrs) or "(no address)"


def fetch(where: Netns, url: str) -> str:
    try:
        return http_get(where, url, within=5).strip()
    except AssertionError as exc:
        return f"(no answer: {exc})"


def main() -> int:
    if os.geteuid() != 0:
        print("make demo needs root (network namespaces)", file=sys.stderr)
        return 1
    title("VERSION, from the built binary")
    print(sh(str(BIN), input="", env={"CNI_COMMAND": "VERSION"}).strip())
    title("example configs in conf/")
    show_configs()
    with tempfile.TemporaryDirectory(prefix="cbdemo-") as tmpdir, Lab("cbdemo") as lab:
        tmp = Path(tmpdir)
        host, c1, c2 = lab.netns("host"), lab.netns("c1"), lab.netns("c2")
        out = lab.outside(host)
        env = setup(tmp)
        title(f"attach two containers (namespaces {c1.name}, {c2.name}) to network 'demo'")
        r1 = json.loads(client(host, env, "add", "demo", c1.path, name="web",
                               cap={"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}],
                                    "aliases": {"demo": ["www"]}}))
        r2 = json.loads(client(host, env, "add", "demo", c2.path, name="db"))
        for name, r in (("c1", r1), ("c2", r2)):
            print(f"  {name}: " + ", ".join(ip["address"] for ip in r["ips"]))
        print(ns(c1, "ip", "-br", "addr", "show", "eth0").rstrip())
        print(ns(c1, "ip", "route").rstrip())
        title("c1 serves HTTP on port 80, published as host port 8080")
        lab.spawn(c1, ["busybox", "httpd", "-f", "-p", "80", "-h", str(tmp / "www")])
        print(f"  from outside  -> {HOST_ADDR}:8080 : {fetch(out, f'http://{HOST_ADDR}:8080/')}")
        print(f"  from the host -> 127.0.0.1:8080  : {fetch(host, 'http://127.0.0.1:8080/')}")
        print(f"  from the host -> {HOST_ADDR}:8080 : {fetch(host, f'http://{HOST_ADDR}:8080/')}")
        print(f"  from c2       -> {HOST_ADDR}:8080 : {fetch(c2, f'http://{HOST_ADDR}:8080/')}")
        print(f"  from c1 itself (hairpin)         : {fetch(c1, f'http://{HOST_ADDR}:8080/')}")
        print(f"  from the host -> [::1]:8080      : {fetch(host, 'http://[::1]:8080/')}"
              "  (the agent's held socket relays it)")
        title("the port is held, as docker-proxy holds it: a host program cannot take it")
        print(f"  a host program binding 0.0.0.0:8080: {try_bind(host, 8080)}")
        title("container DNS (aardvark-dns on the gateway): names and aliases, per network")
        dns = r1["dns"]["nameservers"][0]
        print(f"  c2$ nslookup web {dns}  -> {lookup(c2, 'web', dns)}")
        print(f"  c2$ nslookup www {dns}  -> {lookup(c2, 'www', dns)}  (an alias of c1)")
        print(f"  c1$ nslookup db.dns.cni-bridge {dns}  -> {lookup(c1, 'db.dns.cni-bridge', dns)}")
        print(f"  result's dns: {json.dumps(r1.get('dns', {}))}")
        title("convergence: `nft flush ruleset` (a firewalld reload does the same) is healed by the agent")
        ns(host, "nft", "flush", "ruleset")
        flushed = time.monotonic()
        # Right after the flush the agent's held socket still answers a connection to the port
        # (it relays what no DNAT rule redirects any more): only `status` tells the heal is done.
        status = healed(host, tmp, flushed + HEAL_WAIT)
        heal_ok = status.returncode == 0
        print(f"  healed: `cni-bridge status` finds nothing amiss {time.monotonic() - flushed:.1f} s after "
              "the flush (no command was run)" if heal_ok else
              f"  NOT HEALED {HEAL_WAIT:g} s after the flush")
        answer = fetch(out, f"http://{HOST_ADDR}:8080/")
        print(f"  from outside -> {HOST_ADDR}:8080 : {answer}")
        print(f"  cni-bridge status exits {status.returncode}; its first lines:")
        print("\n".join("    " + line for line in status.stdout.splitlines()[:6]))
        title("what the plugin recorded (cni-bridge ls)")
        print(ns(host, str(BIN), "ls", "--data-dir", str(tmp / "ipam")).rstrip())
        title("nftables: the attachment is a few map elements, not rules")
        text = ns(host, "nft", "list", "table", "inet", "cni_bridge")
        print("\n".join(line.strip() for line in text.splitlines() if "elements" in line))
        title("detach both")
        client(host, env, "del", "demo", c1.path)
        client(host, env, "del", "demo", c2.path)
        # The bridge the plugin made goes with the network's last attachment, and its veths.
        links = [line.split()[0] for line in ns(host, "ip", "-br", "link").splitlines()]
        ports = [name for name in links if name.startswith(("vcb", "cbdemo0"))]
        reservations = [p.name for p in (tmp / "ipam" / "demo").iterdir() if p.name[0].isdigit() or ":" in p.name]
        ruleset = ns(host, "nft", "list", "ruleset")
        leftovers = [ip for ip in ("10.123.0.2", "10.123.0.3", "8080") if ip in ruleset]
        print(f"  bridge and veths left on the host: {ports or 'none'}")
        print(f"  a host program binding 0.0.0.0:8080 now: {try_bind(host, 8080)}")
        print(f"  reservations left:   {reservations or 'none'}")
        print(f"  nft mentions of the containers' addresses or port 8080: {leftovers or 'none'}")
        print(f"  c1 interfaces now:   {ns(c1, 'ip', '-br', 'link').split()[0]} only")
        ok = heal_ok and not ports and not reservations and not leftovers
        title("clean" if ok else "SOMETHING WAS LEFT BEHIND")
        return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
