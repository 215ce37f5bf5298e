"""Custom layers as graphs: a layer whose `call()` is Python, turned into a Functional model of its sub-layers.

keras-hub builds its MobileNet, EfficientNet, HGNetV2 and MobileNetV5 blocks,
DeepLabV3's pyramid pooling and RetinaNet's feature pyramid as
`keras.layers.Layer` subclasses whose `call()` calls sub-layers and
`keras.ops`. Called on symbolic tensors, that `call()` records each sub-layer
call and each operation as a node, so `keras.Model(inputs, layer.call(inputs))`
is a Functional model that computes what the layer computes, over the layer's
own sub-layers: a *stand-in* that the rebuild can walk like any nested model.

A stand-in is made only where it is provably the same computation; `NotInlined`
says why not otherwise:

- the layer has state of its own (a weight made by its own `add_weight`, a
  seed generator), which a graph of its sub-layers would not carry;
- it is called on several positional inputs, on tensors passed by keyword
  or with a mask;
- its `call()` does not run on symbolic tensors (a backend-specific op, Python
  arithmetic or branching on a tensor's value);
- it takes other steps in training than in inference (Python branching on
  `training`), or passes `training=True`/`False` to a sub-layer itself: a
  Functional model hands its own `training` to every node, so neither would
  survive.
"""

import inspect

import keras
import numpy as np

from keras_bn._graph.layers import global_policy, sublayers


class NotInlined(Exception):
    """Raised when a custom layer cannot become a graph; the message says why."""


def stand_in(layer, args, kwargs, name):
    """Returns a Functional model named `name`, over `layer`'s sub-layers, that computes `layer(*args, **kwargs)`.

    `args` and `kwargs` are the symbolic tensors and arguments of one call of
    `layer`; the stand-in takes `call_input(args, kwargs)` and the `training`
    of that call.
    """
    _check_state(layer)
    _check_arguments(args, kwargs)
    inputs = _inputs_like(call_input(args, kwargs))
    single = len(args) == 1 and not any(_has_tensors(v) for k, v in kwargs.items() if k != "mask")
    plain = {k: v for k, v in kwargs.items() if k not in ("training", "mask") and not _has_tensors(v)}
    models = {training: _traced(layer, inputs, plain, training, name, single) for training in (None, True, False)}
    steps = {training: _steps(model) for training, model in models.items()}
    own = {id(inner) for inner in sublayers(layer).values()}
    if not _comparable(steps[True], own) == _comparable(steps[False], own) == _comparable(steps[None], own):
        raise NotInlined("its call() takes other steps in training than in inference (Python branching on `training`)")
    for operation, options in steps[None]:
        if isinstance(options.get("training"), bool) and options["training"] != _default_training(operation):
            raise NotInlined(
                f"its call() passes training={options['training']} to {operation.name!r} itself, which a "
                "graph cannot keep (a Functional model passes its own training to every layer)"
            )
    _check_same(layer, models[None], plain, single)
    return models[None]


def model_stand_in(model):
    """Returns a Functional stand-in for the subclassed `model`, on inputs of the shape it was built for."""
    config = model.get_build_config() or {}
    shapes = config.get("input_shape")
    if shapes is None:
        raise NotInlined("it was never built on inputs of a known shape (call it on data first)")

    def spec(shape):
        return keras.KerasTensor((None, *tuple(shape)[1:]), dtype="float32")

    def is_shape(value):
        return isinstance(value, (list, tuple)) and all(d is None or isinstance(d, int) for d in value)

    inputs = _map_shapes(spec, is_shape, shapes)
    new = stand_in(model, (inputs,), {}, model.name)  # a model's call takes one input structure
    if model.compiled:
        new.compile_from_config(model.get_compile_config())
    return new


def _map_shapes(spec, is_shape, shapes):
    """Returns `shapes` (a shape, or a list or dict of them) with each shape made a tensor by `spec`."""
    if is_shape(shapes):
        return spec(shapes)
    if isinstance(shapes, dict):
        return {key: _map_shapes(spec, is_shape, value) for key, value in shapes.items()}
    return [_map_shapes(spec, is_shape, value) for value in shapes]


def _check_same(layer, model, plain, single):
    """Raises `NotInlined` unless the stand-in `model` predicts what `layer` predicts, in inference mode.

    Both run on one random batch (2 samples; 8 along any other axis of unknown
    size). Where the layer itself does not run on it, nothing is checked.
    """
    rng = np.random.default_rng(0)

    def sample(x):
        shape = [d if d is not None else (2 if axis == 0 else 8) for axis, d in enumerate(x.shape)]
        if not keras.backend.is_float_dtype(x.dtype):
            return keras.ops.zeros(shape, x.dtype)
        return keras.ops.cast(rng.standard_normal(shape).astype("float32"), x.dtype)

    data = keras.tree.map_structure(sample, model.input)
    try:
        # training=False also where call() takes none: Keras keeps it for the
        # sub-layers' calls (a default training=True, as Resizing has, would
        # leak into the layers called after it).
        args, keyed = _call_arguments(data, single)
        expected = keras.tree.flatten(layer(*args, **keyed, **plain, training=False))
    except Exception:
        return
    try:
        actual = keras.tree.flatten(model(data, training=False))
    except Exception as error:
        raise NotInlined(f"its graph does not run where its call() does ({_first_line(error)})") from error
    for a, e in zip(actual, expected, strict=True):
        a, e = (np.asarray(keras.ops.convert_to_numpy(keras.ops.cast(t, "float32")), "float64") for t in (a, e))
        tolerance = 1e-2 if keras.backend.standardize_dtype(layer.compute_dtype) in ("float16", "bfloat16") else 1e-5
        if a.shape != e.shape or np.abs(a - e).max(initial=0.0) > tolerance * max(np.abs(e).max(initial=0.0), 1.0):
            raise NotInlined("its graph does not compute what its call() computes")


