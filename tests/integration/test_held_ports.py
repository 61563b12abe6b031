"""Held ports (issue 15 item 2): the agent's holder keeps a socket on every published host port,
as Docker's docker-proxy does, and relays [::1] to the container.

Real sockets in the lab's host namespace: a host listener before ADD (refused, named, nothing
left), a bind after ADD (EADDRINUSE) and after DEL (free), [::1] and 127.0.0.1 from the host,
an outside client (its own address preserved), the agent killed and started again. The agent
is started here, in the host namespace, and ended by pid; the plugin runs in-process or
through that agent as CNI_BRIDGE_TEST_RESIDENT says.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from typing import Any

import pytest

from tests.lab.lab import TEST_NET_1
from tests.lab.plugin import ROOT, PluginLab, plugin_command
from tests.lab.poll import wait_for
from tests.lab.procs import children

pytestmark = [pytest.mark.integration, pytest.mark.plugin]

HOST_PORT = 18080
SUBNET4, SUBNET6 = "10.66.0.0/24", "fd00:66::/64"

_BIND = r"""
import errno, socket, sys
proto, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
fam = socket.AF_INET6 if ":" in host else socket.AF_INET
s = socket.socket(fam, socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
if proto == "tcp":
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind((host, port))
    if proto == "tcp":
        s.listen(1)
    print("bound")
except OSError as e:
    print(errno.errorcode.get(e.errno, str(e.errno)))
"""


def bind_result(lab: PluginLab, proto: str, host: str, port: int = HOST_PORT) -> str:
    """What a host program's bind of host:port gets: "bound" or the errno's name."""
    return lab.host.exec(sys.executable, "-c", _BIND, proto, host, str(port)).stdout.strip()


def start_agent(lab: PluginLab) -> subprocess.Popen[str]:
    log = open(lab.tmp / "agent.log", "a")  # noqa: SIM115 - lives with the process
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(ROOT)}
    agent = lab.spawn(lab.host, [*plugin_command(), "serve", "--idle", "0"], env=env, stderr=log)
    log.close()
    assert wait_for(lambda: _holder_answers(lab), timeout=15), agent_log(lab)
    return agent


def agent_log(lab: PluginLab) -> str:
    path = lab.tmp / "agent.log"
    return path.read_text() if path.exists() else ""


_STATUS = r"""
import json
from cni_bridge.ports import control
print(json.dumps(control.status()))
"""


def holder_status(lab: PluginLab) -> Any:
    return json.loads(lab.python(lab.host, _STATUS, pythonpath=str(ROOT)))


def _holder_answers(lab: PluginLab) -> bool:
    return holder_status(lab) is not None


def conf(lab: PluginLab, dual: bool, proto: str = "tcp", **mapping: Any) -> dict[str, Any]:
    ranges = [[{"subnet": SUBNET4}]] + ([[{"subnet": SUBNET6}]] if dual else [])
    c = lab.conf(capabilities={"portMappings": True})
    c["ipam"]["ranges"] = ranges
    pm = {"hostPort": HOST_PORT, "containerPort": 80, "protocol": proto, **mapping}
    c["runtimeConfig"] = {"portMappings": [pm]}
    return c


def nothing_left(lab: PluginLab, network: str) -> None:
    assert lab.reservations(network) == []
    assert not [n for n in lab.host.links() if n.startswith("vcb")]
    records = lab.data_dir / network / ".cni-bridge"
    assert not records.exists() or [p.name for p in records.iterdir() if p.suffix == ".json"] in (
        [],
        ["network.json"],
    )
    ruleset = lab.host.exec("nft", "-j", "list", "ruleset").stdout
    assert network + " " not in ruleset  # no element comment of an attachment of ours


@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_a_port_a_host_program_holds_refuses_the_add(lab: PluginLab, proto: str) -> None:
    lab.server(lab.host, proto, HOST_PORT, host="127.0.0.1")
    holder = lab.procs[-1].pid
    c = lab.container()
    code, out = lab.plugin("ADD", conf(lab, dual=True, proto=proto), "held1", c.path)
    assert code == 1 and out["code"] == 100, out
    assert f"pid {holder} (" in out["msg"] and f"{proto}/{HOST_PORT}" in out["msg"], out
    nothing_left(lab, lab.conf()["name"])


def test_held_while_published_released_by_del(lab: PluginLab) -> None:
    start_agent(lab)
    c = lab.container()
    net = conf(lab, dual=False)
    net["runtimeConfig"]["portMappings"].append(
        {"hostPort": HOST_PORT, "containerPort": 53, "protocol": "udp"}
    )
    lab.add(net, "held2", c)
    for proto, host in [("tcp", "0.0.0.0"), ("tcp", "127.0.0.1"), ("tcp", "::"), ("udp", "0.0.0.0"),
                        ("udp", "::1")]:
        assert bind_result(lab, proto, host) == "EADDRINUSE", (proto, host, agent_log(lab))
    lab.delete(net, "held2", c.path)
    for proto, host in [("tcp", "0.0.0.0"), ("tcp", "::"), ("udp", "0.0.0.0"), ("udp", "::")]:
        assert bind_result(lab, proto, host) == "bound", (proto, host)


@pytest.mark.parametrize("dual", [False, True], ids=["ipv4-only", "dual-stack"])
def test_loopback6_reaches_the_container_outside_keeps_its_address(
    lab: PluginLab, dual: bool
) -> None:
    start_agent(lab)
    out = lab.outside(lab.host)
    c = lab.container()
    result = lab.add(conf(lab, dual=dual), "held3", c)
    lab.server(c, "tcp", 80)
    gateway4 = SUBNET4.replace("0/24", "1")
    # [::1] is not DNATed: the held socket's proxy relays it (from the host's side of the bridge).
    seen = lab.probe(lab.host, "tcp", "::1", HOST_PORT)
    assert seen is not None, agent_log(lab)
    assert seen == (SUBNET6.replace("::/64", "::1") if dual else gateway4), seen
    # 127.0.0.1 and the outside go by DNAT: the outside client's own address arrives.
    assert lab.probe(lab.host, "tcp", "127.0.0.1", HOST_PORT) == gateway4
    assert lab.probe(out, "tcp", TEST_NET_1[0], HOST_PORT) == TEST_NET_1[1]
    assert result["ips"]


_SINK = r"""
import hashlib, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 80))
s.listen(1)
print("ready", flush=True)
conn, _ = s.accept()
h, n = hashlib.sha256(), 0
while data := conn.recv(65536):  # until the client's half-close arrives through the relay
    h.update(data)
    n += len(data)
