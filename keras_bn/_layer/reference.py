"""`ManualBatchNorm`'s reference path: the formulas in `keras.ops`, every backend, every option.

Inference normalizes with the moving statistics; training with the batch
statistics (`moments.moments`, masks and ghost batches laid out by `layout`),
then folds them into the moving averages (`moving.update_statistics`). The
gradient is autodiff's, or the paper's closed form (Ioffe and Szegedy, 2015,
Section 3), which `paths.hand_written` chooses per backend. For the closed
form the statistics are computed without recording a gradient and the
normalize step gets `closed_form_normalize`, whose gradient is the paper's
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
"""

import keras
from keras import ops

from keras_bn._layer import layout, moving
from keras_bn._layer.moments import moments, normalize

__all__ = ["closed_form_normalize", "inference", "per_channel", "training"]


def per_channel(value, dtype, shape):
    """Returns a per-channel weight in `dtype`, shaped `shape` to broadcast against the input."""
    value = ops.cast(value, dtype)
    if shape[-1] == value.shape[-1] and len(value.shape) == 1:
        return value  # channels last: a (C,) vector already broadcasts
    return ops.reshape(value, shape)


def _parameters(weights, dtype, shape):
    """Returns `(gamma, beta)` in `dtype` shaped `shape`, `None` for those absent."""
    gamma = None if weights.gamma is None else per_channel(weights.gamma, dtype, shape)
    beta = None if weights.beta is None else per_channel(weights.beta, dtype, shape)
    return gamma, beta


def inference(x, weights, spec):
    """Returns `x` normalized with the moving statistics."""
    dtype, shape = keras.backend.standardize_dtype(x.dtype), spec.layout.broadcast_shape
    gamma, beta = _parameters(weights, dtype, shape)
    centered = x - per_channel(weights.moving_mean, dtype, shape)
    variance = per_channel(weights.moving_variance, dtype, shape)
    return normalize(centered, variance, gamma, beta, spec.epsilon)


def training(x, weights, spec, *, mask, all_reduce, closed_form):
    """Returns `x` normalized with its batch statistics, and updates the moving ones.

    `mask` is the call's mask or `None`, `all_reduce` sums over replicas or is
    `None`, `closed_form` chooses the closed-form backward over autodiff.
    """
    dtype = keras.backend.standardize_dtype(x.dtype)
    gamma, beta = _parameters(weights, dtype, spec.layout.broadcast_shape)
    counted, keras_mask = (None, False) if mask is None else layout.mask_weights(mask, x, spec.layout)
    if spec.momentum is None or spec.unbiased_variance or spec.virtual_batch_size is not None:
        keras_mask = False  # options Keras's layer lacks: a channel left empty keeps keras-bn's rule
    shape, axes, original_shape = spec.layout.broadcast_shape, spec.layout.reduction_axes, ops.shape(x)
    v = spec.virtual_batch_size
    if v is not None:
        x = layout.ghost_batches(x, v)
        if counted is not None:
            counted = layout.ghost_batches(ops.broadcast_to(counted, original_shape), v)
        # A new leading axis counts the groups; it is kept, not reduced.
        shape = (1,) + shape
        axes = tuple(a + 1 for a in axes)
        gamma = None if gamma is None else ops.reshape(gamma, shape)
        beta = None if beta is None else ops.reshape(beta, shape)

    def statistics(source):
        return _statistics(
            source, axes=axes, counted=counted, all_reduce=all_reduce, keras_mask=keras_mask,
            weights=weights, dtype=dtype, shape=shape,
        )

    # With the closed-form backward the statistics record no gradient: the
    # normalize step's own gradient accounts for them.
    mean, variance, count, centered = statistics(ops.stop_gradient(x) if closed_form else x)
    if spec.renorm:
        r, d = moving.renorm_correction(weights, mean, variance, shape, spec)
        # (x_hat * r + d) * gamma + beta == x_hat * (r * gamma) + (d * gamma + beta)
        offset = d if gamma is None else d * gamma
        beta = offset if beta is None else offset + beta
        gamma = r if gamma is None else r * gamma
    if closed_form:
        outputs = closed_form_normalize(
            x, centered, variance, gamma, beta, spec.epsilon,
            axes=axes, count=count, weights=counted, all_reduce=all_reduce,
            recompute=lambda source: statistics(source)[1::2],
        )
    else:
        outputs = normalize(centered, variance, gamma, beta, spec.epsilon)
    if v is not None:
        outputs = ops.reshape(outputs, original_shape)
    moving.update_statistics(weights, (mean, variance), count, spec)
    return outputs


def _statistics(source, *, axes, counted, all_reduce, keras_mask, weights, dtype, shape):
    """Returns the batch mean, biased variance, count and deviations of `source` (`moments.moments`).

    `counted` is the mask's 0/1 weights or `None`, `keras_mask` whether it was
    read as Keras reads it (a bool, or a boolean tensor decided when a graph runs).
    """
    mean, variance, count, centered = moments(source, axes, counted, all_reduce)
    if counted is not None and keras_mask is not True:
        # A channel with no unmasked position has no batch statistics:
        # use the moving ones, which also leaves them unchanged below.
        # A mask read as Keras reads it gives Keras's numbers there:
        # a mean and a variance of 0 (`moments` divides 0 by 1), which
        # the moving averages take in.
        seen = ops.logical_or(count > 0, keras_mask)
        mean = ops.where(seen, mean, per_channel(weights.moving_mean, dtype, shape))
        variance = ops.where(seen, variance, per_channel(weights.moving_variance, dtype, shape))
        centered = source - mean
    if counted is not None and keras_mask is not False:
        count = ops.where(ops.logical_and(count == 0, keras_mask), ops.ones_like(count), count)
    return mean, variance, count, centered


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


def closed_form_normalize(
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
