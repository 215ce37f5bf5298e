r"""The layers and models behind test-time adaptation (`keras_bn.adapt`).

- `AdaptiveBatchNorm` stands for a batch norm while a model adapts: it
  normalizes every batch with that batch's own statistics, mixed with the
  source (moving) statistics by a prior strength, in training and inference
  alike, and never updates anything itself.
- `TrainingBatchNorm` is a `ManualBatchNorm` that always computes in training
  mode: the layer `recalibrate_batch_norm` reads the target statistics from,
  inside a model whose other layers stay in inference mode.
- `InferenceModel` calls a network with `training=False` whatever it is
  given, so that dropout, augmentation and the like stay in inference mode
  while Keras's training loop runs on it; `EntropyModel` adds TENT's loss,
  the entropy of its predictions.
"""

import math

import keras
import numpy as np
from keras import ops

from keras_bn.batch_norm import ManualBatchNorm

#: The smallest positive float32: `log` of a probability clipped here is finite.
_TINY = float(np.finfo("float32").tiny)

#: What a model's output can be, for the entropy: see `entropy`.
OUTPUTS = ("logits", "probabilities", "sigmoid")


def _channel_axes(axis, rank):
    """Returns the channel axes, non-negative and sorted, for inputs of `rank`."""
    axes = axis if isinstance(axis, (list, tuple)) else [axis]
    return sorted(int(a) % rank for a in axes)


def _values_per_sample(axis, input_shape):
    """Returns how many values per channel one sample brings, or `None` where the shape leaves it open."""
    channels = _channel_axes(axis, len(input_shape))
    others = [input_shape[a] for a in range(1, len(input_shape)) if a not in channels]
    return math.prod(others) if all(d is not None for d in others) else None


def single_value_error(path, shape):
    """Returns the `ValueError` for a batch that gives the batch norm at `path` one value per channel."""
    return ValueError(
        f"Batch norm {path!r} sees a single value per channel in this batch (input shape "
        f"{tuple(shape)}): its batch variance is 0, so with prior_strength=0 each of its "
        "outputs would be beta alone, whatever the input. Give a prior_strength > 0 (the "
        "source statistics then count as that many samples) or batches of more samples."
    )


class AdaptiveBatchNorm(keras.layers.Layer):
    r"""Normalizes each batch with its own statistics, mixed with the source ones by a prior.

    For a batch of \(n\) samples whose statistics per channel are \(\mu_t\)
    and \(\sigma^2_t\) (the biased variance, over every axis but the channel
    axes), with the source statistics \(\mu_s\), \(\sigma^2_s\) (the moving
    statistics of the batch norm it replaced) counted as \(N\) =
    `prior_strength` samples:

    $$\bar\mu = \tfrac{N}{N+n}\mu_s + \tfrac{n}{N+n}\mu_t, \quad
      \bar\sigma^2 = \tfrac{N}{N+n}\sigma^2_s + \tfrac{n}{N+n}\sigma^2_t, \quad
      y = \gamma\,\frac{x - \bar\mu}{\sqrt{\bar\sigma^2 + \epsilon}} + \beta .$$

    Gradients flow through \(\mu_t\) and \(\sigma^2_t\), as in a batch norm's
    training step. `training` is ignored and nothing is ever assigned:
    `gamma` and `beta` change only through an optimizer.
    """

    def __init__(self, axis=-1, epsilon=1e-3, center=True, scale=True, prior_strength=0.0, **kwargs):
        super().__init__(**kwargs)
        self.axis = [int(a) for a in axis] if isinstance(axis, (list, tuple)) else int(axis)
        self.epsilon = float(epsilon)
        self.center, self.scale = bool(center), bool(scale)
        self.prior_strength = float(prior_strength)
        self.source_path = self.name  # where the layer it replaced sits, for the errors

    def build(self, input_shape):
        rank = len(input_shape)
        self._axes = _channel_axes(self.axis, rank)
        self._reduced = [a for a in range(rank) if a not in self._axes]
        self._broadcast = [input_shape[a] if a in self._axes else 1 for a in range(rank)]
        shape = tuple(input_shape[a] for a in self._axes)
        if any(d is None for d in shape):
            raise ValueError(f"The channel axis {self.axis!r} of the input must have a known size. "
                             f"Received: input_shape={input_shape}")
        self.values_per_sample = _values_per_sample(self.axis, input_shape)

        def weight(name, initializer, trainable):
            # float32 statistics and affine weights under mixed precision, as a batch norm's.
            return self.add_weight(name=name, shape=shape, initializer=initializer,
                                   trainable=trainable, autocast=False)

        self.gamma = weight("gamma", "ones", True) if self.scale else None
        self.beta = weight("beta", "zeros", True) if self.center else None
        self.moving_mean = weight("moving_mean", "zeros", False)
        self.moving_variance = weight("moving_variance", "ones", False)

    def check_batch(self, batch_size):
        """Raises `single_value_error` if a batch of `batch_size` samples gives one value per channel."""
        if self.prior_strength == 0 and self.values_per_sample is not None:
            if batch_size * self.values_per_sample == 1:
                raise single_value_error(self.source_path, (batch_size, *self._broadcast[1:]))

    def call(self, inputs, training=None, mask=None):
        if mask is not None:
            raise ValueError(
                f"Batch norm {self.source_path!r} receives a mask: test-time adaptation computes its "
                "statistics over every position, so a model with masked inputs cannot be adapted."
            )
        sizes = [inputs.shape[a] for a in self._reduced]
        if self.prior_strength == 0 and all(isinstance(d, int) for d in sizes) and math.prod(sizes) == 1:
            raise single_value_error(self.source_path, inputs.shape)
        # 16-bit inputs are normalized in float32, as Keras's batch norm does.
        low = keras.backend.standardize_dtype(inputs.dtype) in ("float16", "bfloat16")
        x = ops.cast(inputs, "float32") if low else inputs

        def channel(weight):
            return ops.reshape(ops.cast(weight, x.dtype), self._broadcast)

        mean = ops.mean(x, axis=self._reduced, keepdims=True)
        variance = ops.mean(ops.square(x - mean), axis=self._reduced, keepdims=True)
        if self.prior_strength > 0:
            n = ops.cast(ops.shape(x)[0], x.dtype)
            source = self.prior_strength / (self.prior_strength + n)
            mean = source * channel(self.moving_mean) + (1.0 - source) * mean
            variance = source * channel(self.moving_variance) + (1.0 - source) * variance
        scale = ops.rsqrt(variance + self.epsilon)
        if self.gamma is not None:
            scale = scale * channel(self.gamma)
        y = (x - mean) * scale
        if self.beta is not None:
            y = y + channel(self.beta)
        return ops.cast(y, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "axis": self.axis, "epsilon": self.epsilon, "center": self.center,
                "scale": self.scale, "prior_strength": self.prior_strength}


