"""Helpers that drive real container runtimes (podman, containerd) inside namespaces of our own.

Nothing here touches the machine's own network namespace or its /etc/cni, /opt/cni, /var/lib/cni
or /run. Every test gets:

- a "host" network namespace, where the runtime and the plugin run, and an "outside" one joined
  to it by a veth pair (the world that reaches published ports);
- a Sandbox: a private mount namespace inside the host netns, held by one `sleep` process, with
  a tmpfs on /run (containerd's shim sockets and podman's netns pins stay private), a sysfs of
  the host netns on /sys (as `ip netns exec` does, keeping the cgroup mounts), and the test's
  own directories mounted on /etc/cni/net.d, /opt/cni/bin and /var/lib/cni (where a path does
  not exist, an overlay on its nearest existing parent makes room without writing to the disk);
- private podman / containerd configurations under the test's temporary directory.

The namespaces, commands, processes and traffic come from the one namespace lab (tests/lab/):
this module adds only what is particular to runtimes (the sandbox, podman, containerd, images).
Teardown kills every process of the sandbox's mount namespace and their descendants, by PID.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import ipaddress
import json
import os
import platform
import re
import select
import shlex
import shutil
import subprocess
import tarfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from tests.lab import TEST_NET_1, Lab, Netns, nft, procs, run
from tests.lab.plugin import reservations as reservations
from tests.lab.traffic import http_get as http_get

PREFIX = "cbD"
REFERENCE_PLUGIN_DIR = Path("/usr/lib/cni")
REFERENCE_PLUGINS = ("bridge", "host-local", "portmap")
OUR_PLUGIN = "cni-bridge"
BUSYBOX = Path("/bin/busybox")
CONTAINER_PORT = 80
HOST_PORT = 8080
# The only iptables chains the reference portmap keeps for good: shared jump targets, not state.
PORTMAP_SHARED_CHAINS = frozenset(
    {"CNI-HOSTPORT-DNAT", "CNI-HOSTPORT-SETMARK", "CNI-HOSTPORT-MASQ"}
)
UNSHARE_MOUNT = ("unshare", "--mount", "--propagation", "private")
HARNESS_VARS = frozenset({"CNI_BRIDGE_PLUGIN_DIR", "CNI_BRIDGE_ALLOW_NO_BINARY"})
SANDBOX_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def missing_tools(names: Iterable[str]) -> list[str]:
    return [name for name in names if shutil.which(name) is None]


# --------------------------------------------------------------------------- images


def busybox_rootfs(dest: Path) -> Path:
    """A root filesystem: static busybox, one relative link per applet, the usual directories."""
    for sub in ("bin", "dev", "etc", "proc", "sys", "tmp", "www", "run"):
        (dest / sub).mkdir(parents=True, exist_ok=True)
    shutil.copy2(BUSYBOX, dest / "bin" / "busybox")
    applets = run([str(BUSYBOX), "--list"]).stdout.split()
    for applet in applets:
        link = dest / "bin" / applet
        if applet != "busybox" and not link.exists():
            link.symlink_to("busybox")
    (dest / "etc" / "passwd").write_text("root:x:0:0:root:/:/bin/sh\n")
    (dest / "etc" / "group").write_text("root:x:0:\n")
    return dest


def _oci_arch() -> str:
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def _layer_tar(rootfs: Path) -> bytes:
    def normalise(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        info.mtime = 0
        return info

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for child in sorted(rootfs.iterdir()):
            tar.add(child, arcname=child.name, filter=normalise)
    return buf.getvalue()


def write_oci_archive(rootfs: Path, dest: Path, image: str) -> None:
    """An OCI image layout tarball that `ctr image import` accepts: one uncompressed layer."""
    layer = _layer_tar(rootfs)
    layer_digest = "sha256:" + hashlib.sha256(layer).hexdigest()
    config = json.dumps(
        {
            "architecture": _oci_arch(),
            "os": "linux",
            "config": {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"], "WorkingDir": "/"},
            "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        }
    ).encode()
    config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": layer_digest,
                    "size": len(layer),
                }
            ],
        }
    ).encode()
    manifest_digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
    index = json.dumps(
        {
            "schemaVersion": 2,
            "manifests": [
                {
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": manifest_digest,
                    "size": len(manifest),
                    "platform": {"architecture": _oci_arch(), "os": "linux"},
                    "annotations": {
                        "io.containerd.image.name": image,
                        "org.opencontainers.image.ref.name": image.rsplit(":", 1)[-1],
                    },
                }
            ],
        }
    ).encode()
    blobs = {
        f"blobs/sha256/{d.split(':', 1)[1]}": data
        for d, data in (
            (layer_digest, layer),
            (config_digest, config),
            (manifest_digest, manifest),
        )
    }
    files = {"oci-layout": b'{"imageLayoutVersion": "1.0.0"}', "index.json": index, **blobs}
    with tarfile.open(dest, "w") as tar:
        for dname in ("blobs", "blobs/sha256"):
            info = tarfile.TarInfo(dname)
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            tar.addfile(info)
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))


# --------------------------------------------------------------------------- namespaces


@dataclass(frozen=True)
class Topology:
    """The lab's host namespace and an outside one joined to it by a veth (TEST-NET-1)."""

    host: Netns
    outside: Netns
    host_addr: str = TEST_NET_1[0]

    @classmethod
    def create(cls, lab: Lab) -> Topology:
        host = lab.netns("h")
        return cls(host, lab.outside(host))


