"""The moving statistics of `ManualBatchNorm`: the one rule that folds a training batch into them.

Every path ends a training step in `update_statistics`: the reference in
`keras.ops`, TensorFlow's kernel, PyTorch's kernel and its closed form. The
rule: which channels' statistics are usable (finite, counted), ghost batches'
mean of statistics, the cumulative average of `momentum=None`, the unbiased
variance, and the extra averages of Batch Renormalization, whose `(r, d)`
correction `renorm_correction` computes from them. Each function takes the
variables it reads and assigns (`Weights`), the statistics and the options
(`Spec`).

The rule is written in a few array primitives, `Ops`: `keras.ops` and
`Variable.assign`. keras_bn/_layer/torch.py hands it the same primitives as
direct torch calls, because PyTorch runs eagerly and there each `keras.ops`
call costs more than its arithmetic at these sizes; for the same reason a
kernel's statistics come in as the kernel left them, mean and variance stacked
in one buffer with Bessel's correction, and the rule takes that form directly.
"""

import keras
from keras import ops

__all__ = ["Ops", "check_count", "renorm_correction", "update_statistics"]


class Ops:
    """The primitives the rule is written in: `keras.ops`, and `Variable.assign`."""

    cast = staticmethod(ops.cast)
    reshape = staticmethod(ops.reshape)
    where = staticmethod(ops.where)
    isfinite = staticmethod(ops.isfinite)
    logical_and = staticmethod(ops.logical_and)
    maximum = staticmethod(ops.maximum)
    all = staticmethod(ops.all)
    sum = staticmethod(ops.sum)
    sqrt = staticmethod(ops.sqrt)
    relu = staticmethod(ops.relu)
    ones_like = staticmethod(ops.ones_like)
    stack = staticmethod(ops.stack)

    @staticmethod
    def assign(variable, value):
        """Assigns `value`, cast to the variable's dtype, to the Keras variable `variable`."""
        variable.assign(ops.cast(value, variable.dtype))

    @staticmethod
    def scale_variance(statistics, factor):
        """Returns the stacked `statistics` with the variance (row 1) times the number `factor`."""
        return ops.stack((statistics[0], statistics[1] * factor))


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


def _variance_factor(count, unbiased_variance, corrected):
    """Returns what takes a batch variance of `count` values to the one the layer keeps.

    `n / (n - 1)` makes a biased variance unbiased (`unbiased_variance`);
    `(n - 1) / n` takes Bessel's correction out of a kernel's (`corrected`).
    For `n = 1` a kernel returns 0, uncorrected, and 0 it stays.
    """
    if unbiased_variance == corrected:
        return 1.0
    if unbiased_variance:
        return count / (count - 1)  # count >= 2, checked
    return max(count - 1, 0) / max(count, 1)


def _usable(statistics, count, unbiased_variance, corrected, xp):
    """Returns `(statistics, usable, variance_usable)`: what the layer keeps, and where each may move.

    The returned `statistics` are the mean and the variance the layer keeps
    (biased, or unbiased with `unbiased_variance`), stacked on a new first
    axis when both may move in the same channels (`usable is
    variance_usable`), else the pair. Usable: a finite mean and variance from
    at least one counted value (two, for the unbiased variance). `count` is a
    Python int (static: one for every channel, at least 2 with the unbiased
    variance, checked), a scalar int tensor (a batch size unknown when traced)
    or a float tensor per channel (masks, replicas).
    """
    if isinstance(count, int):
        factor = _variance_factor(count, unbiased_variance, corrected)
        if isinstance(statistics, tuple):
            mean, variance = statistics
            statistics = xp.stack((mean, variance if factor == 1.0 else variance * factor))
        elif factor != 1.0:
            statistics = xp.scale_variance(statistics, factor)
        usable = xp.all(xp.isfinite(statistics), axis=0)
        return statistics, usable, usable
    if corrected:
        raise ValueError("a Bessel-corrected variance needs a static count: undo it first (`biased_variance`)")
    mean, variance = statistics
    usable = xp.logical_and(xp.isfinite(mean), xp.isfinite(variance))
    if unbiased_variance and keras.backend.backend() == "tensorflow" and len(count.shape) == 0:
        count = _checked_when_run(count)
    # One float tensor shaped like the statistics serves every tensor count.
    count = xp.ones_like(mean) * xp.cast(count, mean.dtype)
    usable = xp.logical_and(usable, count > 0)
    if not unbiased_variance:
        return xp.stack((mean, variance)), usable, usable
    # n / (n - 1) is undefined for n = 1 (a masked channel can count
    # one value): that channel's variance stays where it was.
    variance = variance * (count / xp.maximum(count - 1.0, 1.0))
    return (mean, variance), usable, xp.logical_and(usable, count > 1)


