"""bench.report: each figure's ratio to the reference and its verdict against the issue's target.

The benchmark itself needs root and minutes; what it concludes from its figures must not be
wrong in silence (a ratio the wrong way round, a target compared with the wrong figure).
"""

from __future__ import annotations

from typing import Any

from bench import report


def _doc(ours: dict[str, Any], ref: dict[str, Any]) -> dict[str, Any]:
    return {"meta": {"args": {"parallel": 20}, "cpus": 2, "loadavg_end": "1 1 1",
                     "duration_s": 1.0},
            "results": {"reference": ref, "ours": ours}, "error": None}


def _row(doc: dict[str, Any], label: str) -> dict[str, Any]:
    (row,) = [r for r in report.rows(doc) if r["label"] == label]
    return row


def test_ratio_is_ours_over_reference_and_met_against_the_target() -> None:
    doc = _doc({"keep_add": {"p50_ms": 10.0}, "keep_del": {"p50_ms": 40.0}},
               {"keep_add": {"p50_ms": 50.0}, "keep_del": {"p50_ms": 100.0}})
    add = _row(doc, "ADD, one mount namespace")
    assert (add["ratio"], add["target"], add["met"]) == (0.2, 0.35, True)
    dele = _row(doc, "DEL, one mount namespace")
    assert (dele["ratio"], dele["met"]) == (0.4, False)  # above its 0.3


def test_missing_figures_give_no_ratio_and_no_verdict() -> None:
    row = _row(_doc({}, {"cold_add": {"p50_ms": 70.0}}), "cold ADD (CNI_BRIDGE_RESIDENT=0)")
    assert (row["ratio"], row["met"]) == (None, None)


def test_scale_compares_ours_with_itself() -> None:
    ours = {"scale": {"1": {"add": {"p50_ms": 10.0}}, "1000": {"add": {"p50_ms": 12.0}}}}
    ref = {"scale": {"1": {"add": {"p50_ms": 60.0}}, "1000": {"add": {"p50_ms": 600.0}}}}
    row = _row(_doc(ours, ref), "ours: ADD @1 -> @1000 present (itself)")
    assert (row["ratio"], row["target"], row["met"]) == (1.2, 1.1, False)
    assert _row(_doc(ours, ref), "reference: ADD @1 -> @1000 present (itself)")["met"] is None


def test_pss_against_the_absolute_bound_in_mib() -> None:
    row = _row(_doc({"agent_idle": {"pss_kib": 39 * 1024}}, {}),
               "agent PSS, with its idle workers (MiB)")
    assert (row["ours"], row["met"]) == (39.0, True)
    row = _row(_doc({"agent_idle": {"pss_kib": 41 * 1024}}, {}),
               "agent PSS, with its idle workers (MiB)")
    assert row["met"] is False


def test_table_and_markdown_show_the_verdicts() -> None:
    doc = _doc({"parallel_add": {"wall_ms": 100.0, "count": 20, "distinct_addresses": True,
                                 "failures": []}},
               {"parallel_add": {"wall_ms": 400.0, "count": 20, "distinct_addresses": True,
                                 "failures": []}})
    assert "20 parallel ADDs, wall" in report.table(doc)
    assert "| 20 parallel ADDs, wall | 400.0 | 100.0 | 0.25 | ≤ 0.5 | yes |" in (
        report.markdown(doc))