# --------------------------------------------------------------------------- sandbox


def _mount_ns(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt")
    except OSError:
        return None


def processes_of(mount_ns: str) -> set[procs.Identity]:
    """Processes in the mount namespace and all their descendants (containers live deeper)."""
    pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    return procs.with_descendants(pid for pid in pids if _mount_ns(pid) == mount_ns)


def _overlay_anchor(target: Path) -> Path:
    anchor = target
    while not anchor.exists():
        anchor = anchor.parent
    return anchor


class Sandbox:
    """A private mount namespace inside `netns`, held by one process until stop()."""

    def __init__(self, netns: Netns, workdir: Path, mounts: Mapping[str, Path]) -> None:
        self.netns = netns
        self.workdir = workdir
        self.mounts = dict(mounts)
        self.holder: subprocess.Popen[str] | None = None
        self.mount_ns = ""
        self.base_env = {"PATH": SANDBOX_PATH, "HOME": str(workdir), "LANG": "C.UTF-8"}
        # Our plugin's own knobs (log level, log file, resident) reach it through the runtime.
        self.base_env.update(
            {
                k: v
                for k, v in os.environ.items()
                if k.startswith("CNI_BRIDGE_") and k not in HARNESS_VARS
            }
        )

    def _setup_script(self) -> str:
        lines = [
            "set -e",
            "mount -t tmpfs -o mode=0755 cbd-run /run",
            # A sysfs that shows the host netns' devices, cgroup mounts carried over on top.
            "mkdir /run/.cbd-cgroup",
            "mount --rbind /sys/fs/cgroup /run/.cbd-cgroup",
            "mount -t sysfs cbd-sysfs /sys",
            "mount --move /run/.cbd-cgroup /sys/fs/cgroup",
            "rmdir /run/.cbd-cgroup",
        ]
        overlaid: set[Path] = set()
        for n, (target, source) in enumerate(sorted(self.mounts.items())):
            anchor = _overlay_anchor(Path(target))
            if anchor != Path(target) and anchor not in overlaid:
                # Room for a mount point that does not exist, with nothing written to the disk.
                upper, work = self.workdir / f"ovl{n}" / "upper", self.workdir / f"ovl{n}" / "work"
                upper.mkdir(parents=True)
                work.mkdir(parents=True)
                lines.append(
                    f"mount -t overlay cbd-ovl -o lowerdir={anchor},upperdir={upper},"
                    f"workdir={work} {anchor}"
                )
                overlaid.add(anchor)
            lines.append(f"mkdir -p {shlex.quote(target)}")
            lines.append(f"mount --bind {shlex.quote(str(source))} {shlex.quote(target)}")
        lines += ["echo ready", "exec sleep infinity"]
        return "\n".join(lines)

    def start(self, timeout: float = 15) -> None:
        script = self._setup_script()
        self.holder = subprocess.Popen(
            self.netns.command(*UNSHARE_MOUNT, "sh", "-c", script),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.base_env,
            start_new_session=True,
        )
        assert self.holder.stdout is not None and self.holder.stderr is not None
        ready, _, _ = select.select([self.holder.stdout], [], [], timeout)
        line = self.holder.stdout.readline() if ready else ""
        if line.strip() != "ready":
            self.holder.kill()
            self.holder.wait(5)
            err = self.holder.stderr.read()
            raise RuntimeError(f"sandbox set-up failed: {line!r} {err}")
        ns = _mount_ns(self.holder.pid)
        if ns is None or ns == _mount_ns(os.getpid()):
            raise RuntimeError("sandbox holder is not in a mount namespace of its own")
        self.mount_ns = ns

    @property
    def pid(self) -> int:
        assert self.holder is not None
        return self.holder.pid

    def command(self, cmd: Sequence[str]) -> list[str]:
        return ["nsenter", f"--target={self.pid}", "--mount", "--net", "--", *cmd]

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        return {**self.base_env, **(extra or {})}

    def exec(
        self,
        cmd: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        check: bool = True,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess[str]:
        return run(self.command(cmd), env=self.env(env), check=check, timeout=timeout)

    def popen(
        self, cmd: Sequence[str], *, log: IO[str], env: Mapping[str, str] | None = None
    ) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.command(cmd),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            env=self.env(env),
            start_new_session=True,
        )

    def stop(self, timeout: float = 15) -> list[int]:
        """Kill everything the sandbox started; returns the PIDs that would not die.

        Victims accumulate across rounds: a container process whose parent (conmon, the shim)
        died first is reparented out of the tree, but it was seen, so it is still killed.
        """
        if self.holder is None:
            return []
        victims: set[procs.Identity] = set()
        holder = procs.identity(self.holder.pid)
        if holder is not None:
            victims.add(holder)
        deadline = time.monotonic() + timeout
        while True:
            if self.mount_ns:
                victims |= processes_of(self.mount_ns)
            # Zombies (reaped by init in its own time) are done with: procs.alive says so.
            victims = {v for v in victims if procs.alive(v)}
            if not victims or time.monotonic() >= deadline:
                return sorted(pid for pid, _ in victims)
            procs.kill(victims, timeout=0.2)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.holder.wait(0.2)

    def netns_pins(self) -> list[str]:
        proc = self.exec(["ls", "-1", "/run/netns"], check=False)
        return proc.stdout.split() if proc.returncode == 0 else []


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
