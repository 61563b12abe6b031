"""Background: one call beside the caller's work; its outcome collected by join()."""

from __future__ import annotations

import _thread
import threading
import time

import pytest

from cni_bridge.background import Background


def test_join_returns_what_the_call_raised() -> None:
    def boom() -> None:
        raise ValueError("nope")

    error = Background(boom).join()
    assert isinstance(error, ValueError)
    assert Background(lambda: None).join() is None


def test_an_interrupt_during_join_is_raised_only_once_the_call_has_ended() -> None:
    done: list[bool] = []

    def slow() -> None:
        time.sleep(0.3)
        done.append(True)

    job = Background(slow)
    threading.Timer(0.05, _thread.interrupt_main).start()
    with pytest.raises(KeyboardInterrupt):
        job.join()
    assert done == [True]  # a rollback after the interrupt never races the call


def test_join_may_be_called_again() -> None:
    job = Background(lambda: None)
    assert job.join() is None and job.join() is None