def update_statistics(weights, statistics, count, spec, *, corrected=False, xp=Ops):
    """Folds the batch statistics into the moving averages (the notebook's `tf.assign`s).

    `statistics` are the batch mean and variance, per channel (and per ghost
    batch): a pair `(mean, variance)`, or one tensor with both stacked on a
    new first axis (a kernel's buffer, taken as it is). The variance is
    biased, or carries Bessel's correction with `corrected` (as the kernels
    return it; a Python int `count` only). Only the channels whose statistics
    are usable move; the others keep their moving statistics exactly, so one
    bad batch cannot poison inference. `xp` gives the primitives (`Ops`).
    """
    check_count(count, spec.unbiased_variance)
    if isinstance(count, int) and count == 0:
        return  # an empty batch counts nothing
    statistics, usable, variance_usable = _usable(statistics, count, spec.unbiased_variance, corrected, xp)
    if spec.virtual_batch_size is not None:
        # tf.keras's rule: the moving statistics follow the mean of the
        # ghost batches' statistics; a ghost batch with nothing usable is
        # left out of that mean.
        mean, variance = statistics[0], statistics[1]
        mean, usable = _mean_where(mean, usable, xp)
        variance, variance_usable = _mean_where(variance, variance_usable, xp)
        statistics = (mean, variance)

    momentum = spec.momentum
    if momentum is None:
        # Cumulative average: batch n enters with weight 1/n (PyTorch's
        # rule). One counter serves every channel, so a batch counts only
        # when every channel can use it; otherwise it changes nothing.
        counted = xp.all(xp.logical_and(usable, variance_usable))
        seen = xp.cast(weights.num_batches_tracked, "int32") + xp.cast(counted, "int32")
        xp.assign(weights.num_batches_tracked, seen)
        momentum = 1.0 - 1.0 / xp.cast(xp.maximum(seen, 1), statistics[0].dtype)
        usable = xp.logical_and(usable, counted)
        variance_usable = usable if variance_usable is usable else xp.logical_and(variance_usable, counted)

    if not spec.renorm:
        moving = (weights.moving_mean, weights.moving_variance)
        _assign_averages(moving, statistics, momentum, (usable, variance_usable), xp)
        return
    mean, variance = statistics[0], statistics[1]
    stddev = xp.sqrt(variance + spec.epsilon)
    _assign_averages((weights.renorm_mean,), mean, spec.renorm_momentum, usable, xp)
    _assign_averages((weights.renorm_stddev,), stddev, spec.renorm_momentum, variance_usable, xp)
    new_stddev = _assign_averages((weights.moving_stddev,), stddev, momentum, variance_usable, xp)
    _assign_averages((weights.moving_mean,), mean, momentum, usable, xp)
    # relu: rounding can take stddev^2 a hair below epsilon.
    xp.assign(weights.moving_variance, xp.relu(new_stddev * new_stddev - spec.epsilon))


def _mean_where(values, usable, xp):
    """Returns the mean over axis 0 of `values` where `usable`, and whether any entry was usable."""
    weights = xp.cast(usable, values.dtype)
    total = xp.sum(xp.where(usable, values, 0.0), axis=0)
    n = xp.sum(weights, axis=0)
    return total / xp.maximum(n, 1.0), n > 0


def _assign_averages(variables, values, momentum, usable, xp):
    """Assigns each `variable * momentum + value * (1 - momentum)` where `usable`, else keeps it.

    `variables` share one shape. `values` holds their batch values: a
    tensor stacked on a new first axis (or the one value, for one variable),
    or a tuple of tensors. `usable` is one mask for all of them, or a tuple
    with one per variable. The variables move as one stacked array, one pass
    for all: on PyTorch, which runs eagerly, that is a few launches in all
    rather than a few per variable. Returns the new value of the first one.
    The entries that are not usable (a NaN or Inf in the batch, nothing
    counted) keep the old value exactly.
    """
    shape = tuple(variables[0].shape)
    stacked = (len(variables),) + shape if len(variables) > 1 else shape
    if isinstance(values, tuple):
        values = xp.stack(values)
    rows = isinstance(usable, tuple) and any(mask is not usable[0] for mask in usable)
    if isinstance(usable, tuple):
        usable = xp.stack(usable) if rows else usable[0]
    usable = xp.reshape(usable, stacked if rows else shape)
    if len(variables) == 1:
        current = xp.cast(variables[0], values.dtype)
    else:
        current = xp.stack([xp.cast(variable, values.dtype) for variable in variables])
    # Plain operators, which every backend's tensors take (a one-launch
    # `torch.lerp` would round differently from the reference path).
    new = current * momentum + xp.reshape(values, stacked) * (1.0 - momentum)
    new = xp.where(usable, new, current)
    if len(variables) == 1:
        xp.assign(variables[0], new)
        return new
    for i, variable in enumerate(variables):
        xp.assign(variable, new[i])
    return new[0]
