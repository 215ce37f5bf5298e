"""`ManualBatchNorm`'s plain case on PyTorch, written in direct torch calls.

The PyTorch backend runs eagerly: every `keras.ops` call is a Python function
that converts and checks its arguments before PyTorch launches a kernel, and
PyTorch's autograd then records every one of them. On the notebook's network
that made batch norm cost three times what `nn.BatchNorm2d` costs in plain
PyTorch (docs/benchmarks.md). Here the same formulas run as a few torch calls:

- the batch mean, then the biased variance as the mean of squared deviations
  from it (two passes, like `_moments`: no `E[x^2] - E[x]^2` cancellation).
  Not `torch.var_mean`: on CPU its Welford loop ran 10 to 15 times slower than
  these two passes on the network's channels-first shapes;
- `x_hat * gamma + beta` with `x_hat = (x - mean) / sqrt(var + epsilon)`,
  centered first as in `_normalize`;
- in training, the paper's closed-form backward (keras_bn/_gradient.py) as a
  `torch.autograd.Function`: five passes over the data instead of autograd's
  dozen. Asked for a gradient of the gradient, it recomputes `x_hat` from `x`
  with recorded ops, so higher derivatives stay exact;
- the moving averages `moving * momentum + batch * (1 - momentum)` without
  recording a gradient, a channel with a NaN or Inf statistic left unchanged.

With `fused=None` or `True` the plain case runs PyTorch's own kernel instead
(`native_training`, keras_bn/_native.py), which shares the moving-average
update; this hand-written path is `fused=False` and the fallback.

Only the plain case comes here: no mask, no ghost batches, no renorm, a fixed
momentum, no active process group, closed-form backward chosen. Everything else
runs the general code, and the tests hold both to the same NumPy references
and to autodiff.
"""

import torch

from keras_bn import _native


def applies(layer, mask, all_reduce):
    """Returns whether a training call of `layer` can take this path."""
    return (
        mask is None
        and all_reduce is None
        and layer.virtual_batch_size is None
        and not layer.renorm
        and layer.momentum is not None
    )


def _per_channel(layer, variable, dtype):
    """Returns the (C,) `variable` as a tensor of `dtype` shaped to broadcast against the input."""
    return variable.value.to(dtype).reshape(layer._broadcast_shape)


def _parameters(layer, dtype):
    """Returns `(gamma, beta)` shaped to broadcast against the input, `None` for those absent."""
    gamma = _per_channel(layer, layer.gamma, dtype) if layer.scale else None
    beta = _per_channel(layer, layer.beta, dtype) if layer.center else None
    return gamma, beta


def _statistics(x, axes, epsilon):
    """Returns the batch mean, the biased variance, `1 / sqrt(variance + epsilon)` and `x - mean`."""
    mean = torch.mean(x, dim=axes, keepdim=True)
    centered = x - mean
    variance = torch.mean(centered * centered, dim=axes, keepdim=True)
    return mean, variance, torch.rsqrt(variance + epsilon), centered


def _normalize(centered, inv, gamma, beta):
    """Returns `centered * inv * gamma + beta` as a new tensor; `gamma`, `beta` may be `None`.

    The per-channel factor `inv * gamma` is formed first, so the full-size
    tensor sees one multiply and one add, as in `batch_norm._normalize`.
    """
    outputs = centered * (inv if gamma is None else inv * gamma)
    return outputs if beta is None else outputs.add_(beta)


