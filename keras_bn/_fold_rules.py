"""Where `fold_batch_norm` may fold a batch norm: the layers that take one, and why the others are kept."""

import keras

from keras_bn.batch_norm import ManualBatchNorm
from keras_bn.frozen import FrozenBatchNorm

#: The batch norms that fold.
BATCH_NORMS = (keras.layers.BatchNormalization, ManualBatchNorm, FrozenBatchNorm)

# Exact types: a subclass may compute something else in its call().
_SEPARABLE = (keras.layers.SeparableConv1D, keras.layers.SeparableConv2D)
_DEPTHWISE = (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D)
_LINEAR = (keras.layers.Dense, keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)


def weight_to_scale(layer):
    """Returns `(weight name, how its output channels are laid out)` for a layer a batch norm folds into.

    The layout is `"last"` when the output channel is the kernel's last axis,
    `"depthwise"` for a depthwise kernel `(..., in, multiplier)` whose output
    channel `c * multiplier + m` spans its last two axes, or `None` when the
    layer cannot take a fold.
    """
    if type(layer) in _SEPARABLE:
        return "pointwise_kernel", "last"
    if type(layer) in _DEPTHWISE:
        return "kernel", "depthwise"
    if type(layer) in _LINEAR:
        return "kernel", "last"
    return None


def _listed(items):
    """Returns `a`, `a and b` or `a, b and c`."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def why_not_foldable(path, graph):
    """Returns `(producer Call, None)` if the batch norm at `path` folds, else `(None, reason)`."""
    calls = graph.calls[path]
    bn = calls[0].operation
    if type(bn) not in BATCH_NORMS:
        return None, f"it is a {type(bn).__name__}, a subclass whose call() may compute something else"
    if len(calls) != 1:
        return None, f"it is called at {len(calls)} places in the graph (a shared layer)"
    (call,) = calls
    if call.kwargs.get("training") is True:
        return None, "it is called with training=True, so it always uses batch statistics"
    producer = graph.producers.get(call.inputs[0]) if len(call.inputs) == 1 else None
    if producer is None:
        return None, "its input is an input of the model it belongs to, not a layer's output"
    linear, where = producer.operation, producer.path
    if weight_to_scale(linear) is None:
        return None, f"its input comes from {where!r} ({type(linear).__name__}), which cannot absorb it"
    if len(graph.calls[where]) != 1:
        return None, f"its input comes from {where!r}, which is called at {len(graph.calls[where])} places"
    activation = getattr(linear, "activation", None)
    if activation is not None and activation is not keras.activations.linear:
        name = getattr(activation, "__name__", repr(activation))
        return None, f"{where!r} applies the activation {name!r} before it"
    if where.rpartition("/")[0] != path.rpartition("/")[0]:
        return None, f"its input comes from {where!r}, outside the model it belongs to"
    key = call.inputs[0]
    others = [repr(c.path) for c in graph.consumers.get(key, []) if c is not call]
    if key in graph.outputs:
        owner = graph.outputs[key]
        others.append(f"the outputs of the model {owner!r}" if owner else "the model's outputs")
    if others:
        return None, f"the output of {where!r} also goes to {_listed(others)}, which folding would change"
    rank = len(graph.tensors[key].shape)
    channel_axis = 1 if getattr(linear, "data_format", None) == "channels_first" else rank - 1
    axes = bn.axis if isinstance(bn.axis, (list, tuple)) else [bn.axis]
    if len(axes) != 1 or axes[0] % rank != channel_axis:
        return None, f"its axis {bn.axis!r} is not the channel axis ({channel_axis}) of {where!r}"
    return producer, None
