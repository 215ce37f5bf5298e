"""`ManualBatchNorm`: the notebook's hand-written batch normalization as a Keras layer."""

import functools

import keras
from keras import ops

from keras_bn import _gradient, _native

__all__ = ["ManualBatchNorm"]


def _check_flag(name, value):
    """Returns `value` if it is a Python bool, else raises a `TypeError` naming `name`."""
    if not isinstance(value, bool):
        raise TypeError(
            f"`{name}` must be a bool (True or False). Received: {name}={value!r}"
        )
    return value


def _as_float(name, value):
    """Returns `float(value)`, raising a `TypeError` naming `name` when it is not a real number."""
    try:
        if isinstance(value, bool):  # An int to Python, never a sensible rate.
            raise TypeError
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(
            f"`{name}` must be a real number. Received: {name}={value!r}"
        ) from None


def _normalize_axis_arg(axis):
    """Converts the `axis` argument to an int or a tuple of ints, validating its type."""

    def as_int(a):
        if isinstance(a, bool) or not isinstance(a, int):
            try:
                is_integral = int(a) == a
            except (TypeError, ValueError):
                is_integral = False
            if isinstance(a, bool) or not is_integral:
                raise TypeError(
                    "`axis` must be an int or a list/tuple of ints. "
                    f"Received: axis={axis!r}"
                )
        return int(a)

    if isinstance(axis, (list, tuple)):
        if not axis:
            raise ValueError(
                "`axis` must name at least one axis. Received: axis=" f"{axis!r}"
            )
        return tuple(as_int(a) for a in axis)
    return as_int(axis)


def _count_along(x, axes):
    """Returns how many elements of `x` each reduction over `axes` sees, as a Python int if static."""
    count = 1
    shape = ops.shape(x)
    for a in axes:
        count = count * shape[a]
    return count


def _moments(x, axes, weights=None, all_reduce=None):
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
        count = _count_along(x, axes)
        n = count if isinstance(count, int) else ops.cast(count, x.dtype)
        mean = ops.sum(x, axis=axes, keepdims=True) / n
        centered = x - mean
        variance = ops.sum(ops.square(centered), axis=axes, keepdims=True) / n
        return mean, variance, count, centered
    reduce = all_reduce or (lambda t: t)
    if weights is None:
        total = ops.sum(x, axis=axes, keepdims=True)
        count = ops.ones_like(total) * ops.cast(_count_along(x, axes), x.dtype)
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


def _replica_sum():
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


def _normalize(centered, variance, gamma, beta, epsilon):
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


def _mean_where(values, usable):
    """Returns the mean over axis 0 of `values` where `usable`, and whether any entry was usable."""
    weights = ops.cast(usable, values.dtype)
    total = ops.sum(ops.where(usable, values, 0.0), axis=0)
    n = ops.sum(weights, axis=0)
    return total / ops.maximum(n, 1.0), n > 0


def _check_renorm_clipping(renorm_clipping):
    """Validates `renorm_clipping` and returns it as a plain dict of floats."""
    if renorm_clipping is None:
        return None
    if not isinstance(renorm_clipping, dict):
        raise TypeError(
            "`renorm_clipping` must be a dict with keys among 'rmax', 'rmin', 'dmax', "
            f"or None. Received: renorm_clipping={renorm_clipping!r}"
        )
    unknown = sorted(set(renorm_clipping) - {"rmax", "rmin", "dmax"})
    if unknown:
        raise ValueError(
            "`renorm_clipping` accepts only the keys 'rmax', 'rmin' and 'dmax'. "
            f"Received: renorm_clipping={renorm_clipping!r} (unknown: {unknown})"
        )
    clipping = {
        k: None if v is None else _as_float(f"renorm_clipping['{k}']", v)
        for k, v in renorm_clipping.items()
    }
    rmin, rmax, dmax = (clipping.get(k) for k in ("rmin", "rmax", "dmax"))
    if rmin is not None and rmin < 0:
        raise ValueError(
            "`renorm_clipping['rmin']` must be >= 0: r is a ratio of standard "
            f"deviations. Received: renorm_clipping={renorm_clipping!r}"
        )
    if rmin is not None and rmax is not None and rmax < rmin:
        raise ValueError(
            "`renorm_clipping['rmax']` must be >= `renorm_clipping['rmin']`. "
            f"Received: renorm_clipping={renorm_clipping!r}"
        )
    if dmax is not None and dmax < 0:
        raise ValueError(
            "`renorm_clipping['dmax']` must be >= 0: d is clipped to [-dmax, dmax]. "
            f"Received: renorm_clipping={renorm_clipping!r}"
        )
    return clipping


