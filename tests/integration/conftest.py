from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.nodes import Cluster
from tests.lab.plugin import PluginLab


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="integration tests need root (network namespaces)")
    for item in items:
        if "integration" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[PluginLab]:
    lab = PluginLab(tmp_path)
    try:
        yield lab
    finally:
        lab.close()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """Nodes on a LAN (tests/integration/nodes.py), for the routes and kube-mode suites."""
    c = Cluster(tmp_path)
    try:
        yield c
    finally:
        c.close()