class _BatchNorm(torch.autograd.Function):
    """Batch normalization with batch statistics, and its closed-form backward.

    Returns the outputs and, without gradient, the batch mean and variance.
    `gamma` and `beta` come shaped to broadcast against `x`, or `None`.
    """

    @staticmethod
    def forward(ctx, x, gamma, beta, axes, epsilon):
        mean, variance, inv, centered = _statistics(x, axes, epsilon)
        ctx.save_for_backward(x, gamma, inv, centered)
        ctx.axes, ctx.epsilon = axes, epsilon
        ctx.mark_non_differentiable(mean, variance)
        return _normalize(centered, inv, gamma, beta), mean, variance

    @staticmethod
    def backward(ctx, dy, _mean_grad, _variance_grad):
        x, gamma, inv, centered = ctx.saved_tensors
        axes = ctx.axes
        if torch.is_grad_enabled():
            # A gradient of this gradient is wanted (`create_graph=True`):
            # inv and centered must depend on x in the recorded graph.
            _, _, inv, centered = _statistics(x, axes, ctx.epsilon)
        count = max(centered.numel() // max(inv.numel(), 1), 1)
        sum_dy = dy.sum(dim=axes, keepdim=True)
        sum_dy_xhat = (dy * centered).sum(dim=axes, keepdim=True) * inv
        # d_x = k * (dy - (sum_dy + x_hat * sum_dy_xhat) / m) with k = gamma * inv
        # and x_hat = centered * inv: the per-channel factors are formed first.
        k = inv if gamma is None else inv * gamma
        step = k / count
        dx = (dy * k).sub_(step * sum_dy)
        dx.addcmul_(centered, step * inv * sum_dy_xhat, value=-1.0)
        needs = ctx.needs_input_grad
        d_gamma = sum_dy_xhat if gamma is not None and needs[1] else None
        d_beta = sum_dy if needs[2] else None
        return dx, d_gamma, d_beta, None, None


def inference(layer, x):
    """Returns `x` normalized with the moving statistics."""
    centered = x - _per_channel(layer, layer.moving_mean, x.dtype)
    inv = torch.rsqrt(_per_channel(layer, layer.moving_variance, x.dtype) + layer.epsilon)
    return _normalize(centered, inv, *_parameters(layer, x.dtype))


def training(layer, x, count):
    """Returns `x` normalized with its batch statistics, and updates the moving ones.

    `count` is how many values each channel's statistics see (a Python int).
    """
    gamma, beta = _parameters(layer, x.dtype)
    outputs, mean, variance = _BatchNorm.apply(x, gamma, beta, layer._reduction_axes, layer.epsilon)
    _update(layer, mean, variance, count)
    return outputs


def native_training(layer, x, count):
    """Returns `x` normalized by PyTorch's own kernel (`_native`), and updates the moving statistics.

    `count` (a Python int) is how many values each channel's statistics see in
    the whole batch, at least 2 per ghost batch: the kernel's unbiased batch variance is made biased again
    before the update, which keeps Keras's convention.
    """
    outputs, mean, variance = _native.torch_batch_norm(layer, x, training=True)
    groups = mean.numel() // layer.moving_mean.value.numel()  # ghost batches
    count //= groups
    variance = _native.biased(variance, count)
    if layer.momentum is None or groups > 1:
        # The general update: the cumulative average, the mean over ghost batches.
        shape = (groups, -1) if groups > 1 else (-1,)
        layer._update_statistics(mean.reshape(shape), variance.reshape(shape), count)
    else:
        _update(layer, mean, variance, count)
    return outputs


def _update(layer, mean, variance, count):
    """Folds the batch `mean` and biased `variance` into the moving averages, without gradient.

    A channel with a NaN or Inf statistic keeps its moving statistics exactly.
    """
    with torch.no_grad():
        if layer.unbiased_variance:
            variance = variance * (count / max(count - 1, 1))
        # Both statistics in one (2, C) tensor: half the small ops, each of
        # which costs more to launch than to compute at these sizes.
        batch = torch.stack([mean.reshape(-1), variance.reshape(-1)])
        moving = (layer.moving_mean.value, layer.moving_variance.value)
        current = torch.stack([v.reshape(-1) for v in moving]).to(batch.dtype)
        usable = torch.isfinite(batch).all(dim=0)
        momentum = layer.momentum
        new = torch.where(usable, current * momentum + batch * (1.0 - momentum), current)
        shape = layer.moving_mean.shape
        layer.moving_mean.assign(new[0].reshape(shape))
        layer.moving_variance.assign(new[1].reshape(shape))
