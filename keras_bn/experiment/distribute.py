"""Training a run under `tf.distribute.MirroredStrategy`: the strategy, the layers, the scoring."""

import contextlib
import functools

import keras

from keras_bn.batch_norm import ManualBatchNorm
from keras_bn.callbacks import NotebookLogger

__all__ = ["logger_class", "norm_layer", "strategy", "strategy_scope"]


def strategy(distribute):
    """Returns the strategy `RunConfig.distribute` names: `None`, or a `MirroredStrategy`.

    The mirrored strategy spans every GPU, else every logical CPU device
    (`MirroredStrategy()`'s own default ignores CPU devices beyond the first).
    """
    if distribute is None:
        return None
    import tensorflow as tf

    devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
    return tf.distribute.MirroredStrategy([device.name for device in devices])


def strategy_scope(strategy):
    """Returns `strategy.scope()`, or a context that does nothing for no strategy."""
    return contextlib.nullcontext() if strategy is None else strategy.scope()


def norm_layer(variant, strategy):
    """Returns the `bn` argument of `deep_mnist_model`: synchronized layers under a strategy."""
    if strategy is None or variant == "none":
        return variant
    layer = keras.layers.BatchNormalization if variant == "keras" else ManualBatchNorm
    return functools.partial(layer, synchronized=True)


class _ReplicaSafeModel:
    """Stands in for a model trained under a strategy while `NotebookLogger` scores it.

    Keras's `predict_on_batch` under a strategy runs the whole batch on every
    replica and concatenates the copies; this calls the model once instead.
    """

    def __init__(self, model):
        self._model = model

    def predict_on_batch(self, x):
        """Returns the model's inference-mode outputs for `x` as a NumPy array."""
        return keras.ops.convert_to_numpy(self._model(x, training=False))

    def __getattr__(self, name):
        return getattr(self._model, name)


class _DistributedLogger(NotebookLogger):
    """`NotebookLogger` for a model under a strategy (see `_ReplicaSafeModel`)."""

    def set_model(self, model):
        """Scores `model` through `_ReplicaSafeModel`."""
        super().set_model(_ReplicaSafeModel(model))


def logger_class(strategy):
    """Returns the `NotebookLogger` class that scores a model trained under `strategy`."""
    return NotebookLogger if strategy is None else _DistributedLogger
