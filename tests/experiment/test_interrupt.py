"""Tests for keras_bn.experiment.interrupt: signals become a stop request, and the handlers are put back."""

import os
import signal
import threading

import pytest

from keras_bn.experiment.interrupt import StopOnSignal, TrainingInterrupted, signal_name


@pytest.mark.parametrize("number", [signal.SIGINT, signal.SIGTERM])
def test_a_real_signal_is_recorded_and_the_handlers_are_put_back(number):
    before = {n: signal.getsignal(n) for n in (signal.SIGINT, signal.SIGTERM)}
    with StopOnSignal() as stop:
        assert not stop.requested
        assert signal.getsignal(number) is not before[number]
        os.kill(os.getpid(), number)
        assert stop.requested and stop.signal_number == number
        os.kill(os.getpid(), signal.SIGTERM)  # A later signal does not overwrite the first.
        assert stop.signal_number == number
    assert {n: signal.getsignal(n) for n in before} == before


def test_handlers_are_put_back_after_an_exception():
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(RuntimeError, match="boom"):
        with StopOnSignal():
            raise RuntimeError("boom")
    assert signal.getsignal(signal.SIGINT) is before


def test_a_second_ctrl_c_aborts_at_once():
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        with StopOnSignal() as stop:
            os.kill(os.getpid(), signal.SIGINT)
            assert stop.requested
            os.kill(os.getpid(), signal.SIGINT)
            raise AssertionError("not reached: the second SIGINT raises")
    assert signal.getsignal(signal.SIGINT) is before


def test_nested_blocks_give_the_signals_back_in_order():
    before = signal.getsignal(signal.SIGTERM)
    with StopOnSignal() as outer:
        with StopOnSignal() as inner:
            os.kill(os.getpid(), signal.SIGTERM)
        assert inner.requested and not outer.requested
        os.kill(os.getpid(), signal.SIGTERM)
        assert outer.requested
    assert signal.getsignal(signal.SIGTERM) is before


def test_outside_the_main_thread_nothing_is_installed():
    before = signal.getsignal(signal.SIGTERM)
    seen = []

    def body():
        """Opens a block in a worker thread and records the handler it finds."""
        with StopOnSignal() as stop:
            seen.append(signal.getsignal(signal.SIGTERM))
            stop.request(signal.SIGTERM)  # A stop can still be asked for by hand.
            seen.append(stop.signal_number)

    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    assert seen == [before, signal.SIGTERM]


def test_training_interrupted_exit_codes_and_message():
    stop = TrainingInterrupted(
        signal.SIGTERM, batches_done=313, total=800, checkpoint="out/ck.npz", run="keras, seed 1"
    )
    assert stop.exit_code == 143
    assert TrainingInterrupted(signal.SIGINT).exit_code == 130
    assert str(stop) == (
        "Stopped by SIGTERM after batch 312 (313 of 800 done) of keras, seed 1. Checkpoint "
        "saved to out/ck.npz; run again with the same arguments and output folder to resume."
    )
    finished = TrainingInterrupted(signal.SIGINT, run="none, seed 0")
    assert str(finished) == (
        "Stopped by SIGINT after finishing none, seed 0. Nothing was saved (no output folder)."
    )
    assert signal_name(signal.SIGINT) == "SIGINT" and signal_name(999) == "signal 999"
