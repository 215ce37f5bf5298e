"""`ManualBatchNorm` on PyTorch: its kernel, and the plain case in direct torch calls.

The PyTorch backend runs eagerly: Keras's `Layer.__call__` runs at every step
(`plain_call` finds the calls where it changes nothing, which skip it), and
every `keras.ops` call is a Python function that converts and checks its
arguments before PyTorch launches a kernel, and autograd then records every
one of them. At the notebook network's sizes that work cost more than the
arithmetic (docs/benchmarks.md), so here the layer's formulas run as a few
torch calls:

- the kernel, `torch.nn.functional.batch_norm` (cuDNN on CUDA tensors), in
  training and inference, any single channel axis: channel axis 1 as it is, a
  last channel axis of a 4-D or 5-D input as a channels-last view, else a
  reshape to `(before, C, after)`. The batch statistics come back through one
  fresh `(2, C)` buffer updated with momentum 1, which goes to the update
  rule as it is (`corrected=True`): the rule takes Bessel's correction out
  in one multiply, with nothing to split or stack again.
  Ghost batches take it with each ghost batch's channels as channels of their
  own (a copy in and out); a batch of one value per channel, which the kernel
  refuses, takes the closed form;
- the plain case (no mask, ghost batches or renorm, a fixed momentum, no
  process group) for `fused=False` and where the kernel does not apply: the
  batch mean, then the biased variance as the mean of squared deviations from
  it (two passes, like `moments.moments`: no `E[x^2] - E[x]^2` cancellation;
  not `torch.var_mean`, whose Welford loop was the slower on CPU,
  docs/benchmarks.md), `x_hat * gamma + beta` centered first as in
  `moments.normalize`, and the paper's closed-form backward
  (keras_bn/_layer/reference.py) as a `torch.autograd.Function`, five passes
  over the data instead of autograd's dozen; asked for a gradient of the
  gradient, it recomputes `x_hat` from `x` with recorded ops;
- inference in direct calls wherever the kernel does not apply;
- the moving averages by the layer's one rule (`moving.update_statistics`),
  its primitives given as direct torch calls (`_TorchOps`).

Everything else takes the reference path; the tests hold every path to the
same NumPy references and to autodiff.
"""

import functools
import math

import keras
import torch
import torch.nn.functional as F

from keras_bn import _keras_compat
from keras_bn._layer import moving

__all__ = ["batch_norm", "choose", "plain_call"]


def plain_call(args, kwargs, *, layout, input_dtype):
    """Returns `(x, training)` of a built layer's call that Keras's per-call work would not change, else `None`.

    That work (converting and checking the inputs, resolving `training` and
    masks, scopes) changes nothing for one PyTorch tensor of the layer's input
    dtype and of the built shape, with `training` given as a bool, no mask,
    and no `StatelessScope` or distribution open.
    """
    if len(args) != 1:
        return None
    training = kwargs.get("training")
    if type(training) is not bool or kwargs.get("mask") is not None or len(kwargs) > 1 + ("mask" in kwargs):
        return None
    x = args[0]
    shape = layout.broadcast_shape
    if (
        not isinstance(x, torch.Tensor)
        or _keras_compat.keras_mask(x) is not None
        or str(x.dtype) != "torch." + input_dtype
        or x.dim() != len(shape)
        or any(x.shape[a] != shape[a] for a in layout.channel_axes)
    ):
        return None
    if _keras_compat.stateless_scope_open() or keras.distribution.distribution() is not None:
        return None
    return x, training


def upcast(inputs):
    """Returns `inputs` as float32 unless they are float32 or float64 already (`paths.upcast`)."""
    return inputs if inputs.dtype in (torch.float32, torch.float64) else inputs.to(torch.float32)


def cast(outputs, dtype):
    """Returns `outputs` in `dtype`, a dtype name."""
    dtype = getattr(torch, dtype)
    return outputs if outputs.dtype == dtype else outputs.to(dtype)


