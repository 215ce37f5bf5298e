"""Rebuilding a model through `keras.models.clone_model`: nested models, and custom layers made graphs, included."""

import functools
import inspect

import keras

from keras_bn import _keras_compat
from keras_bn._graph import inline
from keras_bn._graph.layers import global_policy, is_graph_model, set_weights_by_name, sublayers
from keras_bn._graph.reach import check_custom_layers, refuse_subclassed, refuse_unreached, unreached


def _clone_operation(operation):
    """Returns a fresh copy of a plain operation (not a layer), or the operation itself if it has no config."""
    try:
        return type(operation).from_config(operation.get_config())
    except (NotImplementedError, TypeError, ValueError):
        return operation  # stateless: sharing it between graphs is harmless


def clone_layer(layer, path):
    """Returns a new, unbuilt layer configured like `layer` (its weights are copied after the rebuild)."""
    if isinstance(layer, keras.layers.Lambda):
        # Its config holds the function as bytecode, which Keras refuses to load
        # by default; the function object itself is at hand.
        return keras.layers.Lambda(
            layer.function, output_shape=_keras_compat.lambda_output_shape(layer), mask=layer.mask,
            arguments=layer.arguments, name=layer.name, dtype=layer.dtype_policy,
        )
    try:
        with global_policy(layer):
            return type(layer).from_config(layer.get_config())
    except Exception as error:
        raise ValueError(
            f"Layer {path!r} of type {type(layer).__name__} cannot be rebuilt: "
            f"{type(layer).__name__}.from_config(layer.get_config()) fails "
            f"({type(error).__name__}, shown above). Give the layer a get_config() that "
            "returns its constructor arguments."
        ) from error


class Rebuilder:
    """Rebuilds a model through `clone_model`, layer by layer, recursing into nested models.

    A custom layer (one whose `call()` is Python) that holds a layer to
    `reach` is rebuilt through its stand-in (`inline.stand_in`), a nested
    Functional model of the same name over its sub-layers, so that those are
    replaced like any other; where no stand-in can be made, it is cloned whole
    and `opaque` says why.

    Args:
        replace: `replace(path, layer)` returns the layer to use in place of
            the leaf `layer` (a new one, the same one to share it, or `None`
            for a clone configured like it).
        reach: `reach(path, layer)` says whether a layer inside a custom layer
            must be reached; `None` reaches none (custom layers are cloned whole).
    """

    def __init__(self, replace, reach=None):
        self.replace = replace
        self.reach = reach
        self.pairs = []  # (path, old layer, new layer) for every leaf layer
        self.opaque = {}  # {path of a custom layer cloned whole: why no stand-in}
        self._cache = {}
        self._paths = {}

    def model(self, model, prefix=""):
        """Returns the rebuilt `model`, nested models rebuilt as nested models."""
        clone = functools.partial(self._operation, prefix=prefix)
        if isinstance(model, keras.Sequential):  # it calls its layers itself
            if not any(self.to_inline(layer, prefix + layer.name) for layer in model.layers):
                return keras.models.clone_model(model, clone_function=clone)
            model = keras.Model(model.inputs, model.outputs, name=model.name)
        return keras.models.clone_model(model, clone_function=clone, call_function=self._call)

    def to_inline(self, layer, path):
        """Returns whether `layer` is a custom layer that holds a layer to reach."""
        if self.reach is None or is_graph_model(layer) or not isinstance(layer, keras.layers.Layer):
            return False
        return any(self.reach(p, inner) for p, inner in sublayers(layer, path + "/").items())

    def _operation(self, operation, prefix):
        """The `clone_function`: the new layer for `operation`, each original once."""
        if id(operation) in self._cache:
            return self._cache[id(operation)]
        path = prefix + operation.name
        if not isinstance(operation, keras.layers.Layer):
            new = _clone_operation(operation)
        elif is_graph_model(operation):
            new = self._nested(operation, path)
        else:
            new = self._leaf(operation, path)
        self._cache[id(operation)] = new
        self._paths[id(new)] = (path, operation)
        return new

    def _leaf(self, layer, path):
        """Returns the new layer for `layer`, or an `_Inline` that makes it at its first call.

        A layer that cannot be rebuilt from its config (keras-hub's blocks make
        some sub-layers that keras-hub never serializes) is rebuilt through its
        stand-in too.
        """
        new = self.replace(path, layer)
        if new is None and self.to_inline(layer, path):
            return _Inline(layer, path)
        if new is None:
            try:
                new = clone_layer(layer, path)
            except ValueError as error:
                return _Inline(layer, path, error)
        self.pairs.append((path, layer, new))
        return new

    def _nested(self, model, path):
        """Returns what stands for the nested `model` in the rebuilt graph."""
        return self.model(model, path + "/")

    def _call(self, operation, *args, **kwargs):
        """The `call_function`: calls the new `operation`, or the rebuilt stand-in of a custom layer."""
        if not isinstance(operation, _Inline):
            return _call(operation, *args, **kwargs)
        if operation.whole is None:
            try:
                name = operation.layer.name + (f"_{operation.calls}" if operation.calls else "")
                model = inline.stand_in(operation.layer, args, kwargs, name)
            except inline.NotInlined as why:
                self._whole(operation, str(why))
            else:
                operation.calls += 1
                training = {k: v for k, v in kwargs.items() if k == "training"}
                return self.model(model, operation.path + "/")(inline.call_input(args, kwargs), **training)
        return _call(operation.whole, *args, **kwargs)

    def _whole(self, operation, why):
        """Clones the custom layer of `operation` whole, as no stand-in can be made; raises if it cannot be cloned."""
        if operation.error is not None:
            raise ValueError(f"{operation.error} Nor from its call(): {why}.") from operation.error
        self.opaque[operation.path] = why
        operation.whole = clone_layer(operation.layer, operation.path)
        self.pairs.append((operation.path, operation.layer, operation.whole))


