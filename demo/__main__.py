"""`make demo`: the built plugin attaching containers in throwaway namespaces.

Creates a "host" namespace (the plugin's world), two container namespaces and an "outside"
namespace linked to the host; attaches the containers through dist/bin/cni-bridge with its own
cnitool-like client; shows addresses and a published port answering from outside, from the host
and from the other container; detaches; shows that nothing is left. The machine's own network
namespace is never touched.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = ROOT / "dist" / "bin" / "cni-bridge"
TAG = secrets.token_hex(2)
HOST, C1, C2, OUT = (f"cbdemo-{r}-{TAG}" for r in ("host", "c1", "c2", "out"))
HOST_ADDR = "192.0.2.1"  # TEST-NET-1, only inside these namespaces


def sh(*cmd: str, check: bool = True, input: bytes | None = None, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(cmd, capture_output=True, input=input, env=env, timeout=60)
    if check and proc.returncode != 0:
        raise SystemExit(f"demo: {' '.join(cmd)} failed: {proc.stderr.decode()}{proc.stdout.decode()}")
    return proc.stdout.decode()


def ns(name: str, *cmd: str, check: bool = True, env: dict[str, str] | None = None) -> str:
    # nsenter, not `ip netns exec`: the latter makes a new mount namespace per call, and the
    # warm resident serves only callers in its own network and mount namespace.
    return sh("nsenter", f"--net=/run/netns/{name}", *cmd, check=check, env=env)


def title(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m", flush=True)


def show_configs() -> None:
    sys.path.insert(0, str(ROOT))
    from cni_bridge.config import load_netconf
    from cni_bridge.errors import CNIError

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
    for name in (HOST, C1, C2, OUT):
        sh("ip", "netns", "add", name)
        ns(name, "ip", "link", "set", "lo", "up")
    sh("ip", "link", "add", "up0", "netns", HOST, "type", "veth", "peer", "name", "eth0", "netns", OUT)
    ns(HOST, "ip", "addr", "add", f"{HOST_ADDR}/24", "dev", "up0")
    ns(HOST, "ip", "link", "set", "up0", "up")
    ns(OUT, "ip", "addr", "add", "192.0.2.2/24", "dev", "eth0")
    ns(OUT, "ip", "link", "set", "eth0", "up")
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
            "capabilities": {"portMappings": True},
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


def client(env: dict[str, str], *args: str, cap: dict[str, object] | None = None) -> str:
    e = dict(env)
    if cap:
        e["CAP_ARGS"] = json.dumps(cap)
    return ns(HOST, str(BIN), "client", *args, env=e)


FETCH = """
import sys, urllib.request
try:
    print(urllib.request.urlopen(sys.argv[1], timeout=3).read().decode().strip())
except Exception as exc:
    print(f"(no answer: {exc})")
"""


def fetch(where: str, url: str) -> str:
    return ns(where, sys.executable, "-c", FETCH, url, check=False).strip()


def main() -> int:
    if os.geteuid() != 0:
        print("make demo needs root (network namespaces)", file=sys.stderr)
        return 1
    title("VERSION, from the built binary")
    print(sh(str(BIN), input=b"", env={"CNI_COMMAND": "VERSION"}).strip())
    title("example configs in conf/")
    show_configs()
    with tempfile.TemporaryDirectory(prefix="cbdemo-") as tmpdir:
        tmp = Path(tmpdir)
        try:
            env = setup(tmp)
            title(f"attach two containers (namespaces {C1}, {C2}) to network 'demo'")
            r1 = json.loads(client(env, "add", "demo", f"/run/netns/{C1}",
                                   cap={"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]}))
            r2 = json.loads(client(env, "add", "demo", f"/run/netns/{C2}"))
            for name, r in (("c1", r1), ("c2", r2)):
                print(f"  {name}: " + ", ".join(ip["address"] for ip in r["ips"]))
            print(ns(C1, "ip", "-br", "addr", "show", "eth0").rstrip())
            print(ns(C1, "ip", "route").rstrip())
            title("c1 serves HTTP on port 80, published as host port 8080")
            subprocess.Popen(["nsenter", f"--net=/run/netns/{C1}", "busybox", "httpd", "-f", "-p", "80", "-h", str(tmp / "www")])
            sh("sleep", "0.3")
            print(f"  from outside  -> {HOST_ADDR}:8080 : {fetch(OUT, f'http://{HOST_ADDR}:8080/')}")
            print(f"  from the host -> 127.0.0.1:8080  : {fetch(HOST, 'http://127.0.0.1:8080/')}")
            print(f"  from the host -> {HOST_ADDR}:8080 : {fetch(HOST, f'http://{HOST_ADDR}:8080/')}")
            print(f"  from c2       -> {HOST_ADDR}:8080 : {fetch(C2, f'http://{HOST_ADDR}:8080/')}")
            print(f"  from c1 itself (hairpin)         : {fetch(C1, f'http://{HOST_ADDR}:8080/')}")
            title("what the plugin recorded (cni-bridge ls)")
            print(ns(HOST, str(BIN), "ls", "--data-dir", str(tmp / "ipam")).rstrip())
            title("nftables: the attachment is a few map elements, not rules")
            text = ns(HOST, "nft", "list", "table", "inet", "cni_bridge")
            print("\n".join(line.strip() for line in text.splitlines() if "elements" in line))
            title("detach both")
            client(env, "del", "demo", f"/run/netns/{C1}")
            client(env, "del", "demo", f"/run/netns/{C2}")
            ports = ns(HOST, "ip", "-br", "link", "show", "master", "cbdemo0").strip()
            reservations = [p.name for p in (tmp / "ipam" / "demo").iterdir() if p.name[0].isdigit() or ":" in p.name]
            ruleset = ns(HOST, "nft", "list", "ruleset")
            leftovers = [ip for ip in ("10.123.0.2", "10.123.0.3", "8080") if ip in ruleset]
            print(f"  veths on the bridge: {ports or 'none'}")
            print(f"  reservations left:   {reservations or 'none'}")
            print(f"  nft mentions of the containers' addresses or port 8080: {leftovers or 'none'}")
            print(f"  c1 interfaces now:   {ns(C1, 'ip', '-br', 'link').split()[0]} only")
            ok = not ports and not reservations and not leftovers
            title("clean" if ok else "SOMETHING WAS LEFT BEHIND")
            return 0 if ok else 1
        finally:
            for name in (C1, C2, OUT, HOST):
                for pid in sh("ip", "netns", "pids", name, check=False).split():
                    subprocess.run(["kill", "-9", pid], capture_output=True)
                sh("ip", "netns", "del", name, check=False)


if __name__ == "__main__":
    raise SystemExit(main())
