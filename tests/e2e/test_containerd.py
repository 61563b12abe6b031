"""containerd 1.6 (`ctr run --cni`) runs a busybox httpd on a network of ours.

`ctr run --cni` sends no runtimeConfig, so the port mapping is part of the network config
(libcni passes a plugin's own runtimeConfig through when the caller has no capability args).
Its DEL, sent once the task has exited, carries CNI_NETNS="": the clean-up checks prove that
everything goes without the container's namespace.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import Scene
from tests.e2e.images import write_oci_archive
from tests.e2e.runtimes import (
    HOST_PORT,
    Containerd,
    bridge_ipv4,
    bridge_ports,
    container_ipv4,
    files_mentioning,
    firewall_traces,
    http_get,
    httpd_command,
    in_subnet,
    port_mapping,
    reference_masquerade_chain,
    reservations,
    without_reference_masquerade_leak,
)

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

IMAGE = "cbd.test/busybox:e2e"


def wait_for_task(daemon: Containerd, name: str, runner: subprocess.Popen[str], log: Path) -> int:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        pid = daemon.task_pid(name)
        if pid is not None:
            return pid
        if runner.poll() is not None:
            pytest.fail(f"ctr run exited {runner.returncode}: {log.read_text()[-2000:]}")
        time.sleep(0.2)
    pytest.fail(f"task {name} never ran: {log.read_text()[-2000:]}")


def test_ctr_run_cni_publishes_a_port_and_del_without_netns_leaves_nothing(
    scene: Scene, containerd: Containerd, rootfs_template: Path
) -> None:
    scene.write_conflist(static_port_mappings=[port_mapping()])
    host, outside = scene.topology.host, scene.topology.outside
    archive = scene.workdir / "image.tar"
    write_oci_archive(rootfs_template, archive, IMAGE)
    containerd.ctr("images", "import", str(archive))

    name = f"cbd-{scene.suffix}"
    cni_container_id = f"{Containerd.NAMESPACE}-{name}"  # ctr's CNI container ID
    log_path = scene.workdir / "ctr-run.log"
    with log_path.open("w") as log:
        # Foreground with --rm: only then does ctr send DEL when the task exits.
        runner = containerd.ctr_popen(
            "run", "--cni", "--rm", IMAGE, name, *httpd_command(scene.token), log=log
        )
    try:
        pid = wait_for_task(containerd, name, runner, log_path)
        ips = container_ipv4(pid)
        assert len(ips) == 1 and in_subnet(ips[0], scene.subnet), ips
        ip = ips[0]
        assert scene.gateway in bridge_ipv4(host, scene.bridge)
        assert len(bridge_ports(host, scene.bridge)) == 1
        assert reservations(scene.data_dir, scene.network) == [ip]

        page = scene.token + "\n"
        assert http_get(outside, f"http://{scene.topology.host_addr}:{HOST_PORT}/") == page
        assert http_get(host, f"http://{scene.topology.host_addr}:{HOST_PORT}/") == page
        if not scene.chain.reference:
            assert http_get(host, f"http://127.0.0.1:{HOST_PORT}/") == page
        assert firewall_traces(scene.chain, host, ip, HOST_PORT) != []
        assert files_mentioning(scene.data_dir, cni_container_id) != []

        containerd.ctr("tasks", "kill", "--signal", "SIGKILL", name)
        runner.wait(timeout=30)
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.wait(10)

    # ctr logs a failed DEL ("network review") and carries on: show that first.
    assert "failed (delete)" not in log_path.read_text(), log_path.read_text()
    assert name not in containerd.ctr("containers", "ls", "--quiet").stdout.split()
    assert bridge_ports(host, scene.bridge) == []
    assert reservations(scene.data_dir, scene.network) == []
    assert files_mentioning(scene.data_dir, cni_container_id) == []
    assert files_mentioning(scene.cache_dir, cni_container_id) == []
    traces = firewall_traces(scene.chain, host, ip, HOST_PORT)
    if scene.chain.reference:
        masquerade = reference_masquerade_chain(scene.network, cni_container_id)
        traces = without_reference_masquerade_leak(traces, masquerade)
    assert traces == []