class _Inline:
    """What `Rebuilder` gives `clone_model` for a custom layer to reach into: resolved at each call."""

    def __init__(self, layer, path, error=None):
        self.layer, self.path, self.error = layer, path, error  # error: why it cannot be cloned
        self.calls = 0  # stand-ins made so far
        self.whole = None  # the layer's clone, once no stand-in can be made


def _call(operation, *args, **kwargs):
    """Calls `operation` as the original was called, less a `mask` or `training` its `call` does not take.

    A replacement (a `GroupNormalization` for a batch norm) may not take every
    keyword argument that Keras passed to the layer it replaces.
    """
    if not isinstance(operation, keras.layers.Layer) or is_graph_model(operation):
        return operation(*args, **kwargs)
    parameters = inspect.signature(operation.call).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        kwargs = {k: v for k, v in kwargs.items() if k in parameters or k not in ("mask", "training")}
    with global_policy(operation):  # sub-layers made in build() take the layer's policy
        return operation(*args, **kwargs)


def subclassed_as_graph(model, reach, caller, custom_layers):
    """Returns the Functional stand-in of the subclassed `model`, or `None` to copy it whole.

    It raises a `ValueError` from `caller`, with `custom_layers="raise"`, when
    `model` holds layers to `reach` and has no stand-in.
    """
    if reach is None or not refuse_subclassed(model, reach, caller, "keep"):
        return None
    try:
        return inline.model_stand_in(model)
    except inline.NotInlined as why:
        if custom_layers == "keep":
            return None
        refuse_subclassed(model, reach, caller, "raise", str(why))


def copy_opaque(model, caller):
    """Returns a built copy of a subclassed `model`, weights included, through its config."""
    try:
        new = keras.models.clone_model(model)
        new.build_from_config(model.get_build_config())
        new.set_weights(model.get_weights())
    except Exception as error:
        raise ValueError(
            f"{caller} cannot copy model {model.name!r}: it is a subclassed "
            f"{type(model).__name__} with its own call(), so its graph cannot be walked, and "
            f"copying it through its config failed ({type(error).__name__}, shown above). "
            "Build the model with the Functional API, or give its class get_config()."
        ) from error
    return new

def rebuild(model, replace, weights_for=None, *, reach=None, caller="rebuild", custom_layers="raise",
            kept=None):
    """Returns a new model with each leaf layer replaced by `replace(path, layer)` or cloned, weights copied.

    `weights_for(path, old, new)` returns `{weight name: array}` for a new
    layer, or `None` to copy the old layer's weights as they are. The layers
    with `reach(path, layer)` inside custom layers are reached through the
    layers' stand-ins; those that cannot be are named in a `ValueError` from
    `caller`, or, with `custom_layers="keep"`, left inside their layer's clone
    and added to the dict `kept` (when given) as `unreached` names them.
    A subclassed model is rebuilt through its own stand-in (a Functional
    model), or copied whole.
    """
    check_custom_layers(custom_layers)
    source = model if is_graph_model(model) else subclassed_as_graph(model, reach, caller, custom_layers)
    if source is None:
        if kept is not None:
            kept.update((path, (model.name, model, "the subclassed model is copied whole"))
                        for path in refuse_subclassed(model, reach, caller, "keep"))
        return copy_opaque(model, caller)
    rebuilder = Rebuilder(replace, reach)
    with global_policy(model):
        new_model = rebuilder.model(source)
    if custom_layers == "raise":
        refuse_unreached(unreached(rebuilder.opaque, rebuilder.pairs, reach), caller)
    elif kept is not None:
        kept.update(unreached(rebuilder.opaque, rebuilder.pairs, reach))
    _copy_weights(rebuilder.pairs, weights_for)
    if _is_task(model):
        new_model = _as_task(model, new_model)
    return new_model


def _copy_weights(pairs, weights_for):
    """Gives each new layer of `pairs` its weights: `weights_for`'s, or the old layer's."""
    for path, old, new in pairs:
        values = None if weights_for is None else weights_for(path, old, new)
        if values is None and new.weights:
            if len(new.weights) != len(old.weights):
                raise ValueError(
                    f"Layer {path!r} has {len(old.weights)} weights but its rebuilt copy has "
                    f"{len(new.weights)}; it cannot be rebuilt from its config."
                )
            new.set_weights(old.get_weights())
        elif values is not None:
            set_weights_by_name(new, values)


def _is_task(model):
    """Returns whether `model` is a keras-hub task: a Functional subclass around a `backbone`, with a `preprocessor`."""
    return hasattr(model, "backbone") and hasattr(model, "preprocessor") and is_graph_model(model.backbone)


def _as_task(task, rebuilt):
    """Returns a task of `task`'s class around the backbone of the `rebuilt` graph, with `task`'s preprocessor.

    A task applies its preprocessor in `fit`/`predict`, outside its graph: the
    bare rebuilt graph would predict differently on the same data.
    """
    config = task.get_config()
    config["backbone"] = rebuilt.get_layer(task.backbone.name)
    config["preprocessor"] = task.preprocessor
    try:
        with global_policy(task):
            new = type(task)(**config)
        for layer in new.layers:
            if layer is not config["backbone"] and layer.weights:
                layer.set_weights(rebuilt.get_layer(layer.name).get_weights())
    except Exception as error:
        raise ValueError(
            f"The keras-hub task {task.name!r} ({type(task).__name__}) cannot be rebuilt around "
            f"its new backbone ({type(error).__name__}, shown above). Convert its backbone "
            "instead and build the task around it."
        ) from error
    return new
