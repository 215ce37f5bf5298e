"""What a run measures beside the notebook's log: recalibrated scores and layer statistics.

`RecalibratedScores` scores each validation of `NotebookLogger` a second time
with batch-norm statistics recomputed from training batches (`RunConfig.recalibrate`);
`probe_statistics` makes the `LayerStatistics` of `RunConfig.plot_activations`.
Neither changes training: both put back every statistic they touch.
"""

import time

import keras

from keras_bn.notebook.feeder import BatchFeeder
from keras_bn.layer_statistics import LayerStatistics
from keras_bn.recalibrate import RecalibrateBatchNorm, batch_norm_layers

__all__ = ["EVENTS", "MIDDLE_DEPTH", "RecalibratedScores", "merge_statistics",
           "probe_statistics"]

#: The logger's events scored again, and the event of the recalibrated score.
EVENTS = {
    "validation": "recalibrated_validation",
    "final_validation": "final_recalibrated_validation",
    "final_test": "final_recalibrated_test",
}
#: The conv layer (of 19) whose pre-activation input `activations.png` shows.
MIDDLE_DEPTH = 10
#: Validation images in the fixed probe batch of `LayerStatistics`.
PROBE_SIZE = 500
#: About how many times `LayerStatistics` records over a run.
POINTS = 80


def _message(event, batch, loss, accuracy):
    """The log line of a recalibrated score, worded like the notebook's line it follows."""
    if event == "recalibrated_validation":
        return (f"Batch: {batch}, Recalibrated validation loss: {loss}, "
                f"Recalibrated validation accuracy: {accuracy}")
    split = "validation" if event == "final_recalibrated_validation" else "test"
    return f"Final {split} accuracy, recalibrated: {accuracy}"


class RecalibratedScores(keras.callbacks.Callback):
    """Scores the logger's validations again with recalibrated batch-norm statistics.

    Placed after `logger` in the callback list. Whenever the logger has just
    logged a validation (and after its final validation and test), the moving
    statistics are recomputed from the first `steps` batches of the run's batch
    order with the current weights (`RecalibrateBatchNorm.recalibrated()`), the
    same split is scored again, and the training's own statistics are put back,
    so training goes on exactly as without it. The scores are logged and kept
    in `logger.history` as `recalibrated_validation`,
    `final_recalibrated_validation` and `final_recalibrated_test` entries, and
    their time counts in `logger.eval_seconds`. A model without batch norm is
    left alone: nothing to recalibrate, no entry.

    Args:
        logger: The run's `NotebookLogger`.
        train: The training split `(images, labels)`.
        batch_size: The run's batch size.
        seed: The run's seed: the batches are those of its `BatchFeeder`.
        steps: Training batches to recalibrate on.
        dropout: The dropout layers' mode while recalibrating, as for
            `recalibrate_batch_norm`. Defaults to `"inference"`.
    """

    def __init__(self, logger, train, *, batch_size, seed, steps, dropout="inference"):
        super().__init__()
        self.logger = logger
        # Batches 0..steps-1 of the run's order: the same ones at every score,
        # and in a resumed run too.
        feeder = BatchFeeder(*train, batch_size, seed=seed, num_batches=steps)
        self.recalibrate = RecalibrateBatchNorm(feeder, steps=steps, dropout=dropout)
        self._active, self._seen = False, 0

    def set_model(self, model):
        """Gives the model to the recalibration; notes whether it has a batch norm."""
        super().set_model(model)
        self.recalibrate.set_model(model)
        self._active = any(layer.trainable for layer in batch_norm_layers(model))

    def _rescore(self):
        """Scores again, under one recalibration, each entry logged since the last call."""
        new = [entry for entry in self.logger.history[self._seen:] if entry["event"] in EVENTS]
        if self._active and new:
            started = time.perf_counter()
            splits = {"final_test": self.logger.test_data}
            with self.recalibrate.recalibrated():
                scores = [(entry, self.logger.evaluate(
                    *splits.get(entry["event"], self.logger.validation_data))) for entry in new]
            for entry, (loss, accuracy) in scores:
                event = EVENTS[entry["event"]]
                self.logger._record(event, entry["batch"], loss, accuracy,
                                    _message(event, entry["batch"], loss, accuracy))
            self.logger.eval_seconds += time.perf_counter() - started
        self._seen = len(self.logger.history)

    def on_train_begin(self, logs=None):
        """Starts after the entries of an earlier `fit`."""
        self._seen = len(self.logger.history)

    def on_train_batch_end(self, batch, logs=None):
        """Scores the validation the logger has just logged, if it has."""
        self._rescore()

    def on_train_end(self, logs=None):
        """Scores the final validation and test again."""
        self._rescore()


class _ProbeStatistics(LayerStatistics):
    """`LayerStatistics` whose probe passes count in `logger.eval_seconds`, not in training time."""

    def __init__(self, logger, probe, **kwargs):
        super().__init__(probe, **kwargs)
        self.logger = logger

    def on_train_batch_end(self, batch, logs=None):
        """Records as `LayerStatistics` does, timed."""
        started = time.perf_counter()
        super().on_train_batch_end(batch, logs)
        self.logger.eval_seconds += time.perf_counter() - started


def probe_statistics(config, variant, logger, validation, start):
    """Returns the `LayerStatistics` of a run with `plot_activations`.

    It records, about `POINTS` times over the run, the 15th/50th/85th
    percentiles of what enters the ReLU of conv layer `MIDDLE_DEPTH` (after the
    batch norm, when there is one) on the first `PROBE_SIZE` validation images,
    in training mode (the batch norms normalize with the probe's own statistics,
    as in a training step), and the gradient norm of every kernel.

    Args:
        config: The `RunConfig`.
        variant: The run's variant.
        logger: The run's `NotebookLogger` (for the time of the probe passes).
        validation: The validation split `(images, labels)`.
        start: Batches trained before (a resumed run).
    """
    layer = f"conv{MIDDLE_DEPTH}" if variant == "none" else f"relu{MIDDLE_DEPTH}"
    return _ProbeStatistics(logger, validation[0][:PROBE_SIZE], inputs_of=[layer],
                            every=max(1, config.batches // POINTS), training=True, start=start)


def merge_statistics(earlier, later):
    """Returns `LayerStatistics.history` of a run: an earlier session's followed by `later`'s."""
    if not earlier:
        return later
    return {
        "step": earlier["step"] + later["step"], "percentiles": later["percentiles"],
        **{key: {name: earlier[key].get(name, []) + values
                 for name, values in later[key].items()}
           for key in ("inputs", "gradient_norms")},
    }
