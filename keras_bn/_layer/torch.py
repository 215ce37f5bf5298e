"""`ManualBatchNorm` on PyTorch: the call, the kernel's and the closed-form paths, in direct torch calls.

The PyTorch backend runs eagerly: Keras's `Layer.__call__` runs at every step
(`plain_call` skips it where it changes nothing), and every `keras.ops` call is
a Python function that converts and checks its arguments before PyTorch
launches a kernel, and PyTorch's autograd then records every one of them. On the notebook's network
that made batch norm cost three times what `nn.BatchNorm2d` costs in plain
PyTorch (docs/benchmarks.md). Here the same formulas run as a few torch calls:

- the batch mean, then the biased variance as the mean of squared deviations
  from it (two passes, like `_moments.moments`: no `E[x^2] - E[x]^2` cancellation).
  Not `torch.var_mean`: on CPU its Welford loop ran 10 to 15 times slower than
  these two passes on the network's channels-first shapes;
- `x_hat * gamma + beta` with `x_hat = (x - mean) / sqrt(var + epsilon)`,
  centered first as in `_moments.normalize`;
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

import functools
import math

import keras
import torch

from keras_bn import _keras_compat
from keras_bn._layer import gradient as _gradient, native as _native

def plain_call(layer, args, kwargs):
    """Returns `layer(*args, **kwargs)` without Keras's per-call work, or `None` where that work matters.

    PyTorch runs eagerly, so `Layer.__call__`'s work (converting and checking the
    inputs, resolving `training` and masks, scopes) is paid at every step, and
    at the network's sizes it cost more than the kernel (docs/benchmarks.md).
    That work changes nothing for a built layer called on one PyTorch tensor of
    its compute dtype and of the built shape, with `training` given as a bool,
    no mask, and no `StatelessScope` or distribution open: this is that call.
    Anything else returns `None` and takes `Layer.__call__`.
    """
    if len(args) != 1 or not layer.built:
        return None
    training = kwargs.get("training")
    if type(training) is not bool or kwargs.get("mask") is not None or len(kwargs) > 1 + ("mask" in kwargs):
        return None
    x = args[0]
    shape = layer._broadcast_shape
    if (
        not isinstance(x, torch.Tensor)
        or _keras_compat.keras_mask(x) is not None
        or str(x.dtype) != "torch." + layer.input_dtype
        or x.dim() != len(shape)
        or any(x.shape[a] != shape[a] for a in layer._channel_axes_resolved)
    ):
        return None
    if (
        _keras_compat.stateless_scope_open()
        or keras.distribution.distribution() is not None
        or _keras_compat.remat_mode(layer) is not None
        or layer.activity_regularizer is not None
    ):
        return None
    return layer.call(x, training=training)


def call(layer, inputs, training, mask, all_reduce):
    """Returns the outputs of `layer.call` on PyTorch, or `None` for the general code.

    The native kernel where `fused` and the options allow it, else the
    closed-form path below where it applies. `fused=True` raises when the
    kernel is ruled out. `all_reduce` sums over replicas, or is `None`.
    """
    # As the general code: float64 stays, everything else computes in float32.
    x = inputs if inputs.dtype in (torch.float32, torch.float64) else inputs.to(torch.float32)
    outputs = None
    if layer.fused is not False:
        outputs = _kernel_call(layer, x, training, mask, all_reduce)
    if outputs is None:
        outputs = _hand_written_call(layer, x, training, mask, all_reduce)
    if outputs is None:
        return None
    dtype = getattr(torch, layer.compute_dtype)
    return outputs if outputs.dtype == dtype else outputs.to(dtype)


def _count(layer, x):
    """Returns how many values each channel's statistics see in `x` (a Python int)."""
    return x.numel() // max(math.prod(layer._broadcast_shape), 1)


