"""The graph walker that folding, conversion, freezing, recalibration and `LayerStatistics` share.

A Keras model is rebuilt with `keras.models.clone_model`, whose `clone_function`
is called on every operation of a Functional graph (layers and plain operations
such as the `x + 3` of a hard-swish) and whose `call_function` sees every call
with its tensors. On top of it this module:

- recurses into nested Sequential and Functional models, Functional subclasses
  included (keras-hub backbones and tasks), naming each layer by its path,
  `"outer/inner"`;
- keeps a layer that is called at several places (a shared layer) shared, once
  for the whole model;
- records, with `trace`, who produces and who consumes every tensor, so that a
  tool can prove that a layer feeds only a batch norm;
- reaches the layers inside custom layers, whose `call()` is Python (keras-hub's
  blocks): such a layer is rebuilt and traced through its stand-in, a Functional
  model of its sub-layers made by calling its `call()` on symbolic tensors
  (`inline`), where that is provably the same computation; `opaque` and
  `unreached` name the others and why;
- finds every layer tracked inside a layer or a subclassed model (`sublayers`);
- says what the tools call a batch norm (`kinds`): `is_batch_norm`,
  `is_exact_batch_norm`, `folds_like_batch_norm`.

Nothing here imports `keras.src`.
"""

from keras_bn._graph.kinds import (
    BATCH_NORMS,
    batch_norm_layers,
    folds_like_batch_norm,
    is_batch_norm,
    is_exact_batch_norm,
)
from keras_bn._graph.layers import (
    check_model,
    graph_layers,
    hidden,
    inside_hidden,
    is_graph_model,
    layers_by_path,
    layers_of,
    set_weights_by_name,
    sublayers,
    weights_by_name,
)
from keras_bn._graph.inline import NotInlined, model_stand_in
from keras_bn._graph.reach import describe, unreached, warn_kept
from keras_bn._graph.rebuild import Rebuilder, clone_layer, copy_opaque, rebuild
from keras_bn._graph.trace import Call, Graph, inputs_of, trace

__all__ = [
    "BATCH_NORMS",
    "Call",
    "Graph",
    "NotInlined",
    "Rebuilder",
    "batch_norm_layers",
    "check_model",
    "clone_layer",
    "copy_opaque",
    "describe",
    "folds_like_batch_norm",
    "graph_layers",
    "hidden",
    "inputs_of",
    "inside_hidden",
    "is_batch_norm",
    "is_exact_batch_norm",
    "is_graph_model",
    "layers_by_path",
    "layers_of",
    "model_stand_in",
    "rebuild",
    "set_weights_by_name",
    "sublayers",
    "trace",
    "unreached",
    "warn_kept",
    "weights_by_name",
]
