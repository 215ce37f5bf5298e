"""`fold_batch_norm`: merge inference-mode batch normalization into the layer before it, or after it."""

import dataclasses

import keras
import numpy as np

from keras_bn import _fold_rules, _graph

__all__ = ["FoldReport", "FoldedBatchNorm", "fold_batch_norm"]


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


@dataclasses.dataclass(frozen=True)
class FoldReport:
    """What `fold_batch_norm` did: which batch norms it folded, and why it kept the others.

    Paths are layer names, `"outer/inner"` inside a nested model.

    Attributes:
        folded: `{batch norm path: path of the layer it was folded into}`.
        kept: `{batch norm path: why it was kept}`.
        forward: The paths, among `folded`, of the batch norms folded forward,
            into the `Dense` after them; the others went into the layer
            before them. Defaults to `()`.
    """

    folded: dict
    kept: dict
    forward: tuple = ()

    def __str__(self):
        lines = [f"Folded {len(self.folded)} batch norm(s), kept {len(self.kept)}."]
        for bn, linear in self.folded.items():
            lines.append(f"  folded {bn} {'forward into' if bn in self.forward else 'into'} {linear}")
        lines += [f"  kept {bn}: {why}" for bn, why in self.kept.items()]
        return "\n".join(lines)


def _affine(bn):
    """Returns `(scale, shift)`, float64 arrays per channel, of `bn`'s inference map `scale * x + shift`."""
    stats = {name: value.astype("float64") for name, value in _graph.weights_by_name(bn).items()}
    channels = stats["moving_mean"].shape
    gamma = stats.get("gamma", np.ones(channels)) if bn.scale else np.ones(channels)
    beta = stats.get("beta", np.zeros(channels)) if bn.center else np.zeros(channels)
    scale = gamma / np.sqrt(stats["moving_variance"] + bn.epsilon)
    return scale, beta - stats["moving_mean"] * scale


def _scale_outputs(kernel, layout, scale):
    """Returns `kernel` with each output channel multiplied by its `scale`."""
    if layout == "depthwise":
        return kernel * scale.reshape(kernel.shape[-2:])
    if layout == "transposed":
        return kernel * scale[:, None]  # (..., out, in), whatever the data format
    return kernel * scale  # (..., in, out), whatever the data format


def _folded_weights(linear, backward=None, forward=None):
    """Returns `{name: array}` for `linear` with the batch norms after it (`backward`) and before it folded in.

    The maths is in float64; the weights are stored in their variables' dtypes.
    """
    weights = {name: value.astype("float64") for name, value in _graph.weights_by_name(linear).items()}
    kernel_name, layout = _fold_rules.weight_to_scale(linear)
    kernel, bias = weights[kernel_name], weights.get("bias", np.float64(0.0))
    if forward is not None:
        # Dense(scale * x + shift) = x @ (scale * kernel) + (shift @ kernel + bias),
        # the scale on the rows of the (in, out) kernel.
        scale, shift = _affine(forward)
        kernel, bias = kernel * scale[:, None], shift @ kernel + bias
    if backward is not None:
        scale, shift = _affine(backward)
        kernel, bias = _scale_outputs(kernel, layout, scale), bias * scale + shift
    weights[kernel_name], weights["bias"] = kernel, bias
    return weights


