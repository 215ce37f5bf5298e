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
- finds the layers that a graph does not show: those tracked inside a layer or
  a subclassed model whose `call` it cannot see (`sublayers`).

Nothing here imports `keras.src`.
"""

from keras_bn._graph.layers import (
    BATCH_NORMS,
    batch_norm_layers,
    check_model,
    graph_layers,
    hidden,
    inside_hidden,
    is_batch_norm,
    is_graph_model,
    layers_by_path,
    refuse_hidden,
    set_weights_by_name,
    sublayers,
    weights_by_name,
)
from keras_bn._graph.rebuild import (
    Call,
    Graph,
    Rebuilder,
    clone_layer,
    copy_opaque,
    inputs_of,
    rebuild,
    trace,
)

__all__ = [
    "BATCH_NORMS",
    "Call",
    "Graph",
    "Rebuilder",
    "batch_norm_layers",
    "check_model",
    "clone_layer",
    "copy_opaque",
    "graph_layers",
    "hidden",
    "inputs_of",
    "inside_hidden",
    "is_batch_norm",
    "is_graph_model",
    "layers_by_path",
    "rebuild",
    "refuse_hidden",
    "set_weights_by_name",
    "sublayers",
    "trace",
    "weights_by_name",
]
