"""A handler module's rehearse hook, as a spare worker calls it (resident/worker.rehearse)."""

from __future__ import annotations

from cni_bridge.resident import worker


def test_a_full_rehearsal_calls_the_hook_without_an_argument() -> None:
    calls: list[str] = []

    def old_style() -> None:  # a handler module's rehearse() from before `light`
        calls.append("old")

    def new_style(light: bool = False) -> None:
        calls.append(f"light={light}")

    worker.rehearse(old_style, False)
    worker.rehearse(new_style, False)
    worker.rehearse(new_style, True)
    assert calls == ["old", "light=False", "light=True"]