def fold_batch_norm(model, *, verbose=False, return_report=False):
    """Returns a new inference model with batch normalization folded into the layers next to it.

    In inference mode a batch normalization is a fixed affine map per channel,
    `y = scale * x + shift` with `scale = gamma / sqrt(moving_variance + epsilon)`
    and `shift = beta - moving_mean * scale`. When it directly follows a layer
    that ends in a per-output-channel linear map, with no activation, that map
    folds backward, into the layer's weights:

        kernel' = kernel * scale          (per output channel)
        bias'   = (bias - moving_mean) * scale + beta

    The layers that take a fold are `Dense`, `Conv1D`/`Conv2D`/`Conv3D`,
    `Conv1DTranspose`/`Conv2DTranspose`/`Conv3DTranspose` (whose kernel holds
    the output channel on its second-to-last axis),
    `DepthwiseConv1D`/`DepthwiseConv2D` (output channel `c * multiplier + m`)
    and `SeparableConv1D`/`SeparableConv2D` (into the pointwise kernel).
    Where that is not possible (after a model input, an activation or a
    pooling), a batch norm over the last axis whose output goes to one
    `Dense` alone folds forward, into that `Dense`, which contracts that axis:

        kernel' = scale[:, None] * kernel   (per input unit: the kernel's rows)
        bias'   = shift @ kernel + bias

    Convolutions do not take a fold forward: where they pad their input, it
    would not be exact (the folding guide lists the cases). Folding works at
    any depth of nested Sequential and Functional models, Functional
    subclasses such as keras-hub backbones and tasks included. Plain
    operations in the graph (`x + 3`, `keras.ops.pad`, ...), `Lambda` layers
    and masks pass through unchanged. Each folded `BatchNormalization`,
    `ManualBatchNorm` or `FrozenBatchNorm` is replaced by a `FoldedBatchNorm`
    of the same name, a no-op that shows where the folding happened. A batch
    norm is kept, with its weights, when folding could change any prediction:
    when the layer's output also feeds another layer (a residual `Add`, a
    `Concatenate`, ...) or is a model output, when the layer applies an
    activation or is shared, when it has a LoRA update or a quantized kernel,
    when the normalization is over another axis than the layer's channels,
    when a `Dense` after it computes in a narrower dtype than it (its input
    would be rounded before it is normalized), or when it is called with
    `training=True`. Inside custom layers (a `call` in Python, as keras-hub's
    blocks) and subclassed models the same rules apply: the tools see their
    sub-layers through a graph made from their `call` (see the "Custom
    layers" guide); the batch norms of one that cannot be turned into a graph
    are kept, with the reason. The report gives the reason for each kept layer. The
    original model's weights and predictions are not modified.

    Folding is for inference only: the folded model has no batch statistics
    to train with, and it is returned uncompiled.

    Args:
        model: A built Keras model. A subclassed model with its own `call`
            is copied through its config with every batch norm kept.
        verbose: Whether to print which batch norms were folded and why the
            others were kept. Defaults to `False`.
        return_report: Whether to return `(folded_model, FoldReport)` instead
            of the model alone. Defaults to `False`.

    Returns:
        A new `keras.Model` with the same inputs and outputs: of the same
        class when that class is Sequential, Functional or built like it, a
        plain Functional `keras.Model` for a Functional subclass with another
        constructor (a keras-hub backbone); or `(model, FoldReport)` with
        `return_report=True`.

    Raises:
        TypeError: `model` is not a `keras.Model`.
        ValueError: `model` was never built, or a layer (or a subclassed
            model) cannot be rebuilt from its config.

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
    _graph.check_model(model, "fold_batch_norm")
    forward = ()
    graph_model, why = _as_graph(model)
    if graph_model is None:
        new_model, folded, kept = _graph.copy_opaque(model, "fold_batch_norm"), {}, _hidden(model, why=why)
    else:
        new_model, folded, kept, forward = _fold_graph(graph_model)
    report = FoldReport(folded=folded, kept=kept, forward=forward)
    if verbose:
        print(report)
    return (new_model, report) if return_report else new_model


def _is_batch_norm(path, layer):
    """The tools' `reach` for folding: the batch norms and frozen ones, subclasses included (and then kept)."""
    return _graph.folds_like_batch_norm(layer)


def _as_graph(model):
    """Returns `(model, None)` for a graph model, `(its stand-in, None)` for a subclassed one, else `(None, why)`."""
    if _graph.is_graph_model(model):
        return model, None
    if not any(_is_batch_norm(*item) for item in _graph.sublayers(model).items()):
        return None, None
    try:
        return _graph.model_stand_in(model), None
    except _graph.NotInlined as why:
        return None, str(why)


def _hidden(model, graph=None, why=None):
    """Returns `{path: why it is kept}` for the batch norms that no graph shows.

    Those are the batch norms of a subclassed `model` that has no stand-in
    (`graph` is `None`, `why` says why), or those inside the custom layers
    that `graph`'s trace could not turn into graphs of their sub-layers.
    """
    if graph is None:
        return {path: f"it is inside the subclassed model {model.name!r}, which keras-bn cannot turn into a "
                      f"graph: {why}" for path, layer in _graph.sublayers(model).items() if _is_batch_norm(path, layer)}
    calls = [(path, calls[0].operation, None) for path, calls in graph.calls.items()]
    return {path: f"it is inside {where!r} ({type(layer).__name__}), whose call() keras-bn cannot turn into a "
                  f"graph: {why}" for path, (where, layer, why) in _graph.unreached(graph.opaque, calls, _is_batch_norm).items()}


def _fold_graph(model):
    """Folds the batch norms of a graph model; returns `(new model, folded, kept, forward)`."""
    graph = _graph.trace(model, reach=_is_batch_norm)
    folded, kept, forward = {}, _hidden(model, graph), []
    into = {}  # {layer path: {"backward": batch norm after it, "forward": batch norm before it}}
    for path, calls in graph.calls.items():
        if not _graph.folds_like_batch_norm(calls[0].operation):
            continue
        target, direction, reason = _fold_rules.where_to_fold(path, graph)
        if target is None:
            kept[path] = reason
            continue
        folded[path] = target.path
        into.setdefault(target.path, {})[direction] = calls[0].operation
        if direction == "forward":
            forward.append(path)

    def replace(path, layer):
        if path in folded:
            # Same dtype policy: a float32 no-op would upcast a mixed-precision model.
            return FoldedBatchNorm(name=layer.name, dtype=layer.dtype_policy.name)
        if path in into:
            return type(layer).from_config({**layer.get_config(), "use_bias": True})
        return None

    def weights_for(path, old, new):
        return _folded_weights(old, **into[path]) if path in into else None

    new_model = _graph.rebuild(model, replace, weights_for, reach=_is_batch_norm, custom_layers="keep")
    return new_model, folded, kept, tuple(forward)
