"""`fold_batch_norm`: merge inference-mode batch normalization into the layer before it."""

import dataclasses

import numpy as np

import keras

from keras_bn import _graph
from keras_bn.batch_norm import ManualBatchNorm

__all__ = ["FoldReport", "FoldedBatchNorm", "fold_batch_norm"]

_BATCH_NORMS = (keras.layers.BatchNormalization, ManualBatchNorm)


@keras.saving.register_keras_serializable(package="keras_bn")
class FoldedBatchNorm(keras.layers.Layer):
    """Marks where `fold_batch_norm` folded a batch normalization away: returns its input unchanged.

    It keeps the folded model's layer names and structure readable (and its
    `.keras` file loadable) at no cost; it has no weights.

    Call arguments:
        inputs: Any tensor.
        training: Ignored.
        mask: Ignored (and passed on).
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.supports_masking = True

    def call(self, inputs, training=None, mask=None):
        return inputs

    def compute_output_shape(self, input_shape):
        return input_shape


def _weight_to_scale(layer):
    """Returns `(weight name, how its output channels are laid out)` for a layer a batch norm folds into.

    The layout is `"last"` when the output channel is the kernel's last axis,
    `"depthwise"` for a depthwise kernel `(..., in, multiplier)` whose output
    channel `c * multiplier + m` spans its last two axes, or `None` when the
    layer cannot take a fold.
    """
    if isinstance(layer, (keras.layers.SeparableConv1D, keras.layers.SeparableConv2D)):
        return "pointwise_kernel", "last"
    if isinstance(layer, (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D)):
        return "kernel", "depthwise"
    if isinstance(layer, (keras.layers.Dense, keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)):
        return "kernel", "last"
    return None


@dataclasses.dataclass(frozen=True)
class FoldReport:
    """What `fold_batch_norm` did: which batch norms it folded, and why it kept the others.

    Paths are layer names, `"outer/inner"` inside a nested model.

    Attributes:
        folded: `{batch norm path: path of the layer it was folded into}`.
        kept: `{batch norm path: why it was kept}`.
    """

    folded: dict
    kept: dict

    def __str__(self):
        lines = [f"Folded {len(self.folded)} batch norm(s), kept {len(self.kept)}."]
        lines += [f"  folded {bn} into {linear}" for bn, linear in self.folded.items()]
        lines += [f"  kept {bn}: {why}" for bn, why in self.kept.items()]
        return "\n".join(lines)


def _why_not_foldable(bn_site, found):
    """Returns `(linear site, None)` if the batch norm at `bn_site` folds, else `(None, reason)`."""
    bn = bn_site.layer
    if len(bn_site.inputs) != 1:
        return None, f"it is called {len(bn_site.inputs)} times (a shared layer)"
    if bn_site.calls[0].get("training") is True:
        return None, "it is called with training=True, so it always uses batch statistics"
    (ref,) = bn_site.inputs[0] if len(bn_site.inputs[0]) == 1 else (None,)
    if ref is None:
        return None, "its input is not the output of a layer in the same model"
    producer = found[ref[0]]
    linear = producer.layer
    kind = _weight_to_scale(linear)
    if kind is None:
        return None, f"its input comes from {type(linear).__name__} {producer.path!r}, which cannot absorb it"
    if len(producer.inputs) != 1:
        return None, f"{producer.path!r} is called {len(producer.inputs)} times (a shared layer)"
    activation = getattr(linear, "activation", None)
    if activation is not None and activation is not keras.activations.linear:
        name = getattr(activation, "__name__", repr(activation))
        return None, f"{producer.path!r} applies the activation {name!r} before it"
    others = [c for c in producer.consumers.get(ref[1:], []) if c != bn_site.path]
    if others:
        return None, f"{producer.path!r}'s output also feeds {', '.join(others)}, which folding would change"
    rank = len(linear.output.shape)
    channel_axis = 1 if getattr(linear, "data_format", None) == "channels_first" else rank - 1
    axes = bn.axis if isinstance(bn.axis, (list, tuple)) else [bn.axis]
    if len(axes) != 1 or axes[0] % rank != channel_axis:
        return None, f"its axis {bn.axis!r} is not the channel axis ({channel_axis}) of {producer.path!r}"
    return producer, None


def _folded_weights(linear, bn):
    """Returns `{name: array}` for `linear` with `bn`'s inference transform folded in (float64 maths)."""
    stats = {name: value.astype("float64") for name, value in _graph.weights_by_name(bn).items()}
    channels = stats["moving_mean"].shape
    gamma = stats.get("gamma", np.ones(channels)) if bn.scale else np.ones(channels)
    beta = stats.get("beta", np.zeros(channels)) if bn.center else np.zeros(channels)
    scale = gamma / np.sqrt(stats["moving_variance"] + bn.epsilon)
    weights = {name: value.astype("float64") for name, value in _graph.weights_by_name(linear).items()}
    kernel_name, layout = _weight_to_scale(linear)
    kernel = weights[kernel_name]
    if layout == "depthwise":
        kernel = kernel * scale.reshape(kernel.shape[-2:])
    else:
        # Every kernel here is laid out (..., in, out), whatever the data format.
        kernel = kernel * scale
    bias = weights.get("bias", np.zeros(channels))
    weights[kernel_name] = kernel
    weights["bias"] = (bias - stats["moving_mean"]) * scale + beta
    return weights


