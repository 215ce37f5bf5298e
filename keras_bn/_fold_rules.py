"""Where `fold_batch_norm` may fold a batch norm: the layers that take one, and why the others are kept.

A batch norm folds backward, into the layer before it, when that layer's last
step is a linear map per output channel; else forward, into the `Dense` after
it, when that is exact. Each rule here either proves that the fold changes no
prediction or returns, as a sentence, why it could.
"""

import keras

from keras_bn import _graph

# Exact types: a subclass may compute something else in its call().
_SEPARABLE = (keras.layers.SeparableConv1D, keras.layers.SeparableConv2D)
_DEPTHWISE = (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D)
_TRANSPOSED = (keras.layers.Conv1DTranspose, keras.layers.Conv2DTranspose, keras.layers.Conv3DTranspose)
_LINEAR = (keras.layers.Dense, keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)

# The compute dtypes that hold every value of a dtype at least as precisely
# (float16 and bfloat16 each lack the other's mantissa or range).
_AS_PRECISE = {
    "float16": ("float16", "float32", "float64"),
    "bfloat16": ("bfloat16", "float32", "float64"),
    "float32": ("float32", "float64"),
}


def weight_to_scale(layer):
    """Returns `(weight name, how its output channels are laid out)` for a layer a batch norm folds into.

    The layout is `"last"` when the output channel is the kernel's last axis,
    `"depthwise"` for a depthwise kernel `(..., in, multiplier)` whose output
    channel `c * multiplier + m` spans its last two axes, `"transposed"` for a
    transposed convolution's kernel `(..., out, in)`, or `None` when the layer
    cannot take a fold.
    """
    if type(layer) in _SEPARABLE:
        return "pointwise_kernel", "last"
    if type(layer) in _DEPTHWISE:
        return "kernel", "depthwise"
    if type(layer) in _TRANSPOSED:
        return "kernel", "transposed"
    if type(layer) in _LINEAR:
        return "kernel", "last"
    return None


def _unscalable(layer):
    """Returns why `layer`'s weights cannot take a fold although its type can (`"has ..."`), or `None`."""
    if getattr(layer, "lora_enabled", False):
        # Its kernel is kernel + lora_kernel_a @ lora_kernel_b: scaling `kernel` alone is not enough.
        return f"has a LoRA update (lora_rank={layer.lora_rank}) that the fold would leave unscaled"
    mode = getattr(layer, "quantization_mode", None)
    if mode is not None:
        return f"is quantized ({mode!r}): its integer kernel cannot take the scale exactly"
    return None


def _listed(items):
    """Returns `a`, `a and b` or `a, b and c`."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _destinations(key, graph, but=None):
    """Returns where the tensor `key` goes: the quoted paths of its consumers (less the call `but`), its models."""
    found = [repr(c.path) for c in graph.consumers.get(key, []) if c is not but]
    if key in graph.outputs:
        owner = graph.outputs[key]
        found.append(f"the outputs of the model {owner!r}" if owner else "the model's outputs")
    return found


def _axes(bn, rank):
    """Returns the batch norm's axes as non-negative ints for an input of `rank`."""
    return [a % rank for a in (bn.axis if isinstance(bn.axis, (list, tuple)) else [bn.axis])]


def where_to_fold(path, graph):
    """Returns `(Call, direction, None)` for the layer the batch norm at `path` folds into, or `(None, None, reason)`.

    `direction` is `"backward"` (into the layer before it, tried first) or
    `"forward"` (into the layer after it).
    """
    calls = graph.calls[path]
    bn = calls[0].operation
    if not _graph.folds_like_batch_norm(bn, exactly=True):
        return None, None, f"it is a {type(bn).__name__}, a subclass whose call() may compute something else"
    if len(calls) != 1:
        return None, None, f"it is called at {len(calls)} places in the graph (a shared layer)"
    (call,) = calls
    if call.kwargs.get("training") is True:
        return None, None, "it is called with training=True, so it always uses batch statistics"
    producer, backward = _into_producer(path, call, graph)
    if producer is not None:
        return producer, "backward", None
    consumer, forward = _into_consumer(path, call, graph)
    if consumer is not None:
        return consumer, "forward", None
    return None, None, backward if forward is None else f"{backward}; {forward}"


