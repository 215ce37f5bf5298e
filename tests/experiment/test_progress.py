"""Tests for keras_bn.experiment.progress: a rich bar on a terminal, plain lines elsewhere."""

import io
import re
import sys

import pytest

from keras_bn.experiment.progress import RunProgress


class _Terminal(io.StringIO):
    """A text stream that says it is a terminal."""

    def isatty(self):
        return True


class _Logger:
    """Stands in for NotebookLogger: a last validation accuracy of 0.5."""

    def last(self, event):
        return {"accuracy": 0.5} if event == "validation" else None


CONTROL = [chr(c) for c in range(32) if chr(c) != "\n"] + ["\x7f"]
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _screen(text):
    """What a terminal shows for `text`: each line is what follows its last carriage return."""
    return [line.split("\r")[-1] for line in ANSI.sub("", text).split("\n")]


def test_off_a_terminal_only_a_few_plain_lines_without_control_characters():
    out = io.StringIO()
    progress = RunProgress(100, label="none, seed 0", stream=out, logger=_Logger())
    progress.on_train_begin()
    for i in range(100):
        progress.on_train_batch_end(i)
    progress.on_train_end()
    text = out.getvalue()
    assert not any(c in text for c in CONTROL)
    lines = text.splitlines()
    assert [line.split("  ")[0] for line in lines] == [
        "none, seed 0 25/100", "none, seed 0 50/100", "none, seed 0 75/100",
        "none, seed 0 100/100",
    ]
    assert all(line.endswith("val acc 0.5000") and " left" in line for line in lines)


def test_off_a_terminal_nothing_with_zero_plain_updates():
    out = io.StringIO()
    progress = RunProgress(5, stream=out, plain_updates=0)
    for i in range(5):
        progress.on_train_batch_end(i)
    assert out.getvalue() == ""


@pytest.mark.parametrize("terminal", [True, False])
def test_calls_only_at_boundary_batches_of_a_resumed_run(terminal):
    """A loop that reports only every 25th batch, resumed after 150 of 400 batches."""
    out = _Terminal() if terminal else io.StringIO()
    progress = RunProgress(400, stream=out, done=150, min_interval=0)
    progress.on_train_begin()
    for j in [*range(0, 250, 25), 249]:  # absolute batches 150, 175, ..., 375, 399
        progress.on_train_batch_end(j)
    assert progress.done == 400
    text = out.getvalue()
    if terminal:
        counts = re.findall(r"(\d+)/400", ANSI.sub("", text))
        assert counts[1:] == [str(n) for n in [*range(151, 400, 25), 400]]
    else:
        assert [line.split("  ")[0] for line in text.splitlines()] == [
            "201/400", "301/400", "400/400"
        ]


def test_on_a_terminal_a_bar_is_drawn_in_place_and_removed():
    out = _Terminal()
    progress = RunProgress(10, label="keras, seed 1", stream=out, logger=_Logger(),
                           min_interval=0)
    assert progress.is_terminal
    progress.on_train_begin()
    for i in range(10):
        progress.on_train_batch_end(i)
    drawn = _screen(out.getvalue())
    assert len(drawn) == 1  # One line, redrawn: no newline written.
    assert drawn[0].startswith("keras, seed 1 ") and " 10/10 " in drawn[0]
    assert drawn[0].rstrip().endswith("val acc 0.5000")
    progress.on_train_end()
    assert _screen(out.getvalue())[-1].strip() == ""  # Removed: the final lines follow.


def test_log_lines_printed_to_a_terminal_go_above_the_bar(monkeypatch):
    out = _Terminal()
    monkeypatch.setattr(sys, "stdout", out)  # Standard output is the same terminal.
    progress = RunProgress(4, label="run", stream=out, min_interval=0)
    progress.on_train_begin()
    progress.on_train_batch_end(0)
    print("Batch: 1, Training loss: 0.5")
    progress.on_train_batch_end(1)
    screen = _screen(out.getvalue())
    assert screen[0] == "Batch: 1, Training loss: 0.5"  # A line of its own, bar not on it.
    assert screen[1].startswith("run ") and " 2/4 " in screen[1]
    progress.on_train_end()
    assert sys.stdout is out  # Put back.
