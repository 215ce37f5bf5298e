"""The training-mode passes behind `recalibrate_batch_norm`, on each backend.

Each pass runs the model in training mode on one batch with every batch norm's
momentum at 0, so that what a layer leaves in its moving statistics is exactly
the statistics of that batch as the layer computes them. Around the passes,
every non-trainable variable is saved and put back (`saved_state`), and the
dropout layers can be held in inference mode (`training_passes`).
TensorFlow runs the passes as one traced call and JAX as one compiled step,
both kept per model for the next recalibration.
"""

import contextlib
import functools
import weakref

import keras

import numpy as np

from keras_bn import _keras_compat

# What a training-mode call with momentum 0 leaves in these variables is the
# batch's own statistics; everything else a layer keeps is put back.
_RESET_VALUES = {"moving_mean": 0.0, "moving_variance": 1.0, "moving_stddev": 1.0}
# The layers that add noise in training only: held in inference mode by
# `recalibrate_batch_norm(..., dropout="inference")`. Spatial dropout
# subclasses `Dropout`.
DROPOUT_LAYERS = (
    keras.layers.Dropout,
    keras.layers.GaussianDropout,
    keras.layers.GaussianNoise,
    keras.layers.AlphaDropout,
)
# JAX: the compiled training-mode step of each model, see `jax_batch_statistics`.
_JAX_STEPS = weakref.WeakKeyDictionary()
# TensorFlow: the traced training-mode calls of each model, by key, see `_tf_forward`.
_TF_STEPS = weakref.WeakKeyDictionary()


def _inputs(batch):
    """Returns the model inputs `x` of a batch given as `x`, `(x,)`, `(x, y)` or `(x, y, w)`."""
    return keras.utils.unpack_x_y_sample_weight(batch)[0]


def _kind_error(data):
    """Returns the `TypeError` for a `data` of a kind that `batches` does not read."""
    return TypeError(
        "`data` must be an array, a tf.data.Dataset, a keras.utils.PyDataset "
        f"or an iterable of batches. Received: data of type {type(data).__name__}"
    )


def _array_batches(data, batch_size):
    """Yields consecutive slices of `batch_size` rows of an array or tensor."""
    array = np.asarray(keras.ops.convert_to_numpy(data))
    if array.ndim == 0:
        raise ValueError(
            "`data` as an array needs a batch axis first. "
            f"Received: an array of shape {array.shape}"
        )
    for start in range(0, len(array), batch_size):
        yield array[start : start + batch_size]


def _py_dataset_batches(data):
    """Yields the inputs of each batch of a `keras.utils.PyDataset`, endless if it has no length."""
    try:
        count = len(data)
    except TypeError:
        count = None
    index = 0
    while count is None or index < count:
        yield _inputs(data[index])
        index += 1


def batches(data, batch_size):
    """Yields the model inputs of each batch of `data`, as NumPy arrays or structures of them."""
    if isinstance(data, (str, bytes, dict)):
        raise _kind_error(data)
    if isinstance(data, np.ndarray) or keras.ops.is_tensor(data):
        yield from _array_batches(data, batch_size)
        return
    if isinstance(data, keras.utils.PyDataset):
        yield from _py_dataset_batches(data)
        return
    if hasattr(data, "as_numpy_iterator"):  # a tf.data.Dataset
        data = data.as_numpy_iterator()
    try:
        iterator = iter(data)
    except TypeError:
        raise _kind_error(data) from None
    for batch in iterator:
        yield _inputs(batch)


def variables_by_name(layer):
    """Returns the layer's non-trainable variables by their short name (`moving_mean`, ...)."""
    return {v.name.split("/")[-1]: v for v in layer.non_trainable_variables}


def value(variable):
    """Returns the current value of a Keras variable as a NumPy array (a copy)."""
    current = variable.value
    # NumPy 2 warns when it converts a tf.Variable or a torch Parameter itself.
    if keras.backend.backend() == "tensorflow":
        current = current.read_value()
    elif keras.backend.backend() == "torch":
        return current.detach().cpu().numpy().copy()
    return np.array(keras.ops.convert_to_numpy(current))


def snapshot(variables):
    """Returns the current values of `variables` as NumPy arrays."""
    return [value(v) for v in variables]


@contextlib.contextmanager
def saved_state(model):
    """Puts back every non-trainable variable of `model` (moving statistics, RNG states) on exit."""
    variables = list(model.non_trainable_variables)
    values = snapshot(variables)
    try:
        yield
    finally:
        for variable, saved in zip(variables, values):
            variable.assign(saved)


def strategy_scope(model):
    """Returns the scope of the model's `tf.distribute` strategy, or a null context."""
    strategy = getattr(model, "distribute_strategy", None)
    if keras.backend.backend() == "tensorflow" and strategy is not None:
        return strategy.scope()
    return contextlib.nullcontext()


def no_grad():
    """Returns `torch.no_grad()` on the PyTorch backend (a forward pass needs no graph), else a null context."""
    if keras.backend.backend() == "torch":
        import torch

        return torch.no_grad()
    return contextlib.nullcontext()


def _call_in_inference(call, inputs, *args, training=None, **kwargs):
    """Calls a dropout layer's own `call` in inference mode, whatever `training` says."""
    return call(inputs, *args, training=False, **kwargs)