conn.sendall(f"{n} {h.hexdigest()}\n".encode() + bytes(range(256)) * 16384)
conn.close()
"""

_SEND = r"""
import hashlib, socket, sys, threading
c = socket.create_connection(("::1", int(sys.argv[1])), timeout=30)
payload = bytes(range(251)) * 20000
def send():
    c.sendall(payload)
    c.shutdown(socket.SHUT_WR)
t = threading.Thread(target=send)
t.start()
got = bytearray()
while data := c.recv(65536):
    got += data
t.join()
head, _, rest = bytes(got).partition(b"\n")
print(head.decode(), len(payload), hashlib.sha256(payload).hexdigest(), rest == bytes(range(256)) * 16384)
"""


def test_loopback6_carries_megabytes_both_ways_and_the_half_close(lab: PluginLab) -> None:
    start_agent(lab)
    c = lab.container()
    lab.add(conf(lab, dual=False), "held7", c)
    lab.spawn(c, [sys.executable, "-c", _SINK], ready="ready")
    out = lab.python(lab.host, _SEND.replace("sys.argv[1]", str(HOST_PORT))).split()
    assert out[:2] == out[2:4] and out[4] == "True", (out, agent_log(lab))


def test_loopback6_udp_is_relayed(lab: PluginLab) -> None:
    start_agent(lab)
    c = lab.container()
    lab.add(conf(lab, dual=False, proto="udp"), "held4", c)
    lab.server(c, "udp", 80)
    assert lab.probe(lab.host, "udp", "::1", HOST_PORT) == SUBNET4.replace("0/24", "1")


def test_held_again_after_the_agent_restarts_and_status_names_a_port_it_could_not_hold(
    lab: PluginLab,
) -> None:
    agent = start_agent(lab)
    c = lab.container()
    net = conf(lab, dual=False)
    lab.add(net, "held5", c)
    assert bind_result(lab, "tcp", "0.0.0.0") == "EADDRINUSE"
    os.kill(agent.pid, signal.SIGKILL)
    agent.wait(10)
    # The ports go with the agent: the port is free, and nothing holds it now.
    assert wait_for(lambda: bind_result(lab, "tcp", "0.0.0.0") == "bound", timeout=10)
    status = json.loads(lab.cli("status", "--json", "--data-dir", str(lab.data_dir)).stdout)
    assert status[0]["heldPorts"]["agent"] is False, status
    start_agent(lab)
    assert wait_for(lambda: bind_result(lab, "tcp", "0.0.0.0") == "EADDRINUSE", timeout=10), (
        agent_log(lab)
    )
    # A host program that takes a port while no agent runs: the agent cannot hold it, and says so.
    os.kill(lab.procs[-1].pid, signal.SIGKILL)
    lab.procs[-1].wait(10)
    lab.server(lab.host, "tcp", HOST_PORT, host="127.0.0.1")
    squatter = lab.procs[-1].pid
    start_agent(lab)
    status = json.loads(lab.cli("status", "--json", "--data-dir", str(lab.data_dir)).stdout)
    unheld = status[0]["heldPorts"]["unheld"]
    assert [u["port"] for u in unheld] == [f"tcp/{HOST_PORT} on 0.0.0.0"], status
    assert f"pid {squatter}" in unheld[0]["reason"], status


PODMAN_ARGS = {"CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAME=web"}


def test_podman_holds_its_own_ports_we_hold_only_ipv6(lab: PluginLab) -> None:
    """podman (recognised by its CNI_ARGS) has conmon bind the published port after ADD, and
    fails if anything holds it: that socket is the runtime's; [::] and the [::1] relay stay ours."""
    start_agent(lab)
    c = lab.container()
    net = conf(lab, dual=False)
    code, out = lab.plugin("ADD", net, "pod1", c.path, extra=PODMAN_ARGS)
    assert code == 0, out
    assert bind_result(lab, "tcp", "::") == "EADDRINUSE"
    # What conmon does next: listen on 0.0.0.0:<port>, and keep it while the container runs.
    lab.server(lab.host, "tcp", HOST_PORT, host="0.0.0.0", reply="conmon")
    lab.server(c, "tcp", 80)
    assert lab.probe(lab.host, "tcp", "::1", HOST_PORT) == SUBNET4.replace("0/24", "1")
    assert lab.probe(lab.host, "tcp", "127.0.0.1", HOST_PORT) == SUBNET4.replace("0/24", "1")
    # `podman network reload`: DEL and ADD again while conmon holds the port.
    lab.delete(net, "pod1", c.path)
    code, out = lab.plugin("ADD", net, "pod1", c.path, extra=PODMAN_ARGS)
    assert code == 0, out
    assert bind_result(lab, "tcp", "::") == "EADDRINUSE"
    # Any other runtime's ADD of a port a host program holds is still refused.
    lab.delete(net, "pod1", c.path)
    code, out = lab.plugin("ADD", net, "cri1", c.path)
    assert code == 1 and out["code"] == 100 and "tcp/18080 on 0.0.0.0" in out["msg"], out


