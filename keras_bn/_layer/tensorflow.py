"""`ManualBatchNorm` on TensorFlow's own kernel, `FusedBatchNormV3` (oneDNN on CPU, cuDNN on GPU).

Training and inference, any single channel axis of any rank: the input is
reshaped, never transposed, to 4-D `NHWC` (`(n, 1, 1, C)` for a channel axis
that is last) or `NCHW` (`(before, C, after, 1)` otherwise). Ghost batches
take the kernel with each ghost batch's channels as channels of their own.
The backward is the kernel's own (`FusedBatchNormGradV3`, differentiable again).

In training the kernel returns the batch variance with Bessel's correction
`n / (n - 1)`, which TensorFlow's layers put in the moving variance. Keras
keeps the biased variance there, so `training` multiplies by `(n - 1) / n`
again (one rounding) before the moving-average update every path shares
(`moving.update_statistics`), which also applies the unbiased variance when
`unbiased_variance=True`. keras_bn/_layer/paths.py decides when this module runs.
"""

import tensorflow as tf
from keras import ops

from keras_bn._layer import layout, moving
from keras_bn._layer.moments import biased_variance, count_along

__all__ = ["batch_norm", "inference", "training"]


def inference(x, weights, spec):
    """Returns `x` (float32) normalized with the moving statistics by the kernel."""
    return batch_norm(
        x, *_parameters(x, weights, spec), weights.moving_mean, weights.moving_variance,
        channel=spec.layout.channel_axes[0], epsilon=spec.epsilon, training=False,
    )[0]


def training(x, weights, spec):
    """Returns `x` (float32) normalized with its batch statistics by the kernel; updates the moving ones."""
    count = count_along(x, spec.layout.reduction_axes)
    moving.check_count(count, spec.unbiased_variance)
    outputs, mean, variance = batch_norm(
        x, *_parameters(x, weights, spec), None, None,
        channel=spec.layout.channel_axes[0], epsilon=spec.epsilon, training=True,
        virtual_batch_size=spec.virtual_batch_size,
    )
    if spec.virtual_batch_size is not None:
        # The statistics of each ghost batch, group-major. Their number comes from
        # the kernel's output, which a traced graph computes only after the layer's
        # check that v divides the batch (from the input, a batch smaller than v
        # would divide by zero first).
        mean, variance = (ops.reshape(s, (-1, spec.layout.channels)) for s in (mean, variance))
        count = count // ops.shape(mean)[0]
    moving.update_statistics(weights, (mean, biased_variance(variance, count)), count, spec)
    return outputs


def _parameters(x, weights, spec):
    """Returns `(scale, offset)` as `(C,)` tensors of `x`'s dtype: 1 and 0 filled where absent."""
    channels = int(x.shape[spec.layout.channel_axes[0]])
    return tuple(
        ops.full((channels,), default, dtype=x.dtype) if variable is None else ops.cast(variable, x.dtype)
        for variable, default in ((weights.gamma, 1.0), (weights.beta, 0.0))
    )


def batch_norm(x, scale, offset, mean, variance, *, channel, epsilon, training, virtual_batch_size=None):
    """Returns `(outputs, batch mean, Bessel-corrected batch variance)` from `FusedBatchNormV3`.

    In inference `mean` and `variance` are the moving statistics, which come
    back as the two statistics. With ghost batches in training these have
    `groups * C` entries, group-major. `x` is float32.
    """
    ungroup = None
    if training and virtual_batch_size is not None:
        x, groups, ungroup = _ghost_channels(x, channel, virtual_batch_size)
        scale, offset = tf.tile(scale, [groups]), tf.tile(offset, [groups])
    rank = len(x.shape)
    shape = tf.shape(x)
    if rank == 4 and channel in (1, 3):
        x4, data_format = x, "NCHW" if channel == 1 else "NHWC"
    elif channel == rank - 1:
        x4, data_format = tf.reshape(x, tf.stack([-1, 1, 1, shape[channel]])), "NHWC"
    else:
        before = tf.reduce_prod(shape[:channel])
        after = tf.reduce_prod(shape[channel + 1:])
        x4, data_format = tf.reshape(x, tf.stack([before, shape[channel], after, 1])), "NCHW"
    if training:
        mean = variance = tf.constant([], x.dtype)
    else:
        mean, variance = tf.cast(mean, x.dtype), tf.cast(variance, x.dtype)
    outputs, mean, variance = tf.raw_ops.FusedBatchNormV3(
        x=x4, scale=scale, offset=offset, mean=mean, variance=variance,
        epsilon=epsilon, exponential_avg_factor=1.0, data_format=data_format,
        is_training=training,
    )[:3]
    if x4 is not x:
        outputs = tf.reshape(outputs, shape)
        outputs.set_shape(x.shape)
    return (outputs if ungroup is None else ungroup(outputs)), mean, variance


def _ghost_channels(x, channel, v):
    """Returns `x` with its ghost batches as channels, their number, and the function that undoes it.

    `(groups * v, ..., C, ...)` becomes `(v, ..., groups * C, ...)`, group-major
    (the kernel's channel `g * C + c` is channel `c` of ghost batch `g`), through
    one transpose. The reshape into ghost batches checks that `v` divides the
    batch, also when its size is known only when the graph runs.
    """
    grouped = layout.ghost_batches(x, v)  # (groups, v, ...)
    rank = len(grouped.shape)
    order = [*range(1, channel + 1), 0, *range(channel + 1, rank)]
    moved = tf.transpose(grouped, order)  # (v, ..., groups, C, ...)
    moved_shape = tf.shape(moved)
    merged = tf.reshape(moved, tf.concat([moved_shape[:channel], [-1], moved_shape[channel + 2:]], 0))
    batch = x.shape[0]
    known = [v, *x.shape[1:]]
    known[channel] = None if batch is None else batch // v * x.shape[channel]
    merged.set_shape(known)
    inverse = [order.index(i) for i in range(rank)]

    def undo(y):
        y = tf.transpose(tf.reshape(y, moved_shape), inverse)
        return tf.ensure_shape(tf.reshape(y, tf.shape(x)), x.shape)

    return merged, tf.shape(grouped)[0], undo
