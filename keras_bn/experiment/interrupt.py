"""`StopOnSignal` and `TrainingInterrupted`: Ctrl-C and SIGTERM stop a run after a batch."""

import signal
import threading

__all__ = ["StopOnSignal", "TrainingInterrupted", "signal_name"]

#: The signals a run stops on: Ctrl-C (SIGINT) and a polite kill (SIGTERM).
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM")
                     if hasattr(signal, name))


def signal_name(signal_number):
    """Returns `"SIGINT"` for `signal.SIGINT` and so on, or `"signal N"` for an unknown number."""
    try:
        return signal.Signals(signal_number).name
    except ValueError:
        return f"signal {signal_number}"


class TrainingInterrupted(Exception):
    """Raised when a signal stopped training after a batch; says where the checkpoint is.

    Attributes:
        signal_number: The signal that asked for the stop.
        batches_done: Batches done before the stop, `None` when the run had finished.
        total: The run's number of batches, or `None`.
        checkpoint: The checkpoint written on the way out, or `None` (no output folder).
        run: What was running, e.g. `"keras, seed 1"`, or `None`.
        exit_code: `128 + signal_number` (130 for SIGINT, 143 for SIGTERM), the status a
            shell expects from a process a signal stopped.
    """

    def __init__(self, signal_number, *, batches_done=None, total=None, checkpoint=None, run=None):
        super().__init__(signal_number, batches_done, total, checkpoint, run)
        self.signal_number, self.batches_done = int(signal_number), batches_done
        self.total, self.checkpoint, self.run = total, checkpoint, run

    @property
    def exit_code(self):
        """`128 + signal_number`: 130 after Ctrl-C, 143 after SIGTERM."""
        return 128 + self.signal_number

    @property
    def where(self):
        """Where the run stopped: `"after batch 311 (312 of 800 done) of keras, seed 1"`."""
        run = self.run or "the run"
        if self.batches_done is None:
            return f"after finishing {run}"
        text = f"after batch {self.batches_done - 1}"
        if self.total is not None:
            text += f" ({self.batches_done} of {self.total} done)"
        return f"{text} of {run}"

    def __str__(self):
        message = f"Stopped by {signal_name(self.signal_number)} {self.where}."
        if self.checkpoint is None:
            return message + " Nothing was saved (no output folder)."
        return message + (f" Checkpoint saved to {self.checkpoint}; run again with the same "
                          "arguments and output folder to resume.")


class StopOnSignal:
    """A context manager that turns SIGINT and SIGTERM into a request to stop.

    Inside the `with` block the first SIGINT (Ctrl-C) or SIGTERM only records
    the signal; `keras_bn.experiment.checkpoint.RunCheckpoint` sees `requested`
    after the batch, saves and raises `TrainingInterrupted`. A second SIGINT
    while a stop is pending raises `KeyboardInterrupt` at once. Leaving the
    block puts back the previous handlers, whatever happened inside. Handlers
    can only be installed from the main thread; elsewhere the block installs
    nothing. Blocks may nest: the inner one takes the signals while it is open.

    Args:
        signals: The signals to catch. Defaults to `(SIGINT, SIGTERM)`.

    Example:

    >>> import os, signal
    >>> before = signal.getsignal(signal.SIGTERM)
    >>> with StopOnSignal() as stop:
    ...     os.kill(os.getpid(), signal.SIGTERM)  # only recorded
    ...     stop.requested, signal_name(stop.signal_number)
    (True, 'SIGTERM')
    >>> signal.getsignal(signal.SIGTERM) is before  # put back
    True
    """

    def __init__(self, signals=STOP_SIGNALS):
        self.signals = tuple(signals)
        self.signal_number = None
        self._previous = {}

    @property
    def requested(self):
        """Whether a stop signal has arrived."""
        return self.signal_number is not None

    def request(self, signal_number=signal.SIGINT):
        """Records a stop request as if `signal_number` had arrived."""
        if self.signal_number is None:
            self.signal_number = int(signal_number)

    def _handle(self, signal_number, frame):
        """The signal handler: records the first signal; a second SIGINT aborts at once."""
        if self.signal_number is not None and signal_number == signal.SIGINT:
            self._restore()
            raise KeyboardInterrupt
        # Nothing is printed here: a handler may run in the middle of a write to
        # the same stream, and the buffered writer refuses reentrant calls.
        self.request(signal_number)

    def _restore(self):
        """Puts back the handlers that were installed before `__enter__`."""
        while self._previous:
            number, handler = self._previous.popitem()
            # `None`: a handler installed outside Python; the default is the closest.
            signal.signal(number, signal.SIG_DFL if handler is None else handler)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for number in self.signals:
                self._previous[number] = signal.getsignal(number)
                signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc_info):
        self._restore()
        return False