def _into_producer(path, call, graph):
    """Returns `(producer Call, None)` if the batch norm folds into the layer before it, else `(None, reason)`."""
    bn = call.operation
    producer = graph.producers.get(call.inputs[0]) if len(call.inputs) == 1 else None
    if producer is None:
        return None, "its input is an input of the model it belongs to, not a layer's output"
    linear, where = producer.operation, producer.path
    if weight_to_scale(linear) is None:
        return None, f"its input comes from {where!r} ({type(linear).__name__}), which cannot absorb it"
    if _unscalable(linear):
        return None, f"its input comes from {where!r}, which {_unscalable(linear)}"
    if len(graph.calls[where]) != 1:
        return None, f"its input comes from {where!r}, which is called at {len(graph.calls[where])} places"
    activation = getattr(linear, "activation", None)
    if activation is not None and activation is not keras.activations.linear:
        name = getattr(activation, "__name__", repr(activation))
        return None, f"{where!r} applies the activation {name!r} before it"
    if where.rpartition("/")[0] != path.rpartition("/")[0]:
        return None, f"its input comes from {where!r}, outside the model it belongs to"
    key = call.inputs[0]
    others = _destinations(key, graph, but=call)
    if others:
        return None, f"the output of {where!r} also goes to {_listed(others)}, which folding would change"
    rank = len(graph.tensors[key].shape)
    channel_axis = 1 if getattr(linear, "data_format", None) == "channels_first" else rank - 1
    if _axes(bn, rank) != [channel_axis]:
        return None, f"its axis {bn.axis!r} is not the channel axis ({channel_axis}) of {where!r}"
    return producer, None


def _into_consumer(path, call, graph):
    """Returns `(Dense Call, None)` if the batch norm folds into the `Dense` after it, else `(None, reason)`.

    `Dense(scale * x + shift)` is `x @ (scale * kernel) + (shift @ kernel +
    bias)` exactly when the `Dense` alone sees the batch norm's output and
    contracts its channel axis. The reason is `None` when no layer after the
    batch norm has a kernel: nothing there to explain.
    """
    bn, key = call.operation, call.outputs[0]
    consumers = graph.consumers.get(key, [])
    if not any(weight_to_scale(c.operation) for c in consumers):
        return None, None
    if len(consumers) != 1 or key in graph.outputs:
        return None, f"nor forward: its output goes to {_listed(_destinations(key, graph))}, not to one Dense alone"
    (consumer,) = consumers
    dense, where = consumer.operation, consumer.path
    if type(dense) is not keras.layers.Dense:
        padding = getattr(dense, "padding", "valid")
        if padding != "valid":
            # It pads the normalized input with zeros; folded, it would pad the raw input,
            # and the folded bias would count the shift at the padded places too.
            return None, f"nor forward into {where!r}: its {padding!r} padding adds zeros after the normalization"
        return None, f"nor forward into {where!r} ({type(dense).__name__}): keras-bn folds forward into Dense only"
    if len(graph.calls[where]) != 1:
        return None, f"nor forward into {where!r}, which is called at {len(graph.calls[where])} places"
    if where.rpartition("/")[0] != path.rpartition("/")[0]:
        return None, f"nor forward into {where!r}, which is in another model"
    if _unscalable(dense):
        return None, f"nor forward into {where!r}, which {_unscalable(dense)}"
    rank = len(graph.tensors[key].shape)
    if _axes(bn, rank) != [rank - 1]:
        return None, (f"nor forward into {where!r}: the batch norm's axis {bn.axis!r} is not the last "
                      f"axis ({rank - 1}), the one {where!r} contracts")
    if dense.compute_dtype not in _AS_PRECISE.get(bn.compute_dtype, (bn.compute_dtype,)):
        return None, (
            f"nor forward into {where!r}: it computes in {dense.compute_dtype}, the batch norm in "
            f"{bn.compute_dtype}, so the input would be rounded to {dense.compute_dtype} before it is normalized"
        )
    return consumer, None
