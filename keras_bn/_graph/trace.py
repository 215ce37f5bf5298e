"""Tracing a model: who produces and who consumes each tensor, nested models and custom layers inlined."""

import dataclasses

import keras

from keras_bn._graph import inline
from keras_bn._graph.layers import is_graph_model
from keras_bn._graph.reach import describe, unreached
from keras_bn._graph.rebuild import Rebuilder


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
        opaque: `{path: why}` for the custom layers traced as one call, though
            they hold a layer to reach.
        model: The traced copy, which keeps the tensors whose ids are the keys alive.
    """

    calls: dict = dataclasses.field(default_factory=dict)
    consumers: dict = dataclasses.field(default_factory=dict)
    outputs: dict = dataclasses.field(default_factory=dict)
    producers: dict = dataclasses.field(default_factory=dict)
    tensors: dict = dataclasses.field(default_factory=dict)
    opaque: dict = dataclasses.field(default_factory=dict)
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


class _Tracer(Rebuilder):
    """Rebuilds a model as one flat graph over its own layers, nested models inlined, recording every call."""

    def __init__(self, reach=None):
        super().__init__(lambda path, layer: layer, reach)
        self.graph = Graph(opaque=self.opaque)

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

    def _stand_in(self, layer, path, args, kwargs):
        """Returns the stand-in of a custom `layer` that holds a layer to reach, or `None`."""
        if not self.to_inline(layer, path):
            return None
        try:
            return inline.stand_in(layer, args, kwargs, layer.name)
        except inline.NotInlined as why:
            self.opaque[path] = str(why)
            return None

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
            model = self._stand_in(operation, path, args, kwargs)
            if model is not None:
                return self._inline(model, path + "/", inline.call_input(args, kwargs), plain)
            outputs = operation(*args, **kwargs)
            inputs, results = _tensors((args, kwargs)), _tensors(outputs)
            self.graph.tensors.update((id(x), x) for x in inputs + results)
            self.graph.add(Call(path, original, [id(x) for x in inputs], [id(x) for x in results], plain))
            return outputs

        return record


def trace(model, reach=None):
    """Returns the `Graph` of `model`, recorded on a copy that shares the model's layers.

    Custom layers that hold a layer with `reach(path, layer)` are traced
    through their stand-ins (`inline.stand_in`), so the graph shows their
    sub-layers' calls; `Graph.opaque` names those that could not be. Sharing
    creates no weights; the shared layers gain call records that the
    original model does not use.
    """
    tracer = _Tracer(reach)
    tracer.graph.model = tracer.model(model)
    return tracer.graph


def inputs_of(model, paths):
    """Returns a model from `model`'s inputs to the input of the first call of each layer in `paths`.

    It shares `model`'s layers (the same weights); layers of nested models are
    reached by their paths, `"backbone/conv1"`.
    """
    wanted = set(paths)
    graph = trace(model, reach=lambda path, layer: path in wanted)
    missing = [path for path in paths if path not in graph.calls]
    if missing:
        calls = [(path, calls[0].operation, None) for path, calls in graph.calls.items()]
        why = unreached(graph.opaque, calls, lambda path, layer: path in wanted)
        lines = [f"{path!r}: {describe(*why[path]) if path in why else 'never called'}" for path in missing]
        raise ValueError("These layers are out of reach in the model's graph:\n  " + "\n  ".join(lines))
    return keras.Model(graph.model.input, [graph.tensors[graph.calls[path][0].inputs[0]] for path in paths])

