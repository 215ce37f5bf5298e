"""Finding layers: the layers of a model at any depth, and those that no graph shows."""

import contextlib

import keras

from keras_bn import _keras_compat


def is_graph_model(layer):
    """Returns whether `layer` is a Sequential or Functional model (a Functional subclass included)."""
    if isinstance(layer, keras.Sequential):
        return True
    return isinstance(layer, keras.Model) and _keras_compat.is_functional(layer)


def check_model(model, caller):
    """Raises a `TypeError`/`ValueError` naming `caller` unless `model` is a built Keras model."""
    if not isinstance(model, keras.Model):
        raise TypeError(f"{caller} needs a keras.Model. Received: model of type {type(model).__name__}")
    if not model.built:
        raise ValueError(
            f"{caller} needs a built model. Received: model {model.name!r} that was "
            "never built (call it on data or give it an Input first)"
        )


def sublayers(layer, prefix=""):
    """Returns `{path: sublayer}` for the layers tracked inside `layer`, at any depth, each once.

    Graph models are walked through `layers`; other layers and subclassed
    models through the sub-layers Keras tracks for them. A path joins the
    layers' names with `/`.
    """
    found, seen = {}, {id(layer)}

    def walk(parent, prefix):
        for child in _children(parent):
            if id(child) in seen:
                continue
            seen.add(id(child))
            found[prefix + child.name] = child
            walk(child, prefix + child.name + "/")

    walk(layer, prefix)
    return found


def _children(layer):
    """Returns the layers directly inside `layer`: a graph model's `layers`, else those Keras tracks."""
    return layer.layers if is_graph_model(layer) else _keras_compat.tracked_layers(layer)


def graph_layers(model, prefix=""):
    """Returns `{path: layer}` for every layer of a graph model that is not a model, nested ones walked."""
    found = {}
    for layer in model.layers:
        path = prefix + layer.name
        if is_graph_model(layer):
            found.update(graph_layers(layer, path + "/"))
        elif not isinstance(layer, keras.layers.InputLayer):
            found[path] = layer
    return found


def layers_of(model, kinds):
    """Returns every layer of `model` that is an instance of `kinds`, `model` included, at any depth, each once.

    `sublayers` reaches the layers of nested models and those that custom
    blocks (keras-hub's) and subclassed models hold.
    """
    return [layer for layer in [model, *sublayers(model).values()] if isinstance(layer, kinds)]


def hidden(model):
    """Returns `{path: layer}` for the layers whose call() no graph shows: the model itself if subclassed."""
    if not is_graph_model(model):
        return {"": model}
    return {path: layer for path, layer in graph_layers(model).items() if _children(layer)}


def inside_hidden(model, is_target):
    """Returns `{path: (where, layer)}` for the sub-layers with `is_target(path, sub-layer)` inside a hidden layer.

    `layer` is the layer whose call() no graph shows, at path `where` (`""`
    for a subclassed `model` itself).
    """
    found = {}
    for where, layer in hidden(model).items():
        prefix = where + "/" if where else ""
        for path, inner in sublayers(layer, prefix).items():
            if is_target(path, inner):
                found.setdefault(path, (where, layer))
    return found


def layers_by_path(model, inner=False):
    """Returns `{path: layer}`: every layer of a graph model at any depth, else the model's own `layers`.

    With `inner=True` the layers inside custom layers (whose `call()` is
    Python) are listed too, after the layers of the graph.
    """
    if not is_graph_model(model):
        return {layer.name: layer for layer in getattr(model, "layers", [])}
    found = graph_layers(model)
    if inner:
        for where, layer in hidden(model).items():
            for path, sub in sublayers(layer, where + "/").items():
                found.setdefault(path, sub)
    return found


def weights_by_name(layer):
    """Returns `{short weight name: NumPy array}` of a layer's weights."""
    return {w.name: keras.ops.convert_to_numpy(w) for w in layer.weights}


def set_weights_by_name(layer, values):
    """Assigns `values[name]` to each of `layer`'s weights that `values` names; returns the names left unset."""
    missing = []
    for w in layer.weights:
        if w.name in values:
            w.assign(keras.ops.cast(values[w.name], w.dtype))
        else:
            missing.append(w.name)
    return missing


@contextlib.contextmanager
def global_policy(layer):
    """Makes `layer`'s dtype policy the global one for a while.

    A custom layer (keras-hub's blocks) may create its sub-layers without
    passing its `dtype` on, so they take the global policy: a copy made under
    another global policy than the original's would compute in another dtype.
    """
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(layer.dtype_policy)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)
