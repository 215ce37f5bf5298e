"""Frozen batch normalization: a layer that stays in inference mode, and the tools that swap it in and out."""

import fnmatch

import keras

from keras_bn import _graph
from keras_bn.batch_norm import ManualBatchNorm

__all__ = ["FrozenBatchNorm", "freeze_batch_norm", "unfreeze_batch_norm"]


@keras.saving.register_keras_serializable(package="keras_bn")
class FrozenBatchNorm(keras.layers.Layer):
    r"""Batch normalization that always normalizes with its moving statistics and never updates them.

    It computes, in training and in inference alike,

    $$y = \gamma \frac{x - \mu_{\text{moving}}}{\sqrt{\sigma^2_{\text{moving}} + \epsilon}} + \beta,$$

    the inference transform of a batch normalization: detectron2's
    `FrozenBatchNorm2d`, timm's `freeze_batch_norm_2d`. Unlike a Keras batch
    norm with `trainable=False`, it stays frozen whatever happens around it:
    `model.trainable = True`, `compile`, a `.keras` save and load. `gamma`
    and `beta` are non-trainable weights unless `trainable_affine=True`, so
    `trainable = True` cannot unfreeze them either. Its weights have the
    names of a batch norm's, so `fold_batch_norm` folds it like one.

    `freeze_batch_norm` puts it in place of the batch norms of a model, and
    `unfreeze_batch_norm` puts back the layer it replaced, which it keeps in
    `restore`.

    Args:
        axis: The channel axis (or axes), as for `ManualBatchNorm`.
            Defaults to `-1`.
        epsilon: Added to the variance. Defaults to `1e-3`.
        center: Whether there is a `beta`. Defaults to `True`.
        scale: Whether there is a `gamma`. Defaults to `True`.
        trainable_affine: Whether `gamma` and `beta` are trainable (the
            statistics never are). Defaults to `False`.
        restore: The serialized batch norm this layer replaced, which
            `unfreeze_batch_norm` rebuilds; `None` for a `ManualBatchNorm`
            with this layer's settings. Defaults to `None`.
        **kwargs: Base layer arguments (`name`, `dtype`).

    Call arguments:
        inputs: A tensor.
        training: Ignored: the layer is always in inference mode.
        mask: Ignored (passed on).

    Example:

    >>> import numpy as np
    >>> from keras_bn import FrozenBatchNorm
    >>> layer = FrozenBatchNorm()
    >>> x = np.array([[1.0, 2.0], [3.0, 4.0]], "float32")
    >>> y = layer(x, training=True)  # the moving statistics: mean 0, variance 1
    >>> bool(np.allclose(y, x / np.sqrt(1 + 1e-3)))
    True
    >>> [w.name for w in layer.trainable_weights]
    []
    """

    def __init__(self, axis=-1, epsilon=1e-3, center=True, scale=True, trainable_affine=False,
                 restore=None, **kwargs):
        super().__init__(**kwargs)
        self.axis = [int(a) for a in axis] if isinstance(axis, (list, tuple)) else int(axis)
        self.epsilon = float(epsilon)
        if not self.epsilon > 0:
            raise ValueError(f"epsilon must be positive. Received: epsilon={epsilon!r}")
        self.center, self.scale = bool(center), bool(scale)
        self.trainable_affine = bool(trainable_affine)
        self.restore = restore
        self.supports_masking = True

    def _axes(self, rank):
        """Returns the channel axes as non-negative ints for inputs of `rank`."""
        axes = self.axis if isinstance(self.axis, list) else [self.axis]
        return sorted(a % rank for a in axes)

    def build(self, input_shape):
        axes = self._axes(len(input_shape))
        shape = tuple(input_shape[a] for a in axes)
        if any(d is None for d in shape):
            raise ValueError(f"The channel axis {self.axis!r} of the input must have a known size. "
                             f"Received: input_shape={input_shape}")
        # autocast=False, as Keras's layer makes its weights: under mixed precision they
        # stay float32 in the call, where a float16 copy would round the statistics.
        affine = {"shape": shape, "trainable": self.trainable_affine, "autocast": False}
        self.gamma = self.add_weight(name="gamma", initializer="ones", **affine) if self.scale else None
        self.beta = self.add_weight(name="beta", initializer="zeros", **affine) if self.center else None
        stats = {"shape": shape, "trainable": False, "autocast": False}
        self.moving_mean = self.add_weight(name="moving_mean", initializer="zeros", **stats)
        self.moving_variance = self.add_weight(name="moving_variance", initializer="ones", **stats)

    def call(self, inputs, training=None, mask=None):
        rank = len(inputs.shape)
        axes = self._axes(rank)
        shape = [inputs.shape[a] if a in axes else 1 for a in range(rank)]
        shape[0] = 1
        # float16 inputs are normalized in float32, as Keras's layer does.
        dtype = keras.backend.standardize_dtype(inputs.dtype)
        compute = "float32" if dtype in ("float16", "bfloat16") else dtype
        x = keras.ops.cast(inputs, compute)

        def channel(weight):
            return keras.ops.reshape(keras.ops.cast(weight, compute), shape)

        scale = keras.ops.rsqrt(channel(self.moving_variance) + self.epsilon)
        if self.gamma is not None:
            scale = scale * channel(self.gamma)
        y = (x - channel(self.moving_mean)) * scale
        if self.beta is not None:
            y = y + channel(self.beta)
        return keras.ops.cast(y, dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "axis": self.axis, "epsilon": self.epsilon, "center": self.center,
                "scale": self.scale, "trainable_affine": self.trainable_affine, "restore": self.restore}


