"""Rebuilding and tracing a model through `keras.models.clone_model`, nested models included."""

import contextlib
import dataclasses
import functools
import inspect

import keras

from keras_bn._graph.layers import is_graph_model, set_weights_by_name


@dataclasses.dataclass
class Call:
    """One call of a layer or operation in a graph model, as `trace` saw it.

    Attributes:
        path: The operation's path, `"outer/inner"` inside a nested model.
        operation: The original layer or operation.
        inputs: Keys of the tensors it was called on.
        outputs: Keys of the tensors it returned.
        kwargs: Its keyword arguments that are not tensors (e.g. `training`).
    """

    path: str
    operation: object
    inputs: list
    outputs: list
    kwargs: dict


@dataclasses.dataclass
class Graph:
    """Every call of a model's graph (nested models included) and who consumes each tensor.

    Attributes:
        calls: `{path: [Call, ...]}`, one `Call` per time the operation is called.
        consumers: `{tensor key: [Call, ...]}`.
        outputs: `{tensor key: path of the model that returns it}`, `""` for the
            model traced, `"outer/inner"` for a nested one.
        producers: `{tensor key: Call}`; a model input has none.
        tensors: `{tensor key: KerasTensor}`.
        model: The traced copy, which keeps the tensors whose ids are the keys alive.
    """

    calls: dict = dataclasses.field(default_factory=dict)
    consumers: dict = dataclasses.field(default_factory=dict)
    outputs: dict = dataclasses.field(default_factory=dict)
    producers: dict = dataclasses.field(default_factory=dict)
    tensors: dict = dataclasses.field(default_factory=dict)
    model: object = None

    def add(self, call):
        """Records `call`."""
        self.calls.setdefault(call.path, []).append(call)
        for key in call.inputs:
            self.consumers.setdefault(key, []).append(call)
        for key in call.outputs:
            self.producers[key] = call


def _tensors(structure):
    """Returns the KerasTensors inside a nested structure of call arguments."""
    return [x for x in keras.tree.flatten(structure) if isinstance(x, keras.KerasTensor)]


def _clone_operation(operation):
    """Returns a fresh copy of a plain operation (not a layer), or the operation itself if it has no config."""
    try:
        return type(operation).from_config(operation.get_config())
    except (NotImplementedError, TypeError, ValueError):
        return operation  # stateless: sharing it between graphs is harmless


@contextlib.contextmanager
def _global_policy(layer):
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


