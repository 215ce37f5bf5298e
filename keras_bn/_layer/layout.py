"""Where `ManualBatchNorm`'s statistics are taken: channel axes, masks and ghost batches.

These functions map the input's layout onto the reduction the statistics
need, and refuse what does not fit with the layer's own messages (which
contain Keras's words where Keras's layer raises too): the `axis` argument
resolved against the input's shape (`resolve`, at `build`), a mask read as
Keras reads it (or at `axis`, where Keras's reading cannot apply) and turned
into 0/1 weights that broadcast against the input, and the batch reshaped into
ghost batches of `virtual_batch_size` samples (checked when the graph runs if
the batch size is known only then). They take shapes, arrays, the `Layout`
and plain arguments.
"""

import math

import keras
from keras import ops

from keras_bn._layer.spec import Layout

__all__ = ["channel_axes", "ghost_batches", "mask_readings", "mask_weights", "resolve"]


def channel_axes(axis, input_shape, *, virtual_batch_size):
    """Returns the channel axes of `axis` as sorted non-negative ints, validated against `input_shape`."""
    rank = len(input_shape)
    axes = axis if isinstance(axis, tuple) else (axis,)
    resolved = []
    for a in axes:
        if not -rank <= a < rank:
            # Keras's words first (its compute_output_shape raises them), then ours.
            raise ValueError(
                f"Axis {a} is out of bounds for input shape {tuple(input_shape)}: "
                f"`axis` must be in [-{rank}, {rank}) for an input of rank "
                f"{rank}. Received: axis={axis!r}"
            )
        resolved.append(a % rank)
    if len(set(resolved)) != len(resolved):
        raise ValueError(
            f"`axis` names the same axis twice for an input of rank {rank}. "
            f"Received: axis={axis!r}"
        )
    if virtual_batch_size is not None and 0 in resolved:
        raise ValueError(
            "With `virtual_batch_size`, axis 0 is the batch axis and cannot be "
            f"a channel axis. Received: axis={axis!r}"
        )
    return tuple(sorted(resolved))


def resolve(axis, input_shape, *, virtual_batch_size):
    """Returns the `Layout` of `axis` for inputs of `input_shape`, or raises what does not fit."""
    rank = len(input_shape)
    if rank == 0:
        raise ValueError(
            "ManualBatchNorm needs an input of rank at least 1. "
            f"Received: input_shape={tuple(input_shape)}"
        )
    axes = channel_axes(axis, input_shape, virtual_batch_size=virtual_batch_size)
    for a in axes:
        if input_shape[a] is None:
            raise ValueError(
                "The size of the channel axis must be known to create the "
                f"weights, but axis {a} of the input is `None`. Received: "
                f"input_shape={tuple(input_shape)}, axis={axis!r}"
            )
    return Layout(
        axis=axis,
        channel_axes=axes,
        reduction_axes=tuple(i for i in range(rank) if i not in axes),
        broadcast_shape=tuple(int(input_shape[i]) if i in axes else 1 for i in range(rank)),
        channels=math.prod(int(input_shape[a]) for a in axes),
    )


def _with_unit_axis(shape, at):
    """Returns `shape` with a size-1 axis inserted at `at` (`None`: `shape` as it is)."""
    return shape if at is None else shape[:at] + (1,) + shape[at:]


def _broadcasts(shape, target):
    """Returns whether `shape` broadcasts to `target` as far as the static sizes tell (unknown fits)."""
    return all(m is None or x is None or m in (1, x) for m, x in zip(shape, target))


