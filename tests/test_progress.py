"""Tests for keras_bn.progress: a bar on a terminal, plain lines elsewhere, never over the log."""

import io

import pytest

from keras_bn.progress import ProgressBar


class _Terminal(io.StringIO):
    """A text stream that says it is a terminal."""

    def isatty(self):
        return True


class _Logger:
    """Stands in for NotebookLogger: a last validation accuracy of 0.5."""

    def last(self, event):
        return {"accuracy": 0.5} if event == "validation" else None


CONTROL = [chr(c) for c in range(32) if chr(c) != "\n"] + ["\x7f"]


def test_on_a_terminal_the_bar_is_redrawn_in_place_and_cleared():
    out = _Terminal()
    bar = ProgressBar(10, label="keras, seed 1", stream=out, logger=_Logger(), min_interval=0)
    bar.on_train_begin()
    for i in range(10):
        bar.on_train_batch_end(i)
    text = out.getvalue()
    assert "\n" not in text
    frames = text.split("\r")[1:]
    assert len(frames) == 10
    assert frames[0].startswith("keras, seed 1 [##..................] 1/10")
    last = frames[-1]
    assert last.startswith("keras, seed 1 [####################] 10/10  ")
    assert " batch/s  0:00 left  val acc 0.5000" in last
    bar.on_train_end()
    assert out.getvalue().endswith("\r" + " " * len(last.rstrip()) + "\r")


def test_off_a_terminal_only_a_few_plain_lines_without_control_characters():
    out = io.StringIO()
    bar = ProgressBar(100, label="none, seed 0", stream=out, logger=_Logger())
    bar.on_train_begin()
    for i in range(100):
        bar.on_train_batch_end(i)
    bar.on_train_end()
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
    bar = ProgressBar(5, stream=out, plain_updates=0)
    for i in range(5):
        bar.on_train_batch_end(i)
    assert out.getvalue() == ""


@pytest.mark.parametrize("terminal", [True, False])
def test_calls_only_at_boundary_batches_of_a_resumed_run(terminal):
    """A loop that reports only every 25th batch, resumed after 150 of 400 batches."""
    out = _Terminal() if terminal else io.StringIO()
    bar = ProgressBar(400, stream=out, batch_offset=150, min_interval=0)
    bar.on_train_begin()
    for j in [*range(0, 250, 25), 249]:  # absolute batches 150, 175, ..., 375, 399
        bar.on_train_batch_end(j)
    assert bar.done == 400
    text = out.getvalue()
    if terminal:
        assert [frame.split("] ")[1].split()[0] for frame in text.split("\r")[1:]] == [
            f"{n}/400" for n in [*range(151, 400, 25), 400]
        ]
    else:
        assert [line.split("  ")[0] for line in text.splitlines()] == [
            "201/400", "301/400", "400/400"
        ]


def test_log_lines_printed_through_wrap_never_share_the_bar_line():
    out = _Terminal()
    bar = ProgressBar(4, label="run", stream=out, min_interval=0)
    log = bar.wrap(lambda line: out.write(line + "\n"))
    bar.on_train_begin()
    bar.on_train_batch_end(0)
    shown = out.getvalue().split("\r")[-1]
    log("Batch: 1, Training loss: 0.5")
    bar.on_train_batch_end(1)
    text = out.getvalue()
    # Cleared with spaces and a carriage return, the line printed, the bar redrawn.
    assert "\r" + " " * len(shown) + "\rBatch: 1, Training loss: 0.5\n\rrun [#####" in text
    # What a terminal would show: each line is what follows its last carriage return.
    screen = [line.split("\r")[-1] for line in text.split("\n")]
    assert screen[0] == "Batch: 1, Training loss: 0.5"
    assert screen[1].startswith("run [##########..........] 2/4")


def test_wrap_off_a_terminal_just_prints():
    out = io.StringIO()
    lines = []
    bar = ProgressBar(4, stream=out)
    bar.wrap(lines.append)("hello")
    assert lines == ["hello"] and out.getvalue() == ""


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"total": 0}, r"`total` must be a positive int. Received: total=0"),
        ({"total": 5, "plain_updates": -1}, r"`plain_updates` must be an int >= 0"),
        ({"total": 5, "min_interval": -1}, r"`min_interval` must be >= 0"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ProgressBar(**kwargs)
