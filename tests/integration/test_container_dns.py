"""`"containerDNS"`: container names served by aardvark-dns on the gateway, other names
forwarded upstream, names gone at DEL, per network, rebuilt from the records (issue 15 item 1).

Real resolvers: busybox `nslookup` inside the container namespaces. The upstream is a DNS server
of the test's own in the outside namespace: a second aardvark-dns (ended with the lab, by pid).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.lab import TEST_NET_1, Netns
from tests.lab.nft import counter
from tests.lab.plugin import ROOT, PluginLab

pytestmark = [pytest.mark.integration, pytest.mark.plugin]

AARDVARK = shutil.which("aardvark-dns") or "/usr/lib/podman/aardvark-dns"
BASE = Path("/run/cni-bridge/dns")
UPSTREAM = TEST_NET_1[1]  # the outside end
FAR_NAME, FAR_ADDR = "www.example.test", "198.51.100.7"  # known only to the upstream


def _key(lab: PluginLab) -> str:
    """The lab host's DNS directory name, as the plugin computes it there."""
    code = "from cni_bridge.dns.aardvark import netns_key; print(netns_key())"
    return lab.python(lab.host, code, pythonpath=str(ROOT)).strip()


@pytest.fixture
def dns_lab(tmp_path: Path) -> Iterator[PluginLab]:
    if not os.access(AARDVARK, os.X_OK):
        pytest.fail("aardvark-dns is missing: apt-get install aardvark-dns (Makefile APT_PACKAGES)")
    lab = PluginLab(tmp_path, prefix="cbD")
    key = ""
    try:
        key = _key(lab)
        yield lab
    finally:
        lab.close()  # ends the servers in its namespaces, by pid
        if key:
            shutil.rmtree(BASE / key, ignore_errors=True)


def _upstream(lab: PluginLab) -> Netns:
    """The outside namespace, with a DNS server answering FAR_NAME on port 53."""
    out = lab.outside(lab.host)
    conf_dir = lab.tmp / "upstream-dns"
    conf_dir.mkdir()
    (conf_dir / "far").write_text(f"{UPSTREAM}\nfar0 {FAR_ADDR}  {FAR_NAME}\n")
    # Daemonises (its parent returns once the pid file is written); the lab ends it by pid.
    out.exec(AARDVARK, "--config", str(conf_dir), "-p", "53", "run")
    return out


def lookup(ns: Netns, name: str, server: str) -> list[str] | None:
    """The addresses busybox nslookup finds for `name` asking `server`; None when it fails."""
    proc = ns.exec("busybox", "nslookup", name, server, check=False, timeout=30)
    if proc.returncode != 0:
        return None
    answer = proc.stdout.split("\n\n", 1)[1] if "\n\n" in proc.stdout else ""
    return sorted(re.findall(r"^Address:\s+(\S+)$", answer, re.M))


def _addrs(result: dict[str, Any]) -> list[str]:
    return sorted(ip["address"].split("/")[0] for ip in result["ips"])


def _pod(name: str) -> dict[str, str]:
    return {"CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAME={name}"}


