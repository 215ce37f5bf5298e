"""The two routes to batch norms inside custom layers, measured on keras-hub's backbones.

Usage, from the repository root (random weights, nothing downloaded):

    KERAS_BACKEND=tensorflow python benchmarks/custom_layer_routes.py

- *stand-ins* (what keras-bn does): `freeze_batch_norm(model)`, which rebuilds
  each custom layer through a Functional model of its sub-layers, made by
  calling its `call()` on symbolic tensors;
- *replacement on a copy* (what PyTorch's `convert_sync_batchnorm` and timm's
  `freeze_batch_norm_2d` do to modules): the model cloned through its config,
  then each batch norm attribute of each custom layer swapped for a
  `FrozenBatchNorm` in place. Keras 3 has no public way to do that once a
  layer is built (its tracker is locked), so this prototype unlocks it
  through `layer._tracker`, a private attribute: it is here to be measured,
  not used.

For each model it prints the batch norms reached, the largest difference of
the frozen model's training-mode outputs from the model's inference outputs
(relative to their scale), what a `.keras` file of the frozen model loads
back as, and how many batch norms `fold_batch_norm` can fold on each route
(a custom layer replaced in place still hides its convolutions). A script,
not a test: it asserts nothing. The design notes on the "Custom layers" page
quote its output.
"""

import os
import sys
import tempfile
import time

import keras
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
import zoo  # noqa: E402

from keras_bn import FrozenBatchNorm, fold_batch_norm, freeze_batch_norm  # noqa: E402
from keras_bn._graph import hidden  # noqa: E402
from keras_bn.frozen import _frozen_like  # noqa: E402

MODELS = ("MobileNetBackbone", "EfficientNetBackbone", "HGNetV2Backbone", "MobileNetV5Backbone(batch_norm)",
          "DeepLabV3Backbone", "RetinaNetBackbone")


def _swap_in_place(layer):
    """Replaces every batch norm attribute (or list/dict entry) of `layer`, at any depth, by a frozen copy."""
    count = 0
    items = vars(layer).items() if not isinstance(layer, keras.Sequential) else [("layers", layer._layers)]
    for name, value in list(items):
        if name.startswith("_"):
            continue  # Keras's own tracking (`_layers`, `_tracker`), updated by the tracker
        if isinstance(value, keras.layers.BatchNormalization):
            layer._tracker.unlock()  # private: Keras locks a built layer's attributes
            setattr(layer, name, _frozen(value))
            layer._tracker.lock()
            count += 1
        elif isinstance(value, (list, dict)):
            keys = range(len(value)) if isinstance(value, list) else list(value)
            for key in keys:
                if isinstance(value[key], keras.layers.BatchNormalization):
                    layer._tracker.unlock()
                    value[key] = _frozen(value[key])
                    layer._tracker.lock()
                    count += 1
                elif isinstance(value[key], keras.layers.Layer):
                    count += _swap_in_place(value[key])
        elif isinstance(value, keras.layers.Layer):
            count += _swap_in_place(value)
    return count


def _frozen(bn):
    """A built `FrozenBatchNorm` with `bn`'s weights."""
    frozen = _frozen_like(bn, trainable_affine=False)
    frozen.build((None, *bn.moving_mean.shape))  # any rank: only the channel axis has a size
    for weight in frozen.weights:
        weight.assign(getattr(bn, weight.name))
    return frozen


def _replace_on_copy(model):
    """The graph's batch norms frozen by keras-bn, then each custom layer's swapped in place on the copy.

    Returns the copy and how many batch norms are frozen in it.
    """
    inside = {id(layer) for layer in zoo.custom_batch_norm_layers(model)}
    graph_only = len(zoo.batch_norm_layers(model)) - len(inside)
    if graph_only:
        copy = freeze_batch_norm(model, layers=lambda path, layer: id(layer) not in inside)
    else:
        copy = keras.models.clone_model(model)
        copy.set_weights(model.get_weights())
    return copy, graph_only + sum(_swap_in_place(layer) for layer in hidden(copy).values())


def _relative(a, b):
    worst = 0.0
    for x, y in zip(keras.tree.flatten(a), keras.tree.flatten(b)):
        x, y = (np.asarray(keras.ops.convert_to_numpy(t), "float64") for t in (x, y))
        worst = max(worst, float(np.abs(x - y).max() / max(np.abs(y).max(), 1.0)))
    return worst


def _loaded_as(model, folder):
    """What the frozen batch norms are after a `.keras` round trip: `FrozenBatchNorm`s counted, or the error."""
    path = os.path.join(folder, "frozen.keras")
    try:
        model.save(path)
        loaded = keras.saving.load_model(path)
    except Exception as error:  # a measurement: report what a user would see
        return f"fails ({type(error).__name__})"
    return f"{len(zoo.batch_norm_layers(loaded, FrozenBatchNorm))} frozen"


def main():
    folder = tempfile.mkdtemp()
    print(f"backend {keras.backend.backend()}")
    print("| model | found | route | reached | error | seconds | .keras loads | folded |")
    print("|---|---|---|---|---|---|---|---|")
    for name in MODELS:
        model = zoo.build("keras_hub." + name)
        x = zoo.sample_input(model)
        expected = model(x, training=False)
        found = len(zoo.batch_norm_layers(model))
        start = time.perf_counter()
        frozen = freeze_batch_norm(model)
        seconds = time.perf_counter() - start
        rows = [("stand-ins", frozen, len(zoo.batch_norm_layers(frozen, FrozenBatchNorm)), seconds,
                 len(fold_batch_norm(model, return_report=True)[1].folded))]
        start = time.perf_counter()
        copy, swapped = _replace_on_copy(model)
        seconds = time.perf_counter() - start
        # Folding cannot see inside a custom layer it does not rebuild: only the graph's own batch norms fold.
        graph_only = found - len(zoo.custom_batch_norm_layers(model))
        rows.append(("replacement on a copy", copy, swapped, seconds, f"at most {graph_only}"))
        for route, new, reached, seconds, folded in rows:
            error = _relative(new(x, training=True), expected)
            print(f"| {name} | {found} | {route} | {reached} | {error:.0e} | {seconds:.1f} | "
                  f"{_loaded_as(new, folder)} | {folded} |", flush=True)


if __name__ == "__main__":
    main()