def _selector(layers, caller):
    """Returns `select(path, layer)` for `layers`: `None`, a name pattern, a list of them, or a predicate."""
    if layers is None:
        return lambda path, layer: True
    if callable(layers):
        return layers
    patterns = [layers] if isinstance(layers, str) else layers
    if not isinstance(patterns, (list, tuple)) or not patterns or not all(isinstance(p, str) for p in patterns):
        raise TypeError(f"{caller}: `layers` must be None, a name pattern such as 'block3_*', a list "
                        f"of patterns, or a predicate (path, layer) -> bool. Received: layers={layers!r}")
    return lambda path, layer: any(fnmatch.fnmatchcase(path, p) or fnmatch.fnmatchcase(layer.name, p)
                                   for p in patterns)


#: What a batch norm that `freeze_batch_norm` kept inside a custom layer does, and the way out.
_KEPT_UNFROZEN = (
    "They are still ordinary batch norms, not FrozenBatchNorm: in fit they keep updating their "
    "moving statistics and training their gamma and beta. To freeze them, set trainable=False "
    "on the custom layers that hold them (Keras then runs their batch norms in inference mode, "
    "until something sets trainable=True again), or make those layers follow the rules above "
    "and call freeze_batch_norm again."
)


def _swap(model, layers, caller, is_source, make, custom_layers="raise"):
    """Rebuilds `model` with `make(layer)` in place of each selected `is_source` layer, weights carried.

    With `custom_layers="keep"`, the selected layers it had to keep inside
    custom layers are named in one `UserWarning` (`_KEPT_UNFROZEN`).
    """
    _graph.check_model(model, caller)
    select = _selector(layers, caller)
    candidates = {path: layer for path, layer in _graph.sublayers(model).items() if is_source(layer)}
    chosen = {id(layer) for path, layer in candidates.items() if select(path, layer)}
    if not chosen:
        raise ValueError(f"{caller}: `layers` selects none of the model's {len(candidates)} candidate "
                         f"layer(s) ({', '.join(candidates) or 'none'}). Received: layers={layers!r}")
    swapped, kept = set(), {}

    def replace(path, layer):
        if id(layer) not in chosen:
            return None
        swapped.add(path)
        return make(layer)

    def weights_for(path, old, new):
        return _graph.weights_by_name(old) if path in swapped else None

    new_model = _graph.rebuild(model, replace, weights_for, reach=lambda path, layer: id(layer) in chosen,
                               caller=caller, custom_layers=custom_layers, kept=kept)
    _graph.warn_kept(caller, kept, _KEPT_UNFROZEN, stacklevel=3)
    return new_model