def _check_momentum(name, value, *, allow_none):
    """Returns `value` as a float in [0, 1] (or `None` where allowed), else raises naming `name`.

    1 is allowed, as Keras allows it: the averages then never move (frozen statistics).
    """
    if value is None and allow_none:
        return None
    momentum = _as_float(name, value)
    if not 0.0 <= momentum <= 1.0:
        extra = " or None (a cumulative average)" if allow_none else ""
        raise ValueError(
            f"`{name}` must be in [0, 1]{extra}: it is the weight of the old value "
            f"in the moving averages. Received: {name}={value!r}"
        )
    return momentum


@keras.saving.register_keras_serializable(package="keras_bn")
class ManualBatchNorm(keras.layers.Layer):
    r"""Batch normalization written out by hand: a drop-in for `keras.layers.BatchNormalization`.

    For each channel `c` along `axis`, in training mode (`training=True` and
    the layer is trainable) the layer uses the statistics of the batch it is
    given, taken over every axis but `axis`:

        mean_B = mean(x)
        var_B  = mean((x - mean_B) ** 2)              # biased, as in the paper
        y      = gamma * (x - mean_B) / sqrt(var_B + epsilon) + beta

    and updates its moving statistics (the notebook's `population_mean` and
    `population_variance`) as exponential moving averages:

        moving_mean     = moving_mean * momentum + mean_B * (1 - momentum)
        moving_variance = moving_variance * momentum + var_B * (1 - momentum)

    In inference mode it normalizes with those moving statistics instead:
    `y = gamma * (x - moving_mean) / sqrt(moving_variance + epsilon) + beta`.

    Gradients flow through `mean_B` and `var_B`, as in the paper. The four
    weights have the names Keras uses, `gamma`, `beta`, `moving_mean` and
    `moving_variance`, and the same shapes, so weights move freely between
    this layer and `keras.layers.BatchNormalization`. With the default
    arguments the layer computes what Keras's layer computes.

    Inputs in float16 or bfloat16 are normalized in float32 and the result is
    cast to the layer's compute dtype; the weights are always float32, so
    `mixed_float16` training neither overflows on large activations nor loses
    the small moving-average increments.

    A batch whose statistics are not finite (NaN or Inf in the input) leaves the
    moving statistics of the channels it touches unchanged: its outputs are NaN,
    as they must be, but one bad batch cannot poison every later inference.

    Beyond Keras 3's layer, it offers what tf.keras and PyTorch had:
    list-valued `axis`, ghost batches (`virtual_batch_size`), a cumulative
    average (`momentum=None`), PyTorch's unbiased running variance
    (`unbiased_variance`), and `synchronized` statistics on every backend.

    !!! warning "`trainable=False` means inference mode"
        As in Keras, a frozen layer (`layer.trainable = False`) always
        normalizes with its moving statistics and never updates them, even
        when called with `training=True`. This is what fine-tuning wants.

    Args:
        axis: The channel axis, or a list/tuple of axes: one statistic is kept
            per position along them, and every other axis is reduced. Use
            `axis=1` after a `channels_first` convolution. Defaults to `-1`.
        momentum: Weight of the old value in the moving averages, in `[0, 1]`
            (the notebook's `decay`; `1` freezes them), or `None` for a
            cumulative average over all training batches seen so far, as
            PyTorch's `momentum=None`: batch `n` enters with weight `1 / n`,
            counted by the extra weight `num_batches_tracked`. A batch that
            is thrown away (empty, fully masked, or with a non-finite
            statistic in any channel) is not counted and changes no channel.
            Defaults to `0.99`.
        epsilon: Positive constant added to the variance before the square
            root. Defaults to `1e-3`.
        center: Whether to add the learned offset `beta`. Defaults to `True`.
        scale: Whether to multiply by the learned scale `gamma`. Can be
            `False` when the next layer is linear. Defaults to `True`.
        beta_initializer: Initializer for `beta`. Defaults to `"zeros"`.
        gamma_initializer: Initializer for `gamma`. Defaults to `"ones"`.
        moving_mean_initializer: Initializer for `moving_mean`. Defaults to
            `"zeros"`.
        moving_variance_initializer: Initializer for `moving_variance`.
            Defaults to `"ones"`.
        beta_regularizer: Optional regularizer for `beta`. Defaults to `None`.
        gamma_regularizer: Optional regularizer for `gamma`. Defaults to
            `None`.
        beta_constraint: Optional constraint for `beta`. Defaults to `None`.
        gamma_constraint: Optional constraint for `gamma`. Defaults to `None`.
        synchronized: Whether training statistics are those of the global
            batch across replicas: under a `tf.distribute` strategy by
            all-reducing sums and counts, under an initialized
            `torch.distributed` process group likewise. Under JAX with
            `keras.distribution.DataParallel` the statistics are global either
            way, since the batch is one sharded array. Outside a distributed
            run it changes nothing. It cannot be combined with
            `virtual_batch_size`: ghost batches are local by design (each
            replica's groups are its own samples), so statistics shared
            across replicas would contradict them. Defaults to `False`.
        renorm: Whether to use Batch Renormalization (Ioffe, 2017), as Keras
            3's layer does: in training the normalized value `x_hat` becomes
            `x_hat * r + d` with `r = sigma_B / sigma_renorm` and
            `d = (mean_B - mean_renorm) / sigma_renorm` (no gradient through
            `r`, `d`), from extra moving averages `renorm_mean` and
            `renorm_stddev`; `moving_variance` is then derived from a moving
            standard deviation. Inference is unchanged. Defaults to `False`.
        renorm_clipping: With `renorm`, a dict with optional keys `"rmax"`,
            `"rmin"` and `"dmax"`: `r` is clipped to `[rmin, rmax]` and `d`
            to `[-dmax, dmax]`; a missing key means no clipping on that side.
            Without `renorm` it is kept in the config and unused, as in
            Keras. Defaults to `None`.
        renorm_momentum: With `renorm`, the momentum of `renorm_mean` and
            `renorm_stddev`, in `[0, 1]`. Defaults to `0.99`.
        virtual_batch_size: Ghost Batch Normalization (Hoffer et al., 2017):
            in training, the batch is split into consecutive groups of this
            many samples (samples `0..v-1`, `v..2v-1`, ...), each normalized
            with its own statistics, and the moving statistics are updated
            with the mean of the groups' statistics, as tf.keras did. The
            batch size must be a multiple of it. Inference is unchanged.
            It cannot be combined with `synchronized=True`: ghost batches
            are local by design. Defaults to `None` (one group: the whole
            batch).
        unbiased_variance: Whether `moving_variance` is updated with the
            unbiased batch variance `var_B * n / (n - 1)` (`n` values per
            channel), as PyTorch does; normalization still uses the biased
            `var_B`. Defaults to `False`.
        fused: Whether to run the framework's own batch-norm kernel
            (`FusedBatchNormV3` on TensorFlow, `torch.nn.functional.batch_norm`
            on PyTorch, cuDNN on a GPU), tf.keras's argument. `None`: the
            kernel wherever the options allow it, the hand-written path
            elsewhere; both compute the same numbers to float32 round-off.
            `True`: always the kernel, and a `ValueError` naming the options
            that rule it out (renorm, masks, several channel axes,
            float64 on TensorFlow, the JAX backend, ...). `False`:
            always the hand-written reference. docs/guide/native.md lists
            which options take which path. Defaults to `None`.
        **kwargs: Base layer keyword arguments, such as `name` and `dtype`.

    Call arguments:
        inputs: A float tensor of any rank at least 1 (integer input is cast
            to float32).
        training: Whether to normalize with the batch statistics and update
            the moving ones (`True`), or to normalize with the moving
            statistics (`False` or `None`, the default).
        mask: Optional boolean mask; positions where it is `False` are left
            out of the batch statistics (they are still normalized). Its
            shape is the input's shape without `axis` (a Keras sequence mask
            `(batch, time)` for `axis=-1`), or the input's full rank with
            size 1 along `axis`. A channel whose positions are all masked
            keeps its moving statistics unchanged and is normalized with
            them.

    Returns:
        A tensor of the input's shape in the layer's compute dtype.

    Raises:
        ValueError: `momentum` or `renorm_momentum` outside `[0, 1]`,
            `epsilon <= 0`, a bad `renorm_clipping` or `virtual_batch_size`,
            an `axis` outside the input's rank or repeated, an unknown
            (`None`) size along `axis`, a batch that is not a multiple of
            `virtual_batch_size`, a single value per channel with
            `unbiased_variance`, a mask of the wrong shape, or `fused=True`
            with options that rule the framework's kernel out. In a
            TensorFlow graph whose batch size is known only when it runs
            (a `fit` step, traced for any batch size), the batch-size checks raise
            `tf.errors.InvalidArgumentError` ending with the same message instead.
        TypeError: an argument of the wrong type, e.g. `axis` that is not an
            int or a list of ints, `center` that is not a bool, or `fused`
            that is not `None` or a bool.

    Example:

    >>> import numpy as np
    >>> import keras
    >>> from keras_bn import ManualBatchNorm
    >>> x = np.array([[1.0, 10.0], [3.0, 30.0]], dtype="float32")
    >>> bn = ManualBatchNorm(momentum=0.9)
    >>> y = bn(x, training=True)
    >>> np.round(keras.ops.convert_to_numpy(y), 4)
    array([[-0.9995, -1.    ],
           [ 0.9995,  1.    ]], dtype=float32)
    >>> np.round(keras.ops.convert_to_numpy(bn.moving_mean), 4)
    array([0.2, 2. ], dtype=float32)
    >>> np.round(keras.ops.convert_to_numpy(bn.moving_variance), 4)
    array([ 1. , 10.9], dtype=float32)

    Reference:
        - [Ioffe and Szegedy, 2015. Batch Normalization: Accelerating Deep
          Network Training by Reducing Internal Covariate
          Shift](https://arxiv.org/abs/1502.03167).
        - [Ioffe, 2017. Batch Renormalization](https://arxiv.org/abs/1702.03275).
        - [Hoffer, Hubara and Soudry, 2017. Train longer, generalize
          better](https://arxiv.org/abs/1705.08741) (ghost batches).
    """

    def __init__(
        self,
        axis=-1,
        momentum=0.99,
        epsilon=1e-3,
        center=True,
        scale=True,
        beta_initializer="zeros",
        gamma_initializer="ones",
        moving_mean_initializer="zeros",
        moving_variance_initializer="ones",
        beta_regularizer=None,
        gamma_regularizer=None,
        beta_constraint=None,
        gamma_constraint=None,
        renorm=False,
        renorm_clipping=None,
        renorm_momentum=0.99,
        synchronized=False,
        virtual_batch_size=None,
        unbiased_variance=False,
        fused=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.axis = _normalize_axis_arg(axis)
        self.momentum = _check_momentum("momentum", momentum, allow_none=True)
        self.epsilon = _as_float("epsilon", epsilon)
        if not 0.0 < self.epsilon < float("inf"):
            raise ValueError(
                "`epsilon` must be > 0 and finite: it keeps the division away "
                f"from zero. Received: epsilon={epsilon!r}"
            )
        self.center = _check_flag("center", center)
        self.scale = _check_flag("scale", scale)
        self.beta_initializer = keras.initializers.get(beta_initializer)
        self.gamma_initializer = keras.initializers.get(gamma_initializer)
        self.moving_mean_initializer = keras.initializers.get(moving_mean_initializer)
        self.moving_variance_initializer = keras.initializers.get(
            moving_variance_initializer
        )
        self.beta_regularizer = keras.regularizers.get(beta_regularizer)
        self.gamma_regularizer = keras.regularizers.get(gamma_regularizer)
        self.beta_constraint = keras.constraints.get(beta_constraint)
        self.gamma_constraint = keras.constraints.get(gamma_constraint)
        self.renorm = _check_flag("renorm", renorm)
        # Keras stores `renorm_clipping` unchecked when renorm is off, and a
        # drop-in must load every config Keras's layer accepts.
        if self.renorm or not isinstance(renorm_clipping, dict):
            self.renorm_clipping = _check_renorm_clipping(renorm_clipping)
        else:
            self.renorm_clipping = dict(renorm_clipping)
        self.renorm_momentum = _check_momentum(
            "renorm_momentum", renorm_momentum, allow_none=False
        )
        self.synchronized = _check_flag("synchronized", synchronized)
        if virtual_batch_size is not None and (
            isinstance(virtual_batch_size, bool)
            or not isinstance(virtual_batch_size, int)
            or virtual_batch_size < 1
        ):
            raise ValueError(
                "`virtual_batch_size` must be a positive int (samples per ghost "
                f"batch) or None. Received: virtual_batch_size={virtual_batch_size!r}"
            )
        if virtual_batch_size is not None and self.synchronized:
            raise ValueError(
                "`virtual_batch_size` and `synchronized=True` cannot be combined: "
                "ghost batches are local by design. Received: "
                f"virtual_batch_size={virtual_batch_size!r}, synchronized=True"
            )
        self.virtual_batch_size = virtual_batch_size
        self.unbiased_variance = _check_flag("unbiased_variance", unbiased_variance)
        self.fused = _native.check_fused(fused)
        if self.fused:
            reasons = _native.configuration_obstacles(self)
            if reasons:
                raise _native.refusal(reasons)
        self.supports_masking = True
        self.gamma = None
        self.beta = None

    # -- shapes ---------------------------------------------------------------

    def _channel_axes(self, rank):
        """Returns the channel axes as sorted non-negative ints, validated against `rank`."""
        axes = self.axis if isinstance(self.axis, tuple) else (self.axis,)
        resolved = []
        for a in axes:
            if not -rank <= a < rank:
                raise ValueError(
                    f"`axis` must be in [-{rank}, {rank}) for an input of rank "
                    f"{rank}. Received: axis={self.axis!r}"
                )
            resolved.append(a % rank)
        if len(set(resolved)) != len(resolved):
            raise ValueError(
                f"`axis` names the same axis twice for an input of rank {rank}. "
                f"Received: axis={self.axis!r}"
            )
        if self.virtual_batch_size is not None and 0 in resolved:
            raise ValueError(
                "With `virtual_batch_size`, axis 0 is the batch axis and cannot be "
                f"a channel axis. Received: axis={self.axis!r}"
            )
        return tuple(sorted(resolved))

    def build(self, input_shape):
        rank = len(input_shape)
        if rank == 0:
            raise ValueError(
                "ManualBatchNorm needs an input of rank at least 1. "
                f"Received: input_shape={tuple(input_shape)}"
            )
        axes = self._channel_axes(rank)
        for a in axes:
            if input_shape[a] is None:
                raise ValueError(
                    "The size of the channel axis must be known to create the "
                    f"weights, but axis {a} of the input is `None`. Received: "
                    f"input_shape={tuple(input_shape)}, axis={self.axis!r}"
                )
        param_shape = tuple(int(input_shape[a]) for a in axes)
        self._channel_axes_resolved = axes
        self._reduction_axes = tuple(i for i in range(rank) if i not in axes)
        # The statistics are computed with keepdims=True; the weights need this
        # shape to broadcast against the input (size 1 on reduced axes).
        self._broadcast_shape = tuple(
            int(input_shape[i]) if i in axes else 1 for i in range(rank)
        )

        def weight(name, initializer, trainable=False, **extra):
            return self.add_weight(
                name=name,
                shape=extra.pop("shape", param_shape),
                initializer=initializer,
                trainable=trainable,
                # The statistics live in float32 even under mixed precision:
                # a float16 moving average cannot absorb a 1% increment.
                autocast=False,
                **extra,
            )

        if self.scale:
            self.gamma = weight(
                "gamma",
                self.gamma_initializer,
                trainable=True,
                regularizer=self.gamma_regularizer,
                constraint=self.gamma_constraint,
            )
        if self.center:
            self.beta = weight(
                "beta",
                self.beta_initializer,
                trainable=True,
                regularizer=self.beta_regularizer,
                constraint=self.beta_constraint,
            )
        self.moving_mean = weight("moving_mean", self.moving_mean_initializer)
        self.moving_variance = weight("moving_variance", self.moving_variance_initializer)
        if self.renorm:
            variance_init = self.moving_variance_initializer

            def stddev_init(shape, dtype=None):
                return ops.sqrt(variance_init(shape, dtype=dtype))

            self.moving_stddev = weight("moving_stddev", stddev_init)
            self.renorm_mean = weight("renorm_mean", self.moving_mean_initializer)
            self.renorm_stddev = weight("renorm_stddev", stddev_init)
        if self.momentum is None:
            self.num_batches_tracked = weight(
                "num_batches_tracked", "zeros", shape=(), dtype="int32"
            )
        self.input_spec = keras.layers.InputSpec(
            ndim=rank, axes={a: int(input_shape[a]) for a in axes}
        )

    def compute_output_shape(self, input_shape):
        return input_shape

    # -- the forward pass -------------------------------------------------------

    def _mask_weights(self, mask, inputs):
        """Returns the mask as 0/1 weights broadcastable to `inputs`, checking its shape."""
        rank = len(inputs.shape)
        received = (
            f"Received: mask.shape={tuple(mask.shape)} for inputs.shape="
            f"{tuple(inputs.shape)} and axis={self.axis!r}"
        )
        if len(mask.shape) == rank - 1 and len(self._channel_axes_resolved) == 1:
            # A mask over every axis but the channel one: put the channel axis
            # back where it belongs (not always last, unlike Keras's layer).
            mask = ops.expand_dims(mask, axis=self._channel_axes_resolved[0])
        elif len(mask.shape) != rank:
            raise ValueError(
                "`mask` must have the input's shape without `axis`, or the "
                f"input's rank with size 1 along `axis`. {received}"
            )
        for m, x in zip(mask.shape, inputs.shape):
            if m is not None and x is not None and m not in (1, x):
                raise ValueError(f"`mask` does not broadcast against the input. {received}")
        return ops.cast(mask, inputs.dtype)

    def _ghost_batches(self, x):
        """Reshapes `x` from `(batch, ...)` to `(batch // v, v, ...)`, checking that v divides the batch."""
        v = self.virtual_batch_size
        batch = x.shape[0]
        message = "The batch size must be a multiple of `virtual_batch_size`. Received: a batch of {}"
        message += f" with virtual_batch_size={v}"
        if batch is not None and batch % v:
            raise ValueError(message.format(batch))
        if batch is None and keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            # Only a traced graph has an unknown batch size (the ragged last batch
            # of a compiled `fit`): check when it runs, before the reshape
            # (unordered, the reshape's own error could win), with the message an
            # eager call gives, both numbers in it. TensorFlow raises it as an
            # InvalidArgumentError whose first line is "Graph execution error:".
            size = tf.shape(x)[0]
            check = tf.debugging.Assert(
                tf.equal(size % v, 0), [tf.strings.format(message, size)]
            )
            with tf.control_dependencies([check]):
                x = tf.identity(x)
        return ops.reshape(x, (-1, v) + tuple(ops.shape(x)[1:]))

    def __call__(self, *args, **kwargs):
        if keras.backend.backend() == "torch":
            from keras_bn import _torch_path

            outputs = _torch_path.plain_call(self, args, kwargs)
            if outputs is not None:
                return outputs
        return super().__call__(*args, **kwargs)

    def call(self, inputs, training=None, mask=None):
        # float16/bfloat16 are upcast: the squares in the variance overflow
        # float16 for activations above ~256, and its 10-bit mantissa would
        # round the statistics. Integers become float32 as well.
        # float64 stays float64 (keras.backend.result_type would demote it to
        # float32 on the JAX and PyTorch backends).
        training = bool(training and self.trainable)
        if keras.backend.backend() == "torch":
            from keras_bn import _torch_path

            all_reduce = _replica_sum() if training and self.synchronized else None
            outputs = _torch_path.call(self, inputs, training, mask, all_reduce)
            if outputs is not None:
                return outputs
        dtype = "float64" if keras.backend.standardize_dtype(inputs.dtype) == "float64" else "float32"
        x = ops.cast(inputs, dtype)
        if self.fused is not False and keras.backend.backend() != "torch":
            outputs = self._call_native(x, training, mask)
            if outputs is not None:
                return ops.cast(outputs, self.compute_dtype)

        def per_channel(value, shape=self._broadcast_shape):
            value = ops.cast(value, dtype)
            if shape[-1] == value.shape[-1] and len(value.shape) == 1:
                return value  # channels last: a (C,) vector already broadcasts
            return ops.reshape(value, shape)

        gamma = per_channel(self.gamma) if self.scale else None
        beta = per_channel(self.beta) if self.center else None

        if not training:
            centered = x - per_channel(self.moving_mean)
            outputs = _normalize(
                centered, per_channel(self.moving_variance), gamma, beta, self.epsilon
            )
            return ops.cast(outputs, self.compute_dtype)

        weights = None if mask is None else self._mask_weights(mask, x)
        shape = self._broadcast_shape
        axes = self._reduction_axes
        original_shape = ops.shape(x)
        if self.virtual_batch_size is not None:
            x = self._ghost_batches(x)
            if weights is not None:
                weights = self._ghost_batches(ops.broadcast_to(weights, original_shape))
            # A new leading axis counts the groups; it is kept, not reduced.
            shape = (1,) + shape
            axes = tuple(a + 1 for a in axes)
            gamma = None if gamma is None else ops.reshape(gamma, shape)
            beta = None if beta is None else ops.reshape(beta, shape)
        all_reduce = _replica_sum() if self.synchronized else None

        # With the closed-form backward (keras_bn/_gradient.py) the statistics
        # record no gradient: the normalize step's own gradient accounts for them.
        def statistics(source):
            mean, variance, count, centered = _moments(source, axes, weights, all_reduce)
            if weights is not None:
                # A channel with no unmasked position has no batch statistics:
                # use the moving ones, which also leaves them unchanged below.
                seen = count > 0
                mean = ops.where(seen, mean, per_channel(self.moving_mean, shape))
                variance = ops.where(seen, variance, per_channel(self.moving_variance, shape))
                centered = source - mean
            return mean, variance, count, centered

        hand_written = _gradient.hand_written()
        mean, variance, count, centered = statistics(ops.stop_gradient(x) if hand_written else x)

        if self.renorm:
            r, d = self._renorm_correction(mean, variance, shape)
            # (x_hat * r + d) * gamma + beta == x_hat * (r * gamma) + (d * gamma + beta)
            offset = d if gamma is None else d * gamma
            beta = offset if beta is None else offset + beta
            gamma = r if gamma is None else r * gamma
        if hand_written:
            outputs = _gradient.normalize(
                x, centered, variance, gamma, beta, self.epsilon,
                axes=axes, count=count, weights=weights, all_reduce=all_reduce,
                recompute=lambda source: statistics(source)[1::2],
            )
        else:
            outputs = _normalize(centered, variance, gamma, beta, self.epsilon)
        if self.virtual_batch_size is not None:
            outputs = ops.reshape(outputs, original_shape)
        self._update_statistics(mean, variance, count)
        return ops.cast(outputs, self.compute_dtype)

    def _call_native(self, x, training, mask):
        """Returns the outputs from TensorFlow's kernel (`_native`), or `None` for the hand-written path.

        On JAX it only refuses `fused=True`; PyTorch's kernel is called from `_torch_path`.
        """
        all_reduce = _replica_sum() if training and self.synchronized else None
        reasons = _native.call_obstacles(
            self, x, training=training, mask=mask, all_reduce=all_reduce
        )
        if reasons:
            if self.fused:
                raise _native.refusal(reasons)
            return None
        if not training:
            return _native.tensorflow_batch_norm(self, x, training=False)[0]
        count = _count_along(x, self._reduction_axes)
        self._check_count(count)
        outputs, mean, variance = _native.tensorflow_batch_norm(self, x, training=True)
        if self.virtual_batch_size is not None:
            # The statistics of each ghost batch, group-major, each of a v-th of the count.
            groups = ops.shape(x)[0] // self.virtual_batch_size
            count = count // groups
            mean, variance = (ops.reshape(s, (groups, -1)) for s in (mean, variance))
        self._update_statistics(mean, _native.biased(variance, count), count)
        return outputs

    def _renorm_correction(self, mean, variance, shape):
        """Returns Batch Renormalization's `(r, d)`, clipped, without gradient."""
        renorm_stddev = ops.reshape(ops.cast(self.renorm_stddev, mean.dtype), shape)
        renorm_mean = ops.reshape(ops.cast(self.renorm_mean, mean.dtype), shape)
        # Early in training renorm_stddev can be ~0: keep the ratio finite.
        renorm_stddev = ops.maximum(renorm_stddev, self.epsilon**0.5)
        r = ops.sqrt(variance + self.epsilon) / renorm_stddev
        d = (mean - renorm_mean) / renorm_stddev
        clipping = self.renorm_clipping or {}
        if clipping.get("rmin") is not None:
            r = ops.maximum(r, clipping["rmin"])
        if clipping.get("rmax") is not None:
            r = ops.minimum(r, clipping["rmax"])
        if clipping.get("dmax") is not None:
            d = ops.clip(d, -clipping["dmax"], clipping["dmax"])
        return ops.stop_gradient(r), ops.stop_gradient(d)

    def _check_count(self, count):
        """Refuses a batch too small for the unbiased variance, when its size is static."""
        if self.unbiased_variance and isinstance(count, int) and count < 2:
            raise ValueError(
                "`unbiased_variance=True` needs at least 2 values per channel "
                f"in a training batch (n / (n - 1)). Received: {count} value(s) "
                "per channel"
            )

    def _update_statistics(self, mean, variance, count):
        """Folds the batch statistics into the moving averages (the notebook's `tf.assign`s).

        `mean`, `variance` and `count` are per channel (and per ghost batch).
        Only the channels whose statistics are usable move: a finite mean and
        variance from at least one counted value (two, for the unbiased
        variance); the others keep their moving statistics exactly.
        """
        self._check_count(count)
        if (
            self.unbiased_variance
            and keras.backend.backend() == "tensorflow"
            and not isinstance(count, int)
            and len(count.shape) == 0
        ):
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
                count = tf.identity(count)
        # The count is a Python int, a scalar int tensor (a batch size unknown
        # when traced) or a float tensor per channel (masks, replicas): one
        # float tensor shaped like the statistics serves every case.
        count = ops.ones_like(mean) * ops.cast(count, mean.dtype)
        usable = ops.logical_and(
            ops.logical_and(ops.isfinite(mean), ops.isfinite(variance)), count > 0
        )
        if self.unbiased_variance:
            # n / (n - 1) is undefined for n = 1 (a masked channel can count
            # one value): that channel's variance stays where it was.
            variance = variance * (count / ops.maximum(count - 1.0, 1.0))
        variance_usable = ops.logical_and(usable, count > 1) if self.unbiased_variance else usable
        if self.virtual_batch_size is not None:
            # tf.keras's rule: the moving statistics follow the mean of the
            # ghost batches' statistics; a ghost batch with nothing usable is
            # left out of that mean.
            mean, usable = _mean_where(mean, usable)
            variance, variance_usable = _mean_where(variance, variance_usable)

        momentum = self.momentum
        if momentum is None:
            # Cumulative average: batch n enters with weight 1/n (PyTorch's
            # rule). One counter serves every channel, so a batch counts only
            # when every channel can use it; otherwise it changes nothing.
            counted = ops.all(ops.logical_and(usable, variance_usable))
            seen = self.num_batches_tracked + ops.cast(counted, "int32")
            self.num_batches_tracked.assign(seen)
            momentum = 1.0 - 1.0 / ops.cast(ops.maximum(seen, 1), mean.dtype)
            usable = variance_usable = ops.logical_and(usable, counted)

        self._assign_average(self.moving_mean, mean, momentum, usable)
        if not self.renorm:
            self._assign_average(self.moving_variance, variance, momentum, variance_usable)
            return
        stddev = ops.sqrt(variance + self.epsilon)
        self._assign_average(self.renorm_mean, mean, self.renorm_momentum, usable)
        self._assign_average(self.renorm_stddev, stddev, self.renorm_momentum, variance_usable)
        new_stddev = self._assign_average(self.moving_stddev, stddev, momentum, variance_usable)
        # relu: rounding can take stddev^2 a hair below epsilon.
        self.moving_variance.assign(ops.relu(new_stddev * new_stddev - self.epsilon))

    def _assign_average(self, variable, batch_value, momentum, usable):
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

    # -- serialization ------------------------------------------------------------

    def get_config(self):
        config = {
            "axis": list(self.axis) if isinstance(self.axis, tuple) else self.axis,
            "momentum": self.momentum,
            "epsilon": self.epsilon,
            "center": self.center,
            "scale": self.scale,
            "beta_initializer": keras.initializers.serialize(self.beta_initializer),
            "gamma_initializer": keras.initializers.serialize(self.gamma_initializer),
            "moving_mean_initializer": keras.initializers.serialize(
                self.moving_mean_initializer
            ),
            "moving_variance_initializer": keras.initializers.serialize(
                self.moving_variance_initializer
            ),
            "beta_regularizer": keras.regularizers.serialize(self.beta_regularizer),
            "gamma_regularizer": keras.regularizers.serialize(self.gamma_regularizer),
            "beta_constraint": keras.constraints.serialize(self.beta_constraint),
            "gamma_constraint": keras.constraints.serialize(self.gamma_constraint),
            "renorm": self.renorm,
            "renorm_clipping": self.renorm_clipping,
            "renorm_momentum": self.renorm_momentum,
            "synchronized": self.synchronized,
            "virtual_batch_size": self.virtual_batch_size,
            "unbiased_variance": self.unbiased_variance,
            "fused": self.fused,
        }
        return {**super().get_config(), **config}
