"""`ManualBatchNorm`: the notebook's hand-written batch normalization as a Keras layer."""

import keras
from keras import ops

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


def _moments(x, axes, weights=None):
    """Returns the mean and biased variance of `x` over `axes`, keeping dims.

    With `weights` (0/1, broadcastable to `x`), positions whose weight is 0 are
    left out, and the third return value is the per-channel count of the
    positions that were kept; without weights it is `None`.
    """
    if weights is None:
        mean = ops.mean(x, axis=axes, keepdims=True)
        # Two-pass variance: E[(x - mean)^2] rather than E[x^2] - mean^2, which
        # loses every digit when |mean| >> std (e.g. a channel of raw pixels).
        variance = ops.mean(ops.square(x - mean), axis=axes, keepdims=True)
        return mean, variance, None
    weights = ops.broadcast_to(ops.cast(weights, x.dtype), ops.shape(x))
    count = ops.sum(weights, axis=axes, keepdims=True)
    # A channel with no kept position would divide by zero; dividing by 1
    # instead gives 0/1 there, and the caller replaces those channels.
    safe_count = ops.maximum(count, 1.0)
    mean = ops.sum(x * weights, axis=axes, keepdims=True) / safe_count
    variance = (
        ops.sum(ops.square(x - mean) * weights, axis=axes, keepdims=True) / safe_count
    )
    return mean, variance, count


def _normalize(x, mean, variance, gamma, beta, epsilon):
    """Returns `gamma * (x - mean) / sqrt(variance + epsilon) + beta`; `gamma`, `beta` may be `None`.

    The per-channel factor `gamma / sqrt(variance + epsilon)` is formed first, so
    the full-size tensor sees one subtract, one multiply and one add. Centering
    before scaling keeps the digits that `x * inv - mean * inv` (the form
    `tf.nn.batch_normalization` uses) cancels away when |mean| >> std.
    """
    inv = ops.rsqrt(variance + epsilon)
    if gamma is not None:
        inv = inv * gamma
    outputs = (x - mean) * inv
    return outputs if beta is None else outputs + beta


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
    this layer and `keras.layers.BatchNormalization`.

    Inputs in float16 or bfloat16 are normalized in float32 and the result is
    cast to the layer's compute dtype; the weights are always float32, so
    `mixed_float16` training neither overflows on large activations nor loses
    the small moving-average increments.

    !!! warning "`trainable=False` means inference mode"
        As in Keras, a frozen layer (`layer.trainable = False`) always
        normalizes with its moving statistics and never updates them, even
        when called with `training=True`. This is what fine-tuning wants.

    Args:
        axis: The channel axis (or a list/tuple of axes): one statistic is
            kept per position along it, and every other axis is reduced.
            Use `axis=1` after a `channels_first` convolution. Defaults to
            `-1`.
        momentum: Weight of the old value in the moving averages, in
            `[0, 1)`. The notebook's `decay`. Defaults to `0.99`.
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
        ValueError: `momentum` outside `[0, 1)`, `epsilon <= 0`, an `axis`
            outside the input's rank or repeated, an unknown (`None`) size
            along `axis`, or a mask of the wrong shape.
        TypeError: `axis` that is not an int or a list of ints, `center` or
            `scale` that is not a bool.

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
        [Ioffe and Szegedy, 2015. Batch Normalization: Accelerating Deep
        Network Training by Reducing Internal Covariate
        Shift](https://arxiv.org/abs/1502.03167).
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
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.axis = _normalize_axis_arg(axis)
        self.momentum = _as_float("momentum", momentum)
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(
                "`momentum` must be in [0, 1): it is the weight of the old value "
                f"in the moving averages. Received: momentum={momentum!r}"
            )
        self.epsilon = _as_float("epsilon", epsilon)
        if not 0.0 < self.epsilon < float("inf"):
            raise ValueError(
                "`epsilon` must be > 0 and finite: it keeps the division away "
                "from zero. "
                f"Received: epsilon={epsilon!r}"
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

        def weight(name, initializer, trainable, **extra):
            return self.add_weight(
                name=name,
                shape=param_shape,
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
                True,
                regularizer=self.gamma_regularizer,
                constraint=self.gamma_constraint,
            )
        if self.center:
            self.beta = weight(
                "beta",
                self.beta_initializer,
                True,
                regularizer=self.beta_regularizer,
                constraint=self.beta_constraint,
            )
        self.moving_mean = weight("moving_mean", self.moving_mean_initializer, False)
        self.moving_variance = weight(
            "moving_variance", self.moving_variance_initializer, False
        )
        self.input_spec = keras.layers.InputSpec(
            ndim=rank, axes={a: int(input_shape[a]) for a in axes}
        )

    def compute_output_shape(self, input_shape):
        return input_shape

    # -- the forward pass -------------------------------------------------------

    def _as_broadcast(self, value, dtype):
        """Casts a per-channel weight to `dtype` and reshapes it to broadcast against the input."""
        return ops.reshape(ops.cast(value, dtype), self._broadcast_shape)

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

    def call(self, inputs, training=None, mask=None):
        # float16/bfloat16 are upcast: the squares in the variance overflow
        # float16 for activations above ~256, and its 10-bit mantissa would
        # round the statistics. Integers become float32 as well.
        dtype = keras.backend.result_type(inputs.dtype, "float32")
        x = ops.cast(inputs, dtype)
        gamma = self._as_broadcast(self.gamma, dtype) if self.scale else None
        beta = self._as_broadcast(self.beta, dtype) if self.center else None
        moving_mean = self._as_broadcast(self.moving_mean, dtype)
        moving_variance = self._as_broadcast(self.moving_variance, dtype)

        if training and self.trainable:
            weights = None if mask is None else self._mask_weights(mask, x)
            mean, variance, count = _moments(x, self._reduction_axes, weights)
            if count is not None:
                # A channel with no unmasked position has no batch statistics:
                # use the moving ones, which also leaves them unchanged below.
                seen = count > 0
                mean = ops.where(seen, mean, moving_mean)
                variance = ops.where(seen, variance, moving_variance)
            self._update_moving(self.moving_mean, moving_mean, mean)
            self._update_moving(self.moving_variance, moving_variance, variance)
        else:
            mean, variance = moving_mean, moving_variance

        outputs = _normalize(x, mean, variance, gamma, beta, self.epsilon)
        return ops.cast(outputs, self.compute_dtype)

    def _update_moving(self, variable, current, batch_value):
        """Assigns `current * momentum + batch_value * (1 - momentum)` to `variable`."""
        new = current * self.momentum + batch_value * (1.0 - self.momentum)
        variable.assign(ops.cast(ops.reshape(new, variable.shape), variable.dtype))

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
        }
        return {**super().get_config(), **config}
