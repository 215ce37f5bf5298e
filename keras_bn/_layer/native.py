"""`ManualBatchNorm(fused=...)`: the framework's own batch-norm kernel where its maths is the layer's.

The kernels compute what the hand-written path computes (two-pass statistics,
the biased variance in the normalization), with one difference that is undone
here: in training they return the batch variance with Bessel's correction
`n / (n - 1)`, which TensorFlow's and PyTorch's layers put in the moving
variance. Keras keeps the biased variance there, so this module multiplies by
`(n - 1) / n` again (one rounding) before the layer's usual update, which also
applies the unbiased variance when `unbiased_variance=True`.

- TensorFlow: `FusedBatchNormV3` (oneDNN on CPU, cuDNN on GPU), training and
  inference. Any single channel axis of any rank: the input is reshaped, never
  transposed, to 4-D `NHWC` (`(n, 1, 1, C)` for a channel axis that is last) or
  `NCHW` (`(before, C, after, 1)` otherwise). Not in float64, which the kernel
  lacks, nor for `epsilon < 1.001e-5`, which cuDNN refuses. Not in training
  under XLA (`jit_compile=True`): XLA expands the kernel with the one-pass
  variance `E[x^2] - E[x]^2`, which loses every digit when |mean| >> std.
  Without a GPU, `fused=None` trains small inputs on the hand-written path,
  which is the faster there (`CPU_MIN_SAMPLE_VALUES`).
- PyTorch: `torch.nn.functional.batch_norm` (cuDNN on CUDA tensors), training
  and inference, any single channel axis: channel axis 1 as it is, a last
  channel axis of a 4-D or 5-D input as a channels-last view, else a reshape
  to `(before, C, after)`. The batch statistics come back through one fresh
  `(2, C)` buffer updated with momentum 1 (a batch of one value per channel,
  which the kernel refuses, takes the hand-written path).
- JAX has no batch-norm kernel to call: XLA compiles the hand-written ops.

Ghost batches take the kernel with each ghost batch's channels as channels of
their own (a copy in and out). Masks, renorm, several channel axes and
statistics synchronized over more than one replica take the hand-written path
in training (docs/guide/native.md has the table).
"""

import functools
import math

import keras

from keras_bn import _keras_compat

#: The smallest epsilon cuDNN accepts (CUDNN_BN_MIN_EPSILON is 1e-5; TensorFlow
#: raises anything below 1.001e-5 to that): below it the kernels would not
#: compute the layer's formula.
MIN_EPSILON = 1.001e-5

NATIVE_BACKENDS = ("tensorflow", "torch")

#: On a CPU, TensorFlow's kernel costs a fixed 40 to 140 µs a training call (forward
#: and backward; one or two threads, oneDNN on) however small the input, where the
#: hand-written path costs 35 to 45 µs on a tiny input and grows with it: at batch 32,
#: two threads, the kernel lost at 2,352 values per sample and below and won from 3,136
#: (`bench.py --only shapes`, docs/benchmarks.md). With `fused=None`, smaller inputs
#: train on the hand-written path there.
CPU_MIN_SAMPLE_VALUES = 3000


def check_fused(value):
    """Returns `value` if it is `None`, `True` or `False`, else raises a `TypeError`."""
    if value is not None and not isinstance(value, bool):
        raise TypeError(
            "`fused` must be None (the native kernel where the options allow it), "
            f"True (always the native kernel) or False (never). Received: fused={value!r}"
        )
    return value


def configuration_obstacles(layer, training=True):
    """Returns why the configuration of `layer` rules the native kernel out, as phrases.

    In inference only the backend, the axes and `epsilon` matter: renorm, ghost
    batches and masks change nothing there.
    """
    backend = keras.backend.backend()
    reasons = []
    if backend not in NATIVE_BACKENDS:
        reasons.append(f"the {backend} backend (it has no batch-norm kernel; XLA fuses the ops)")
    if isinstance(layer.axis, tuple) and len(layer.axis) > 1:
        reasons.append(f"axis={list(layer.axis)!r} (more than one channel axis)")
    if backend == "tensorflow" and layer.epsilon < MIN_EPSILON:
        reasons.append(f"epsilon={layer.epsilon!r} (cuDNN's kernels need epsilon >= {MIN_EPSILON})")
    if training and layer.renorm:
        reasons.append("renorm=True")
    return reasons


