"""Where `ManualBatchNorm`'s statistics are taken: channel axes, masks and ghost batches.

These functions map the input's layout onto the reduction the statistics
need, and refuse what does not fit with the layer's own messages: the `axis`
argument resolved against the input's rank, a mask turned into 0/1 weights
that broadcast against the input, and the batch reshaped into ghost batches of
`virtual_batch_size` samples (checked when the graph runs if the batch size is
known only then). Each takes the layer whose options it reads.
"""

import keras
from keras import ops

__all__ = ["channel_axes", "ghost_batches", "mask_weights"]


def channel_axes(layer, rank):
    """Returns the channel axes as sorted non-negative ints, validated against `rank`."""
    axes = layer.axis if isinstance(layer.axis, tuple) else (layer.axis,)
    resolved = []
    for a in axes:
        if not -rank <= a < rank:
            raise ValueError(
                f"`axis` must be in [-{rank}, {rank}) for an input of rank "
                f"{rank}. Received: axis={layer.axis!r}"
            )
        resolved.append(a % rank)
    if len(set(resolved)) != len(resolved):
        raise ValueError(
            f"`axis` names the same axis twice for an input of rank {rank}. "
            f"Received: axis={layer.axis!r}"
        )
    if layer.virtual_batch_size is not None and 0 in resolved:
        raise ValueError(
            "With `virtual_batch_size`, axis 0 is the batch axis and cannot be "
            f"a channel axis. Received: axis={layer.axis!r}"
        )
    return tuple(sorted(resolved))


def mask_weights(layer, mask, inputs):
    """Returns the mask as 0/1 weights broadcastable to `inputs`, checking its shape."""
    rank = len(inputs.shape)
    received = (
        f"Received: mask.shape={tuple(mask.shape)} for inputs.shape="
        f"{tuple(inputs.shape)} and axis={layer.axis!r}"
    )
    if len(mask.shape) == rank - 1 and len(layer._channel_axes_resolved) == 1:
        # A mask over every axis but the channel one: put the channel axis
        # back where it belongs (not always last, unlike Keras's layer).
        mask = ops.expand_dims(mask, axis=layer._channel_axes_resolved[0])
    elif len(mask.shape) != rank:
        raise ValueError(
            "`mask` must have the input's shape without `axis`, or the "
            f"input's rank with size 1 along `axis`. {received}"
        )
    for m, x in zip(mask.shape, inputs.shape):
        if m is not None and x is not None and m not in (1, x):
            raise ValueError(f"`mask` does not broadcast against the input. {received}")
    return ops.cast(mask, inputs.dtype)


def ghost_batches(layer, x):
    """Reshapes `x` from `(batch, ...)` to `(batch // v, v, ...)`, checking that v divides the batch."""
    v = layer.virtual_batch_size
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