@contextlib.contextmanager
def _dropout_in_inference(layers):
    """Holds each layer of `layers` in inference mode inside the block (its `call` ignores `training`)."""
    undo = []
    try:
        for layer in layers:
            # An instance attribute shadows the class's `call`; `Layer.__call__`
            # finds it on every backend, and a trace sees the identity.
            call = functools.partial(_call_in_inference, type(layer).call.__get__(layer))
            undo.append(_keras_compat.patch_instance(layer, "call", call))
        yield
    finally:
        for restore in reversed(undo):
            restore()


def training_passes(dropout_layers):
    """Returns the context in which the passes run: dropout in inference mode if `dropout_layers`."""
    if dropout_layers:
        return _dropout_in_inference(dropout_layers)
    return contextlib.nullcontext()


def _tf_forward(model, key):
    """Returns `model` as a `tf.function` on TensorFlow outside a strategy, else `model` itself.

    Eager TensorFlow runs a deep network op by op, which is much slower than
    one traced call. The trace sees each layer's momentum as 0, which it
    always is during a recalibration, and the dropout layers and batch norms
    in the modes that `key` names; one trace per key is kept for the next
    recalibration (the callback recalibrates at every evaluation).
    """
    if keras.backend.backend() != "tensorflow":
        return model
    import tensorflow as tf

    strategy = getattr(model, "distribute_strategy", None)
    if tf.distribute.has_strategy() or strategy not in (None, tf.distribute.get_strategy()):
        return model
    traces = _TF_STEPS.setdefault(model, {})
    if key not in traces:
        traces[key] = tf.function(
            lambda x, training: model(x, training=training), reduce_retracing=True
        )
    return traces[key]


def _reset(variables, saved):
    """Puts `saved` back in `variables`, with the moving statistics at their neutral values."""
    for name, saved_value in saved.items():
        if name in _RESET_VALUES:
            saved_value = np.full_like(saved_value, _RESET_VALUES[name])
        variables[name].assign(saved_value)


def _eager_batch_statistics(forward, layers, x):
    """Runs `forward` on `x` in training mode; returns each layer's `(mean, variance)` for this batch.

    Every layer's momentum is 0 here, so the moving statistics it leaves are
    exactly the statistics of this batch as the layer computes them; they are
    reset to 0 and 1 first so that a non-finite old value cannot leak in as
    `inf * 0`. The layers' other state (renorm's averages) is put back before
    the call, so each batch is normalized from the same state.
    """
    for layer, saved in layers:
        _reset(variables_by_name(layer), saved)
    forward(x, training=True)
    return [
        (
            value(layer.moving_mean).astype(np.float64),
            value(layer.moving_variance).astype(np.float64),
        )
        for layer, _ in layers
    ]


def batch_statistics(model, layers, key):
    """Returns a function of a batch `x` that gives each layer's `(mean, variance)` on it.

    `layers` pairs each batch-norm layer with its saved non-trainable values
    (by short name); `key` names what a trace depends on beyond the model's
    structure (the dropout mode, which layers are recalibrated).
    """
    if keras.backend.backend() == "jax":
        return _jax_batch_statistics(model, layers, key)
    return functools.partial(_eager_batch_statistics, _tf_forward(model, key), layers)


def _jax_step(model, key, targets, fixed_positions):
    """Returns the jitted training-mode step for `model`, compiled once per `key` and kept."""
    import jax

    cached = _JAX_STEPS.get(model)
    if cached is not None and cached[0] == key:
        return cached[1]

    @jax.jit
    def step(trainable, state, x):
        _, new = model.stateless_call(trainable, state, x, training=True)
        statistics = [(new[i], new[j]) for i, j in targets]
        return statistics, [state[i] if i in fixed_positions else v for i, v in enumerate(new)]

    _JAX_STEPS[model] = (key, step)
    return step


def _jax_batch_statistics(model, layers, key):
    """Returns a jitted JAX version of `_eager_batch_statistics`, a function of `x`.

    Eager JAX runs a deep network op by op, which is much slower than one
    compiled call. `stateless_call` returns the moving statistics the
    training-mode pass would assign; they are read there, and every layer's
    other state is passed in again unchanged, as in the eager path. The
    momentum of 0 is traced into the function. Random states (dropout in
    training mode) are carried from batch to batch, as in training.
    """
    variables = model.non_trainable_variables
    index = {id(v): i for i, v in enumerate(variables)}
    fixed = {}
    for layer, saved in layers:
        by_name = variables_by_name(layer)
        for name, saved_value in saved.items():
            if name in _RESET_VALUES:
                saved_value = np.full_like(saved_value, _RESET_VALUES[name])
            fixed[index[id(by_name[name])]] = saved_value
    targets = [(index[id(layer.moving_mean)], index[id(layer.moving_variance)]) for layer, _ in layers]
    trainable = [v.value for v in model.trainable_variables]
    state = [fixed.get(i, v.value) for i, v in enumerate(variables)]
    # The step depends on the structure only (values come as arguments), and
    # compiling a deep network is slow: the callback reuses it.
    key = (tuple(targets), tuple(sorted(fixed)), len(variables), len(trainable), key)
    step = _jax_step(model, key, targets, frozenset(fixed))

    def run(x):
        nonlocal state
        statistics, state = step(trainable, state, x)
        return [(np.asarray(m, np.float64), np.asarray(v, np.float64)) for m, v in statistics]

    return run
