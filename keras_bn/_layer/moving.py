"""The moving statistics of `ManualBatchNorm`: folding each training batch into its averages.

The hand-written path and both framework kernels (TensorFlow's through
`_native`, PyTorch's in `_torch_path`) end a training step in
`update_statistics`, so the rules live in one place:
which channels' statistics are usable (finite, counted), ghost batches'
mean of statistics, the cumulative average of `momentum=None`, the unbiased
variance, and the extra averages of Batch Renormalization, whose `(r, d)`
correction `renorm_correction` computes from them. Each function takes the
variables it reads and assigns (`Weights`), the statistics and the options
(`Spec`).
"""

import keras
from keras import ops

from keras_bn._layer.moments import mean_where

__all__ = ["assign_average", "check_count", "renorm_correction", "update_statistics"]


def renorm_correction(weights, mean, variance, shape, spec):
    """Returns Batch Renormalization's `(r, d)`, clipped, without gradient, shaped `shape`."""
    renorm_stddev = ops.reshape(ops.cast(weights.renorm_stddev, mean.dtype), shape)
    renorm_mean = ops.reshape(ops.cast(weights.renorm_mean, mean.dtype), shape)
    # Early in training renorm_stddev can be ~0: keep the ratio finite.
    renorm_stddev = ops.maximum(renorm_stddev, spec.epsilon**0.5)
    r = ops.sqrt(variance + spec.epsilon) / renorm_stddev
    d = (mean - renorm_mean) / renorm_stddev
    clipping = spec.renorm_clipping or {}
    if clipping.get("rmin") is not None:
        r = ops.maximum(r, clipping["rmin"])
    if clipping.get("rmax") is not None:
        r = ops.minimum(r, clipping["rmax"])
    if clipping.get("dmax") is not None:
        d = ops.clip(d, -clipping["dmax"], clipping["dmax"])
    return ops.stop_gradient(r), ops.stop_gradient(d)


def check_count(count, unbiased_variance):
    """Refuses a batch too small for the unbiased variance, when its size is static."""
    if unbiased_variance and isinstance(count, int) and count < 2:
        raise ValueError(
            "`unbiased_variance=True` needs at least 2 values per channel "
            f"in a training batch (n / (n - 1)). Received: {count} value(s) "
            "per channel"
        )


def _checked_when_run(count):
    """Returns the scalar TensorFlow `count`, asserted >= 2 when the graph runs."""
    import tensorflow as tf

    # A scalar tensor count is a batch size unknown when traced (the
    # last batch of a compiled fit): refuse one value per channel when
    # it runs, as every other backend and an eager call do.
    check = tf.debugging.assert_greater_equal(
        count,
        tf.constant(2, count.dtype),
        message="`unbiased_variance=True` needs at least 2 values per "
        "channel in a training batch (n / (n - 1)).",
    )
    with tf.control_dependencies([check]):  # no update before the check
        return tf.identity(count)


def update_statistics(weights, mean, variance, count, spec):
    """Folds the batch statistics into the moving averages (the notebook's `tf.assign`s).

    `mean`, `variance` and `count` are per channel (and per ghost batch).
    Only the channels whose statistics are usable move: a finite mean and
    variance from at least one counted value (two, for the unbiased
    variance); the others keep their moving statistics exactly.
    """
    check_count(count, spec.unbiased_variance)
    if (
        spec.unbiased_variance
        and keras.backend.backend() == "tensorflow"
        and not isinstance(count, int)
        and len(count.shape) == 0
    ):
        count = _checked_when_run(count)
    # The count is a Python int, a scalar int tensor (a batch size unknown
    # when traced) or a float tensor per channel (masks, replicas): one
    # float tensor shaped like the statistics serves every case.
    count = ops.ones_like(mean) * ops.cast(count, mean.dtype)
    usable = ops.logical_and(
        ops.logical_and(ops.isfinite(mean), ops.isfinite(variance)), count > 0
    )
    if spec.unbiased_variance:
        # n / (n - 1) is undefined for n = 1 (a masked channel can count
        # one value): that channel's variance stays where it was.
        variance = variance * (count / ops.maximum(count - 1.0, 1.0))
    variance_usable = ops.logical_and(usable, count > 1) if spec.unbiased_variance else usable
    if spec.virtual_batch_size is not None:
        # tf.keras's rule: the moving statistics follow the mean of the
        # ghost batches' statistics; a ghost batch with nothing usable is
        # left out of that mean.
        mean, usable = mean_where(mean, usable)
        variance, variance_usable = mean_where(variance, variance_usable)

    momentum = spec.momentum
    if momentum is None:
        # Cumulative average: batch n enters with weight 1/n (PyTorch's
        # rule). One counter serves every channel, so a batch counts only
        # when every channel can use it; otherwise it changes nothing.
        counted = ops.all(ops.logical_and(usable, variance_usable))
        seen = weights.num_batches_tracked + ops.cast(counted, "int32")
        weights.num_batches_tracked.assign(seen)
        momentum = 1.0 - 1.0 / ops.cast(ops.maximum(seen, 1), mean.dtype)
        usable = variance_usable = ops.logical_and(usable, counted)

    assign_average(weights.moving_mean, mean, momentum, usable)
    if not spec.renorm:
        assign_average(weights.moving_variance, variance, momentum, variance_usable)
        return
    stddev = ops.sqrt(variance + spec.epsilon)
    assign_average(weights.renorm_mean, mean, spec.renorm_momentum, usable)
    assign_average(weights.renorm_stddev, stddev, spec.renorm_momentum, variance_usable)
    new_stddev = assign_average(weights.moving_stddev, stddev, momentum, variance_usable)
    # relu: rounding can take stddev^2 a hair below epsilon.
    weights.moving_variance.assign(ops.relu(new_stddev * new_stddev - spec.epsilon))


def assign_average(variable, batch_value, momentum, usable):
    """Assigns `variable * momentum + batch_value * (1 - momentum)` where `usable`, else keeps it.

    Returns the new value. The entries that are not usable (a NaN or Inf
    in the batch, nothing counted) keep the old value exactly, so one bad
    batch cannot poison inference.
    """
    current = ops.cast(variable, batch_value.dtype)
    batch_value = ops.reshape(batch_value, variable.shape)
    usable = ops.reshape(usable, variable.shape)
    new = current * momentum + batch_value * (1.0 - momentum)
    new = ops.where(usable, new, current)
    variable.assign(ops.cast(new, variable.dtype))
    return new
