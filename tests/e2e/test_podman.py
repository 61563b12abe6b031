"""podman 4 (CNI backend) runs a busybox httpd with a published port on a network of ours."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import pytest

from tests.e2e.conftest import Scene
from tests.e2e.runtimes import (
    CONTAINER_PORT,
    HOST_PORT,
    Podman,
    bridge_ipv4,
    bridge_ports,
    container_ipv4,
    files_mentioning,
    firewall_traces,
    http_get,
    httpd_command,
    in_subnet,
    reservations,
)

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


def test_podman_publishes_a_port_and_rm_leaves_nothing(
    scene: Scene, podman: Podman, rootfs: Path
) -> None:
    scene.write_conflist()
    host, outside = scene.topology.host, scene.topology.outside
    name = f"cbd-{scene.suffix}"
    options = ["--detach", "--name", name, "--network", scene.network]
    options += ["--publish", f"{HOST_PORT}:{CONTAINER_PORT}", "--rootfs", str(rootfs)]
    container_id = podman("run", *options, *httpd_command(scene.token)).stdout.strip()
    info = json.loads(podman("inspect", name).stdout)[0]
    ip = info["NetworkSettings"]["Networks"][scene.network]["IPAddress"]

    # Attached: the address podman reports is on the container's eth0, on our subnet, behind
    # one veth on our bridge, and reserved in our dataDir.
    assert in_subnet(ip, scene.subnet)
    assert container_ipv4(info["State"]["Pid"]) == [ip]
    assert scene.gateway in bridge_ipv4(host, scene.bridge)
    assert len(bridge_ports(host, scene.bridge)) == 1
    assert reservations(scene.data_dir, scene.network) == [ip]

    # Published: the page only the container's httpd serves (conmon also listens on the host
    # port, so a missing DNAT would hang or answer differently, never with this token).
    page = scene.token + "\n"
    assert http_get(outside, f"http://{scene.topology.host_addr}:{HOST_PORT}/") == page
    assert http_get(host, f"http://{scene.topology.host_addr}:{HOST_PORT}/") == page
    if not scene.chain.reference:  # the reference portmap needs extra options for localhost
        assert http_get(host, f"http://127.0.0.1:{HOST_PORT}/") == page
    # The clean-up checks below must be able to fail: the state is there now.
    assert firewall_traces(scene.chain, host, ip, HOST_PORT) != []
    assert files_mentioning(scene.data_dir, container_id) != []

    removal = podman("rm", "--force", "--time", "0", name)
    # podman logs a failed DEL and carries on: make that the first thing a failure shows.
    assert "level=error" not in removal.stderr, removal.stderr

    assert bridge_ports(host, scene.bridge) == []
    assert reservations(scene.data_dir, scene.network) == []
    assert files_mentioning(scene.data_dir, container_id) == []
    assert files_mentioning(scene.cache_dir, container_id) == []
    assert firewall_traces(scene.chain, host, ip, HOST_PORT) == []
    assert [pin for pin in scene.sandbox.netns_pins() if pin.startswith("cni-")] == []
    assert podman("ps", "--all", "--quiet").stdout.strip() == ""


# --------------------------------------------------------------------------- issue 15 item 4


def _write_podman_conflist(scene: Scene, **extra: object) -> None:
    """Our network as the examples declare it for podman: portMappings, ips and aliases."""
    if scene.chain.reference:
        pytest.skip("cni-bridge's own features (the reference chain has no container DNS)")
    conf = scene.chain.conflist(scene.network, scene.bridge, scene.subnet, scene.data_dir)
    conf["plugins"][0]["capabilities"] = {"portMappings": True, "ips": True, "aliases": True}
    conf["plugins"][0].update(extra)
    (scene.netconf_dir / f"{scene.network}.conflist").write_text(json.dumps(conf, indent=2))


def _ip_of(podman: Podman, scene: Scene, name: str) -> str:
    info = json.loads(podman("inspect", name).stdout)[0]
    return str(info["NetworkSettings"]["Networks"][scene.network]["IPAddress"])


def test_podman_static_ip_and_network_reload_keep_the_published_port(
    scene: Scene, podman: Podman, rootfs: Path
) -> None:
    """`--ip` and `podman network reload` make podman pass static IPs; with `ips` declared
    beside `portMappings` the published port survives both (RUNTIMES.md)."""
    _write_podman_conflist(scene)
    static = str(list(ipaddress.ip_network(scene.subnet).hosts())[49])  # .50
    name = f"cbd-ip-{scene.suffix}"
    options = ["--detach", "--name", name, "--network", scene.network, "--ip", static]
    options += ["--publish", f"{HOST_PORT}:{CONTAINER_PORT}", "--rootfs", str(rootfs)]
    podman("run", *options, *httpd_command(scene.token))
    assert _ip_of(podman, scene, name) == static
    info = json.loads(podman("inspect", name).stdout)[0]
    assert container_ipv4(info["State"]["Pid"]) == [static]
    url = f"http://{scene.topology.host_addr}:{HOST_PORT}/"
    page = scene.token + "\n"
    assert http_get(scene.topology.outside, url) == page
    assert firewall_traces(scene.chain, scene.topology.host, static, HOST_PORT) != []

    reload = podman("network", "reload", name)
    assert "level=error" not in reload.stderr, reload.stderr
    assert _ip_of(podman, scene, name) == static
    assert firewall_traces(scene.chain, scene.topology.host, static, HOST_PORT) != []
    assert http_get(scene.topology.outside, url) == page

    removal = podman("rm", "--force", "--time", "0", name)
    assert "level=error" not in removal.stderr, removal.stderr
    assert firewall_traces(scene.chain, scene.topology.host, static, HOST_PORT) == []
    assert reservations(scene.data_dir, scene.network) == []


def test_podman_containers_resolve_each_other_by_name_and_alias(
    scene: Scene, podman: Podman, rootfs: Path
) -> None:
    _write_podman_conflist(scene, containerDNS=True)
    db, web = f"dba-{scene.suffix}", f"web-{scene.suffix}"
    common = ["--detach", "--network", scene.network]
    image = ["--rootfs", str(rootfs), "sleep", "600"]  # --rootfs: the first argument is the root
    podman("run", *common, "--name", db, "--network-alias", "database", *image)
    podman("run", *common, "--name", web, *image)
    db_ip, web_ip = _ip_of(podman, scene, db), _ip_of(podman, scene, web)

    # podman wrote the gateway from our result into the container's resolv.conf.
    resolv = podman("exec", web, "cat", "/etc/resolv.conf").stdout
    assert f"nameserver {scene.gateway}" in resolv, resolv
    assert "dns.cni-bridge" in resolv, resolv
    for name in (db, "database", f"{db}.dns.cni-bridge", "database.dns.cni-bridge"):
        out = podman("exec", web, "nslookup", name, check=False)
        assert out.returncode == 0 and f"Address: {db_ip}" in out.stdout, (name, out.stdout)
    out = podman("exec", db, "nslookup", web, check=False)
    assert out.returncode == 0 and f"Address: {web_ip}" in out.stdout, out.stdout
    assert podman("exec", web, "ping", "-c", "1", "-W", "2", "database", check=False).returncode == 0

    podman("rm", "--force", "--time", "0", db)
    out = podman("exec", web, "nslookup", db, check=False)
    assert out.returncode != 0, out.stdout  # gone with its DEL
    podman("rm", "--force", "--time", "0", web)
    assert reservations(scene.data_dir, scene.network) == []