def _socket_inodes(pid: int) -> set[str]:
    out = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:"):
            out.add(target)
    return out


def test_the_agent_holds_the_ports_and_its_workers_hold_none(lab: PluginLab) -> None:
    """The ports are held by the agent's own loop; a worker it forks closes its copies of the
    held sockets (and of every other of the agent's) before it serves, so a port is let go
    when the agent lets it go, whatever its workers do."""
    agent = start_agent(lab).pid
    c = lab.container()
    lab.add(conf(lab, dual=False), "held6", c)
    assert holder_status(lab)["pid"] == agent
    assert holder_status(lab)["failed"] == []
    workers = children(agent)
    assert workers, agent_log(lab)
    for worker in workers:
        assert not _socket_inodes(worker) & _socket_inodes(agent), worker
    lab.delete(conf(lab, dual=False), "held6", c.path)
    assert bind_result(lab, "tcp", "0.0.0.0") == "bound"


def test_host_ip_is_honoured(lab: PluginLab) -> None:
    start_agent(lab)
    lab.outside(lab.host)  # puts TEST_NET_1[0] on the host
    lab.server(lab.host, "tcp", HOST_PORT, host="127.0.0.1")
    c = lab.container()
    net = conf(lab, dual=False, hostIP=TEST_NET_1[0])
    lab.add(net, "hip1", c)  # another address than the host program's: no conflict
    assert bind_result(lab, "tcp", TEST_NET_1[0]) == "EADDRINUSE"
    assert bind_result(lab, "tcp", "::1") == "bound"  # only the mapping's address is held
    assert holder_status(lab)["held"] == [f"tcp/{HOST_PORT} on {TEST_NET_1[0]}"]
    lab.delete(net, "hip1", c.path)
    lab.server(lab.host, "tcp", HOST_PORT + 1, host="0.0.0.0")
    net["runtimeConfig"]["portMappings"][0]["hostPort"] = HOST_PORT + 1
    code, out = lab.plugin("ADD", net, "hip2", c.path)  # a wildcard listener covers it
    assert code == 1 and out["code"] == 100, out
    assert f"pid {lab.procs[-1].pid} (" in out["msg"], out
