"""`RunProgress`: a `rich` progress bar for one training run, or a few plain lines off a terminal."""

import datetime
import sys
import time

import keras
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn
from rich.progress import TimeRemainingColumn
from rich.text import Text

__all__ = ["RunProgress"]


def _is_terminal(stream):
    """Whether `stream` is an interactive terminal (`isatty()`), `False` when it cannot say."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


class _Rate(ProgressColumn):
    """Batches per second, once known."""

    def render(self, task):
        """Returns the rate as text."""
        return Text("" if task.speed is None else f"{task.speed:.1f} batch/s")


class RunProgress(keras.callbacks.Callback):
    """The progress of one training run: batches done, rate, time left, last validation accuracy.

    On a terminal (`stream.isatty()`) it is a `rich` progress bar, redrawn in
    place (at most every `min_interval` seconds) and removed at the end of
    training; while it shows, lines printed to a terminal's standard output
    are drawn above it, never over it. Anywhere else (a file, a pipe, a CI log)
    it writes no control characters: only `plain_updates` ordinary lines,
    at evenly spaced batch counts, such as
    `keras, seed 1 400/800  4.1 batch/s  0:01:37 left  val acc 0.9120`.

    Args:
        total: Batches in the whole run (those done before included).
        label: Names the run at the start of the line. Defaults to `""`.
        stream: Where to write. Defaults to `None`: `sys.stderr`.
        done: Batches done before this `fit` (a resumed run). Defaults to `0`.
        logger: A `keras_bn.NotebookLogger` whose last validation accuracy is
            shown, or `None`. With a `RunLogger` (placed before this callback)
            the bar ends on the run's final validation accuracy, the one
            printed after it. Defaults to `None`.
        plain_updates: Lines per run off a terminal. Defaults to `4`.
        min_interval: Least seconds between two redraws. Defaults to `0.1`.

    Example:

    >>> import io
    >>> out = io.StringIO()  # not a terminal: plain lines only
    >>> progress = RunProgress(8, label="demo", stream=out, plain_updates=2)
    >>> for i in range(8):
    ...     progress.on_train_batch_end(i)
    >>> [line.split("  ")[0] for line in out.getvalue().splitlines()]
    ['demo 4/8', 'demo 8/8']
    """

    def __init__(self, total, *, label="", stream=None, done=0, logger=None, plain_updates=4,
                 min_interval=0.1):
        super().__init__()
        self.total, self.label, self.start, self.done = total, label, done, done
        self.stream = sys.stderr if stream is None else stream
        self.logger, self.min_interval = logger, min_interval
        self.step = -(-total // plain_updates) if plain_updates else None
        terminal = _is_terminal(self.stream)
        self._progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), _Rate(),
            TimeRemainingColumn(), TextColumn("{task.fields[accuracy]}"),
            console=Console(file=self.stream, force_terminal=terminal, force_interactive=terminal),
            auto_refresh=False, transient=True, disable=not terminal,
            redirect_stdout=terminal and _is_terminal(sys.stdout), redirect_stderr=False,
        )
        self._task = self._progress.add_task(label, total=total, completed=done, accuracy="")
        self._drawn = None

    @property
    def is_terminal(self):
        """Whether the bar is drawn on a terminal (else plain lines are written)."""
        return not self._progress.disable

    def _accuracy(self):
        """The last validation accuracy as text, `""` before there is one.

        After a run's last batch it is the final one: a `RunLogger` scores the
        validation set there (`last_batch_scores`), before this bar's last
        update.
        """
        if self.logger is None:
            return ""
        scores = getattr(self.logger, "last_batch_scores", None)
        if scores is not None:
            return f"val acc {scores[1]:.4f}"
        entry = self.logger.last("validation")
        return "" if entry is None else f"val acc {entry['accuracy']:.4f}"

    def text(self):
        """Returns the plain progress line: label, count, rate, time left, accuracy."""
        task = self._progress.tasks[0]
        parts = [f"{self.label} {self.done}/{self.total}".strip()]
        if task.speed:
            left = datetime.timedelta(seconds=round(task.time_remaining or 0))
            parts += [f"{task.speed:.1f} batch/s", f"{left} left"]
        return "  ".join(parts + [self._accuracy()]).rstrip()

    def on_train_begin(self, logs=None):
        """Shows the bar (on a terminal)."""
        self._progress.start()

    def on_train_batch_end(self, batch, logs=None):
        """Moves the count to `done + batch + 1` and redraws, or writes a line when one is due."""
        previous, self.done = self.done, min(self.start + int(batch) + 1, self.total)
        self._progress.update(self._task, completed=self.done, accuracy=self._accuracy())
        if self.is_terminal:
            now = time.perf_counter()
            if self._drawn is None or now - self._drawn >= self.min_interval \
                    or self.done == self.total:
                self._progress.refresh()
                self._drawn = now
        elif self.step and (self.done // self.step > previous // self.step
                            or self.done == self.total > previous):
            self.stream.write(self.text() + "\n")
            self.stream.flush()

    def on_train_end(self, logs=None):
        """Removes the bar: the run's final lines follow."""
        self.close()

    def close(self):
        """Stops drawing and removes the bar."""
        self._progress.stop()