def call_obstacles(layer, x, *, training, mask, all_reduce):
    """Returns why this call of `layer` cannot take the native kernel, as phrases (empty: it can)."""
    reasons = configuration_obstacles(layer, training)
    backend = keras.backend.backend()
    if backend == "tensorflow" and keras.backend.standardize_dtype(x.dtype) == "float64":
        reasons.append("float64 inputs on TensorFlow (FusedBatchNormV3 has no float64 kernel)")
    if training and mask is not None:
        reasons.append("a mask")
    if training and all_reduce is not None:
        reasons.append("synchronized=True across more than one replica")
    if training and backend == "tensorflow" and _keras_compat.tensorflow_in_xla():
        reasons.append(
            "training under XLA (jit_compile=True), which computes the kernel's variance "
            "as E[x^2] - E[x]^2"
        )
    return reasons


def kernel_applies(layer, x, *, training, mask, all_reduce):
    """Returns whether this call of `layer` takes the kernel; raises `fused=True`'s refusal where it cannot."""
    reasons = call_obstacles(layer, x, training=training, mask=mask, all_reduce=all_reduce)
    if reasons and layer.fused:
        raise refusal(reasons)
    if reasons:
        return False
    return layer.fused is True or not (training and _small_on_tensorflow_cpu(x))


def _small_on_tensorflow_cpu(x):
    """Returns whether `x` is too small for TensorFlow's kernel to pay in training, without a GPU.

    Counted per sample (every axis but the first), which a traced step knows even
    when its batch size is unknown.
    """
    if keras.backend.backend() != "tensorflow" or _tensorflow_sees_a_gpu():
        return False
    sample = x.shape[1:]
    return all(d is not None for d in sample) and math.prod(sample) < CPU_MIN_SAMPLE_VALUES


@functools.lru_cache(maxsize=1)
def _tensorflow_sees_a_gpu():
    """Returns whether TensorFlow places work on a GPU by default (asked once: a layer
    call has started TensorFlow's runtime, after which its devices are fixed)."""
    import tensorflow as tf

    return bool(tf.config.list_logical_devices("GPU"))


def refusal(reasons):
    """Returns the `ValueError` for `fused=True` when `reasons` rule the native kernel out."""
    return ValueError(
        "`fused=True` needs the framework's native batch-norm kernel, which this layer "
        f"cannot use with: {'; '.join(reasons)}. Use fused=None to fall back to the "
        "hand-written path where needed (docs/guide/native.md lists the options)."
    )


def biased(variance, count):
    """Returns the kernel's Bessel-corrected batch `variance` times `(n - 1) / n`, `n = count`.

    `count` is a Python int or a scalar tensor. For `n = 1` the kernels return
    0 (uncorrected), and 0 it stays; for `n = 0` the mean is NaN and the layer
    leaves the moving statistics alone.
    """
    if isinstance(count, int):
        return variance * (max(count - 1, 0) / max(count, 1))
    n = keras.ops.cast(count, variance.dtype)
    return variance * (keras.ops.maximum(n - 1.0, 0.0) / keras.ops.maximum(n, 1.0))


def _parameter(layer, variable, default, channels, dtype):
    """Returns `variable` as a (C,) tensor of `dtype`, or `default` (1 or 0) filled when it is absent."""
    if variable is None:
        return keras.ops.full((channels,), default, dtype=dtype)
    return keras.ops.cast(variable, dtype)


def tensorflow_batch_norm(layer, x, training):
    """Returns `(outputs, batch mean, Bessel-corrected batch variance)` from `FusedBatchNormV3`.

    In inference the two statistics are the moving ones. With ghost batches in
    training they have `groups * C` entries, group-major. `x` is float32.
    """
    import tensorflow as tf

    channel = layer._channel_axes_resolved[0]
    channels = int(x.shape[channel])
    scale = _parameter(layer, layer.gamma if layer.scale else None, 1.0, channels, x.dtype)
    offset = _parameter(layer, layer.beta if layer.center else None, 0.0, channels, x.dtype)
    ungroup = None
    if training and layer.virtual_batch_size is not None:
        x, groups, ungroup = _tensorflow_ghost_channels(layer, x, channel)
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
        mean = tf.cast(layer.moving_mean, x.dtype)
        variance = tf.cast(layer.moving_variance, x.dtype)
    outputs, mean, variance = tf.raw_ops.FusedBatchNormV3(
        x=x4, scale=scale, offset=offset, mean=mean, variance=variance,
        epsilon=layer.epsilon, exponential_avg_factor=1.0, data_format=data_format,
        is_training=training,
    )[:3]
    if x4 is not x:
        outputs = tf.reshape(outputs, shape)
        outputs.set_shape(x.shape)
    return (outputs if ungroup is None else ungroup(outputs)), mean, variance


