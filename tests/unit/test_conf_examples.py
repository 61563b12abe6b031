"""Every example in conf/ is loaded, so none can go stale."""

import json
from pathlib import Path
from typing import Any

import pytest

from cni_bridge.errors import CNIError
from tests.unit.confdiff import load_netconf

CONF = Path(__file__).resolve().parents[2] / "conf"


def plugin_configs(path: Path) -> list[dict[str, Any]]:
    conflist = json.loads(path.read_text())
    out = []
    for plugin in conflist["plugins"]:
        if plugin["type"] == "cni-bridge":
            out.append({"cniVersion": conflist["cniVersion"], "name": conflist["name"], **plugin})
    return out


@pytest.mark.parametrize("path", sorted(CONF.glob("*.conflist")), ids=lambda p: p.name)
def test_valid_examples_load(path: Path) -> None:
    configs = plugin_configs(path)
    assert configs, f"{path.name} has no cni-bridge plugin"
    for c in configs:
        load_netconf(c)


@pytest.mark.parametrize("path", sorted((CONF / "invalid").glob("*.conflist")), ids=lambda p: p.name)
def test_invalid_examples_are_rejected(path: Path) -> None:
    for c in plugin_configs(path):
        with pytest.raises(CNIError) as err:
            load_netconf(c)
        assert err.value.code in (1, 7)


def test_feature_examples_exist() -> None:
    names = {p.name for p in CONF.glob("*.conflist")}
    for feature in ("basic", "dual-stack", "portmap", "isolated", "static-ips", "delegated-ipam"):
        assert any(feature in n for n in names), feature


def podman_capability_problems(conflist: dict[str, Any]) -> list[str]:
    """What podman needs of the first plugin (tests/e2e/test_podman.py shows why): `ips`, or
    podman replaces its capabilities with {"ips": true} for --ip and `network reload` and the
    published ports vanish; `aliases` for --network-alias; `portMappings` unless a portmap
    entry publishes, or the network is internal (it publishes nothing)."""
    first = conflist["plugins"][0]
    caps = first.get("capabilities", {})
    want = ["ips", "aliases"]
    if not first.get("internal") and all(p["type"] != "portmap" for p in conflist["plugins"]):
        want.append("portMappings")
    return [f"{first['type']} lacks capability {c}" for c in want if not caps.get(c)]


@pytest.mark.parametrize("path", sorted(CONF.glob("*.conflist")), ids=lambda p: p.name)
def test_examples_declare_what_podman_needs(path: Path) -> None:
    assert podman_capability_problems(json.loads(path.read_text())) == []


def test_readme_examples_declare_what_podman_needs() -> None:
    readme = (CONF.parent / "README.md").read_text()
    blocks = [b.split("```", 1)[0] for b in readme.split("```json\n")[1:]]
    conflists = [json.loads(b) for b in blocks if '"plugins"' in b and "cni-bridge" in b]
    assert conflists, "the README has no conflist example"
    for conflist in conflists:
        assert podman_capability_problems(conflist) == [], conflist["name"]
