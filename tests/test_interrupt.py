"""Ctrl-C is never lost: an interrupt that CPython drops inside a finaliser still stops the command."""

from __future__ import annotations

import signal
import sys

import pytest

from dermogaze import interrupt
from dermogaze.interrupt import catch_interrupts


class _SignalsWhenCollected:
    """An object whose finaliser receives SIGINT: CPython prints the KeyboardInterrupt raised there and drops it."""

    def __del__(self) -> None:
        signal.raise_signal(signal.SIGINT)


def _drop_an_interrupt() -> str:
    obj = _SignalsWhenCollected()
    del obj  # the finaliser runs here; its KeyboardInterrupt does not reach this frame
    return "carried on"


@pytest.fixture
def dropped(monkeypatch) -> list:
    """What CPython reports as "Exception ignored in ..." (``sys.unraisablehook``)."""
    seen: list = []
    monkeypatch.setattr(sys, "unraisablehook", seen.append)
    return seen


def test_python_drops_an_interrupt_raised_in_a_finaliser_and_check_raises_it_again(dropped):
    with pytest.raises(KeyboardInterrupt), catch_interrupts():
        assert _drop_an_interrupt() == "carried on"  # what happened to a sweep: the Ctrl-C was lost here
        assert [type(d.exc_value) for d in dropped] == [KeyboardInterrupt]
        assert interrupt.pending()
        with pytest.raises(KeyboardInterrupt):
            interrupt.check()
        # the block ends without another check: the command still ends as interrupted
    assert not interrupt.pending() and sys.unraisablehook == dropped.append  # the hook restored
    interrupt.check()  # nothing recorded outside the block


def test_an_interrupt_in_the_loop_itself_raises_as_usual():
    with pytest.raises(KeyboardInterrupt), catch_interrupts():
        signal.raise_signal(signal.SIGINT)
        pytest.fail("the interrupt did not raise")
    assert not interrupt.pending()


def test_an_interrupt_the_command_catches_is_its_own_business():
    """The viewer's server stops on Ctrl-C and ends normally: a caught interrupt is not dropped."""
    stopped = False
    with catch_interrupts():
        try:
            signal.raise_signal(signal.SIGINT)
        except KeyboardInterrupt:
            stopped = True
        assert stopped and not interrupt.pending()


@pytest.mark.parametrize("handler", [signal.SIG_IGN, signal.default_int_handler], ids=["ignored", "python's"])
def test_the_sigint_handler_is_left_as_it_is(handler):
    previous = signal.signal(signal.SIGINT, handler)  # SIG_IGN: a command started in the background by a shell
    try:
        with catch_interrupts():
            assert signal.getsignal(signal.SIGINT) is handler
            if handler is signal.SIG_IGN:
                signal.raise_signal(signal.SIGINT)  # nothing happens, nothing is recorded
                assert not interrupt.pending()
        assert signal.getsignal(signal.SIGINT) is handler
    finally:
        signal.signal(signal.SIGINT, previous)


def test_training_stops_at_the_next_batch_after_a_dropped_interrupt(capsys, dropped, pipeline_cache, tmp_path,
                                                                   monkeypatch):
    """`dermogaze train` in this process: SIGINT lands in a finaliser during the first batch's step; the command
    stops at the second batch with status 130, and the run keeps no epoch."""
    import dermogaze.training.loop as loop
    from dermogaze.cli import main

    steps = []
    real_step = loop.train_step

    def step_then_drop(*args, **kwargs):
        steps.append(1)
        result = real_step(*args, **kwargs)
        if len(steps) == 1:
            _drop_an_interrupt()
        return result

    monkeypatch.setattr(loop, "train_step", step_then_drop)
    run = tmp_path / "run"
    status = main(["train", "--data", str(pipeline_cache), "--preset", "tiny", "--out", str(run), "--no-progress",
                   "--workers", "0", "-o", "train.epochs=1"])
    assert status == 130 and capsys.readouterr().err.rstrip().endswith("dermogaze: interrupted")
    assert len(dropped) == 1 and len(steps) == 1  # the tiny epoch has more batches: it stopped at the second
    assert not (run / "metrics.jsonl").exists() or not (run / "metrics.jsonl").read_text().strip()
