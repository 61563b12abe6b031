"""bench.run's arguments (the runs themselves need root and namespaces: `make bench`)."""

from __future__ import annotations

import pytest

from bench import run


def test_only_takes_known_scenarios() -> None:
    args = run.parser().parse_args(["--only", "scale,cold"])
    assert args.only == ["scale", "cold"]
    assert run.parser().parse_args([]).only is None  # every scenario


def test_only_refuses_an_unknown_scenario() -> None:
    with pytest.raises(SystemExit):
        run.parser().parse_args(["--only", "scale,warp"])


def test_scale_probes_are_many_by_default() -> None:
    # The self-ratio compares two medians: five samples each moved it by a tenth between runs.
    assert run.parser().parse_args([]).scale_samples >= 15
