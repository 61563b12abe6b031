"""The plugin chains and the runtimes of the end-to-end tests (podman, containerd), and what the
tests observe of their work.

Nothing here touches the machine's own network namespace or its /etc/cni, /opt/cni, /var/lib/cni
or /run. Every test gets the lab's "host" network namespace, where the runtime and the plugin run,
and an "outside" one joined to it (the world that reaches published ports); a Sandbox around the
runtime in the host namespace (sandbox.py); private podman / containerd configurations under the
test's temporary directory; images made from busybox (images.py). Namespaces, commands,
processes and traffic come from the one namespace lab (tests/lab/).
"""
from __future__ import annotations

import hashlib
import ipaddress
import json
import re
import shlex
import shutil
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from tests.e2e.sandbox import Sandbox
from tests.lab import Netns, nft, run
from tests.lab.plugin import reservations as reservations
from tests.lab.traffic import http_get as http_get

PREFIX = "cbD"
REFERENCE_PLUGIN_DIR = Path("/usr/lib/cni")
REFERENCE_PLUGINS = ("bridge", "host-local", "portmap")
OUR_PLUGIN = "cni-bridge"
CONTAINER_PORT = 80
HOST_PORT = 8080
# The only iptables chains the reference portmap keeps for good: shared jump targets, not state.
PORTMAP_SHARED_CHAINS = frozenset(
    {"CNI-HOSTPORT-DNAT", "CNI-HOSTPORT-SETMARK", "CNI-HOSTPORT-MASQ"}
)


def missing_tools(names: Iterable[str]) -> list[str]:
    return [name for name in names if shutil.which(name) is None]


# --------------------------------------------------------------------------- CNI networks


@dataclass(frozen=True)
class Chain:
    """The plugin chain under test: ours (one executable) or the reference trio."""

    reference: bool
    plugin_dir: Path

    def executables(self) -> dict[str, Path]:
        names = REFERENCE_PLUGINS if self.reference else (OUR_PLUGIN,)
        return {name: (self.plugin_dir / name).resolve() for name in names}

    def populate(self, bin_dir: Path) -> None:
        # Absolute links to the real executables: a PyInstaller bundle finds its _internal/
        # through /proc/self/exe, and the directory may be bind-mounted elsewhere (/opt/cni/bin).
        bin_dir.mkdir(parents=True, exist_ok=True)
        for name, target in self.executables().items():
            if target.is_relative_to("/opt/cni"):
                raise RuntimeError(f"{target}: the sandbox mounts over /opt/cni/bin; copy it out")
            (bin_dir / name).symlink_to(target)

    def conflist(
        self,
        name: str,
        bridge: str,
        subnet: str,
        data_dir: Path,
        static_port_mappings: Sequence[Mapping[str, Any]] = (),
    ) -> dict[str, Any]:
        ipam = {
            "type": "host-local",
            "ranges": [[{"subnet": subnet}]],
            "dataDir": str(data_dir),
        }
        link = {
            "bridge": bridge,
            "isGateway": True,
            "isDefaultGateway": True,
            "ipMasq": True,
            "hairpinMode": True,
            "ipam": ipam,
        }
        ports: dict[str, Any] = {"capabilities": {"portMappings": True}}
        if static_port_mappings:
            # libcni passes a plugin's own runtimeConfig through when the runtime offers no
            # capability args: that is how `ctr run --cni`, which sends none, publishes a port.
            ports["runtimeConfig"] = {"portMappings": [dict(m) for m in static_port_mappings]}
        if self.reference:
            plugins = [{"type": "bridge", **link}, {"type": "portmap", **ports}]
        else:
            plugins = [{"type": OUR_PLUGIN, **link, **ports}]
        return {"cniVersion": "1.0.0", "name": name, "plugins": plugins}


def port_mapping(
    host_port: int = HOST_PORT, container_port: int = CONTAINER_PORT
) -> dict[str, Any]:
    return {"hostPort": host_port, "containerPort": container_port, "protocol": "tcp"}


# --------------------------------------------------------------------------- runtimes


def httpd_command(token: str) -> list[str]:
    """Serve a page only this container knows, so a response proves where the connection landed."""
    script = (
        f"mkdir -p /www && echo {shlex.quote(token)} > /www/index.html && "
        f"exec httpd -f -p {CONTAINER_PORT} -h /www"
    )
    return ["/bin/sh", "-c", script]


