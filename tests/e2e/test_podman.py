"""podman 4 (CNI backend) runs a busybox httpd with a published port on a network of ours."""

from __future__ import annotations

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