class TrainingBatchNorm(ManualBatchNorm):
    """A `ManualBatchNorm` that computes in training mode whatever `training` says.

    Inside an `InferenceModel`, `recalibrate_batch_norm` then reads the
    statistics of its inputs as they are at inference, every other layer
    (dropout, augmentation) in inference mode.
    """

    def build(self, input_shape):
        super().build(input_shape)
        self.values_per_sample = _values_per_sample(self.axis, input_shape)

    def call(self, inputs, training=None, mask=None):
        return super().call(inputs, training=True, mask=mask)


class InferenceModel(keras.Model):
    """Calls `network` in inference mode (`training=False`), whatever the call says.

    Args:
        network: A built Keras model.
    """

    def __init__(self, network, **kwargs):
        super().__init__(name=network.name, **kwargs)
        self.network = network
        self.built = True  # every variable is the network's, made already

    def call(self, inputs, training=None):
        return self.network(inputs, training=False)


def entropy(y_pred, outputs):
    r"""Returns the mean Shannon entropy of the predictions `y_pred`, read as `outputs` says.

    The entropy is taken over the last axis and averaged over the others:
    \(H(p) = -\sum_c p_c \log p_c\) with \(p = \mathrm{softmax}(z)\) for
    `"logits"`, \(p\) = `y_pred` for `"probabilities"`, and for `"sigmoid"`
    (independent sigmoid logits) the sigmoids normalized to sum to one,
    \(p_c = \sigma(z_c) / \sum_k \sigma(z_k) = \mathrm{softmax}(\log\sigma(z))_c\).
    """
    z = ops.cast(y_pred, "float32")
    if outputs == "probabilities":
        # A probability of 0 adds 0; the clip keeps the log and its gradient finite.
        return ops.mean(-ops.sum(z * ops.log(ops.maximum(z, _TINY)), axis=-1))
    if outputs == "sigmoid":
        z = ops.log_sigmoid(z)
    log_p = ops.log_softmax(z, axis=-1)
    return ops.mean(-ops.sum(ops.exp(log_p) * log_p, axis=-1))


class EntropyModel(InferenceModel):
    """An `InferenceModel` whose training loss is the entropy of its predictions (TENT).

    `train_on_batch(x)`, without labels, takes one optimizer step on the
    entropy; which variables it updates is their `trainable` flag's choice.

    Args:
        network: A built Keras model with one output.
        outputs: What the output is: `"logits"`, `"probabilities"` or `"sigmoid"`.
    """

    def __init__(self, network, outputs, **kwargs):
        super().__init__(network, **kwargs)
        self.outputs_kind = outputs

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        return entropy(y_pred, self.outputs_kind)


def check_distributions(predictions, tolerance=1e-3):
    """Raises a `ValueError` naming `outputs` unless every row of `predictions` is a distribution."""
    p = np.asarray(predictions, dtype=np.float64)
    totals = p.sum(axis=-1)
    bad = ~np.isfinite(p).all(axis=-1) | (p < -tolerance).any(axis=-1) | (np.abs(totals - 1.0) > tolerance)
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            "outputs='probabilities' needs the model to output a distribution per row: "
            f"nonnegative values summing to 1 (within {tolerance}). Received: row {where} with "
            f"minimum {p[where].min():.4g} and sum {totals[where]:.6g}. Use outputs='logits' for "
            "outputs before a softmax, or outputs='sigmoid' for independent sigmoid logits."
        )
