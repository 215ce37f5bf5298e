"""`ProgressBar`: batches done, rate, time left and last validation accuracy of a training run."""

import sys
import time

import keras
import numpy as np

__all__ = ["ProgressBar"]

_BAR_WIDTH = 20


def _is_terminal(stream):
    """Whether `stream` is an interactive terminal (`isatty()`), `False` when it cannot say."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def _duration(seconds):
    """Formats seconds as `1:02:03` or `2:03`, or `?` when unknown."""
    if seconds is None or not np.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


class ProgressBar(keras.callbacks.Callback):
    """A progress line for one training run that keeps out of the way of the log.

    After batch `i` (`batch_offset` plus the index `fit` reports) it shows the
    batches done out of `total`, the rate in batches per second (from the
    first batch of this `fit` on), the time left at that rate, and the last
    validation accuracy that `logger` recorded:

        keras, seed 1 [########............] 312/800  4.1 batch/s  1:59 left  val acc 0.9120

    On a terminal (`stream.isatty()`) it is one line redrawn in place with a
    carriage return (at most every `min_interval` seconds, and always at the
    last batch), and cleared at the end of training. Anywhere else (a file, a
    pipe, a CI log) it writes no control characters at all: only
    `plain_updates` ordinary lines per run, at evenly spaced batch counts.

    The log lines of the run must not be printed over the bar: print them
    through `wrap(print_fn)`, which clears the bar, prints, and redraws it.

    Every number is computed from the batch index alone, so the callback may
    be called after every batch or only at some of them.

    Args:
        total: Batches in the whole run (done before this `fit` included).
        label: Names the run at the start of the line. Defaults to `""`.
        stream: Where to write. Defaults to `None`: `sys.stderr` at each write.
        logger: A `keras_bn.NotebookLogger` (anything with `last(event)`)
            whose last `"validation"` entry gives the accuracy shown, or
            `None`. Defaults to `None`.
        batch_offset: Added to the batch index `fit` reports. Defaults to `0`.
        min_interval: Least seconds between two redraws on a terminal.
            Defaults to `0.1`.
        plain_updates: Lines written per run when `stream` is not a terminal;
            `0` writes nothing there. Defaults to `4`.

    Raises:
        ValueError: if `total` is not a positive int or another number is
            negative.

    Example:

    >>> import io
    >>> out = io.StringIO()  # not a terminal: plain lines only
    >>> bar = ProgressBar(8, label="demo", stream=out, plain_updates=2)
    >>> for i in range(8):
    ...     bar.on_train_batch_end(i)
    >>> [line.split("  ")[0] for line in out.getvalue().splitlines()]
    ['demo 4/8', 'demo 8/8']
    """

    def __init__(
        self,
        total,
        *,
        label="",
        stream=None,
        logger=None,
        batch_offset=0,
        min_interval=0.1,
        plain_updates=4,
    ):
        super().__init__()
        if isinstance(total, bool) or not isinstance(total, (int, np.integer)) or total < 1:
            raise ValueError(f"`total` must be a positive int. Received: total={total!r}")
        if isinstance(plain_updates, bool) or not isinstance(plain_updates, (int, np.integer)) \
                or plain_updates < 0:
            raise ValueError(
                f"`plain_updates` must be an int >= 0. Received: plain_updates={plain_updates!r}"
            )
        if not float(min_interval) >= 0:
            raise ValueError(
                f"`min_interval` must be >= 0. Received: min_interval={min_interval!r}"
            )
        self.total = int(total)
        self.label = str(label)
        self._stream = stream
        self.logger = logger
        self.batch_offset = int(batch_offset)
        self.min_interval = float(min_interval)
        self.plain_updates = int(plain_updates)
        self.done = self.batch_offset
        self._t0 = None
        self._start_done = self.batch_offset
        self._shown = ""  # The text on the terminal line now, "" when cleared.
        self._drawn_at = None
        self._plain_step = None
        self._first = True
        self._closed = False

    @property
    def stream(self):
        """The stream written to (`sys.stderr` when none was given)."""
        return sys.stderr if self._stream is None else self._stream

    @property
    def is_terminal(self):
        """Whether the stream is a terminal, so the bar is redrawn in place."""
        return _is_terminal(self.stream)

    # --- Text ---------------------------------------------------------------

    def rate(self):
        """Batches per second since the first batch of this `fit` ended, or `None` before that.

        Counting from the first report leaves out the start of `fit` (tracing
        and compiling the training step), which would make the time left
        far too long early on.
        """
        if self._t0 is None:
            return None
        elapsed = time.perf_counter() - self._t0
        trained = self.done - self._start_done
        return trained / elapsed if trained > 0 and elapsed > 0 else None

    def text(self, bar=True):
        """Returns the progress text; with `bar`, the `[###...]` gauge is included."""
        parts = [self.label] if self.label else []
        count = f"{self.done}/{self.total}"
        if bar:
            filled = int(_BAR_WIDTH * min(self.done, self.total) / self.total)
            parts.append(f"[{'#' * filled}{'.' * (_BAR_WIDTH - filled)}] {count}")
        else:
            parts.append(count)
        text = " ".join(parts)
        rate = self.rate()
        if rate is not None:
            left = (self.total - self.done) / rate
            text += f"  {rate:.1f} batch/s  {_duration(left)} left"
        entry = self.logger.last("validation") if self.logger is not None else None
        if entry is not None:
            text += f"  val acc {entry['accuracy']:.4f}"
        return text

    # --- Writing ------------------------------------------------------------

    def _write(self, text):
        """Writes `text` to the stream and flushes it."""
        stream = self.stream
        stream.write(text)
        stream.flush()

    def clear(self):
        """Clears the bar from the terminal line (no-op when nothing is shown)."""
        if self._shown:
            self._write("\r" + " " * len(self._shown) + "\r")
            self._shown = ""

    def draw(self):
        """Redraws the bar on the terminal line now (no-op off a terminal or once closed)."""
        if self._closed or not self.is_terminal:
            return
        text = self.text()
        padding = " " * max(0, len(self._shown) - len(text))
        self._write("\r" + text + padding)
        self._shown = text
        self._drawn_at = time.perf_counter()

    def wrap(self, print_fn):
        """Returns a `print_fn` that clears the bar, prints the line, then redraws the bar."""

        def print_below(*args, **kwargs):
            """Prints a log line above the bar."""
            shown = bool(self._shown)
            self.clear()
            print_fn(*args, **kwargs)
            if shown:
                sys.stdout.flush()  # The line must reach the terminal before the bar does.
                self.draw()

        return print_below

    def close(self):
        """Clears the bar and stops drawing it."""
        self.clear()
        self._closed = True

    # --- Callback hooks -----------------------------------------------------

    def on_train_begin(self, logs=None):
        """Starts the clock for the rate."""
        self._t0 = time.perf_counter()
        self._start_done = self.done
        self._first = True
        self._closed = False
        if self.plain_updates:
            self._plain_step = max(1, -(-self.total // self.plain_updates))

    def on_train_batch_end(self, batch, logs=None):
        """Updates the count and redraws the bar (or writes a plain line when one is due)."""
        previous = self.done
        self.done = min(self.batch_offset + int(batch) + 1, self.total)
        if self._t0 is None:
            self.on_train_begin()
        if self._first:  # The clock starts at the first report (see `rate`).
            self._first = False
            self._t0 = time.perf_counter()
            self._start_done = self.done
        if self.is_terminal:
            now = time.perf_counter()
            due = self._drawn_at is None or now - self._drawn_at >= self.min_interval
            if due or self.done >= self.total:
                self.draw()
        elif self._plain_step and (
            self.done // self._plain_step > previous // self._plain_step
            or (self.done >= self.total > previous)
        ):
            self._write(self.text(bar=False) + "\n")

    def on_train_end(self, logs=None):
        """Clears the bar: the run's final lines follow."""
        self.close()