class Podman:
    """podman 4 with the CNI backend and a configuration, storage and state of its own."""

    def __init__(
        self, sandbox: Sandbox, workdir: Path, plugin_dir: Path, netconf_dir: Path
    ) -> None:
        self.sandbox = sandbox
        workdir.mkdir(parents=True, exist_ok=True)
        # /run in the sandbox is a private tmpfs: run state and locks vanish with it.
        run_dir = "/run/cbd-podman"
        self.containers_conf = workdir / "containers.conf"
        self.storage_conf = workdir / "storage.conf"
        self.containers_conf.write_text(
            "[containers]\n"
            'default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]\n'
            "[network]\n"
            'network_backend = "cni"\n'
            f"cni_plugin_dirs = [{json.dumps(str(plugin_dir))}]\n"
            f"network_config_dir = {json.dumps(str(netconf_dir))}\n"
            "[engine]\n"
            'cgroup_manager = "cgroupfs"\n'
            'events_logger = "file"\n'
            f'events_logfile_path = "{run_dir}/events.log"\n'
            'lock_type = "file"\n'
            'runtime = "runc"\n'
            f'tmp_dir = "{run_dir}/tmp"\n'
            f"static_dir = {json.dumps(str(workdir / 'graph' / 'libpod'))}\n"
            f"volume_path = {json.dumps(str(workdir / 'graph' / 'volumes'))}\n"
        )
        self.storage_conf.write_text(
            "[storage]\n"
            'driver = "vfs"\n'
            f'runroot = "{run_dir}/storage"\n'
            f"graphroot = {json.dumps(str(workdir / 'graph'))}\n"
        )

    def __call__(
        self, *args: str, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        env = {
            "CONTAINERS_CONF": str(self.containers_conf),
            "CONTAINERS_STORAGE_CONF": str(self.storage_conf),
        }
        return self.sandbox.exec(["podman", *args], env=env, check=check, timeout=timeout)

    def remove_all(self) -> None:
        self("rm", "--all", "--force", "--time", "0", check=False, timeout=30)


class Containerd:
    """A private containerd 1.6 (CRI disabled) running in the sandbox; `ctr` talks to it."""

    NAMESPACE = "cbd-e2e"

    def __init__(self, sandbox: Sandbox, workdir: Path) -> None:
        self.sandbox = sandbox
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.address = str(workdir / "containerd.sock")
        self.config = workdir / "config.toml"
        self.log_path = workdir / "containerd.log"
        self.config.write_text(
            "version = 2\n"
            f"root = {json.dumps(str(workdir / 'root'))}\n"
            # state holds mounts and sockets: on the sandbox's private /run.
            'state = "/run/cbd-containerd"\n'
            'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
            "[grpc]\n"
            f"  address = {json.dumps(self.address)}\n"
            "[ttrpc]\n"
            f"  address = {json.dumps(self.address + '.ttrpc')}\n"
            '[plugins."io.containerd.internal.v1.opt"]\n'
            f"  path = {json.dumps(str(workdir / 'opt'))}\n"
        )
        self.proc: subprocess.Popen[str] | None = None
        self._log: IO[str] | None = None

    def start(self, timeout: float = 30) -> None:
        self._log = self.log_path.open("w")
        self.proc = self.sandbox.popen(["containerd", "--config", str(self.config)], log=self._log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"containerd exited: {self.log_path.read_text()[-2000:]}")
            if self.ctr("version", check=False, timeout=10).returncode == 0:
                return
            time.sleep(0.2)
        raise RuntimeError(f"containerd did not answer: {self.log_path.read_text()[-2000:]}")

    def ctr(
        self, *args: str, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        cmd = ["ctr", "--address", self.address, "--namespace", self.NAMESPACE, *args]
        return self.sandbox.exec(cmd, check=check, timeout=timeout)

    def ctr_popen(self, *args: str, log: IO[str]) -> subprocess.Popen[str]:
        cmd = ["ctr", "--address", self.address, "--namespace", self.NAMESPACE, *args]
        return self.sandbox.popen(cmd, log=log)

    def task_pid(self, container: str) -> int | None:
        for line in self.ctr("tasks", "ls", check=False).stdout.splitlines()[1:]:
            fields = line.split()
            if len(fields) >= 3 and fields[0] == container and fields[2] == "RUNNING":
                return int(fields[1])
        return None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self._log is not None:
            self._log.close()


# --------------------------------------------------------------------------- observations

def ipv4_addresses(link_json: str, ifname: str) -> list[str]:
    return [
        info["local"]
        for link in json.loads(link_json or "[]")
        if link.get("ifname") == ifname
        for info in link.get("addr_info", [])
        if info.get("family") == "inet"
    ]


def container_ipv4(pid: int, ifname: str = "eth0") -> list[str]:
    proc = run(["nsenter", f"--target={pid}", "--net", "ip", "-j", "addr", "show", "dev", ifname])
    return ipv4_addresses(proc.stdout, ifname)


def bridge_ports(host: Netns, bridge: str) -> list[str]:
    proc = host.exec("ip", "-j", "link", "show", "master", bridge, check=False)
    if proc.returncode != 0:  # no bridge at all: no ports either
        return []
    return [link["ifname"] for link in json.loads(proc.stdout or "[]")]


def bridge_ipv4(host: Netns, bridge: str) -> list[str]:
    proc = host.exec("ip", "-j", "addr", "show", "dev", bridge, check=False)
    return ipv4_addresses(proc.stdout, bridge) if proc.returncode == 0 else []


def in_subnet(address: str, subnet: str) -> bool:
    return ipaddress.ip_address(address) in ipaddress.ip_network(subnet)


def files_mentioning(root: Path, needle: str) -> list[str]:
    hits = []
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            try:
                if needle.encode() in path.read_bytes():
                    hits.append(str(path))
            except OSError:
                continue
    return sorted(hits)


def nft_elements_mentioning(ruleset: Sequence[Mapping[str, Any]], needles: Sequence[Any]) -> list[str]:
    """Set and map elements whose data holds any of the needles (addresses, ports)."""
    hits = []
    for obj in ruleset:
        for kind in ("set", "map"):
            body = obj.get(kind)
            if not isinstance(body, dict):
                continue
            for elem in body.get("elem", []):
                if any(_mentions(elem, n) for n in needles):
                    hits.append(f"{body.get('table')}/{body.get('name')}: {json.dumps(elem)}")
    return hits


def _mentions(value: Any, needle: Any) -> bool:
    if isinstance(value, dict):
        return any(_mentions(v, needle) for v in value.values())
    if isinstance(value, list):
        return any(_mentions(v, needle) for v in value)
    return bool(value == needle)


def iptables_save(host: Netns) -> str:
    return host.exec("iptables-save").stdout


def iptables_chains(save: str) -> list[str]:
    return [line[1:].split()[0] for line in save.splitlines() if line.startswith(":")]


def _ip_pattern(address: str) -> re.Pattern[str]:
    return re.compile(rf"(?<![\d.]){re.escape(address)}(?![\d])")


def firewall_traces(chain: Chain, host: Netns, container_ip: str, host_port: int) -> list[str]:
    """What the chain under test keeps in the host netns' firewall for one container.

    Reference: its per-container iptables chains and any rule naming the container's address.
    Ours: any mention of the address in the nftables ruleset, and set or map elements holding
    the address or the published host port.
    """
    ip = _ip_pattern(container_ip)
    if chain.reference:
        save = iptables_save(host)
        chains = [
            f"chain {c}"
            for c in iptables_chains(save)
            if c.startswith("CNI-") and c not in PORTMAP_SHARED_CHAINS
        ]
        return chains + [line for line in save.splitlines() if ip.search(line)]
    ruleset = nft.ruleset(host)
    anywhere = [f"ruleset mentions {container_ip}"] if ip.search(json.dumps(ruleset)) else []
    return anywhere + nft_elements_mentioning(ruleset, [container_ip, host_port])


def reference_masquerade_chain(network: str, container_id: str) -> str:
    """The reference bridge plugin's per-container ipMasq chain (utils.FormatChainName)."""
    return "CNI-" + hashlib.sha512((network + container_id).encode()).hexdigest()[:24]


def without_reference_masquerade_leak(traces: Sequence[str], chain_name: str) -> list[str]:
    """Traces minus the reference bridge plugin's known leak.

    Its DEL finds the container's address through the netns; with CNI_NETNS="" (containerd)
    it cannot, and leaves the masquerade chain and its POSTROUTING jump behind for good.
    Ours keeps a record of what each attachment owns, so for ours nothing is excused.
    """
    return [t for t in traces if chain_name not in t]
