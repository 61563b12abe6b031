"""The Kubernetes manifests and the containerd template say what the README promises."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"


def _docs() -> dict[str, dict[str, Any]]:
    docs = list(yaml.safe_load_all((DEPLOY / "cni-bridge.yaml").read_text()))
    return {d["kind"]: d for d in docs}


def test_rbac_lets_the_service_account_read_nodes_only() -> None:
    docs = _docs()
    assert docs["ClusterRole"]["rules"] == [
        {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]}
    ]
    binding = docs["ClusterRoleBinding"]
    assert binding["roleRef"]["name"] == docs["ClusterRole"]["metadata"]["name"]
    sa = docs["ServiceAccount"]["metadata"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["name"],
                                    "namespace": sa["namespace"]}]


def test_daemonset_installs_the_bundle_then_runs_kube_mode() -> None:
    docs = _docs()
    spec = docs["DaemonSet"]["spec"]["template"]["spec"]
    assert spec["hostNetwork"] is True
    assert spec["serviceAccountName"] == docs["ServiceAccount"]["metadata"]["name"]
    (init,) = spec["initContainers"]
    assert init["command"] == ["/bin/sh", "/install.sh"]
    env = {e["name"]: e.get("value") for e in init["env"]}
    assert env == {"BUNDLE": "/bundle", "DESTDIR": "/host", "CNI_BIN_DIR": "/opt/cni/bin"}
    (kube,) = spec["containers"]
    assert kube["args"][0] == "kube"
    assert "--cni-conf-dir=/host/etc/cni/net.d" in kube["args"]
    volumes = {v["name"]: v["hostPath"]["path"] for v in spec["volumes"]}
    assert volumes == {"cni-bin": "/opt/cni/bin", "cni-conf": "/etc/cni/net.d"}
    # the Dockerfile puts the bundle and the install step where the pod expects them
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert "COPY dist/cni-bridge /bundle" in dockerfile
    assert "COPY build/install.sh /install.sh" in dockerfile


def test_containerd_template_renders_to_a_valid_conflist() -> None:
    cfg = tomllib.loads((DEPLOY / "containerd-config.toml").read_text())
    cni = cfg["plugins"]["io.containerd.grpc.v1.cri"]["cni"]
    assert cni["conf_template"].endswith("/cni-bridge.template")
    text = (DEPLOY / "cni-bridge.template").read_text()
    # what containerd's Go template makes of the range over two pod CIDRs
    rendered, n = re.subn(r"\{\{range .*?\}\]\{\{end\}\}",
                          '[{"subnet": "10.244.1.0/24"}], [{"subnet": "fd00:10:244:1::/64"}]', text)
    assert n == 1
    conf = json.loads(rendered)
    plugin = conf["plugins"][0]
    assert plugin["type"] == "cni-bridge"
    assert plugin["ipam"]["ranges"] == [[{"subnet": "10.244.1.0/24"}],
                                        [{"subnet": "fd00:10:244:1::/64"}]]
