"""What the tools could not reach, and the errors and warnings that name it."""

import warnings

from keras_bn._graph.layers import is_graph_model, sublayers

_KEEP_HINT = (
    'Pass custom_layers="keep" to leave them as they are and replace the others; or build those '
    "layers (or the model) with the layer you want in place, e.g. ManualBatchNorm, which takes the "
    "same arguments as keras.layers.BatchNormalization, and copy the weights with "
    "new_model.set_weights(model.get_weights())."
)


def check_custom_layers(custom_layers):
    """Raises a `ValueError` unless `custom_layers` is `"raise"` or `"keep"`."""
    if custom_layers not in ("raise", "keep"):
        raise ValueError(f'`custom_layers` must be "raise" or "keep". Received: custom_layers={custom_layers!r}')


def unreached(opaque, pairs, reach):
    """Returns `{path: (custom layer path, custom layer, why)}` for the layers to reach inside custom layers cloned whole.

    `opaque` is `Rebuilder.opaque` (or `Graph.opaque`), `pairs` the
    `(path, old, new)` of the rebuild, `reach(path, layer)` the tools' test.
    """
    found = {}
    wholes = {path: old for path, old, _ in pairs if path in opaque}
    for where, layer in wholes.items():
        for path, inner in sublayers(layer, where + "/").items():
            if reach(path, inner):
                found.setdefault(path, (where, layer, opaque[where]))
    return found


def describe(where, layer, why):
    """Returns `inside 'where' (Class): why`."""
    return f"inside {where!r} ({type(layer).__name__}): {why}"


def refuse_unreached(found, caller):
    """Raises a `ValueError` from `caller` naming each layer of `found` (from `unreached`) and why."""
    if not found:
        return
    lines = "\n  ".join(f"{path!r}: {describe(*how)}" for path, how in found.items())
    raise ValueError(
        f"{caller} cannot reach these layers inside custom layers, which keras-bn could not turn "
        f"into graphs of their sub-layers:\n  {lines}\nNothing was changed. {_KEEP_HINT}"
    )


def refuse_subclassed(model, reach, caller, custom_layers, why="its call() cannot be seen"):
    """Raises a `ValueError` if `model` is a subclassed model (its own `call()`) that holds layers to reach.

    With `custom_layers="keep"` it returns their paths instead.
    """
    if reach is None or is_graph_model(model):
        return []
    found = [path for path, layer in sublayers(model).items() if reach(path, layer)]
    if found and custom_layers == "raise":
        raise ValueError(
            f"{caller} cannot replace these layers inside the subclassed model {model.name!r} "
            f"({type(model).__name__}), which keras-bn could not turn into a graph ({why}): "
            f"{', '.join(map(repr, found))}. Nothing was changed. {_KEEP_HINT}"
        )
    return found


def warn_kept(caller, found, consequence, stacklevel=2):
    """Warns, with one `UserWarning`, of the layers `caller` kept inside custom layers.

    `found` is `{path: (custom layer path, custom layer, why)}`, as `unreached`
    gives it (`rebuild`'s `kept`, after `custom_layers="keep"`). The warning
    gives their count, each path with its layer and the reason, then
    `consequence`: what they do now, and how to change that. `stacklevel` is
    `warnings.warn`'s, seen from the caller of this function. Nothing is
    warned for none.
    """
    if not found:
        return
    lines = "\n  ".join(f"{path!r}: {describe(*how)}" for path, how in found.items())
    warnings.warn(
        f"{caller} kept {len(found)} batch norm(s) as they were, inside custom layers that "
        f"keras-bn could not turn into graphs:\n  {lines}\n{consequence} The rules a custom "
        "layer must follow are in the Custom layers guide (docs/guide/custom_layers.md).",
        UserWarning, stacklevel=stacklevel + 1,
    )