def mask_readings(mask_shape, input_shape, layout):
    """Returns where a mask of `mask_shape` may get its size-1 axis, in order of preference.

    The rule (docs/guide/masking.md): a mask of the input's rank broadcasts
    as it is (`None`). A mask one dimension short is read as Keras's
    `BatchNormalization` reads it, a size-1 axis added last whatever `axis`
    is, wherever that broadcasts against the input; only where it does not,
    and `axis` is one axis, does the size-1 axis go at `axis` instead. Each
    reading is kept if the static sizes allow it (an unknown size fits):
    where both are kept the first wins, unless a size that tells them apart
    is unknown (`mask_weights` then decides when the graph runs). Raises a
    `ValueError` where no reading fits.
    """
    mask_shape, input_shape = tuple(mask_shape), tuple(input_shape)
    rank = len(input_shape)
    channels = layout.channel_axes
    received = (
        f"Received: mask.shape={mask_shape} for inputs.shape={input_shape} "
        f"and axis={layout.axis!r}"
    )
    if len(mask_shape) == rank:
        candidates = [None]
    elif len(mask_shape) == rank - 1:
        candidates = [rank - 1]
        if len(channels) == 1 and channels[0] != rank - 1:
            candidates.append(channels[0])
    else:
        # Keras's words first (its layer raises them), then ours.
        raise ValueError(
            "The mask provided should be one dimension less than the inputs "
            "(Keras's convention: a size-1 axis is added last), or have the "
            f"inputs' rank with size 1 along the axes it does not cover. {received}"
        )
    readings = [at for at in candidates if _broadcasts(_with_unit_axis(mask_shape, at), input_shape)]
    if not readings:
        ways = {None: "as it is", rank - 1: "with a size-1 axis added last (Keras's convention)"}
        tried = " nor ".join(ways.get(at, f"at `axis` ({at})") for at in candidates)
        raise ValueError(
            f"`mask` does not broadcast against the input {tried}; a mask of the input's "
            f"rank, with size 1 along the axes it does not cover, is read as it is. {received}"
        )
    return readings


def mask_weights(mask, inputs, layout):
    """Returns `(weights, keras)`: the mask as 0/1 weights broadcastable to `inputs`, read as `mask_readings` says.

    `keras` says whether it was read as Keras's layer reads it (a bool, or a
    boolean tensor where the sizes decide when a TensorFlow graph runs): a
    channel such a mask leaves nothing to count then gets Keras's numbers.
    """
    rank = len(inputs.shape)
    readings = mask_readings(mask.shape, inputs.shape, layout)
    at = readings[-1]
    keras_reading = readings[0] == rank - 1
    if len(readings) > 1 and None in tuple(mask.shape)[at:] + tuple(inputs.shape)[at:-1]:
        # Both readings fit the static sizes, and one that tells them apart
        # is unknown: only a TensorFlow graph traced for any size (a `fit`
        # retraced for sequences of varying length) gets here, and the sizes
        # decide when it runs.
        mask, keras_reading = _read_when_run(mask, inputs, at)
    elif readings[0] is not None:
        mask = ops.expand_dims(mask, axis=readings[0])
    if keras.backend.standardize_dtype(mask.dtype) != "bool":
        # As Keras: any non-zero entry of a numeric mask counts in full.
        mask = ops.cast(mask, "bool")
    return ops.cast(mask, inputs.dtype), keras_reading


def _read_when_run(mask, inputs, at):
    """Returns `(mask, fits)`: `mask` broadcast to `inputs`, read as Keras reads it where its sizes `fits` when run, else at `at`."""
    if keras.backend.backend() != "tensorflow":  # pragma: no cover - sizes are known there
        return ops.expand_dims(mask, axis=len(inputs.shape) - 1), True
    import tensorflow as tf

    sizes, target = tf.shape(mask), tf.shape(inputs)
    fits = tf.reduce_all((sizes == 1) | (sizes == target[:-1]))
    mask = tf.cond(
        fits,
        lambda: tf.broadcast_to(tf.expand_dims(mask, -1), target),
        lambda: tf.broadcast_to(tf.expand_dims(mask, at), target),
    )
    return mask, fits


def ghost_batches(x, v):
    """Reshapes `x` from `(batch, ...)` to `(batch // v, v, ...)`, checking that `v` divides the batch."""
    batch = x.shape[0]
    message = "The batch size must be a multiple of `virtual_batch_size`. Received: a batch of {}"
    message += f" with virtual_batch_size={v}"
    if batch is not None and batch % v:
        raise ValueError(message.format(batch))
    if batch is None and keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        # Only a traced graph has an unknown batch size (the ragged last batch
        # of a compiled `fit`): check when it runs, before the reshape
        # (unordered, the reshape's own error could win), with the message an
        # eager call gives, both numbers in it. TensorFlow raises it as an
        # InvalidArgumentError whose first line is "Graph execution error:".
        size = tf.shape(x)[0]
        check = tf.debugging.Assert(
            tf.equal(size % v, 0), [tf.strings.format(message, size)]
        )
        with tf.control_dependencies([check]):
            x = tf.identity(x)
    return ops.reshape(x, (-1, v) + tuple(ops.shape(x)[1:]))
