"""`convert_batch_norm`: swap every `keras.layers.BatchNormalization` of a model for a `ManualBatchNorm`, or back."""

import inspect

import keras

from keras_bn import _graph
from keras_bn.batch_norm import ManualBatchNorm

__all__ = ["convert_batch_norm"]

# What ManualBatchNorm has beyond Keras 3's layer, with the value that Keras's
# layer computes like, and why Keras's layer cannot take anything else.
_MANUAL_ONLY = {
    "virtual_batch_size": (None, "Keras 3's BatchNormalization has no ghost batches"),
    "unbiased_variance": (False, "Keras 3's BatchNormalization keeps the biased variance"),
}


def _manual_options():
    """Returns the names of `ManualBatchNorm`'s constructor arguments."""
    return [name for name in inspect.signature(ManualBatchNorm.__init__).parameters if name not in ("self", "kwargs")]


def _config(layer, options):
    """Returns `layer`'s config with `options` on top, ready for a constructor."""
    config = {**layer.get_config(), **options}
    if isinstance(config.get("dtype"), dict):
        config["dtype"] = keras.dtype_policies.deserialize(config["dtype"])
    return config


def _to_manual(layer, options):
    """Returns a `ManualBatchNorm` configured like the Keras `layer`, with `options` on top."""
    # The constructor, not from_config: its errors name the option as given.
    return ManualBatchNorm(**_config(layer, options))


def _keras_incompatibilities(config):
    """Returns why a `ManualBatchNorm` config cannot become a Keras `BatchNormalization`, one line each."""
    problems = []
    for key, (plain, why) in _MANUAL_ONLY.items():
        if config.get(key, plain) != plain:
            problems.append(f"{key}={config[key]!r} ({why})")
    if config["momentum"] is None:
        problems.append("momentum=None (Keras 3's BatchNormalization has no cumulative average)")
    axis = config["axis"]
    if isinstance(axis, (list, tuple)) and len(axis) != 1:
        problems.append(f"axis={axis!r} (Keras 3's BatchNormalization takes one axis)")
    if config["synchronized"] and keras.backend.backend() != "tensorflow":
        problems.append("synchronized=True (Keras 3 synchronizes only on the TensorFlow backend)")
    return problems


def _to_keras(layer, options):
    """Returns a Keras `BatchNormalization` configured like the `ManualBatchNorm` `layer`, or raises."""
    config = _config(layer, options)
    problems = _keras_incompatibilities(config)
    if problems:
        return None, problems
    for key in _MANUAL_ONLY:
        config.pop(key, None)
    # Which kernel computes it is ManualBatchNorm's choice; the maths is the same.
    config.pop("fused", None)
    if isinstance(config["axis"], (list, tuple)):
        config["axis"] = config["axis"][0]
    return keras.layers.BatchNormalization(**config), []


def convert_batch_norm(model, *, to="manual", **options):
    """Returns a new model with every batch normalization swapped for `ManualBatchNorm` (or back).

    With `to="manual"`, each `keras.layers.BatchNormalization` of `model`, in
    nested Sequential and Functional models too, becomes a `ManualBatchNorm`
    with the same configuration (axis, momentum, epsilon, center, scale,
    initializers, regularizers, constraints, renorm, synchronized, trainable,
    dtype policy) and the same weights, plus the `ManualBatchNorm` options
    given as keyword arguments, e.g. `virtual_batch_size=8`,
    `unbiased_variance=True` or `synchronized=True`. With the default options
    the new model computes what the original computes, in inference and in
    training mode (outputs, moving statistics, gradients), to float32
    round-off.

    With `to="keras"`, each `ManualBatchNorm` becomes a
    `keras.layers.BatchNormalization`. Options that Keras's layer does not
    have (ghost batches, the unbiased or cumulative statistics, several axes,
    `synchronized` outside TensorFlow) cannot be converted: the call raises
    and names every such layer and option, and nothing is converted.

    Every other layer, and every weight, is copied; the original model is not
    modified, and the new model is returned uncompiled. A weight that only the
    new layer has starts at its initial value: converting to
    `ManualBatchNorm(momentum=None)` starts its batch count at 0, so its first
    training batch replaces the moving statistics.

    Args:
        model: A built Sequential or Functional Keras model.
        to: `"manual"` (to `ManualBatchNorm`) or `"keras"` (to
            `keras.layers.BatchNormalization`). Defaults to `"manual"`.
        **options: Constructor arguments set on every converted layer, on top
            of the configuration it had.

    Returns:
        A new `keras.Model` of the same class.

    Raises:
        ValueError: `model` cannot be rebuilt (subclassed, or never built),
            `to` is neither `"manual"` nor `"keras"`, or some layer cannot be
            converted `to="keras"`.
        TypeError: an option that the target layer does not take.

    Example:

    >>> import numpy as np
    >>> import keras
    >>> from keras_bn import convert_batch_norm
    >>> model = keras.Sequential([
    ...     keras.Input((4,)),
    ...     keras.layers.Dense(8),
    ...     keras.layers.BatchNormalization(momentum=0.9),
    ... ])
    >>> manual = convert_batch_norm(model, virtual_batch_size=4)
    >>> bn = manual.layers[1]
    >>> type(bn).__name__, bn.momentum, bn.virtual_batch_size
    ('ManualBatchNorm', 0.9, 4)
    >>> x = np.random.default_rng(0).normal(size=(8, 4)).astype("float32")
    >>> bool(np.allclose(manual.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6))
    True
    >>> type(convert_batch_norm(convert_batch_norm(model), to="keras").layers[1]).__name__
    'BatchNormalization'
    """
    _graph.check_model(model, "convert_batch_norm")
    if to == "manual":
        allowed = _manual_options()
        source = keras.layers.BatchNormalization
    elif to == "keras":
        allowed = [name for name in _manual_options() if name not in _MANUAL_ONLY]
        source = ManualBatchNorm
    else:
        raise ValueError(f'`to` must be "manual" or "keras". Received: to={to!r}')
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise TypeError(
            f"convert_batch_norm(to={to!r}) takes the options {', '.join(allowed)}. "
            f"Received unknown option(s): {', '.join(unknown)}"
        )
    _graph.refuse_hidden(model, lambda layer: type(layer) is source, "convert_batch_norm")

    converted, refused = set(), []

    def replace(path, layer):
        # Exact type: a subclass of the layer may compute something else.
        if type(layer) is not source:
            return None
        if to == "manual":
            new_layer = _to_manual(layer, options)
        else:
            new_layer, problems = _to_keras(layer, options)
            if problems:
                refused.append(f"{path!r}: {'; '.join(problems)}")
                return None
        converted.add(path)
        return new_layer

    def weights_for(path, old, new):
        return _graph.weights_by_name(old) if path in converted else None

    new_model = _graph.rebuild(model, replace, weights_for)
    if refused:
        raise ValueError(
            "convert_batch_norm(to='keras') cannot convert these ManualBatchNorm "
            "layers, whose options Keras's BatchNormalization lacks:\n  " + "\n  ".join(refused)
        )
    return new_model