def _kernel_call(layer, x, training, mask, all_reduce):
    """Returns the outputs from PyTorch's kernel, or `None` when this call takes another path."""
    if not _native.kernel_applies(layer, x, training=training, mask=mask, all_reduce=all_reduce):
        return None
    if not training:
        return _native.torch_batch_norm(layer, x, training=False)[0]
    count = _count(layer, x)
    layer._check_count(count)
    v = layer.virtual_batch_size
    if v is not None and (x.shape[0] % v or count // (x.shape[0] // v) < 2):
        return None  # the hand-written path refuses the batch or takes it
    if count < 2:
        return None  # PyTorch's kernel refuses one value per channel
    return native_training(layer, x, count)


def _hand_written_call(layer, x, training, mask, all_reduce):
    """Returns the outputs of the closed-form path, or `None` when the general code must run."""
    if not training:
        return inference(layer, x)
    if not _gradient.hand_written() or not applies(layer, mask, all_reduce):
        return None  # autodiff of the general code, or an option only it has
    count = _count(layer, x)
    if count == 0:
        return None  # an empty batch: the general code leaves every statistic alone
    layer._check_count(count)
    return training_call(layer, x, count)


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
    tensor sees one multiply and one add, as in `_moments.normalize`.
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


def training_call(layer, x, count):
    """Returns `x` normalized with its batch statistics, and updates the moving ones.

    `count` is how many values each channel's statistics see (a Python int).
    """
    gamma, beta = _parameters(layer, x.dtype)
    outputs, mean, variance = _BatchNorm.apply(x, gamma, beta, layer._reduction_axes, layer.epsilon)
    factor = count / max(count - 1, 1) if layer.unbiased_variance else 1.0
    _update(layer, torch.stack([mean.reshape(-1), variance.reshape(-1)]), factor)
    return outputs


def native_training(layer, x, count):
    """Returns `x` normalized by PyTorch's own kernel (`_native`), and updates the moving statistics.

    `count` (a Python int) is how many values each channel's statistics see in
    the whole batch, at least 2 per ghost batch: the kernel's unbiased batch variance is made biased again
    before the update, which keeps Keras's convention.
    """
    outputs, statistics = _native.torch_batch_norm(layer, x, training=True)
    groups = statistics.shape[1] // math.prod(layer.moving_mean.shape)  # ghost batches
    count //= groups
    if layer.momentum is None or groups > 1:
        # The general update: the cumulative average, the mean over ghost batches.
        mean, variance = statistics.reshape(2, groups, -1) if groups > 1 else statistics
        layer._update_statistics(mean, _native.biased(variance, count), count)
    else:
        _update(layer, statistics, 1.0 if layer.unbiased_variance else (count - 1) / count)
    return outputs


def _update(layer, batch, factor):
    """Folds the batch statistics into the moving averages, without gradient.

    `batch` is the `(2, C)` tensor of the batch mean and variance: both in one
    tensor halves the small ops, each of which costs more to launch than to
    compute at these sizes. `factor` turns the batch variance into the one the
    layer keeps (biased unless `unbiased_variance=True`). A channel with a NaN
    or Inf statistic keeps its moving statistics exactly.
    """
    momentum = layer.momentum
    with torch.no_grad():
        moving = (layer.moving_mean, layer.moving_variance)
        values = [variable.value for variable in moving]
        current = torch.stack(values).reshape(batch.shape).to(batch.dtype)
        weights = _weights(1.0 - momentum, (1.0 - momentum) * factor, batch.dtype, batch.device)
        new = torch.addcmul(current * momentum, batch, weights)
        new = torch.where(torch.isfinite(batch), new, current)
        if not _keras_compat.stateless_scope_open():
            for value, new_value in zip(values, new):  # what `assign` does, without its checks
                value.copy_(new_value.reshape(value.shape))
        else:  # a stateless call records the new values in its scope
            for variable, new_value in zip(moving, new):
                variable.assign(new_value.reshape(variable.shape))


@functools.lru_cache(maxsize=64)
def _weights(mean_weight, variance_weight, dtype, device):
    """Returns the `(2, 1)` tensor of the batch statistics' weights in the moving averages."""
    return torch.tensor([[mean_weight], [variance_weight]], dtype=dtype, device=device)