def _running(pid: int) -> bool:
    """Alive, not a zombie left for its parent (the daemon's is init, or a subreaper)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2:].split(" ", 1)[0] not in ("Z", "X")


def _server_pid(lab: PluginLab, key: str) -> int | None:
    try:
        pid = int((BASE / key / "aardvark.pid").read_text())
    except (OSError, ValueError):
        return None
    return pid if _running(pid) else None


def test_names_aliases_forwarding_and_del(dns_lab: PluginLab) -> None:
    lab = dns_lab
    _upstream(lab)
    conf = lab.conf(
        containerDNS={"domain": "test.lan", "upstream": [UPSTREAM]},
        capabilities={"aliases": True},
        ipam={"type": "host-local", "dataDir": str(lab.data_dir),
              "ranges": [[{"subnet": "10.66.0.0/24"}], [{"subnet": "fd00:66::/64"}]]},
    )
    db_conf = {**conf, "runtimeConfig": {"aliases": {conf["name"]: ["database"]}}}
    c1, c2 = lab.container(), lab.container()
    cid1 = "0123456789abcdef0123"
    r1 = lab.add(db_conf, cid1, c1, extra=_pod("db"))
    r2 = lab.add(conf, "webcontainer1", c2, extra=_pod("web"))
    assert r1["dns"] == {"nameservers": ["10.66.0.1", "fd00:66::1"], "search": ["test.lan"]}
    db = _addrs(r1)
    for name in ("db", "db.test.lan", "database", "database.test.lan", cid1[:12]):
        assert lookup(c2, name, "10.66.0.1") == db, name
    assert lookup(c2, "db", "fd00:66::1") == db  # the IPv6 gateway answers too
    assert lookup(c1, "web", "10.66.0.1") == _addrs(r2)
    assert lookup(c1, "nosuchname", "10.66.0.1") is None
    # Everything else goes upstream (a server only the host can reach: it is the host's
    # server that asks, not the container).
    assert lookup(c2, FAR_NAME, "10.66.0.1") == [FAR_ADDR]
    # The server runs in the host namespace of the caller (the lab's), on port 53 there.
    key = _key(lab)
    pid = _server_pid(lab, key)
    assert pid is not None
    assert os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat(lab.host.path).st_ino
    # DEL: the names are gone when it returns; the other container's stay.
    lab.delete(db_conf, cid1, c1.path)
    assert lookup(c2, "db", "10.66.0.1") is None
    assert lookup(c2, "database", "10.66.0.1") is None
    assert lookup(c2, "web", "10.66.0.1") == _addrs(r2)
    # The last DEL ends the server and leaves no directory.
    lab.delete(conf, "webcontainer1", c2.path)
    assert _server_pid(lab, key) is None and not _running(pid)
    assert not (BASE / key).exists()


def test_names_are_per_network_and_rebuilt_from_records(dns_lab: PluginLab) -> None:
    lab = dns_lab
    a = lab.conf(name=f"a{lab.tag}", bridge=f"ca{lab.tag}", containerDNS=True)
    b = lab.conf(name=f"b{lab.tag}", bridge=f"cb{lab.tag}", containerDNS=True,
                 ipam={"type": "host-local", "dataDir": str(lab.data_dir),
                       "ranges": [[{"subnet": "10.67.0.0/24"}]]})
    a1, a2, b1 = lab.container(), lab.container(), lab.container()
    ra1 = lab.add(a, "alpha-one", a1, extra=_pod("alpha1"))
    lab.add(a, "alpha-two", a2, extra=_pod("alpha2"))
    rb1 = lab.add(b, "beta-one", b1, extra=_pod("beta1"))
    assert ra1["dns"]["search"] == ["dns.cni-bridge"]  # the default domain
    assert lookup(a2, "alpha1", "10.66.0.1") == _addrs(ra1)
    assert lookup(a2, "alpha1.dns.cni-bridge", "10.66.0.1") == _addrs(ra1)
    assert lookup(b1, "beta1", "10.67.0.1") == _addrs(rb1)
    # A container on b does not see a's names through its own server, nor a's through b's.
    assert lookup(b1, "alpha1", "10.67.0.1") is None
    assert lookup(a1, "beta1", "10.66.0.1") is None
    # Nor by asking a's name server directly (aardvark-dns would answer with a's names):
    # only a's own bridge may ask it.
    assert lookup(b1, "alpha1", "10.66.0.1") is None
    assert counter(lab.host, "cni_bridge", "input", "v1 dns4") > 0
    # A reboot or a crash: the server and its directory gone. The records bring both back.
    key = _key(lab)
    pid = _server_pid(lab, key)
    assert pid is not None
    code, out = lab.plugin("CHECK", {**a, "prevResult": ra1}, "alpha-one", a1.path)
    assert code == 0, out
    # The directory first: an agent (resident pass) restarts a dead server while it has files.
    shutil.rmtree(BASE / key)
    os.kill(pid, 9)  # the server the plugin started for this test, in its namespace
    code, out = lab.plugin("CHECK", {**a, "prevResult": ra1}, "alpha-one", a1.path)
    assert code == 1 and out["code"] == 105 and "is missing" in out["msg"], out
    assert "aardvark-dns is not running" in out["msg"] + out["details"], out
    assert lookup(a2, "alpha1", "10.66.0.1") is None
    proc = lab.cli("sync", "--data-dir", str(lab.data_dir))  # rebuild() is called from it
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert lookup(a2, "alpha1", "10.66.0.1") == _addrs(ra1)
    assert lookup(b1, "beta1", "10.67.0.1") == _addrs(rb1)
    assert lookup(b1, "alpha1", "10.67.0.1") is None
    for conf, cid, ns in ((a, "alpha-one", a1), (a, "alpha-two", a2), (b, "beta-one", b1)):
        lab.delete(conf, cid, ns.path)
    assert not (BASE / key).exists()


def test_missing_server_is_a_clear_error_and_leaves_nothing(dns_lab: PluginLab) -> None:
    lab = dns_lab
    conf = lab.conf(containerDNS=True)
    c1 = lab.container()
    code, out = lab.plugin("ADD", conf, "nodns", c1.path,
                           extra={"CNI_BRIDGE_AARDVARK_DNS": "/nonexistent/aardvark-dns"})
    assert code == 1 and out["code"] == 7 and "aardvark-dns" in out["msg"], out
    assert c1.links() == ["lo"]
    assert lab.reservations(conf["name"]) == []
    assert not (BASE / _key(lab)).exists()


def test_forwards_to_the_resolvers_of_resolv_conf_as_the_plugin_sees_it(
    dns_lab: PluginLab,
) -> None:
    """No `upstream`: the plugin reads /etc/resolv.conf, here a private one bind-mounted in a
    mount namespace of the test's own (the machine's file is never touched)."""
    lab = dns_lab
    _upstream(lab)
    resolv = lab.tmp / "resolv.conf"
    resolv.write_text(f"# the test's\nnameserver {UPSTREAM}\nnameserver fe80::1%eth0\n")
    conf = lab.conf(containerDNS=True)
    c1 = lab.container()
    env = lab.env("ADD", "fwd-one", c1.path, extra=_pod("fwd"))
    plugin = ["nsenter", f"--net={lab.host.path}", "env", "-i",
              *[f"{k}={v}" for k, v in env.items()], *_plugin_argv()]
    script = 'mount --bind "$0" /etc/resolv.conf && exec "$@"'
    proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script,
                           str(resolv), *plugin], input=__import__("json").dumps(conf),
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert lookup(c1, FAR_NAME, "10.66.0.1") == [FAR_ADDR]
    lab.delete(conf, "fwd-one", c1.path)


def _plugin_argv() -> list[str]:
    from tests.lab.plugin import plugin_command

    return plugin_command()


def test_the_agent_restarts_a_dead_server(dns_lab: PluginLab) -> None:
    """With the agent (the resident pass of `make test`), a server that died comes back."""
    lab = dns_lab
    if lab.resident != "1":
        pytest.skip("in-process pass: no agent to supervise the server")
    conf = lab.conf(containerDNS=True)
    c1, c2 = lab.container(), lab.container()
    r1 = lab.add(conf, "sup-one", c1, extra=_pod("one"))
    lab.add(conf, "sup-two", c2, extra=_pod("two"))
    key = _key(lab)
    pid = _server_pid(lab, key)
    assert pid is not None
    os.kill(pid, 9)  # the server started for this test, in its namespace
    deadline = time.monotonic() + 30
    while (_server_pid(lab, key) in (None, pid)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _server_pid(lab, key) not in (None, pid)
    assert lookup(c2, "one", "10.66.0.1") == _addrs(r1)
    lab.delete(conf, "sup-one", c1.path)
    lab.delete(conf, "sup-two", c2.path)
    assert _server_pid(lab, key) is None


def test_internal_network_containers_resolve_each_other(dns_lab: PluginLab) -> None:
    """Their name server is the gateway address on the bridge: reached without forwarding."""
    lab = dns_lab
    conf = lab.conf(internal=True, containerDNS=True)
    c1, c2 = lab.container(), lab.container()
    r1 = lab.add(conf, "int-dns-one", c1, extra={"CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAME=one"})
    lab.add(conf, "int-dns-two", c2, extra={"CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAME=two"})
    assert r1["dns"]["nameservers"] == ["10.66.0.1"]
    assert lookup(c2, "one", "10.66.0.1") == [r1["ips"][0]["address"].split("/")[0]]
    lab.delete(conf, "int-dns-one", c1.path)
    lab.delete(conf, "int-dns-two", c2.path)


def test_the_name_server_does_not_answer_from_outside(dns_lab: PluginLab) -> None:
    """A host forwards to its bridges, so anyone who can reach it (its LAN, or a peer that
    routes the bridge's subnet to it) could ask the gateway: for the network's names, and for
    any other name, forwarded (an open resolver). Only the network's own bridge may ask."""
    lab = dns_lab
    out = lab.outside(lab.host)  # default route via the host
    conf = lab.conf(containerDNS=True)
    c1, c2 = lab.container(), lab.container()
    r1 = lab.add(conf, "outside-one", c1, extra=_pod("one"))
    lab.add(conf, "outside-two", c2, extra=_pod("two"))
    assert lookup(c2, "one", "10.66.0.1") == _addrs(r1)
    assert lookup(out, "one", "10.66.0.1") is None
    for cid, ns in (("outside-one", c1), ("outside-two", c2)):
        lab.delete(conf, cid, ns.path)
