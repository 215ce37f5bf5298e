"""What the tools call a batch norm: the one definition, asked the ways the tools need.

A *batch norm* here is a layer that Keras or keras-bn computes and training
updates: `keras.layers.BatchNormalization` or `ManualBatchNorm`. The tools ask
three different questions of a layer:

- `is_batch_norm`: is it one, a subclass included? Freezing, recalibration and
  the finders read only its weights, its flags and the moving statistics its
  training pass leaves, which a subclass keeps.
- `is_exact_batch_norm`: is it exactly one of those classes? Conversion copies
  the configuration into another class and folding replaces the call by its
  formula, and a subclass may compute something else in its `call()`.
- `folds_like_batch_norm` (and `exactly=True`): is it one, or a
  `FrozenBatchNorm`, whose inference map is a batch norm's? Those are the
  layers `fold_batch_norm` reaches for.
"""

import keras

from keras_bn._graph.layers import layers_of
from keras_bn.batch_norm import ManualBatchNorm

#: The batch norms the tools act on: Keras's and keras-bn's.
BATCH_NORMS = (keras.layers.BatchNormalization, ManualBatchNorm)


def _folding_batch_norms():
    """Returns `BATCH_NORMS` and `FrozenBatchNorm`: the layers whose inference map is a batch norm's."""
    # Imported here: keras_bn.frozen defines FrozenBatchNorm beside the tools
    # that swap it in, which import this package.
    from keras_bn.frozen import FrozenBatchNorm

    return (*BATCH_NORMS, FrozenBatchNorm)


def is_batch_norm(layer):
    """Returns whether `layer` is a batch norm (Keras's or keras-bn's), a subclass included."""
    return isinstance(layer, BATCH_NORMS)


def is_exact_batch_norm(layer):
    """Returns whether `layer` is exactly a Keras or keras-bn batch norm: a subclass may compute something else."""
    return type(layer) in BATCH_NORMS


def folds_like_batch_norm(layer, exactly=False):
    """Returns whether `layer` is a batch norm or a `FrozenBatchNorm` (exactly one of those classes with `exactly`)."""
    kinds = _folding_batch_norms()
    return type(layer) in kinds if exactly else isinstance(layer, kinds)


def batch_norm_layers(model):
    """Returns every batch-norm layer of `model`, nested models included, in depth-first order.

    A batch-norm layer is a `keras.layers.BatchNormalization` or a
    `keras_bn.ManualBatchNorm`, found anywhere in the model: in nested
    models, and inside custom blocks (keras-hub's) and subclassed models,
    which the graph does not show. A layer used twice is listed once.

    Args:
        model: A Keras model or layer.

    Returns:
        A list of layers.
    """
    return layers_of(model, BATCH_NORMS)
