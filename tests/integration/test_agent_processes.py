"""The agent's processes are what the design says (README "The warm resident", DESIGN section 7),
and each duty still does its job: the agent's own loop watches the ruleset (the watch's pid is
the agent's) and holds the published ports (the holder's pid is the agent's), and once requests
stop one pooled worker waits; nothing else stays. A held port refuses a host program's bind;
`nft flush ruleset` is healed by a short-lived heal the agent forks, which leaves when done.

Through the agent when CNI_BRIDGE_TEST_RESIDENT=1 (the workers then serve the ADDs), in-process
otherwise (the agent then keeps only its spare).
"""

from __future__ import annotations

import pytest

from cni_bridge.resident.pool import SHRINK_AFTER
from tests.integration.test_held_ports import (
    HOST_PORT,
    agent_log,
    bind_result,
    conf,
    holder_status,
    start_agent,
)
from tests.lab.plugin import PluginLab
from tests.lab.poll import wait_for
from tests.lab.procs import children

pytestmark = [pytest.mark.integration, pytest.mark.plugin]


def test_the_agent_is_its_loop_and_one_idle_worker(lab: PluginLab) -> None:
    agent = start_agent(lab).pid
    for i in range(3):
        lab.add(conf(lab, dual=False, hostPort=HOST_PORT + i), f"proc{i}", lab.container())
    assert holder_status(lab)["pid"] == agent, agent_log(lab)

    def settled() -> bool:  # one worker (the pool shrinks after SHRINK_AFTER)
        return len(children(agent)) == 1

    assert wait_for(settled, timeout=SHRINK_AFTER + 10, interval=0.2), (
        children(agent),
        agent_log(lab),
    )
    (worker,) = children(agent)
    with open(f"/proc/{worker}/cmdline", "rb") as f, open(f"/proc/{agent}/cmdline", "rb") as g:
        assert f.read() == g.read()  # a fork of the agent, not another program

    status = lab.cli("status", "--data-dir", str(lab.data_dir)).stdout
    assert f"the agent's ruleset watch (pid {agent})" in status, status
    assert bind_result(lab, "tcp", "0.0.0.0") == "EADDRINUSE", agent_log(lab)

    before = len(agent_log(lab))
    lab.host.exec("nft", "flush", "ruleset")

    def healed() -> bool:
        # (a heal already under way for earlier commits may be the one that heals the flush)
        tables = lab.host.exec("nft", "list", "tables").stdout
        return "inet cni_bridge" in tables and "table inet cni_bridge is missing" in (
            agent_log(lab)[before:]
        )

    assert wait_for(healed, timeout=30, interval=0.3), agent_log(lab)
    # the heal left; the agent still holds (the flush did not touch its sockets)
    assert wait_for(settled, timeout=10, interval=0.2), children(agent)
    assert bind_result(lab, "tcp", "0.0.0.0") == "EADDRINUSE"
    assert len(holder_status(lab)["held"]) == 3 * 2, holder_status(lab)  # tcp4 and tcp6 each
