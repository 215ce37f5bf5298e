"""`convert_batch_norm`: swap the batch norms of a model for `ManualBatchNorm`, Keras's layer, or another normalization."""

import dataclasses
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


# Options of Keras's layer newer than keras-bn's oldest Keras (pyproject.toml): the
# release that added each and the arguments that come with it. On an older Keras
# they are left out while the option is off, and the conversion is refused when on.
_KERAS_ADDED = {"renorm": ("3.14", ("renorm", "renorm_clipping", "renorm_momentum"))}


def _keras_arguments():
    """Returns the keyword arguments the installed Keras's `BatchNormalization` takes, its base `Layer`'s included."""
    names = set()
    for cls in (keras.layers.BatchNormalization, keras.layers.Layer):
        parameters = inspect.signature(cls.__init__).parameters.values()
        names.update(p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
    return names - {"self"}


def _for_installed_keras(config):
    """Returns `(config, problems)`: `config` without what the installed Keras's layer lacks, and why that matters."""
    accepted = _keras_arguments()
    defaults = inspect.signature(ManualBatchNorm.__init__).parameters
    config, problems = dict(config), []
    for option, (since, keys) in _KERAS_ADDED.items():
        if option in accepted:
            continue
        if config.get(option, defaults[option].default) != defaults[option].default:
            problems.append(f"{option}={config[option]!r} (the installed Keras {keras.version()}'s "
                            f"BatchNormalization has no {option}; it needs Keras {since} or later)")
        for key in keys:
            config.pop(key, None)
    for key in sorted(set(config) - accepted):
        problems.append(f"{key}={config[key]!r} (the installed Keras {keras.version()}'s "
                        f"BatchNormalization does not take {key})")
    return config, problems


def _to_keras(layer, options):
    """Returns a Keras `BatchNormalization` configured like the `ManualBatchNorm` `layer`, or raises."""
    config = _config(layer, options)
    problems = _keras_incompatibilities(config)
    for key in _MANUAL_ONLY:
        config.pop(key, None)
    # Which kernel computes it is ManualBatchNorm's choice; the maths is the same.
    config.pop("fused", None)
    config, lacking = _for_installed_keras(config)
    if problems or lacking:
        return None, problems + lacking
    if isinstance(config["axis"], (list, tuple)):
        config["axis"] = config["axis"][0]
    return keras.layers.BatchNormalization(**config), []


def _one_axis(layer, target):
    """Returns `layer`'s single channel axis, or `(None, problem)` when it normalizes over several."""
    axis = layer.axis
    if isinstance(axis, (list, tuple)):
        if len(axis) != 1:
            return None, f"axis={axis!r} ({target} takes one channel axis here)"
        axis = axis[0]
    return axis, None


def _affine_config(layer, options):
    """Returns the arguments a Keras normalization layer shares with the batch norm `layer`."""
    config = layer.get_config()
    keys = ("epsilon", "center", "scale", "beta_initializer", "gamma_initializer", "beta_regularizer",
            "gamma_regularizer", "beta_constraint", "gamma_constraint", "name", "trainable")
    shared = {key: config[key] for key in keys if key in config}
    return {**shared, "dtype": layer.dtype_policy.name, **options}


def _to_group_norm(layer, options):
    """Returns a `GroupNormalization` over `layer`'s channels with `options["groups"]` groups."""
    axis, problem = _one_axis(layer, "GroupNormalization")
    if problem:
        return None, [problem]
    return keras.layers.GroupNormalization(axis=axis, **_affine_config(layer, options)), []


def _to_layer_norm(layer, options):
    """Returns a `LayerNormalization` over `layer`'s channel axis."""
    axis, problem = _one_axis(layer, "LayerNormalization")
    if problem:
        return None, [problem]
    return keras.layers.LayerNormalization(axis=axis, **_affine_config(layer, options)), []


def _with_synchronized(value):
    """Returns a converter to the same kind of batch norm with `synchronized=value`."""

    def convert(layer, options):
        if isinstance(layer, ManualBatchNorm) or (value and keras.backend.backend() != "tensorflow"):
            # Keras 3's own layer synchronizes only on TensorFlow.
            return ManualBatchNorm(**_config(layer, {**options, "synchronized": value})), []
        return keras.layers.BatchNormalization(**_config(layer, {**options, "synchronized": value})), []

    return convert


@dataclasses.dataclass(frozen=True)
class _Target:
    """One `to=` of `convert_batch_norm`: which layers it converts, into what, and the options it takes."""

    converts: object  # (layer) -> bool
    make: object  # (layer, options) -> (new layer or None, problems)
    options: tuple
    required: tuple = ()


_NORM_OPTIONS = ("epsilon", "center", "scale")
_TARGETS = {
    "manual": _Target(lambda layer: type(layer) is keras.layers.BatchNormalization,
                      lambda layer, options: (_to_manual(layer, options), []), tuple(_manual_options())),
    "keras": _Target(lambda layer: type(layer) is ManualBatchNorm, _to_keras,
                     tuple(name for name in _manual_options() if name not in _MANUAL_ONLY)),
    "synchronized": _Target(_graph.is_exact_batch_norm, _with_synchronized(True), ()),
    "unsynchronized": _Target(lambda layer: _graph.is_exact_batch_norm(layer) and layer.synchronized,
                              _with_synchronized(False), ()),
    "group_norm": _Target(_graph.is_exact_batch_norm, _to_group_norm, ("groups",) + _NORM_OPTIONS, ("groups",)),
    "layer_norm": _Target(_graph.is_exact_batch_norm, _to_layer_norm, _NORM_OPTIONS),
    "identity": _Target(_graph.is_exact_batch_norm,
                        lambda layer, options: (keras.layers.Identity(name=layer.name), []), ()),
}


def _check_options(to, options):
    """Returns the `_Target` for `to`, or raises for an unknown target or option."""
    if to not in _TARGETS:
        raise ValueError(f"`to` must be one of {', '.join(map(repr, _TARGETS))}. Received: to={to!r}")
    target = _TARGETS[to]
    unknown = sorted(set(options) - set(target.options))
    if unknown:
        raise TypeError(
            f"convert_batch_norm(to={to!r}) takes the options {', '.join(target.options) or '(none)'}. "
            f"Received unknown option(s): {', '.join(unknown)}"
        )
    missing = [name for name in target.required if name not in options]
    if missing:
        raise TypeError(f"convert_batch_norm(to={to!r}) needs the option(s) {', '.join(missing)}, "
                        f"e.g. convert_batch_norm(model, to={to!r}, groups=8)")
    return target


#: What a batch norm that `convert_batch_norm` kept inside a custom layer does, and the way out.
_KEPT_UNCONVERTED = (
    "They are left unconverted and still compute what they computed (batch statistics in "
    "training, moving statistics in inference). To convert them, build those custom layers "
    "with the layer you want in place, or make them follow the rules above."
)


def convert_batch_norm(model, *, to="manual", custom_layers="raise", **options):
    """Returns a new model with its batch normalizations swapped for another layer, weights included.

    - `to="manual"`: each `keras.layers.BatchNormalization` becomes a
      `ManualBatchNorm` with the same configuration (axis, momentum, epsilon,
      center, scale, initializers, regularizers, constraints, renorm,
      synchronized, trainable, dtype policy) and the same weights, plus the
      `ManualBatchNorm` options given as keyword arguments, e.g.
      `virtual_batch_size=8`, `unbiased_variance=True` or
      `synchronized=True`. With the default options the new model computes
      what the original computes, in inference and in training mode
      (outputs, moving statistics, gradients), to float32 round-off.
    - `to="keras"`: each `ManualBatchNorm` becomes a
      `keras.layers.BatchNormalization`. Options that Keras's layer does not
      have (ghost batches, the unbiased or cumulative statistics, several
      axes, `synchronized` outside TensorFlow, `renorm` before Keras 3.14)
      cannot be converted: the call raises and names every such layer and
      option, and nothing is converted.
    - `to="synchronized"` and `to="unsynchronized"`: every batch norm
      (Keras's or `ManualBatchNorm`) synchronizes its statistics across
      replicas, or stops doing so (PyTorch's `convert_sync_batchnorm` and
      mmcv's `revert_sync_batchnorm`). Each keeps its class, but for Keras's
      layer off TensorFlow, which becomes a `ManualBatchNorm`: Keras 3
      synchronizes only on TensorFlow.
    - `to="group_norm"` (with `groups=`), `to="layer_norm"` and
      `to="identity"`: every batch norm becomes a
      `keras.layers.GroupNormalization`, a `keras.layers.LayerNormalization`
      over the same channel axis, or a `keras.layers.Identity` (Opacus's
      conversions, for per-example or tiny batches and differentially
      private training, where batch statistics are not allowed). `gamma` and
      `beta` carry over; the moving statistics have nowhere to go, so the
      new model computes something else and needs fine-tuning. `epsilon`,
      `center` and `scale` may be set anew.

    Batch norms anywhere in the model's graph are converted: in nested
    Sequential and Functional models and Functional subclasses (keras-hub
    backbones and tasks) too, and inside custom layers whose `call` is
    Python (keras-hub's MobileNet, EfficientNet, HGNetV2 and MobileNetV5
    blocks): such a layer comes back as a Functional model of the same name
    over its sub-layers, and a subclassed model as a Functional model (see
    the "Custom layers" guide). A batch norm inside a custom layer that
    cannot be turned into a graph (its `call` branches on `training` in
    Python, say) makes the call raise, naming each with the reason, unless
    `custom_layers="keep"` leaves them as they are. Every other layer, and
    every weight, is copied; the original model is not modified. A weight that only the new layer has starts at its
    initial value: converting to `ManualBatchNorm(momentum=None)` starts its
    batch count at 0, so its first training batch replaces the moving
    statistics.

    Args:
        model: A built Keras model.
        to: `"manual"`, `"keras"`, `"synchronized"`, `"unsynchronized"`,
            `"group_norm"`, `"layer_norm"` or `"identity"`. Defaults to
            `"manual"`.
        custom_layers: What to do with batch norms inside custom layers
            that cannot be turned into graphs: `"raise"` a `ValueError` that
            names them, or `"keep"` them unconverted, with a `UserWarning`
            that names them. Defaults to `"raise"`.
        **options: Constructor arguments set on every converted layer, on top
            of the configuration it had.

    Returns:
        A new `keras.Model`, uncompiled unless `model` was compiled.

    Raises:
        ValueError: `model` was never built, `to` is unknown, some layer
            cannot be converted, or a batch norm sits inside a custom layer
            that cannot be turned into a graph.
        TypeError: `model` is not a Keras model, an option that the target
            does not take, or a required option is missing.

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
    >>> type(convert_batch_norm(model, to="group_norm", groups=2).layers[1]).__name__
    'GroupNormalization'
    """
    _graph.check_model(model, "convert_batch_norm")
    target = _check_options(to, options)
    converted, refused, kept = set(), [], {}

    def replace(path, layer):
        if not target.converts(layer):
            return None
        new_layer, problems = target.make(layer, options)
        if problems:
            refused.append(f"{path!r}: {'; '.join(problems)}")
            return None
        converted.add(path)
        return new_layer

    def weights_for(path, old, new):
        return _graph.weights_by_name(old) if path in converted else None

    new_model = _graph.rebuild(model, replace, weights_for, reach=lambda path, layer: target.converts(layer),
                               caller="convert_batch_norm", custom_layers=custom_layers, kept=kept)
    if refused:
        raise ValueError(
            f"convert_batch_norm(to={to!r}) cannot convert these layers, whose options the "
            "target lacks:\n  " + "\n  ".join(refused)
        )
    _graph.warn_kept("convert_batch_norm", kept, _KEPT_UNCONVERTED)
    return new_model
