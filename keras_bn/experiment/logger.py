"""`RunLogger`: the notebook's log of one run, whose last batch is always validated."""

import time

from keras_bn.notebook.logger import NotebookLogger

__all__ = ["RunLogger"]


class RunLogger(NotebookLogger):
    """`NotebookLogger` for one run of the experiment: it validates after the run's last batch.

    The notebook validates every `validate_every` batches and once more at the
    end of training. A run whose last batch is off that cadence (50 batches,
    validated at batch 0) would show batch 0's accuracy until the end, so here
    the validation set is scored once right after the last batch, before the
    progress bar's last update. That score is the final validation: the
    `Final validation accuracy` line at the end of training reuses it (the
    weights have not changed in between) instead of scoring the set a second
    time, and `curves.png` draws it at the last batch. The log itself is the
    notebook's, line for line.

    In a resumed run the last batch is counted from the run's start, as every
    batch index is (`batch_offset`), so it is scored in the session that
    trains it, once.

    Args:
        *args: Passed to `NotebookLogger`.
        last_batch: The index of the run's last batch, `RunConfig.batches - 1`.
        **kwargs: Passed to `NotebookLogger`.

    Attributes:
        last_batch_scores: `(loss, accuracy)` on the validation set after the
            last batch, `None` until then.
    """

    def __init__(self, *args, last_batch, **kwargs):
        super().__init__(*args, **kwargs)
        self.last_batch = int(last_batch)
        self.last_batch_scores = None
        self._final = None

    def on_train_batch_end(self, batch, logs=None):
        """Logs as the notebook does; after the last batch, scores the validation set."""
        super().on_train_batch_end(batch, logs)
        if self.batch_offset + int(batch) != self.last_batch:
            return
        entry = self.history[-1] if self.history else None
        if entry and entry["event"] == "validation" and entry["batch"] == self.last_batch:
            self.last_batch_scores = (entry["loss"], entry["accuracy"])  # On the cadence.
            return
        started = time.perf_counter()
        self.last_batch_scores = super().evaluate(*self.validation_data)
        self.eval_seconds += time.perf_counter() - started

    def on_train_end(self, logs=None):
        """Logs the final lines; the final validation is the score after the last batch."""
        self._final = self.last_batch_scores
        try:
            super().on_train_end(logs)
        finally:
            self._final = None

    def evaluate(self, images, labels):
        """Returns `(loss, accuracy)`; the final validation's is the last batch's score."""
        if self._final is not None and images is self.validation_data[0]:
            scores, self._final = self._final, None
            return scores
        return super().evaluate(images, labels)
