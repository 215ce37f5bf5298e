"""Rebuild a Sequential or Functional model with some layers replaced, through public Keras APIs.

`fold_batch_norm` and `convert_batch_norm` both work on a model's serialized
form (`keras.saving.serialize_keras_object`): they rewrite the entries of some
layers, deserialize a new model, and copy the weights across by layer path.
Nested Sequential and Functional models are walked into, so a layer inside a
sub-model is reached as `"outer_name/inner_name"`.
"""

import dataclasses

import keras


def check_rebuildable(model, caller):
    """Raises a `ValueError` naming `caller` unless `model` is a built Sequential or Functional model."""
    if not isinstance(model, keras.Model) or not _is_graph_model(model):
        raise ValueError(
            f"{caller} needs a Sequential or Functional model, whose graph it can "
            f"rebuild. Received: model of type {type(model).__name__}"
        )
    if not model.built:
        raise ValueError(
            f"{caller} needs a built model. Received: model {model.name!r} that was "
            "never built (call it on data or give it an Input first)"
        )


def _is_graph_model(layer):
    """Returns whether `layer` is a Sequential or Functional model (its config lists its layers)."""
    if isinstance(layer, keras.Sequential):
        return True
    if not isinstance(layer, keras.Model):
        return False
    try:
        config = layer.get_config()
    except NotImplementedError:
        return False
    return isinstance(config, dict) and {"layers", "input_layers", "output_layers"} <= set(config)


def entry_name(entry):
    """Returns the layer name of a serialized layer entry (Functional entries carry it twice)."""
    return entry.get("name") or entry["config"]["name"]


@dataclasses.dataclass
class Site:
    """One layer of a (possibly nested) model, with what its graph says about it.

    Attributes:
        path: `"name"`, or `"outer/inner"` inside a nested model.
        layer: The layer object.
        entry: Its serialized entry in the rebuilt config (edit it to replace the layer).
        inputs: Per call of the layer, the `(producer path, node, tensor)` of each
            input tensor; `None` for the inputs of the model it belongs to.
        calls: Per call, the call's keyword arguments as serialized.
        consumers: Per output `(node, tensor)`, the paths of the layers consuming it,
            with `"<output>"` where the enclosing model returns it.
    """

    path: str
    layer: keras.layers.Layer
    entry: dict
    inputs: list = dataclasses.field(default_factory=list)
    calls: list = dataclasses.field(default_factory=list)
    consumers: dict = dataclasses.field(default_factory=dict)


def _tensor_refs(value):
    """Yields the `keras_history` triples of every serialized tensor inside `value`."""
    if isinstance(value, dict):
        if value.get("class_name") == "__keras_tensor__":
            yield tuple(value["config"]["keras_history"])
            return
        for item in value.values():
            yield from _tensor_refs(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensor_refs(item)


def _output_refs(value):
    """Yields `(name, node, tensor)` for a Functional config's `output_layers` (one or nested)."""
    if len(value) == 3 and isinstance(value[0], str) and isinstance(value[1], int):
        yield tuple(value)
        return
    for item in value:
        yield from _output_refs(item)


def sites(model, serialized):
    """Returns `{path: Site}` for every layer of `model`, walking into nested graph models.

    `serialized` is `keras.saving.serialize_keras_object(model)`; each `Site.entry`
    is the dict inside it, so editing an entry edits what gets rebuilt.
    """
    found = {}
    _collect(model, serialized["config"], "", found)
    return found


def _collect(model, config, prefix, found):
    """Adds the sites of one graph model's config to `found` (recursively)."""
    entries = config["layers"]
    local = {}
    for entry in entries:
        if isinstance(model, keras.Sequential) and entry["class_name"] == "InputLayer":
            continue  # a Sequential model's `layers` leave its input out
        name = entry_name(entry)
        site = Site(prefix + name, model.get_layer(name), entry)
        local[name] = site
        found[site.path] = site
    if isinstance(model, keras.Sequential):
        # A chain: each layer (but the input) consumes the previous one's output.
        previous = None
        for site in local.values():
            site.inputs.append([None if previous is None else (previous.path, 0, 0)])
            site.calls.append({})
            if previous is not None:
                previous.consumers.setdefault((0, 0), []).append(site.path)
            previous = site
        if previous is not None:
            previous.consumers.setdefault((0, 0), []).append("<output>")
    else:
        for site in local.values():
            for node in site.entry.get("inbound_nodes", []):
                refs = list(_tensor_refs(node))
                site.inputs.append([(local[n].path, i, t) for n, i, t in refs])
                site.calls.append(node.get("kwargs", {}))
                for n, i, t in refs:
                    local[n].consumers.setdefault((i, t), []).append(site.path)
        for n, i, t in _output_refs(config["output_layers"]):
            local[n].consumers.setdefault((i, t), []).append("<output>")
    for site in list(local.values()):
        if _is_graph_model(site.layer):
            _collect(site.layer, site.entry["config"], site.path + "/", found)


def replace_entry(entry, layer):
    """Makes the serialized `entry` describe `layer` instead, keeping its name, build config and calls."""
    new = keras.saving.serialize_keras_object(layer)
    for key in ("module", "class_name", "registered_name", "config"):
        entry[key] = new[key]


def leaf_layers(model, prefix=""):
    """Returns `{path: layer}` for every layer that is not itself a graph model, walking nested ones."""
    leaves = {}
    for layer in model.layers:
        path = prefix + layer.name
        if _is_graph_model(layer):
            leaves.update(leaf_layers(layer, path + "/"))
        else:
            leaves[path] = layer
    return leaves


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


def rebuild(model, serialized, weights_for):
    """Deserializes `serialized` into a new model and gives each leaf layer its weights.

    `weights_for(path, old_layer, new_layer)` returns `{name: array}` for the new
    layer, or `None` to copy the old layer's weights as they are.
    """
    new_model = keras.saving.deserialize_keras_object(serialized)
    old = leaf_layers(model)
    for path, new_layer in leaf_layers(new_model).items():
        if not new_layer.weights:
            continue
        values = weights_for(path, old[path], new_layer)
        if values is None:
            new_layer.set_weights(old[path].get_weights())
        else:
            set_weights_by_name(new_layer, values)
    return new_model
