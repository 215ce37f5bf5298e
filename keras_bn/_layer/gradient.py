"""The backward pass of batch normalization in closed form (Ioffe and Szegedy, 2015, Section 3).

`ManualBatchNorm` computes its batch statistics without recording a gradient
and hands the normalize step to `normalize`, whose gradient is the paper's
formula instead of the autodiff of every reduction. With
`x_hat = (x - mean) / sqrt(var + epsilon)`, `y = gamma * x_hat + beta`, `m`
values per channel and `dy` the upstream gradient:

    d_beta  = sum(dy)
    d_gamma = sum(dy * x_hat)
    d_x     = gamma / sqrt(var + epsilon) * (dy - (d_beta + x_hat * d_gamma) / m)

Sums run over the reduced axes. A mask gives each position a weight `w` (0 or
1) in the statistics, and then `d_x = gamma / sqrt(var + epsilon) * (dy - w *
(d_beta + x_hat * d_gamma) / m)` with `m = sum(w)`; ghost batches keep one set
of sums per group; synchronized statistics sum `d_beta` and `d_gamma` over the
replicas before forming `d_x` (the parameters' own gradients stay local, as
autodiff gives them). docs/guide/backward.md derives it.

Which backward a backend uses is the measured faster one (docs/benchmarks.md);
`use_hand_written` switches it, for the tests that compare both and for the
benchmarks.
"""

import contextlib

import keras
from keras import ops

#: Per backend, whether `ManualBatchNorm` uses the closed-form backward by default.
#: Measured side by side on the notebook's network (benchmarks/bench.py).
DEFAULT = {"tensorflow": True, "jax": False, "torch": True}

_override = []


def hand_written():
    """Returns whether `ManualBatchNorm` uses the closed-form backward on the current backend."""
    if _override:
        return _override[-1]
    return DEFAULT.get(keras.backend.backend(), False)


@contextlib.contextmanager
def use_hand_written(enabled):
    """Within the block, `ManualBatchNorm` uses the closed-form backward if `enabled`, else autodiff.

    Layers read the switch when they are called, so a model traced inside the
    block (a `tf.function`, a jitted JAX step) keeps the choice it was traced with.
    """
    _override.append(bool(enabled))
    try:
        yield
    finally:
        _override.pop()


def _sum_to(values, shape):
    """Sums `values` (shaped like the statistics) down to `shape`, the shape of `gamma` or `beta`."""
    extra = len(values.shape) - len(shape)
    if extra:
        values = ops.sum(values, axis=tuple(range(extra)))
    axes = tuple(
        i for i, (n, target) in enumerate(zip(values.shape, shape)) if target == 1 and n != 1
    )
    if axes:
        values = ops.sum(values, axis=axes, keepdims=True)
    return ops.reshape(values, shape)


def _backward_is_recorded():
    """Returns whether the backward pass may itself be differentiated.

    PyTorch says so: grad mode is on in a backward pass only under
    `create_graph=True`. TensorFlow and JAX do not tell a custom gradient
    whether an outer tape or transformation watches it, so there the answer
    is always yes.
    """
    if keras.backend.backend() == "torch":
        import torch

        return torch.is_grad_enabled()
    return True


def normalize(
    x, centered, variance, gamma, beta, epsilon, *, axes, count, weights=None, all_reduce=None,
    recompute=None,
):
    """Returns `gamma * centered / sqrt(variance + epsilon) + beta` with the closed-form gradient.

    Args:
        x: The input, the tensor the gradient flows back to. Its value is not
            read: `centered` must be `x - mean` with the statistics computed
            from `x` without a gradient (`ops.stop_gradient`).
        centered: `x - mean`, without gradient.
        variance: The biased batch variance, without gradient, with the
            reduced dims kept.
        gamma: The scale, broadcastable to `x`, or `None`.
        beta: The offset, broadcastable to `x`, or `None`.
        epsilon: The float added to the variance.
        axes: The reduced axes, one set of statistics per position along the
            others.
        count: How many values each statistic saw: a Python number, or a
            tensor shaped like `variance` (masks, replicas).
        weights: 0/1 weights broadcastable to `x` (a mask), or `None`.
        all_reduce: A function summing a tensor over the replicas when the
            statistics are synchronized, or `None`.
        recompute: A function of `x` returning `(variance, centered)` with
            recorded gradients, or `None`. When the backward pass may itself
            be differentiated (a gradient penalty, a Hessian-vector product),
            it runs on these instead of the gradient-free statistics, so the
            second derivatives see how the statistics depend on `x`.

    Returns:
        The normalized tensor, shaped like `x`.
    """
    inv = ops.rsqrt(variance + epsilon)
    # An empty batch or a channel with nothing counted (all weights 0) gives
    # its statistics no gradient; dividing by 1 there keeps the factor finite.
    if isinstance(count, (int, float)):
        inv_count = 1.0 / max(count, 1)
    else:
        inv_count = 1.0 / ops.maximum(ops.cast(count, x.dtype), 1.0)
    parameters = [p for p in (gamma, beta) if p is not None]

    def forward(x, *parameters):
        """The normalize step and its backward, in the form every backend's `custom_gradient` takes."""
        gamma_, beta_ = _split(parameters, gamma, beta)
        factor = inv if gamma_ is None else inv * gamma_
        outputs = centered * factor
        if beta_ is not None:
            outputs = outputs + beta_

        def backward(*args, upstream=None):
            # TensorFlow and JAX call `backward(upstream)`; Keras's torch
            # backend calls `backward(*inputs, upstream=upstream)`.
            dy = args[0] if upstream is None else upstream
            centered_, inv_, factor_ = centered, inv, factor
            if recompute is not None and _backward_is_recorded():
                variance_, centered_ = recompute(x)
                inv_ = ops.rsqrt(variance_ + epsilon)
                factor_ = inv_ if gamma_ is None else inv_ * gamma_
            return _backward(dy, centered_, inv_, factor_, gamma_, beta_)

        def _backward(dy, centered, inv, factor, gamma_, beta_):
            sum_dy = ops.sum(dy, axis=axes, keepdims=True)
            # sum(dy * x_hat), with x_hat = centered * inv formed per channel.
            sum_dy_xhat = ops.sum(dy * centered, axis=axes, keepdims=True) * inv
            grads = []
            if gamma_ is not None:
                grads.append(_sum_to(sum_dy_xhat, gamma_.shape))
            if beta_ is not None:
                grads.append(_sum_to(sum_dy, beta_.shape))
            if all_reduce is not None:
                sum_dy, sum_dy_xhat = all_reduce(sum_dy), all_reduce(sum_dy_xhat)
            step = factor * inv_count
            if weights is None:
                # d_x = factor * dy - step * sum_dy - step * inv * sum_dy_xhat * centered,
                # with every per-channel factor formed before the full-size ops.
                dx = factor * dy - (step * inv * sum_dy_xhat) * centered - step * sum_dy
            else:
                dx = factor * dy - (step * weights) * (sum_dy + (inv * sum_dy_xhat) * centered)
            return (dx, *grads)

        return outputs, backward

    return ops.custom_gradient(forward)(x, *parameters)


def _split(parameters, gamma, beta):
    """Returns `(gamma, beta)` from the positional `parameters`, `None` for those absent."""
    parameters = list(parameters)
    gamma_ = parameters.pop(0) if gamma is not None else None
    beta_ = parameters.pop(0) if beta is not None else None
    return gamma_, beta_