def choose(spec, x, *, training, mask, all_reduce, kernel, closed_form):
    """Returns this call's forward on PyTorch, or `None` for the reference path.

    `kernel` says whether the kernel applies (`paths.kernel_applies`),
    `closed_form` whether the closed-form backward is chosen.
    """
    if not training:
        return kernel_inference if kernel else inference
    count = _count(x, spec)
    if kernel:
        moving.check_count(count, spec.unbiased_variance)
        v = spec.virtual_batch_size
        # PyTorch's kernel refuses one value per channel (in a ghost batch too);
        # a batch that v does not divide gets the reference path's error.
        if count >= 2 and (v is None or (x.shape[0] % v == 0 and count // (x.shape[0] // v) >= 2)):
            return kernel_training
    plain = (
        mask is None and all_reduce is None and spec.virtual_batch_size is None
        and not spec.renorm and spec.momentum is not None
    )
    if closed_form and plain and count > 0:  # an empty batch: the reference leaves every statistic alone
        moving.check_count(count, spec.unbiased_variance)
        return closed_form_training
    return None


def _count(x, spec):
    """Returns how many values each channel's statistics see in `x` (a Python int)."""
    return x.numel() // max(spec.layout.channels, 1)


# -- the kernel -----------------------------------------------------------------------


def kernel_inference(x, weights, spec):
    """Returns `x` normalized with the moving statistics by `F.batch_norm`."""
    return batch_norm(
        x, weights.gamma, weights.beta, weights.moving_mean, weights.moving_variance,
        channel=spec.layout.channel_axes[0], epsilon=spec.epsilon, training=False,
        read=_keras_compat.variable_reader(x),
    )[0]


def kernel_training(x, weights, spec):
    """Returns `x` normalized with its batch statistics by `F.batch_norm`, and updates the moving ones.

    There are at least 2 values per channel (per ghost batch): the kernel's
    unbiased batch variance is made biased again before the update, which
    keeps Keras's convention.
    """
    read = _keras_compat.variable_reader(x)
    outputs, statistics = batch_norm(
        x, weights.gamma, weights.beta, None, None,
        channel=spec.layout.channel_axes[0], epsilon=spec.epsilon, training=True,
        virtual_batch_size=spec.virtual_batch_size, read=read,
    )
    groups = statistics.shape[1] // spec.layout.channels  # ghost batches
    if spec.virtual_batch_size is not None:
        statistics = statistics.reshape(2, groups, -1)
    _update(weights, statistics, _count(x, spec) // groups, spec, read, corrected=True)
    return outputs


def batch_norm(x, gamma, beta, moving_mean, moving_variance, *, channel, epsilon, training,
               virtual_batch_size=None, read=_keras_compat.read_value):
    """Returns `(outputs, statistics)` from `F.batch_norm`.

    In training `statistics` is the `(2, C)` tensor of the batch mean and the
    Bessel-corrected batch variance, which the kernel fills; with ghost batches
    it has `groups * C` columns, group-major. In inference it is `None`. The
    same on every device: the buffer is made on `x`'s device in its dtype.
    `read(variable)` gives a variable's tensor (`_keras_compat.variable_reader`).
    """
    groups, ungroup = 1, None
    if training and virtual_batch_size is not None:
        groups = x.shape[0] // virtual_batch_size
        x, ungroup = _ghost_channels(x, channel, groups)
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
    weight = _parameter(gamma, x.dtype, groups, read)
    bias = _parameter(beta, x.dtype, groups, read)
    statistics = None
    if training:
        # Momentum 1 makes the buffers the batch mean and unbiased variance:
        # one allocation for both, each of which costs more than the kernel's
        # work on small tensors.
        statistics = torch.zeros(2, channels, dtype=x.dtype, device=x.device)
        mean, variance = statistics
        momentum = 1.0
    else:
        mean = read(moving_mean).to(x.dtype)
        variance = read(moving_variance).to(x.dtype)
        momentum = 0.0
    outputs = F.batch_norm(view, mean, variance, weight, bias, training, momentum, epsilon)
    outputs = outputs if undo is None else undo(outputs)
    return (outputs if ungroup is None else ungroup(outputs)), statistics


def _ghost_channels(x, channel, groups):
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


def _parameter(variable, dtype, groups, read):
    """Returns `variable` (gamma or beta) in `dtype`, repeated for `groups` ghost batches, or `None`."""
    if variable is None:
        return None
    value = read(variable).to(dtype)
    return value if groups == 1 else value.repeat(groups)


# -- the plain case in direct calls, with the closed-form backward ----------------------


def _per_channel(variable, dtype, shape, read):
    """Returns the (C,) `variable` as a tensor of `dtype` shaped `shape`, to broadcast against the input."""
    return read(variable).to(dtype).reshape(shape)


def _parameters(weights, dtype, shape, read):
    """Returns `(gamma, beta)` shaped to broadcast against the input, `None` for those absent."""
    gamma = None if weights.gamma is None else _per_channel(weights.gamma, dtype, shape, read)
    beta = None if weights.beta is None else _per_channel(weights.beta, dtype, shape, read)
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
    tensor sees one multiply and one add, as in `moments.normalize`.
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


def inference(x, weights, spec):
    """Returns `x` normalized with the moving statistics."""
    shape, read = spec.layout.broadcast_shape, _keras_compat.variable_reader(x)
    centered = x - _per_channel(weights.moving_mean, x.dtype, shape, read)
    inv = torch.rsqrt(_per_channel(weights.moving_variance, x.dtype, shape, read) + spec.epsilon)
    return _normalize(centered, inv, *_parameters(weights, x.dtype, shape, read))


def closed_form_training(x, weights, spec):
    """Returns `x` normalized with its batch statistics, and updates the moving ones."""
    count, read = _count(x, spec), _keras_compat.variable_reader(x)
    gamma, beta = _parameters(weights, x.dtype, spec.layout.broadcast_shape, read)
    outputs, mean, variance = _BatchNorm.apply(x, gamma, beta, spec.layout.reduction_axes, spec.epsilon)
    _update(weights, (mean, variance), count, spec, read)
    return outputs


def _update(weights, statistics, count, spec, read, corrected=False):
    """Folds the batch statistics into the moving averages by the layer's one rule, without gradient."""
    with torch.no_grad():
        moving.update_statistics(weights, statistics, count, spec, corrected=corrected, xp=_OPS[read])


class _TorchOps(moving.Ops):
    """`moving.Ops` in direct torch calls: the update costs a few kernel launches.

    One instance per variable reader (`_OPS`): `read(variable)` gives a
    variable's tensor (`_keras_compat.variable_reader`).
    """

    def __init__(self, read):
        self.read = read

    def cast(self, x, dtype):
        """Returns `x` (a tensor or a Keras variable) in `dtype`, a torch dtype or a dtype name."""
        x = self.read(x) if isinstance(x, keras.Variable) else x
        dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
        return x if x.dtype == dtype else x.to(dtype)

    @staticmethod
    def reshape(x, shape):
        """Returns `x` shaped `shape`."""
        return x if x.shape == shape else x.reshape(shape)

    @staticmethod
    def maximum(x, y):
        """Returns the elementwise maximum of the tensor `x` and the number `y`."""
        return torch.clamp(x, min=y)

    @staticmethod
    def sum(x, axis):
        """Returns the sum of `x` over `axis`."""
        return torch.sum(x, dim=axis)

    def assign(self, variable, value):
        """Assigns `value`, cast to the variable's dtype, to the Keras variable `variable`."""
        if _keras_compat.stateless_scope_open():
            variable.assign(value)  # a stateless call records the new value in its scope
        else:
            self.read(variable).copy_(value)  # what `assign` does (and casts), without its checks

    @staticmethod
    def scale_variance(statistics, factor):
        """Returns the stacked `statistics` with the variance (row 1) times `factor`, in one launch.

        Not in place: autograd keeps the kernel's buffer, which it checks is unchanged.
        """
        return statistics * _row_factors(factor, statistics.dtype, statistics.device, statistics.dim())

    @staticmethod
    def all(x, axis=None):
        """Returns whether every entry of `x` is true, over `axis` or over all of it."""
        return torch.all(x) if axis is None else torch.all(x, dim=axis)

    where = staticmethod(torch.where)
    isfinite = staticmethod(torch.isfinite)
    logical_and = staticmethod(torch.logical_and)
    stack = staticmethod(torch.stack)
    sqrt = staticmethod(torch.sqrt)
    relu = staticmethod(torch.relu)
    ones_like = staticmethod(torch.ones_like)


@functools.lru_cache(maxsize=64)
def _row_factors(factor, dtype, device, rank):
    """Returns the tensor `[1, factor]` shaped to scale the rows of a stacked `(2, ...)` tensor of `rank`."""
    return torch.tensor([1.0, factor], dtype=dtype, device=device).reshape((2,) + (1,) * (rank - 1))


_OPS = {
    read: _TorchOps(read)
    for read in (_keras_compat.read_value, _keras_compat.read_own_tensor)
}
