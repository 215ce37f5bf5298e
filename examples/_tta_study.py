"""The measurements of `test_time_adaptation.py`: the trained networks and their accuracies.

Each function returns plain numbers (accuracies in `[0, 1]`, or `None` where
the library refuses a setting); `_tta_report.py` turns them into tables, a
figure and `results.json`.
"""

import time

import keras
import numpy as np

from keras_bn import (
    BatchFeeder,
    BatchNormAdapter,
    compile_like_notebook,
    deep_mnist_model,
)
from keras_bn.experiment.training import fit_batches

#: The batch size the notebook trains with.
TRAIN_BATCH_SIZE = 32

#: The test-time methods, in the order of the tables.
METHODS = ("source", "statistics", "tent")


def train(variant, seed, train_split, batches):
    """Trains the notebook's network with batch norm `variant` for `batches` batches of 32.

    The run is the notebook's, as `keras-bn` trains it: Keras's global seed
    set to `seed`, `deep_mnist_model(bn=variant)` compiled like the notebook
    (sigmoid cross-entropy, Adam at 0.002), and `BatchFeeder`'s seeded batch
    order through the harness's `fit_batches`.

    Returns:
        The trained model.
    """
    keras.utils.set_random_seed(seed)
    model = compile_like_notebook(deep_mnist_model(bn=variant, name=f"deep_mnist_{variant}"))
    feeder = BatchFeeder(train_split.images, train_split.labels, TRAIN_BATCH_SIZE, seed=seed,
                         num_batches=batches)
    fit_batches(model, feeder)
    return model


def accuracy(predictions, labels):
    """Returns the fraction of rows whose largest output is the true class (`labels` are ints)."""
    return float(np.mean(np.argmax(predictions, axis=-1) == labels))


class Subject:
    """One trained network and the adapters the study runs on it, made once and reused.

    Making an adapter copies the network and traces its functions, so each
    is made once: a statistics adapter per prior strength, which keeps no
    state from batch to batch, and one TENT adapter, `reset()` before each
    run so that every corruption and batch size starts from the source.

    Args:
        variant: `"keras"` or `"manual"`.
        seed: The training seed.
        model: The trained network (sigmoid logits).
    """

    def __init__(self, variant, seed, model):
        self.variant, self.seed, self.model = variant, seed, model
        self._statistics = {}
        self._tent = None

    def statistics(self, prior_strength):
        """Returns the statistics adapter with `prior_strength`."""
        if prior_strength not in self._statistics:
            self._statistics[prior_strength] = BatchNormAdapter(
                self.model, method="statistics", prior_strength=prior_strength)
        return self._statistics[prior_strength]

    def tent(self):
        """Returns the TENT adapter (continual, prior 0), reset to the source."""
        if self._tent is None:
            # The network's outputs are sigmoid logits: it trains with binary cross-entropy.
            self._tent = BatchNormAdapter(self.model, method="tent", outputs="sigmoid")
        self._tent.reset()
        return self._tent


def adapted_accuracy(adapter, images, labels, batch_size, prior_strength):
    """Returns `(accuracy, None)` of `adapter` streaming `images` in batches, or `(None, why)`.

    The one refusal expected is the library's own: a batch of one image gives
    the batch norms after the 1x1 maps and the dense layer a single value per
    channel, whose variance is 0, and with `prior_strength=0` the adapter
    raises rather than return `beta` for every image. Any other error is
    raised.
    """
    try:
        predictions = adapter.predict(images, batch_size=batch_size)
    except ValueError as error:
        if batch_size == 1 and prior_strength == 0:
            return None, str(error).split(":")[0]
        raise
    return accuracy(predictions, labels), None


def main_accuracies(subject, images, labels, batch_size):
    """Returns `{method: accuracy}` on one test set: no adaptation, statistics, TENT."""
    source = subject.model.predict(images, batch_size=500, verbose=0)
    return {
        "source": accuracy(source, labels),
        "statistics": adapted_accuracy(subject.statistics(0.0), images, labels, batch_size, 0.0)[0],
        "tent": adapted_accuracy(subject.tent(), images, labels, batch_size, 0.0)[0],
    }


def batch_size_accuracies(subject, images, labels, batch_sizes):
    """Returns `({method: {batch size: accuracy or None}}, refusals)` with the prior at 0."""
    found, refused = {"statistics": {}, "tent": {}}, []
    for size in batch_sizes:
        for method, by_size in found.items():
            adapter = subject.statistics(0.0) if method == "statistics" else subject.tent()
            value, why = adapted_accuracy(adapter, images, labels, size, 0.0)
            by_size[size] = value
            if why:
                refused.append({"method": method, "batch_size": size, "prior_strength": 0.0,
                                "error": why})
    return found, refused


def prior_accuracies(subject, images, labels, batch_sizes, priors):
    """Returns `({batch size: {prior: accuracy or None}}, refusals)` for statistics adaptation."""
    found, refused = {}, []
    for size in batch_sizes:
        found[size] = {}
        for prior in priors:
            adapter = subject.statistics(float(prior))
            value, why = adapted_accuracy(adapter, images, labels, size, float(prior))
            found[size][prior] = value
            if why:
                refused.append({"method": "statistics", "batch_size": size,
                                "prior_strength": float(prior), "error": why})
    return found, refused


class Clock:
    """Adds up the seconds spent in each part of the study (`with clock("train"): ...`)."""

    def __init__(self):
        self.seconds = {}
        self._part = None

    def __call__(self, part):
        self._part = part
        return self

    def __enter__(self):
        self._started = time.perf_counter()
        return self

    def __exit__(self, *exc):
        elapsed = time.perf_counter() - self._started
        self.seconds[self._part] = self.seconds.get(self._part, 0.0) + elapsed
        return False