def clone_layer(layer, path):
    """Returns a new, unbuilt layer configured like `layer` (its weights are copied after the rebuild)."""
    if isinstance(layer, keras.layers.Lambda):
        # Its config holds the function as bytecode, which Keras refuses to load
        # by default; the function object itself is at hand.
        return keras.layers.Lambda(
            layer.function, output_shape=getattr(layer, "_output_shape", None), mask=layer.mask,
            arguments=layer.arguments, name=layer.name, dtype=layer.dtype_policy,
        )
    try:
        with _global_policy(layer):
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

    Args:
        replace: `replace(path, layer)` returns the layer to use in place of
            the leaf `layer` (a new one, the same one to share it, or `None`
            for a clone configured like it).
    """

    def __init__(self, replace):
        self.replace = replace
        self.pairs = []  # (path, old layer, new layer) for every leaf layer
        self._cache = {}
        self._paths = {}

    def model(self, model, prefix=""):
        """Returns the rebuilt `model`, nested models rebuilt as nested models."""
        clone = functools.partial(self._operation, prefix=prefix)
        if isinstance(model, keras.Sequential):  # it calls its layers itself
            return keras.models.clone_model(model, clone_function=clone)
        return keras.models.clone_model(model, clone_function=clone, call_function=_call)

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
            new = self.replace(path, operation)
            if new is None:
                new = clone_layer(operation, path)
            self.pairs.append((path, operation, new))
        self._cache[id(operation)] = new
        self._paths[id(new)] = (path, operation)
        return new

    def _nested(self, model, path):
        """Returns what stands for the nested `model` in the rebuilt graph."""
        return self.model(model, path + "/")


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
    with _global_policy(operation):  # sub-layers made in build() take the layer's policy
        return operation(*args, **kwargs)


class _Tracer(Rebuilder):
    """Rebuilds a model as one flat graph over its own layers, nested models inlined, recording every call."""

    def __init__(self):
        super().__init__(lambda path, layer: layer)
        self.graph = Graph()

    def model(self, model, prefix=""):
        """Returns the flat copy of `model`; its outputs are recorded as the model's."""
        if isinstance(model, keras.Sequential):
            inputs = keras.Input(batch_shape=tuple(model.inputs[0].shape), dtype=model.inputs[0].dtype)
            return keras.Model(inputs, self._inline(model, prefix, inputs, {}))
        new = keras.models.clone_model(
            model, clone_function=lambda op: self._operation(op, prefix), call_function=self._recorder(prefix, {})
        )
        self.graph.outputs.update((id(x), "") for x in keras.tree.flatten(new.outputs))
        return new

    def _nested(self, model, path):
        """Keeps the nested model: the recorder calls its layers in place of it (see `_inline`)."""
        return model


    def _inline(self, model, prefix, inputs, inherited):
        """Calls the layers of the nested `model` on `inputs`, recording each call; returns its outputs."""
        record = self._recorder(prefix, inherited)
        if isinstance(model, keras.Sequential):
            outputs = inputs
            for layer in model.layers:
                outputs = record(self._operation(layer, prefix), outputs)
        else:
            outputs = self._replay(model, prefix, inputs, record)
        for x in keras.tree.flatten(outputs):
            self.graph.outputs.setdefault(id(x), prefix.rstrip("/"))
        return outputs

    def _replay(self, model, prefix, inputs, record):
        """Calls the operations of the Functional `model`, in its order, on `inputs`; returns its outputs.

        `clone_model(model, input_tensors=inputs)` would not do: a Functional
        model made on tensors that are not `Input`s copies its graph, so its
        outputs would not be connected to `inputs`.
        """
        calls = []

        def collect(operation, *args, **kwargs):
            outputs = operation(*args, **kwargs)
            calls.append((operation, args, kwargs, outputs))
            return outputs

        copy = keras.models.clone_model(model, clone_function=lambda op: op, call_function=collect)
        # A model whose input is `[x]` may be called on `x`.
        known = dict(zip(map(id, keras.tree.flatten(copy.input)), keras.tree.flatten(inputs)))

        def mapped(x):
            return known.get(id(x), x) if isinstance(x, keras.KerasTensor) else x

        for operation, args, kwargs, outputs in calls:
            args, kwargs = keras.tree.map_structure(mapped, (args, kwargs))
            results = record(self._operation(operation, prefix), *args, **kwargs)
            known.update(zip(map(id, keras.tree.flatten(outputs)), keras.tree.flatten(results)))
        return keras.tree.map_structure(mapped, copy.output)

    def _recorder(self, prefix, inherited):
        """Returns a `call_function` that calls each operation and records the call.

        `inherited` holds the keyword arguments (e.g. `training`) of the call
        of the nested model that these calls belong to.
        """

        def record(operation, *args, **kwargs):
            path, original = self._paths.get(id(operation), (prefix + operation.name, operation))
            plain = {**inherited, **{k: v for k, v in kwargs.items() if not _tensors(v)}}
            if is_graph_model(operation):
                inputs = args[0] if args else kwargs["inputs"]
                return self._inline(operation, path + "/", inputs, plain)
            outputs = operation(*args, **kwargs)
            inputs, results = _tensors((args, kwargs)), _tensors(outputs)
            self.graph.tensors.update((id(x), x) for x in inputs + results)
            self.graph.add(Call(path, original, [id(x) for x in inputs], [id(x) for x in results], plain))
            return outputs

        return record


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


def trace(model):
    """Returns the `Graph` of `model`, recorded on a copy that shares the model's layers.

    Sharing creates no weights; the shared layers gain call records that the
    original model does not use.
    """
    tracer = _Tracer()
    tracer.graph.model = tracer.model(model)
    return tracer.graph


def inputs_of(model, paths):
    """Returns a model from `model`'s inputs to the input of the first call of each layer in `paths`.

    It shares `model`'s layers (the same weights); layers of nested models are
    reached by their paths, `"backbone/conv1"`.
    """
    graph = trace(model)
    missing = [path for path in paths if path not in graph.calls]
    if missing:
        raise ValueError(f"These layers are never called in the model's graph: {missing}")
    return keras.Model(graph.model.input, [graph.tensors[graph.calls[path][0].inputs[0]] for path in paths])


def rebuild(model, replace, weights_for=None):
    """Returns a new model with each leaf layer replaced by `replace(path, layer)` or cloned, weights copied.

    `weights_for(path, old, new)` returns `{weight name: array}` for a new
    layer, or `None` to copy the old layer's weights as they are.
    """
    rebuilder = Rebuilder(replace)
    with _global_policy(model):
        new_model = rebuilder.model(model)
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
        with _global_policy(task):
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
