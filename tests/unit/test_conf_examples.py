"""Every example in conf/ is loaded, so none can go stale."""

import json
from pathlib import Path
from typing import Any

import pytest

from cni_bridge.config import load_netconf
from cni_bridge.errors import CNIError

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
