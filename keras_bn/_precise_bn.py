"""The PreciseBN estimate: each batch norm's moving statistics from the statistics of many batches.

`collect` runs the training-mode passes of `keras_bn._batch_statistics` with
the chosen batch norms in training mode (frozen ones included, when asked)
and sums their batch statistics; `assign_estimate` turns the sums into the
moving mean and variance that `recalibrate_batch_norm` documents.
"""

import contextlib
import itertools

import numpy as np

from keras_bn import _batch_statistics as passes
from keras_bn import _graph


def select_layers(model, layers, include_frozen):
    """Returns the batch norms of `layers` to recalibrate: the trainable ones, or all with `include_frozen`."""
    if not include_frozen:
        layers = [layer for layer in layers if layer.trainable]
    if not layers:
        hint = "" if include_frozen else (
            "; frozen layers are left alone unless include_frozen=True"
        )
        kind = "batch-norm" if include_frozen else "trainable batch-norm"
        raise ValueError(
            f"`model` has no {kind} layer (keras.layers.BatchNormalization or "
            f"keras_bn.ManualBatchNorm) to recalibrate{hint}. Received: model {model.name!r}"
        )
    if not all(layer.built for layer in layers):
        raise ValueError(
            "`model` must be built (called once, or created with keras.Input) before "
            f"its batch norms can be recalibrated. Received: model {model.name!r}"
        )
    return layers


@contextlib.contextmanager
def _in_training_mode(layers):
    """Sets each layer trainable with momentum 0 inside the block; puts both back on exit."""
    saved = [(layer, layer.trainable, layer.momentum) for layer in layers]
    try:
        for layer in layers:
            if not layer.trainable:
                # Only a trainable batch norm uses batch statistics in training mode.
                layer.trainable = True
            layer.momentum = 0.0
        yield
    finally:
        for layer, trainable, momentum in saved:
            layer.momentum = momentum
            if layer.trainable != trainable:
                layer.trainable = trainable


def _sums(statistics_of, data, batch_size, steps):
    """Returns the per-layer sums of batch means, variances and squared means, and the count."""
    totals, count = None, 0
    # islice stops before drawing a batch too many from an iterator.
    for x in itertools.islice(passes.batches(data, batch_size), steps):
        statistics = statistics_of(x)
        if totals is None:
            totals = [[np.zeros_like(m)] * 3 for m, _ in statistics]
        for total, (mean, variance) in zip(totals, statistics):
            total[0] = total[0] + mean
            total[1] = total[1] + variance
            total[2] = total[2] + mean * mean
        count += 1
    return totals, count


def never_called(means, variances, count):
    """Returns whether the passes never called the layer whose sums these are.

    Each pass resets the moving statistics to 0 and 1 before the call; a
    layer that is never called (RetinaNet's feature pyramid makes batch norms
    for levels it does not compute) leaves exactly those, where a called one
    leaves its batch statistics.
    """
    return bool(np.all(means == 0.0) and np.all(variances == count))


def assign_estimate(layer, means, variances, squares, count, estimator):
    """Assigns the averaged statistics of `count` batches to `layer`'s moving statistics."""
    mean = means / count
    variance = variances / count
    if estimator == "population":
        # Law of total variance: the variance of all values is the mean of the
        # batch variances plus the variance of the batch means. The clamp
        # removes the rounding of `E[m^2] - E[m]^2` when the means agree.
        variance = variance + np.maximum(squares / count - mean * mean, 0.0)
    # In each variable's own dtype: a float64 model keeps float64 statistics.
    layer.moving_mean.assign(mean.astype(layer.moving_mean.dtype))
    layer.moving_variance.assign(variance.astype(layer.moving_variance.dtype))
    variables = passes.variables_by_name(layer)
    if "moving_stddev" in variables:
        # Renorm keeps the standard deviation; its moving_variance is stddev^2 - eps.
        stddev = variables["moving_stddev"]
        stddev.assign(np.sqrt(variance + layer.epsilon).astype(stddev.dtype))
    if "num_batches_tracked" in variables:
        # ManualBatchNorm(momentum=None): a cumulative average over `count` batches.
        variables["num_batches_tracked"].assign(count)


def collect(model, layers, data, batch_size, steps, dropout):
    """Runs the passes with `model`'s state saved and put back; returns the sums and count."""
    held = _graph.layers_of(model, passes.DROPOUT_LAYERS) if dropout == "inference" else []
    with passes.saved_state(model), _in_training_mode(layers), passes.training_passes(held):
        saved = [
            (layer, dict(zip(passes.variables_by_name(layer),
                             passes.snapshot(passes.variables_by_name(layer).values()))))
            for layer in layers
        ]
        statistics_of = passes.batch_statistics(
            model, saved, (dropout, tuple(id(layer) for layer in layers))
        )
        return _sums(statistics_of, data, batch_size, steps)
