"""`StopOnSignal` and `TrainingInterrupted`: Ctrl-C and SIGTERM stop a run after a batch."""

import signal
import threading

__all__ = ["StopOnSignal", "TrainingInterrupted", "signal_name"]

#: The signals a run stops on: Ctrl-C (SIGINT) and a polite kill (SIGTERM).
STOP_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM") if hasattr(signal, name)
)


def signal_name(signal_number):
    """Returns `"SIGINT"` for `signal.SIGINT` and so on, or `"signal N"` for an unknown number."""
    try:
        return signal.Signals(signal_number).name
    except ValueError:
        return f"signal {signal_number}"


class TrainingInterrupted(Exception):
    """Raised when a signal stopped training after a batch; says where the checkpoint is.

    Attributes:
        signal_number: The signal that asked for the stop (`signal.SIGINT`,
            `signal.SIGTERM`).
        batches_done: Training batches done before the stop, or `None` when the
            run had finished when the stop was seen.
        total: The run's number of batches, or `None`.
        checkpoint: Path of the checkpoint written on the way out, or `None`
            when there was nowhere to write one.
        run: What was running, e.g. `"keras, seed 1"`, or `None`.
        exit_code: `128 + signal_number` (130 for SIGINT, 143 for SIGTERM),
            the status a shell expects from a process a signal stopped.
    """

    def __init__(self, signal_number, *, batches_done=None, total=None, checkpoint=None, run=None):
        super().__init__(signal_number, batches_done, total, checkpoint, run)
        self.signal_number = int(signal_number)
        self.batches_done = batches_done
        self.total = total
        self.checkpoint = checkpoint
        self.run = run

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
        if self.checkpoint is not None:
            message += (
                f" Checkpoint saved to {self.checkpoint}; run again with the same "
                "arguments and output folder to resume."
            )
        else:
            message += " Nothing was saved (no output folder)."
        return message


class StopOnSignal:
    """A context manager that turns SIGINT and SIGTERM into a request to stop.

    Inside the `with` block, the first SIGINT (Ctrl-C) or SIGTERM only records
    the signal in `signal_number`; the training loop looks at `requested`
    after each batch, writes a checkpoint and raises `TrainingInterrupted`. A
    second SIGINT while a stop is pending gives up on the clean stop and raises
    `KeyboardInterrupt` at once. Leaving the block puts back the handlers that
    were there before, whatever happened inside, so library code leaves the
    process as it found it.

    Handlers can only be installed from the main thread; elsewhere the block
    does nothing and signals keep their usual effect. Blocks may nest: the
    inner one takes the signals while it is open and gives them back after.

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
        del frame
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