def _first_line(error):
    """Returns `Type: first line of the message`, at most 120 characters of it."""
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0][:120] if text else ''}"


def _inputs_like(structure, name=None):
    """Returns `keras.Input`s shaped like the tensors of `structure`; those in a dict are named by their keys.

    A Functional model given a dict of inputs expects each key to name its tensor.
    """
    if isinstance(structure, keras.KerasTensor):
        return keras.Input(batch_shape=structure.shape, dtype=structure.dtype, name=name)
    if isinstance(structure, dict):
        return {key: _inputs_like(value, str(key) if name is None else f"{name}_{key}")
                for key, value in structure.items()}
    return type(structure)(_inputs_like(value) for value in structure)


def _check_state(layer):
    """Raises `NotInlined` if `layer` holds variables that none of its sub-layers holds."""
    inner = {id(v) for sub in sublayers(layer).values() for v in sub.weights}
    own = [v for v in layer.weights if id(v) not in inner]
    if own:
        names = ", ".join(repr(v.path) for v in own[:3]) + (", ..." if len(own) > 3 else "")
        raise NotInlined(f"it has state of its own ({names}), outside its sub-layers")


def _has_tensors(value):
    """Returns whether `value` holds a symbolic tensor at any depth."""
    return any(isinstance(x, keras.KerasTensor) for x in keras.tree.flatten(value))


def call_input(args, kwargs):
    """Returns what a stand-in takes for the call `layer(*args, **kwargs)`: its tensors, as one structure.

    One positional argument is taken as it is (a tensor, a list or a dict of
    them); otherwise the positional arguments and the keyword arguments that
    hold tensors become one dict, `{"arg0": ..., "inputs_embeds": ...}`.
    """
    keyed = {k: v for k, v in kwargs.items() if k != "mask" and _has_tensors(v)}
    if len(args) == 1 and not keyed:
        return args[0]
    return {**{f"arg{i}": value for i, value in enumerate(args)}, **keyed}


def _call_arguments(inputs, single):
    """Returns `(args, kwargs)` for `layer.call` from a stand-in's `inputs` (see `call_input`)."""
    if single:
        return (inputs,), {}
    positional = sorted((int(k[3:]), v) for k, v in inputs.items() if k.startswith("arg") and k[3:].isdigit())
    return tuple(v for _, v in positional), {k: v for k, v in inputs.items() if not (k.startswith("arg") and k[3:].isdigit())}


def _check_arguments(args, kwargs):
    """Raises `NotInlined` unless every argument that holds a tensor holds only tensors, and there is no mask."""
    if kwargs.get("mask") is not None:
        raise NotInlined("it is called with a mask")
    for value in args:
        leaves = keras.tree.flatten(value)
        if not leaves or not all(isinstance(x, keras.KerasTensor) for x in leaves):
            raise NotInlined("a positional argument is not a tensor or a structure of tensors")
    if not args and not any(_has_tensors(v) for v in kwargs.values()):
        raise NotInlined("it is called on no tensor")


def _traced(layer, inputs, plain, training, name, single):
    """Returns `keras.Model(inputs, layer.call(inputs, ...))`, as `layer.__call__` would call it."""
    x = keras.tree.map_structure(lambda t: _autocast(layer, t), inputs)
    if "training" in inspect.signature(layer.call).parameters:
        plain = {**plain, "training": training}
    args, keyed = _call_arguments(x, single)
    try:
        with global_policy(layer):
            outputs = layer.call(*args, **keyed, **plain)
        return keras.Model(inputs, outputs, name=name)
    except Exception as error:
        raise NotInlined(f"its call() does not run on symbolic tensors ({_first_line(error)})") from error


def _autocast(layer, x):
    """Casts a floating input to `layer`'s compute dtype, as `Layer.__call__` does."""
    if not layer.autocast or not keras.backend.is_float_dtype(x.dtype) or x.dtype == layer.input_dtype:
        return x
    return keras.ops.cast(x, layer.input_dtype)


def _steps(model):
    """Returns the calls of a Functional `model` in order: `(operation, options)`, tensors left out."""
    steps = []

    def collect(operation, *args, **kwargs):
        options = {k: v for k, v in kwargs.items()
                   if not any(isinstance(x, keras.KerasTensor) for x in keras.tree.flatten(v))}
        steps.append((operation, options))
        return operation(*args, **kwargs)

    keras.models.clone_model(model, clone_function=lambda op: op, call_function=collect)
    return steps


def _comparable(steps, own):
    """Returns `steps` comparable across traces, `training` left out (it differs between traces by design).

    A sub-layer (its id in `own`) is itself; an operation, or a layer that
    `call()` makes anew each time (DeepLabV3's `Resizing`), is its class and
    config, less its name.
    """

    def what(operation):
        if id(operation) in own:
            return id(operation)
        try:
            config = {k: v for k, v in operation.get_config().items() if k != "name"}
            return type(operation).__name__, repr(config)
        except NotImplementedError:
            return type(operation).__name__

    return [(what(op), {k: v for k, v in options.items() if k != "training"}) for op, options in steps]


def _default_training(layer):
    """Returns the default of `training` in `layer.call`'s signature.

    Keras records a layer's default `training` in its node when the caller
    passes none and no outer call sets one; a Functional model then passes its
    own `training` over it, as an outer call would. A value other than the
    default was passed by the custom layer itself.
    """
    if not isinstance(layer, keras.layers.Layer):
        return None
    parameter = inspect.signature(layer.call).parameters.get("training")
    return None if parameter is None or parameter.default is inspect.Parameter.empty else parameter.default
