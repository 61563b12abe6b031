"""What `cni-bridge status` says about a network's held ports, from the holder's answer."""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


NO_AGENT = "no agent runs in this network namespace: published ports are not held"


def held_ports(network: str, answer: dict[str, Any] | None) -> dict[str, Any]:
    """{"agent": False, "note"} with no holder; else its pid and this network's ports it could
    not hold ({"port", "reason", "attachment"})."""
    if answer is None:
        return {"agent": False, "note": NO_AGENT}
    failed = answer.get("failed")
    unheld = [
        f
        for f in (failed if isinstance(failed, list) else [])
        if isinstance(f, dict) and str(f.get("attachment", "")).split("/")[0] == network
    ]
    return {"agent": True, "holderPid": answer.get("pid"), "unheld": unheld}


def problems(report: dict[str, Any]) -> list[str]:
    return [
        f"published port {u.get('port')} of {u.get('attachment')} is not held: {u.get('reason')}"
        for u in report.get("unheld", [])
    ]
