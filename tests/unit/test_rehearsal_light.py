"""The light rehearsal (resident/rehearsal.LIGHT) of the spare an idle agent keeps: pure steps
only, so it runs without root, and every one of them succeeds here."""

from __future__ import annotations

import gc

import pytest

from cni_bridge.resident import rehearsal


def test_the_light_rehearsal_is_a_subset_that_runs_without_root(
    capsys: pytest.CaptureFixture[str],
) -> None:
    names = [name for name, _ in rehearsal._STEPS]
    assert set(rehearsal.LIGHT) < set(names)
    # Descriptors of earlier tests' garbage closed now, not by a collection during the
    # rehearsal, where its check would count them as its own.
    gc.collect()
    rehearsal.rehearse(light=True)
    assert "rehearsal" not in capsys.readouterr().err  # no step failed, no descriptor left
