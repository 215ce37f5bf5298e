"""`Run`: one training run (a variant and a seed of a `RunConfig`): build, resume, train, result."""

import collections
import contextlib
import hashlib
import os
import time

import keras
import numpy as np

from keras_bn.experiment import distribute
from keras_bn.experiment.checkpoint import RunCheckpoint
from keras_bn.experiment.interrupt import StopOnSignal
from keras_bn.experiment.probes import RecalibratedScores, merge_statistics, probe_statistics
from keras_bn.experiment.progress import RunProgress
from keras_bn.experiment.training import fit_batches
from keras_bn.notebook.feeder import BatchFeeder
from keras_bn.notebook.model import compile_like_notebook, deep_mnist_model

__all__ = ["Data", "Run", "prepare_data"]

#: The three splits as `(images, labels)` pairs, and a digest of their bytes.
Data = collections.namedtuple("Data", ["train", "validation", "test", "fingerprint"])


def prepare_data(data):
    """Returns MNIST-like `(train, validation, test)` splits as a `Data`, fingerprinted once.

    Each split is an `(images, labels)` pair or has `images` and `labels`
    (such as `keras_bn.load_mnist()`); labels are one-hot.
    """
    if isinstance(data, Data):
        return data
    splits, digest = [], hashlib.blake2b(digest_size=16)
    for name, split in zip(("train", "validation", "test"), data):
        pair = (split.images, split.labels) if hasattr(split, "images") else split
        pair = tuple(np.ascontiguousarray(array) for array in pair)
        for array in pair:
            digest.update(f"{name}{array.shape}{array.dtype.str}".encode())
            digest.update(memoryview(array).cast("B"))
        splits.append(pair)
    return Data(*splits, digest.hexdigest())