def _frozen_like(layer, trainable_affine):
    """Returns a `FrozenBatchNorm` that computes what `layer` computes in inference mode."""
    return FrozenBatchNorm(axis=layer.axis, epsilon=layer.epsilon, center=layer.center, scale=layer.scale,
                           trainable_affine=trainable_affine, restore=keras.saving.serialize_keras_object(layer),
                           name=layer.name, dtype=layer.dtype_policy.name)


def freeze_batch_norm(model, layers=None, *, trainable_affine=False, custom_layers="raise"):
    """Returns a new model whose chosen batch norms are `FrozenBatchNorm` layers, weights included.

    Each chosen `keras.layers.BatchNormalization` or `ManualBatchNorm` becomes
    a `FrozenBatchNorm` that normalizes with the moving statistics it had and
    never changes them, whatever `trainable` or `training` say later. The
    new model predicts what the original predicts in inference mode. Every
    other layer and weight is copied; the original model is not modified.

    Args:
        model: A built Keras model (Sequential, Functional, a Functional
            subclass such as a keras-hub backbone or task).
        layers: Which batch norms to freeze: `None` for all of them, a
            `fnmatch` pattern matched against each layer's path
            (`"backbone/conv2_*"`) and name, a list of patterns, or a
            predicate `(path, layer) -> bool`. Defaults to `None`.
        trainable_affine: Whether the frozen layers' `gamma` and `beta` stay
            trainable. Defaults to `False`.
        custom_layers: What to do with batch norms inside custom layers
            (a `call` in Python) that cannot be turned into graphs: `"raise"`
            a `ValueError` that names them with the reason, or `"keep"` them
            as they are, with a `UserWarning` that names them: they still
            train in `fit`. Those that can are frozen like the others (see
            the "Custom layers" guide). Defaults to `"raise"`.

    Returns:
        A new `keras.Model`, uncompiled unless `model` was compiled.

    Raises:
        ValueError: `layers` selects no batch norm, or a batch norm is inside
            a custom layer that cannot be turned into a graph.
        TypeError: `model` is not a Keras model, or `layers` is of another type.

    Warns:
        UserWarning: with `custom_layers="keep"`, once per call, naming the
            chosen batch norms it kept inside custom layers, which go on
            updating their moving statistics and training their `gamma` and
            `beta` in `fit`, and what to do about them.

    Example:

    >>> import keras
    >>> from keras_bn import freeze_batch_norm
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3),
    ...                           keras.layers.BatchNormalization(name="bn")])
    >>> frozen = freeze_batch_norm(model)
    >>> frozen.trainable = True  # does not unfreeze it
    >>> type(frozen.get_layer("bn")).__name__, len(frozen.trainable_weights)
    ('FrozenBatchNorm', 2)
    """
    return _swap(model, layers, "freeze_batch_norm", _graph.is_batch_norm,
                 lambda layer: _frozen_like(layer, trainable_affine), custom_layers)


def _unfrozen(layer):
    """Returns the batch norm that `layer` replaced (or a `ManualBatchNorm` like it), trainable."""
    if layer.restore is not None:
        restored = keras.saving.deserialize_keras_object(layer.restore)
        restored.trainable = True
        return restored
    return ManualBatchNorm(axis=layer.axis, epsilon=layer.epsilon, center=layer.center, scale=layer.scale,
                           name=layer.name, dtype=layer.dtype_policy.name)


def unfreeze_batch_norm(model, layers=None):
    """Returns a new model whose chosen `FrozenBatchNorm` layers are trainable batch norms again.

    Each chosen `FrozenBatchNorm` becomes the batch norm it replaced (same
    class and settings, trainable), or a `ManualBatchNorm` with its settings
    when it was made directly, with its current weights.

    Args:
        model: A built Keras model.
        layers: Which frozen layers to unfreeze, as for `freeze_batch_norm`.
            Defaults to `None` (all).

    Returns:
        A new `keras.Model`.

    Raises:
        ValueError: `layers` selects no `FrozenBatchNorm`.
        TypeError: `model` is not a Keras model, or `layers` is of another type.
    """
    return _swap(model, layers, "unfreeze_batch_norm", lambda layer: isinstance(layer, FrozenBatchNorm), _unfrozen)