def fold_batch_norm(model, *, verbose=False, return_report=False):
    """Returns a new inference model with batch normalization folded into the preceding layers.

    In inference mode a batch normalization is a fixed affine map per channel,
    `y = scale * x + shift` with `scale = gamma / sqrt(moving_variance + epsilon)`
    and `shift = beta - moving_mean * scale`. When it directly follows a layer
    that ends in a per-output-channel linear map, with no activation, that map
    folds into the layer's weights:

        kernel' = kernel * scale          (per output channel)
        bias'   = (bias - moving_mean) * scale + beta

    The layers that take a fold are `Dense`, `Conv1D`/`Conv2D`/`Conv3D`,
    `DepthwiseConv1D`/`DepthwiseConv2D` (output channel `c * multiplier + m`)
    and `SeparableConv1D`/`SeparableConv2D` (into the pointwise kernel), in
    nested Sequential and Functional models too. Each folded
    `BatchNormalization` or `ManualBatchNorm` is replaced by a
    `FoldedBatchNorm` of the same name, a no-op that shows where the folding
    happened. A batch norm is kept, with its weights, when folding could
    change any prediction: when the layer's output also feeds another layer
    (a residual `Add`, a `Concatenate`, ...) or is a model output, when the
    layer applies an activation or is shared, when the normalization is over
    another axis than the layer's channels, or when it is called with
    `training=True`. The original model is not modified.

    Folding is for inference only: the folded model has no batch statistics
    to train with, and it is returned uncompiled.

    Args:
        model: A built Sequential or Functional Keras model.
        verbose: Whether to print which batch norms were folded and why the
            others were kept. Defaults to `False`.
        return_report: Whether to return `(folded_model, FoldReport)` instead
            of the model alone. Defaults to `False`.

    Returns:
        A new `keras.Model` of the same class with the same inputs and
        outputs, or `(model, FoldReport)` with `return_report=True`.

    Raises:
        ValueError: `model` is a subclassed model (its graph cannot be
            rebuilt) or was never built.

    Example:

    >>> import numpy as np
    >>> import keras
    >>> from keras_bn import ManualBatchNorm, fold_batch_norm
    >>> model = keras.Sequential([
    ...     keras.Input((8,)),
    ...     keras.layers.Dense(4, use_bias=False, name="dense"),
    ...     ManualBatchNorm(name="bn"),
    ...     keras.layers.ReLU(),
    ... ])
    >>> x = np.random.default_rng(0).normal(size=(16, 8)).astype("float32")
    >>> _ = model(x, training=True)  # move the moving statistics
    >>> folded, report = fold_batch_norm(model, return_report=True)
    >>> [layer.__class__.__name__ for layer in folded.layers]
    ['Dense', 'FoldedBatchNorm', 'ReLU']
    >>> print(report)
    Folded 1 batch norm(s), kept 0.
      folded bn into dense
    >>> bool(np.allclose(folded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5))
    True
    """
    _graph.check_rebuildable(model, "fold_batch_norm")
    serialized = keras.saving.serialize_keras_object(model)
    found = _graph.sites(model, serialized)
    folded, kept, into = {}, {}, {}
    for path, site in found.items():
        if not isinstance(site.layer, _BATCH_NORMS):
            continue
        producer, reason = _why_not_foldable(site, found)
        if producer is None:
            kept[path] = reason
            continue
        folded[path] = producer.path
        into[producer.path] = site.layer
        # Same dtype policy: a float32 no-op would upcast a mixed-precision model.
        marker = FoldedBatchNorm(name=site.layer.name, dtype=site.layer.dtype_policy.name)
        _graph.replace_entry(site.entry, marker)
        producer.entry["config"]["use_bias"] = True

    def weights_for(path, old, new):
        return _folded_weights(old, into[path]) if path in into else None

    new_model = _graph.rebuild(model, serialized, weights_for)
    report = FoldReport(folded=folded, kept=kept)
    if verbose:
        print(report)
    return (new_model, report) if return_report else new_model
