"""`fold_batch_norm`: merge inference-mode batch normalization into the layer before it."""

import numpy as np

import keras

from keras_bn.batch_norm import ManualBatchNorm

__all__ = ["FoldedBatchNorm", "fold_batch_norm"]

_FOLDABLE_LINEAR = (
    keras.layers.Dense,
    keras.layers.Conv1D,
    keras.layers.Conv2D,
    keras.layers.Conv3D,
)
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


def _single_call_input(layer):
    """Returns the one symbolic tensor `layer` was called on, or `None` if there is no such tensor."""
    try:
        tensors = keras.tree.flatten(layer.input)
    except (AttributeError, ValueError):  # never called, or called more than once
        return None
    return tensors[0] if len(tensors) == 1 else None


def _producer(tensor):
    """Returns the layer that produced a symbolic tensor, or `None`."""
    history = getattr(tensor, "_keras_history", None)
    return getattr(history, "operation", None)


def _output_channel_axis(layer):
    """Returns the channel axis of `layer`'s output as a non-negative int."""
    rank = len(layer.output.shape)
    if getattr(layer, "data_format", "channels_last") == "channels_first":
        return 1
    return rank - 1


def _is_linear(layer):
    """Returns whether `layer` applies no activation after its affine map."""
    activation = getattr(layer, "activation", None)
    return activation is None or activation is keras.activations.linear


def _fold_pairs(model):
    """Returns `{bn_name: linear_layer}` for every batch norm that directly follows a foldable layer."""
    consumers = {}
    for layer in model.layers:
        tensor = _single_call_input(layer)
        if tensor is not None:
            consumers[id(tensor)] = consumers.get(id(tensor), 0) + 1
    pairs = {}
    for bn in model.layers:
        if not isinstance(bn, _BATCH_NORMS):
            continue
        tensor = _single_call_input(bn)
        linear = _producer(tensor) if tensor is not None else None
        if not isinstance(linear, _FOLDABLE_LINEAR) or not _is_linear(linear):
            continue
        if _single_call_input(linear) is None or consumers.get(id(tensor)) != 1:
            continue  # shared, or its output also feeds another layer
        if not isinstance(bn.axis, int) or bn.axis % len(tensor.shape) != _output_channel_axis(linear):
            continue
        if id(tensor) in {id(t) for t in keras.tree.flatten(model.outputs)}:
            continue  # the model returns the un-normalized tensor too
        pairs[bn.name] = linear
    return pairs


def _folded_weights(linear, bn):
    """Returns the kernel and bias of `linear` with `bn`'s inference transform folded in (float64 maths)."""
    weights = {w.name: keras.ops.convert_to_numpy(w).astype("float64") for w in bn.weights}
    channels = weights["moving_mean"].shape
    gamma = weights.get("gamma", np.ones(channels))
    beta = weights.get("beta", np.zeros(channels))
    scale = gamma / np.sqrt(weights["moving_variance"] + bn.epsilon)
    kernel = keras.ops.convert_to_numpy(linear.kernel).astype("float64")
    bias = (
        keras.ops.convert_to_numpy(linear.bias).astype("float64")
        if linear.use_bias
        else np.zeros(channels)
    )
    # Every kernel here is laid out (..., in, out): scaling the output channel
    # scales the last axis, whatever the data format.
    return kernel * scale, (bias - weights["moving_mean"]) * scale + beta


def fold_batch_norm(model):
    """Returns a new inference model with batch normalization folded into the preceding layers.

    In inference mode a batch normalization is a fixed affine map per channel,
    `y = scale * x + shift` with `scale = gamma / sqrt(moving_variance + epsilon)`
    and `shift = beta - moving_mean * scale`. When it directly follows a `Dense`
    or `Conv1D`/`Conv2D`/`Conv3D` layer with no activation, that map folds into
    the layer's weights:

        kernel' = kernel * scale          (per output channel)
        bias'   = (bias - moving_mean) * scale + beta

    so the folded model computes the same predictions with one layer fewer to
    run. Each folded `BatchNormalization` or `ManualBatchNorm` is replaced by a
    `FoldedBatchNorm` of the same name, a no-op that shows where the folding
    happened. Layers it cannot fold are kept as they are,
    with copies of their weights: a normalization after anything else
    (pooling, an activation, a layer whose output also goes elsewhere), over a
    different axis than the layer's channels, or with a list-valued `axis`.
    The original model is not modified.

    Folding is for inference only: the folded model has no batch statistics
    to train with.

    Args:
        model: A built Sequential or Functional Keras model.

    Returns:
        A new `keras.Model` of the same class with the same inputs and outputs.

    Raises:
        ValueError: `model` is a subclassed model (its graph cannot be
            rebuilt) or was never built.

    Example:

    >>> import numpy as np
    >>> import keras
    >>> from keras_bn import ManualBatchNorm, fold_batch_norm
    >>> model = keras.Sequential([
    ...     keras.Input((8,)),
    ...     keras.layers.Dense(4, use_bias=False),
    ...     ManualBatchNorm(),
    ...     keras.layers.ReLU(),
    ... ])
    >>> x = np.random.default_rng(0).normal(size=(16, 8)).astype("float32")
    >>> _ = model(x, training=True)  # move the moving statistics
    >>> folded = fold_batch_norm(model)
    >>> [layer.__class__.__name__ for layer in folded.layers]
    ['Dense', 'FoldedBatchNorm', 'ReLU']
    >>> bool(np.allclose(folded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5))
    True
    """
    if not isinstance(model, keras.Model) or not isinstance(
        model, (keras.Sequential, keras.src.models.Functional)
    ):
        raise ValueError(
            "fold_batch_norm needs a Sequential or Functional model, whose graph it "
            f"can rebuild. Received: model of type {type(model).__name__}"
        )
    if not model.built:
        raise ValueError(
            f"fold_batch_norm needs a built model. Received: model {model.name!r} "
            "that was never built (call it on data or give it an Input first)"
        )
    pairs = _fold_pairs(model)
    folded_linear = {linear.name: bn_name for bn_name, linear in pairs.items()}

    def clone_layer(layer):
        if layer.name in pairs:
            return FoldedBatchNorm(name=layer.name)
        config = layer.get_config()
        if layer.name in folded_linear:
            config["use_bias"] = True
        return layer.__class__.from_config(config)

    folded = keras.models.clone_model(model, clone_function=clone_layer)
    by_name = {layer.name: layer for layer in model.layers}
    for new_layer in folded.layers:
        if new_layer.name in pairs or not new_layer.weights:
            continue
        old = by_name[new_layer.name]
        if new_layer.name in folded_linear:
            kernel, bias = _folded_weights(old, by_name[folded_linear[new_layer.name]])
            new_layer.kernel.assign(kernel.astype(new_layer.kernel.dtype))
            new_layer.bias.assign(bias.astype(new_layer.bias.dtype))
        else:
            new_layer.set_weights(old.get_weights())
    return folded
