"""The namespace lab of the integration and end-to-end tests, the benchmark and the demo.

Throwaway network namespaces ("host", "outside", containers) linked by veths, a plugin run
inside them as a runtime would, real traffic (echo server, probe, ping, HTTP), and a cleanup
that kills only the processes it started or that live in its namespaces, by pid. No pytest
here: bench/ and demo/ import it too. Not shipped: the package and the bundle take cni_bridge
only (pyproject's package find, build/cni-bridge.spec). Nothing touches the root namespace.
"""

from tests.lab.lab import TEST_NET_1, Lab
from tests.lab.netns import Netns
from tests.lab.shell import CommandError, run
from tests.lab.traffic import http_get, ping, probe

__all__ = ["TEST_NET_1", "CommandError", "Lab", "Netns", "http_get", "ping", "probe", "run"]