class Run:
    """One run of the experiment: a variant of the deep MNIST network trained with one seed.

    Made before anything trains, it reads its checkpoint (when `folder` has
    one) and refuses one of another configuration. `train()` then builds the
    model, resumes it from the checkpoint, trains it with `fit_batches` while
    `RunLogger` logs, saves it, and returns its result (at once, when the
    checkpoint says the run finished).

    Args:
        config: The `RunConfig`.
        variant: One of `config.variants`.
        seed: One of `config.seeds`.
        data: MNIST-like splits, or a `Data` from `prepare_data`.
        folder: The run folder (`OUT/<config.name>`) whose `checkpoints/`
            holds this run's checkpoint, or `None` to keep none. The caller
            holds it (`run_experiment` takes its `RunLock` before any `Run`
            reads a checkpoint). Defaults to `None`.
        stop: The `StopOnSignal` of the caller. Defaults to `None`: the run
            installs its own while it trains.
        print_fn: Receives every log line. Defaults to `print`.
        progress: A text stream for a `RunProgress` bar, or `None` for none.
            Defaults to `None`.
    """

    def __init__(self, config, variant, seed, data, *, folder=None, stop=None, print_fn=print,
                 progress=None):
        self.config, self.variant, self.seed = config, variant, int(seed)
        self.data, self.print_fn, self.progress = prepare_data(data), print_fn, progress
        self.label = f"{variant}, seed {self.seed}"
        self.path = None
        if folder is not None:
            self.path = os.path.join(os.fspath(folder), "checkpoints", f"{variant}-seed{seed}.zip")
        self._own_stop = stop is None
        self.stop = StopOnSignal() if stop is None else stop
        identity = {**config.to_dict(), "variant": variant, "seed": self.seed,
                    "data": self.data.fingerprint}
        self.checkpoint = RunCheckpoint(
            self.path, identity, self._state, every=config.checkpoint_every,
            total=config.batches, stop=self.stop, run=self.label,
        )
        saved = self.checkpoint.saved or {}
        self._earlier = saved.get("seconds", {"fit": 0.0, "eval": 0.0})
        self._history = list(saved.get("history", []))
        self._earlier_statistics = saved.get("layer_statistics")
        self.logger, self.statistics, self._started = None, None, None

    def build(self):
        """Returns the compiled model of this variant and seed (under its strategy, if any)."""
        strategy = distribute.strategy(self.config.distribute)  # First: it may start TensorFlow.
        keras.utils.set_random_seed(self.seed)
        with distribute.strategy_scope(strategy):
            model = deep_mnist_model(
                bn=distribute.norm_layer(self.variant, strategy),
                kernel_initializer=self.config.kernel_initializer,
                name=f"deep_mnist_{self.variant}",
            )
            compile_like_notebook(model, learning_rate=self.config.learning_rate)
        return model, strategy

    def train(self):
        """Trains the run (resuming it, or skipping it when finished); returns `result()`.

        Raises:
            keras_bn.experiment.TrainingInterrupted: after SIGINT or SIGTERM,
                once a checkpoint is saved.
        """
        saved = self.checkpoint.saved
        if saved and saved["finished"]:
            self.print_fn(f"Already finished ({self.path}); not trained again.")
            return saved["result"]
        config, start = self.config, self.checkpoint.start
        if start:
            self.print_fn(f"Resuming from {self.path}: {start} of {config.batches} batches done.")
        model, strategy = self.build()
        feeder = BatchFeeder(*self.data.train, config.batch_size, seed=self.seed, start=start,
                             num_batches=config.batches - start)
        self.logger = distribute.logger_class(strategy)(
            feeder, self.data.validation, self.data.test, validate_every=config.validate_every,
            check_every=config.check_every, num_samples=config.num_samples,
            print_fn=self.print_fn, last_batch=config.batches - 1,
        )
        callbacks = [self.logger]
        if config.recalibrate is not None:
            callbacks.append(RecalibratedScores(
                self.logger, self.data.train, batch_size=config.batch_size, seed=self.seed,
                steps=config.recalibrate, dropout=config.recalibrate_dropout))
        if config.plot_activations:
            self.statistics = probe_statistics(config, self.variant, self.logger,
                                               self.data.validation, start)
            callbacks.append(self.statistics)
        if self.progress is not None:
            callbacks.append(RunProgress(config.batches, label=self.label, stream=self.progress,
                                         done=start, logger=self.logger))
        with self.stop if self._own_stop else contextlib.nullcontext():
            self._started = time.perf_counter()
            try:
                fit_batches(model, feeder, callbacks + [self.checkpoint])
            finally:
                if self.progress is not None:
                    callbacks[-1].close()
            result = self.result()
            self.checkpoint.save(config.batches, result)
            self.checkpoint.stop_if_requested()
        return result

    def _seconds(self):
        """Returns the fit and evaluation seconds so far, over every session of the run."""
        fit = self._earlier["fit"] + time.perf_counter() - self._started
        return {"fit": fit, "eval": self._earlier["eval"] + self.logger.eval_seconds}

    def _log(self):
        """Returns the log so far: earlier sessions', then this one's with its times shifted."""
        shift = self._earlier["fit"]
        return self._history + [dict(e, seconds=e["seconds"] + shift) for e in self.logger.history]

    def _state(self, done, result=None):
        """Returns the JSON state a checkpoint saves after `done` batches (`result` once finished)."""
        state = {"batches_done": done, "history": self._log(), "seconds": self._seconds(),
                 "finished": result is not None, "result": result}
        if self.config.plot_activations:
            state["layer_statistics"] = self._statistics()
        return state

    def _statistics(self):
        """Returns the `LayerStatistics` history so far, over every session of the run."""
        return merge_statistics(self._earlier_statistics, self.statistics.history)

    def result(self):
        """Returns the run's final accuracies, times and log (`results.json`'s run entry).

        The keys are `final_validation_accuracy`, `final_test_accuracy`,
        `accuracy_on_100_samples`, `train_seconds` (the time in training minus
        the logger's evaluations), `eval_seconds`, `fit_seconds` (both) and
        `history`; the times add up over the sessions of a resumed run. With
        `recalibrate`, also `final_recalibrated_validation_accuracy` and
        `final_recalibrated_test_accuracy` (`None` without batch norm); with
        `plot_activations`, `layer_statistics` (`LayerStatistics.history`).
        """
        seconds, log = self._seconds(), self._log()
        result = {**self.logger.summary(), "train_seconds": seconds["fit"] - seconds["eval"],
                  "eval_seconds": seconds["eval"], "fit_seconds": seconds["fit"],
                  "history": log}
        if self.config.recalibrate is not None:
            for event in ("final_recalibrated_validation", "final_recalibrated_test"):
                scores = [entry["accuracy"] for entry in log if entry["event"] == event]
                result[event + "_accuracy"] = scores[-1] if scores else None
        if self.config.plot_activations:
            result["layer_statistics"] = self._statistics()
        return result