def _tensorflow_ghost_channels(layer, x, channel):
    """Returns `x` with its ghost batches as channels, their number, and the function that undoes it.

    As `_torch_ghost_channels`, in TensorFlow ops: `(groups * v, ..., C, ...)`
    becomes `(v, ..., groups * C, ...)`, group-major, through one transpose. The
    layer's own reshape checks that `v` divides the batch, also when its size
    is known only when the graph runs.
    """
    import tensorflow as tf

    grouped = layer._ghost_batches(x)  # (groups, v, ...)
    rank = len(grouped.shape)
    order = [*range(1, channel + 1), 0, *range(channel + 1, rank)]
    moved = tf.transpose(grouped, order)  # (v, ..., groups, C, ...)
    moved_shape = tf.shape(moved)
    merged = tf.reshape(moved, tf.concat([moved_shape[:channel], [-1], moved_shape[channel + 2:]], 0))
    v, batch = layer.virtual_batch_size, x.shape[0]
    known = [v, *x.shape[1:]]
    known[channel] = None if batch is None else batch // v * x.shape[channel]
    merged.set_shape(known)
    inverse = [order.index(i) for i in range(rank)]

    def undo(y):
        y = tf.transpose(tf.reshape(y, moved_shape), inverse)
        return tf.ensure_shape(tf.reshape(y, tf.shape(x)), x.shape)

    return merged, tf.shape(grouped)[0], undo


def _torch_ghost_channels(x, channel, groups):
    """Returns `x` with its `groups` ghost batches as channels, and the function that undoes it.

    `(groups * v, ..., C, ...)` becomes `(v, ..., groups * C, ...)`, group-major: the
    kernel's channel `g * C + c` is channel `c` of ghost batch `g`. One copy in, one
    out (and their backward): the price of one kernel call for every group.
    """
    grouped = x.reshape(groups, x.shape[0] // groups, *x.shape[1:]).movedim(0, channel)
    merged_shape = (*grouped.shape[:channel], -1, *grouped.shape[channel + 2:])

    def undo(y):
        return y.reshape(grouped.shape).movedim(channel, 0).reshape(x.shape)

    return grouped.reshape(merged_shape), undo


def torch_batch_norm(layer, x, training):
    """Returns `(outputs, statistics)` from `F.batch_norm`.

    In training `statistics` is the `(2, C)` tensor of the batch mean and the
    Bessel-corrected batch variance, which the kernel fills; with ghost batches
    it has `groups * C` columns, group-major. In inference it is `None`. The
    same on every device: the buffer is made on `x`'s device in its dtype.
    """
    import torch
    import torch.nn.functional as F

    channel = layer._channel_axes_resolved[0]
    groups, ungroup = 1, None
    if training and layer.virtual_batch_size is not None:
        groups = x.shape[0] // layer.virtual_batch_size
        x, ungroup = _torch_ghost_channels(x, channel, groups)
    rank = x.dim()
    channels = x.shape[channel]
    if channel == 1:
        view, undo = x, None
    elif channel == rank - 1 and rank in (4, 5):
        # A channels-last view: PyTorch runs its channels-last kernel, no copy.
        view, undo = x.movedim(-1, 1), lambda y: y.movedim(1, -1)
    else:
        before = math.prod(x.shape[:channel])
        view, undo = x.reshape(before, channels, -1), lambda y: y.reshape(x.shape)
    weight = _torch_parameter(layer.gamma if layer.scale else None, x.dtype, groups)
    bias = _torch_parameter(layer.beta if layer.center else None, x.dtype, groups)
    statistics = None
    if training:
        # Momentum 1 makes the buffers the batch mean and unbiased variance:
        # one allocation for both, each of which costs more than the kernel's
        # work on small tensors.
        statistics = torch.zeros(2, channels, dtype=x.dtype, device=x.device)
        mean, variance = statistics
        momentum = 1.0
    else:
        mean = layer.moving_mean.value.to(x.dtype)
        variance = layer.moving_variance.value.to(x.dtype)
        momentum = 0.0
    outputs = F.batch_norm(view, mean, variance, weight, bias, training, momentum, layer.epsilon)
    outputs = outputs if undo is None else undo(outputs)
    return (outputs if ungroup is None else ungroup(outputs)), statistics


def _torch_parameter(variable, dtype, groups):
    """Returns `variable` (gamma or beta) in `dtype`, repeated for `groups` ghost batches, or `None`."""
    if variable is None:
        return None
    value = variable.value.to(dtype)
    return value if groups == 1 else value.repeat(groups)
