"""`ManualBatchNorm`: the notebook's hand-written batch normalization as a Keras layer."""

import keras
from keras import ops

from keras_bn import _keras_compat
from keras_bn._layer import layout, paths
from keras_bn._layer.args import (
    check_epsilon,
    check_flag,
    check_fused,
    check_momentum,
    check_renorm_clipping,
    check_virtual_batch_size,
    normalize_axis_arg,
)
from keras_bn._layer.moments import replica_sum
from keras_bn._layer.spec import Spec, Weights

__all__ = ["ManualBatchNorm"]

#: The attributes that `Spec` and `Weights` (keras_bn/_layer/spec.py) carry to the paths.
_READ_BY_THE_PATHS = frozenset({
    "axis", "epsilon", "momentum", "center", "scale", "renorm", "renorm_clipping",
    "renorm_momentum", "virtual_batch_size", "unbiased_variance", "fused", "_layout",
    "gamma", "beta", "moving_mean", "moving_variance", "moving_stddev", "renorm_mean",
    "renorm_stddev", "num_batches_tracked",
})


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
            elsewhere, and on TensorFlow without a GPU, in training, also
            for inputs under 3,000 values per sample, where the kernel is
            the slower; both compute the same numbers to float32 round-off.
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
        mask: Optional boolean mask (a numeric one counts where it is not
            0); positions where it is `False` are left out of the batch
            statistics (they are still normalized). As in Keras, a mask with
            one dimension fewer than the input gets a size-1 axis added last,
            whatever `axis` is (a sequence mask `(batch, time)`, a `Masking`
            layer's mask); only where that does not broadcast and `axis` is
            one axis does it go at `axis` instead. A mask of the input's rank
            broadcasts as it is. docs/guide/masking.md has the rule. A
            channel whose positions are all masked gets Keras's numbers
            under a mask in Keras's shape (a mean and a variance of 0, which
            the moving averages take in); under a mask of the input's rank,
            or with an option Keras lacks, it keeps its moving statistics
            unchanged and is normalized with them.

    Returns:
        A tensor of the input's shape in the layer's compute dtype.

    Raises:
        ValueError: `momentum` or `renorm_momentum` outside `[0, 1]`,
            `epsilon <= 0`, a bad `renorm_clipping` or `virtual_batch_size`,
            an `axis` outside the input's rank or repeated, an unknown
            (`None`) size along `axis`, a batch that is not a multiple of
            `virtual_batch_size`, a single value per channel with
            `unbiased_variance`, a mask that fits neither reading (in
            inference too, as in Keras), or `fused=True`
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
        self.axis = normalize_axis_arg(axis)
        self.momentum = check_momentum("momentum", momentum, allow_none=True)
        self.epsilon = check_epsilon(epsilon)
        self.center = check_flag("center", center)
        self.scale = check_flag("scale", scale)
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
        self.renorm = check_flag("renorm", renorm)
        self.renorm_clipping = check_renorm_clipping(renorm_clipping, renorm=self.renorm)
        self.renorm_momentum = check_momentum(
            "renorm_momentum", renorm_momentum, allow_none=False
        )
        self.synchronized = check_flag("synchronized", synchronized)
        self.virtual_batch_size = check_virtual_batch_size(virtual_batch_size, self.synchronized)
        self.unbiased_variance = check_flag("unbiased_variance", unbiased_variance)
        self.fused = check_fused(fused)
        if self.fused:
            reasons = paths.configuration_obstacles(axis=self.axis, epsilon=self.epsilon, renorm=self.renorm)
            if reasons:
                raise paths.refusal(reasons)
        self.supports_masking = True
        self.gamma = None
        self.beta = None

    # -- shapes ---------------------------------------------------------------

    def build(self, input_shape):
        self._layout = layout.resolve(self.axis, input_shape, virtual_batch_size=self.virtual_batch_size)
        axes = self._layout.channel_axes
        self._create_weights(tuple(int(input_shape[a]) for a in axes))
        self.input_spec = keras.layers.InputSpec(
            ndim=len(input_shape), axes={a: int(input_shape[a]) for a in axes}
        )
        self._describe_for_the_paths()

    def _create_weights(self, param_shape):
        """Creates `gamma`, `beta`, the moving statistics and the extra weights the options need."""

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

    def compute_output_shape(self, input_shape):
        # As Keras: an axis out of bounds raises.
        layout.channel_axes(self.axis, input_shape, virtual_batch_size=self.virtual_batch_size)
        return input_shape

    # -- the forward pass -------------------------------------------------------

    def __call__(self, *args, **kwargs):
        # PyTorch runs eagerly: a call that Keras's per-call work would not change
        # skips it (`_layer.torch.plain_call`; docs/guide/native.md).
        if keras.backend.backend() == "torch" and self.built:
            from keras_bn._layer import torch as torch_path

            plain = torch_path.plain_call(args, kwargs, layout=self._layout, input_dtype=self.input_dtype)
            if plain is not None and _keras_compat.remat_mode(self) is None and self.activity_regularizer is None:
                x, training = plain
                return self.call(x, training=training)
        return super().__call__(*args, **kwargs)

    def call(self, inputs, training=None, mask=None):
        training = bool(training and self.trainable)
        spec = self._bn_spec
        if mask is not None and not training:
            layout.mask_readings(mask.shape, inputs.shape, spec.layout)  # refused, as Keras refuses it
        x = paths.upcast(inputs)
        all_reduce = replica_sum() if training and self.synchronized else None
        # One path for the whole call: the backend's kernel or the reference in keras.ops.
        forward = paths.choose(spec, x, training=training, mask=mask, all_reduce=all_reduce)
        outputs = forward(x, self._bn_weights, spec)
        return paths.cast(outputs, self.compute_dtype)

    def __setattr__(self, name, value):
        super().__setattr__(name, value)
        if name in _READ_BY_THE_PATHS and getattr(self, "built", False):
            self._describe_for_the_paths()  # e.g. `recalibrate_batch_norm` sets `momentum`

    def _describe_for_the_paths(self):
        """Makes the `Spec` and `Weights` the paths read, at build and whenever what they carry is set.

        Made then rather than at each call, which would cost the PyTorch
        backend's eager steps a few microseconds per layer.
        """
        self._bn_spec = Spec(
            layout=self._layout,
            epsilon=self.epsilon,
            momentum=self.momentum,
            renorm=self.renorm,
            renorm_clipping=self.renorm_clipping,
            renorm_momentum=self.renorm_momentum,
            virtual_batch_size=self.virtual_batch_size,
            unbiased_variance=self.unbiased_variance,
            fused=self.fused,
        )
        renorm = self.renorm
        self._bn_weights = Weights(
            gamma=self.gamma if self.scale else None,
            beta=self.beta if self.center else None,
            moving_mean=self.moving_mean,
            moving_variance=self.moving_variance,
            moving_stddev=getattr(self, "moving_stddev", None) if renorm else None,
            renorm_mean=getattr(self, "renorm_mean", None) if renorm else None,
            renorm_stddev=getattr(self, "renorm_stddev", None) if renorm else None,
            num_batches_tracked=getattr(self, "num_batches_tracked", None) if self.momentum is None else None,
        )

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
