"""The benchmark's figures: summaries, the ratios to the reference, the issue's targets, a table."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

Json = dict[str, Any]


def raise_interrupt(signum: int, frame: object) -> None:
    """SIGTERM/SIGHUP as KeyboardInterrupt, so a run stopped by a signal still cleans up."""
    raise KeyboardInterrupt(f"signal {signum}")


def write(doc: Json, out: str, text: str) -> None:
    """The results as JSON at `out` (bench/results/, not kept in git), and their table."""
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")
    print(text)
    print(f"written: {path}")


def summary(walls: list[float]) -> Json:
    ms = sorted(w * 1000 for w in walls)
    if not ms:
        return {"n": 0}
    p90 = statistics.quantiles(ms, n=10, method="inclusive")[8] if len(ms) > 1 else ms[0]
    return {"n": len(ms), "p50_ms": round(statistics.median(ms), 2), "p90_ms": round(p90, 2),
            "min_ms": round(ms[0], 2), "max_ms": round(ms[-1], 2)}


def get(d: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(d, dict):
            return None
        d = d.get(key)
    return d


# (label, path into a side's results, the target for ours/reference, None: no target).
ROWS: list[tuple[str, tuple[str, ...], float | None]] = [
    ("ADD, one mount namespace", ("keep_add", "p50_ms"), 0.35),
    ("DEL, one mount namespace", ("keep_del", "p50_ms"), 0.3),
    ("ADD, fresh mount namespace per call", ("fresh_add", "p50_ms"), 0.35),
    ("DEL, fresh mount namespace per call", ("fresh_del", "p50_ms"), 0.3),
    ("ADD after the quiet period", ("quiet_add_ms",), 0.35),
    ("first ADD after the unit started the agent", ("first_add_unit", "p50_ms"), 0.35),
    ("first ADD, no agent (the plugin starts it)", ("first_add_no_agent", "p50_ms"), 1.5),
    ("cold ADD (CNI_BRIDGE_RESIDENT=0)", ("cold_add", "p50_ms"), 1.5),
    ("cold DEL (CNI_BRIDGE_RESIDENT=0)", ("cold_del", "p50_ms"), None),
    ("{parallel} parallel ADDs, wall", ("parallel_add", "wall_ms"), 0.5),
    ("{parallel} parallel DELs, wall", ("parallel_del", "wall_ms"), None),
]


def rows(doc: Json) -> list[Json]:
    res = doc.get("results", {})
    ref, ours = res.get("reference", {}), res.get("ours", {})
    out: list[Json] = []
    for label, path, target in ROWS:
        r, o = get(ref, *path), get(ours, *path)
        ratio = round(o / r, 3) if isinstance(r, int | float) and isinstance(o, int | float) and r \
            else None
        label = label.format(parallel=get(doc, "meta", "args", "parallel"))
        out.append({"label": label, "reference": r, "ours": o, "ratio": ratio, "target": target,
                    "met": None if target is None or ratio is None else ratio <= target})
    scale = sorted((int(k) for k in (ours.get("scale") or {})), key=int)
    if len(scale) >= 2:
        lo, hi = str(scale[0]), str(scale[-1])
        for side_name, side in (("reference", ref), ("ours", ours)):
            a, b = get(side, "scale", lo, "add", "p50_ms"), get(side, "scale", hi, "add", "p50_ms")
            if isinstance(a, int | float) and isinstance(b, int | float) and a:
                target = 1.1 if side_name == "ours" else None
                ratio = round(b / a, 3)
                out.append({"label": f"{side_name}: ADD @{lo} -> @{hi} present (itself)",
                            "reference": a, "ours": b, "ratio": ratio, "target": target,
                            "met": None if target is None else ratio <= target, "self": True})
    idle = get(ours, "agent_idle", "pss_kib")
    if isinstance(idle, int):
        mib = round(idle / 1024, 1)
        out.append({"label": "agent PSS, with its idle workers (MiB)", "reference": None,
                    "ours": mib, "ratio": None, "target": 40, "met": mib <= 40, "abs": True})
    return out


def table(doc: Json) -> str:
    def cell(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.2f}" if abs(v) < 1000 else f"{v:.0f}"
        return str(v)

    lines = [f"{'p50 (ms)':48}{'reference':>10}{'ours':>10}{'ratio':>8}{'target':>8}  met",
             "-" * 90]
    for row in rows(doc):
        target = "-" if row["target"] is None else (
            f"<={row['target']}" if not row.get("abs") else f"<={row['target']}MiB")
        met = {True: "yes", False: "NO", None: ""}[row["met"]]
        lines.append(f"{row['label']:48}{cell(row['reference']):>10}{cell(row['ours']):>10}"
                     f"{cell(row['ratio']):>8}{target:>8}  {met}")
    res = doc.get("results", {})
    for side in ("reference", "ours"):
        par = get(res, side, "parallel_add")
        if isinstance(par, dict):
            ok = par["distinct_addresses"] and not par["failures"]
            lines.append(f"{side}: {par['count']} parallel ADDs got distinct addresses and no "
                         f"failures: {ok}")
    served = get(res, "ours", "unit_agent_served")
    if served is not None:
        lines.append(f"the agent started as the unit does served the first ADDs: {served}")
    for key in ("agent_idle", "agent_end"):
        snap = get(res, "ours", key)
        if isinstance(snap, dict):
            lines.append(f"agent ({key[6:]}): {snap['processes']} processes, {snap['threads']} "
                         f"threads, {snap['fds']} fds, PSS {snap['pss_kib'] / 1024:.1f} MiB, "
                         f"{snap['namespaces']} namespaces")
    if doc.get("error"):
        lines.append(f"FAILED: {doc['error']}")
    lines.append(f"machine: {doc['meta']['cpus']} CPUs, load average at the end "
                 f"{doc['meta']['loadavg_end']}; run took {doc['meta']['duration_s']:.0f} s")
    return "\n".join(lines)


def _tool_version(argv: list[str]) -> str:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=10)
    except OSError:
        return "unknown"
    text = (proc.stdout or proc.stderr).strip()
    return text.splitlines()[0] if text else ""


def document(args: argparse.Namespace, results: Json, error: str | None,
             duration: float) -> Json:
    meta = {
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "loadavg_end": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
        "duration_s": round(duration, 1),
        "python": platform.python_version(),
        "reference_plugins": _tool_version(
            ["dpkg-query", "-W", "-f", "${Version}", "containernetworking-plugins"]),
        "nft": _tool_version(["nft", "-v"]),
        "args": {k: v for k, v in vars(args).items() if k != "cleanup_stale"},
        "timing": "wall time of the whole plugin chain for one command, measured by the caller "
                  "inside the host netns; p50 over the samples; sides alternate sample by sample",
    }
    doc: Json = {"meta": meta, "results": results, "error": error}
    doc["rows"] = rows(doc)
    return doc


def markdown(doc: Json) -> str:
    """The table of `table` as Markdown (for the README's Speed section)."""
    lines = ["| p50, ms | reference | cni-bridge | ratio | target | met |",
             "|---|---:|---:|---:|---:|:---:|"]
    for row in rows(doc):
        def cell(v: Any, digits: int = 1) -> str:
            return "-" if v is None else (f"{v:.{digits}f}" if isinstance(v, float) else str(v))
        target = "-" if row["target"] is None else f"≤ {row['target']}" + (
            " MiB" if row.get("abs") else "")
        met = {True: "yes", False: "**no**", None: ""}[row["met"]]
        lines.append(f"| {row['label']} | {cell(row['reference'])} | {cell(row['ours'])} | "
                     f"{cell(row['ratio'], 2)} | {target} | {met} |")
    return "\n".join(lines)


if __name__ == "__main__":
    import json
    import sys

    with open(sys.argv[1]) as fh:
        loaded = json.load(fh)
    print(markdown(loaded) if "--markdown" in sys.argv else table(loaded))
