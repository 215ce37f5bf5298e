"""Moments and the normalize step of `ManualBatchNorm`'s hand-written path.

Every variant of the layer (plain, masked, ghost batches, synchronized
replicas, the closed-form backward) calls these few functions, as Flax's
normalization layers share theirs, rather than repeating the formulas in each
branch; `replica_sum` finds the all-reduce of a distributed run, so that
`moments` can return the statistics of the global batch.
"""

import functools

import keras
from keras import ops

__all__ = ["biased_variance", "count_along", "moments", "normalize", "replica_sum"]


def count_along(x, axes):
    """Returns how many elements of `x` each reduction over `axes` sees, as a Python int if static."""
    count = 1
    shape = ops.shape(x)
    for a in axes:
        count = count * shape[a]
    return count


def moments(x, axes, weights=None, all_reduce=None):
    """Returns the mean, the biased variance, the count and the deviations `x - mean` over `axes`.

    `weights` (0/1, broadcastable to `x`) leaves out the positions where it is 0;
    `all_reduce` (a function summing a tensor over replicas) makes the statistics
    those of the global batch. Both use the same two passes: sums and counts give
    the mean, then summed squared deviations from it give the variance, which keeps
    every digit a one-pass `E[x^2] - E[x]^2` loses when |mean| >> std.

    The statistics keep their reduced dims. The count is a Python number when it
    is static, else a tensor shaped like the statistics. The deviations are
    returned because normalizing needs them too: computing them once saves a
    pass over the full tensor, forward and backward.
    """
    if weights is None and all_reduce is None:
        # Sums over a count, not ops.mean: Keras's mean on PyTorch reduces
        # float64 in float32.
        count = count_along(x, axes)
        n = count if isinstance(count, int) else ops.cast(count, x.dtype)
        mean = ops.sum(x, axis=axes, keepdims=True) / n
        centered = x - mean
        variance = ops.sum(ops.square(centered), axis=axes, keepdims=True) / n
        return mean, variance, count, centered
    reduce = all_reduce or (lambda t: t)
    if weights is None:
        total = ops.sum(x, axis=axes, keepdims=True)
        count = ops.ones_like(total) * ops.cast(count_along(x, axes), x.dtype)
    else:
        weights = ops.broadcast_to(ops.cast(weights, x.dtype), ops.shape(x))
        total = ops.sum(x * weights, axis=axes, keepdims=True)
        count = ops.sum(weights, axis=axes, keepdims=True)
    total, count = reduce(total), reduce(count)
    # A channel with nothing counted would divide by zero; dividing by 1 gives
    # 0 there instead, and the caller replaces those channels.
    safe_count = ops.maximum(count, 1.0)
    mean = total / safe_count
    centered = x - mean
    squares = ops.square(centered)
    if weights is not None:
        squares = squares * weights
    variance = reduce(ops.sum(squares, axis=axes, keepdims=True)) / safe_count
    return mean, variance, count, centered


def replica_sum():
    """Returns a function summing a tensor over the replicas of the current distributed run, or `None`.

    TensorFlow: the replica context of a `tf.distribute` strategy. PyTorch: an
    initialized `torch.distributed` process group (differentiable all-reduce).
    JAX needs none: under `keras.distribution.DataParallel` a batch is one global
    array sharded over the devices, so a plain mean is already the global mean.
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        context = tf.distribute.get_replica_context()
        if context is None or context.num_replicas_in_sync <= 1:
            return None
        return lambda t: context.all_reduce(tf.distribute.ReduceOp.SUM, t)
    if backend == "torch":
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return None
        return _torch_all_reduce_sum()
    return None


@functools.cache
def _torch_all_reduce_sum():
    """Returns a differentiable sum over the processes of the default `torch.distributed` group.

    `torch.distributed.all_reduce` is the supported collective but does not
    record a gradient; the gradient of a sum over replicas is the sum of the
    replicas' gradients, so the backward pass all-reduces too. (torch 2.13
    deprecates `torch.distributed.nn.functional.all_reduce`, which did this.)
    """
    import torch
    import torch.distributed as dist

    class AllReduceSum(torch.autograd.Function):
        @staticmethod
        def forward(ctx, tensor):
            total = tensor.clone()
            dist.all_reduce(total, op=dist.ReduceOp.SUM)
            return total

        @staticmethod
        def backward(ctx, grad):
            total = grad.clone()
            dist.all_reduce(total, op=dist.ReduceOp.SUM)
            return total

    return AllReduceSum.apply


def normalize(centered, variance, gamma, beta, epsilon):
    """Returns `gamma * centered / sqrt(variance + epsilon) + beta`; `gamma`, `beta` may be `None`.

    `centered` is `x - mean`. The per-channel factor `gamma / sqrt(variance +
    epsilon)` is formed first, so the full-size tensor sees one multiply and one
    add. Centering before scaling keeps the digits that `x * inv - mean * inv`
    (the form `tf.nn.batch_normalization` uses) cancels away when |mean| >> std.
    """
    inv = ops.rsqrt(variance + epsilon)
    if gamma is not None:
        inv = inv * gamma
    outputs = centered * inv
    return outputs if beta is None else outputs + beta


def biased_variance(variance, count):
    """Returns a kernel's Bessel-corrected batch `variance` times `(n - 1) / n`, `n = count`.

    The framework kernels return the batch variance with Bessel's correction,
    which Keras does not keep in the moving variance. `count` is a Python int
    or a scalar tensor. For `n = 1` the kernels return 0 (uncorrected), and 0
    it stays; for `n = 0` the mean is NaN and the update leaves the moving
    statistics alone.
    """
    if isinstance(count, int):
        return variance * (max(count - 1, 0) / max(count, 1))
    n = ops.cast(count, variance.dtype)
    return variance * (ops.maximum(n - 1.0, 0.0) / ops.maximum(n, 1.0))

