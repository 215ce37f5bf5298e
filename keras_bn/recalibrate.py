r"""Recompute the moving statistics of every batch norm in a model: PreciseBN for Keras.

`recalibrate_batch_norm` replaces the exponential moving averages, which mix
statistics computed with weights that have changed since, by statistics of the
current weights on a given set of batches. `RecalibrateBatchNorm` does it before
each evaluation and puts the training's own averages back afterwards.
"""

import contextlib
import functools
import itertools
import warnings
import weakref

import keras
import numpy as np

from keras_bn.batch_norm import ManualBatchNorm

__all__ = ["RecalibrateBatchNorm", "recalibrate_batch_norm"]

_ESTIMATORS = ("population", "batch_mean")
# What a training-mode call with momentum 0 leaves in these variables is the
# batch's own statistics; everything else a layer keeps is put back.
_RESET_VALUES = {"moving_mean": 0.0, "moving_variance": 1.0, "moving_stddev": 1.0}
# JAX: the compiled training-mode step of each model, see _jax_batch_statistics.
_JAX_STEPS = weakref.WeakKeyDictionary()
# TensorFlow: the traced training-mode call of each model, see _tf_forward.
_TF_STEPS = weakref.WeakKeyDictionary()


def batch_norm_layers(model):
    """Returns every batch-norm layer of `model`, nested models included, in depth-first order.

    A batch-norm layer is a `keras.layers.BatchNormalization` or a
    `keras_bn.ManualBatchNorm`; sub-layers are found through the `layers`
    attribute of models (functional, `Sequential` or subclassed). A layer used
    twice is listed once.

    Args:
        model: A Keras model or layer.

    Returns:
        A list of layers.
    """
    found, seen = [], set()

    def walk(layer):
        if id(layer) in seen:
            return
        seen.add(id(layer))
        if isinstance(layer, (keras.layers.BatchNormalization, ManualBatchNorm)):
            found.append(layer)
        for child in getattr(layer, "layers", None) or ():
            walk(child)

    walk(model)
    return found


def _check_steps(steps):
    """Returns `steps` as an int >= 1 or `None`, else raises naming it."""
    if steps is None:
        return None
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)):
        raise TypeError(f"`steps` must be a positive int or None. Received: steps={steps!r}")
    if steps < 1:
        raise ValueError(f"`steps` must be a positive int or None. Received: steps={steps!r}")
    return int(steps)


def _check_batch_size(batch_size):
    """Returns `batch_size` as an int >= 1, else raises naming it."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(
            f"`batch_size` must be a positive int. Received: batch_size={batch_size!r}"
        )
    return int(batch_size)


def _inputs(batch):
    """Returns the model inputs `x` of a batch given as `x`, `(x,)`, `(x, y)` or `(x, y, w)`."""
    return keras.utils.unpack_x_y_sample_weight(batch)[0]


def _batches(data, batch_size):
    """Yields the model inputs of each batch of `data`, as NumPy arrays or structures of them."""
    if isinstance(data, (str, bytes, dict)):
        raise TypeError(
            "`data` must be an array, a tf.data.Dataset, a keras.utils.PyDataset "
            f"or an iterable of batches. Received: data of type {type(data).__name__}"
        )
    if isinstance(data, np.ndarray) or keras.ops.is_tensor(data):
        array = np.asarray(keras.ops.convert_to_numpy(data))
        if array.ndim == 0:
            raise ValueError(
                "`data` as an array needs a batch axis first. "
                f"Received: an array of shape {array.shape}"
            )
        for start in range(0, len(array), batch_size):
            yield array[start : start + batch_size]
        return
    if isinstance(data, keras.utils.PyDataset):
        try:
            count = len(data)
        except TypeError:
            count = None
        index = 0
        while count is None or index < count:
            yield _inputs(data[index])
            index += 1
        return
    if hasattr(data, "as_numpy_iterator"):  # a tf.data.Dataset
        data = data.as_numpy_iterator()
    try:
        iterator = iter(data)
    except TypeError:
        raise TypeError(
            "`data` must be an array, a tf.data.Dataset, a keras.utils.PyDataset "
            f"or an iterable of batches. Received: data of type {type(data).__name__}"
        ) from None
    for batch in iterator:
        yield _inputs(batch)


def _variables(layer):
    """Returns the layer's non-trainable variables by their short name (`moving_mean`, ...)."""
    return {v.name.split("/")[-1]: v for v in layer.non_trainable_variables}


def _value(variable):
    """Returns the current value of a Keras variable as a NumPy array (a copy)."""
    value = variable.value
    # NumPy 2 warns when it converts a tf.Variable or a torch Parameter itself.
    if keras.backend.backend() == "tensorflow":
        value = value.read_value()
    elif keras.backend.backend() == "torch":
        return value.detach().cpu().numpy().copy()
    return np.array(keras.ops.convert_to_numpy(value))


def _snapshot(variables):
    """Returns the current values of `variables` as NumPy arrays."""
    return [_value(v) for v in variables]


def _restore(variables, values):
    """Assigns each saved value back to its variable."""
    for variable, value in zip(variables, values):
        variable.assign(value)


@contextlib.contextmanager
def _saved_state(model):
    """Puts back every non-trainable variable of `model` (moving statistics, RNG states) on exit."""
    variables = list(model.non_trainable_variables)
    values = _snapshot(variables)
    try:
        yield
    finally:
        _restore(variables, values)


def _strategy_scope(model):
    """Returns the scope of the model's `tf.distribute` strategy, or a null context."""
    strategy = getattr(model, "distribute_strategy", None)
    if keras.backend.backend() == "tensorflow" and strategy is not None:
        return strategy.scope()
    return contextlib.nullcontext()


def _no_grad():
    """Returns `torch.no_grad()` on the PyTorch backend (a forward pass needs no graph), else a null context."""
    if keras.backend.backend() == "torch":
        import torch

        return torch.no_grad()
    return contextlib.nullcontext()


def _tf_forward(model):
    """Returns `model` as a `tf.function` on TensorFlow outside a strategy, else `model` itself.

    Eager TensorFlow runs a deep network op by op, an order of magnitude
    slower than one traced call. The trace sees each layer's momentum as 0,
    which it always is during a recalibration, and is kept for the next one
    (the callback recalibrates at every evaluation).
    """
    if keras.backend.backend() != "tensorflow":
        return model
    import tensorflow as tf

    strategy = getattr(model, "distribute_strategy", None)
    if tf.distribute.has_strategy() or strategy not in (None, tf.distribute.get_strategy()):
        return model
    forward = _TF_STEPS.get(model)
    if forward is None:
        forward = tf.function(lambda x, training: model(x, training=training),
                              reduce_retracing=True)
        _TF_STEPS[model] = forward
    return forward


def _batch_statistics(model, layers, x):
    """Runs `model` on `x` in training mode; returns each layer's `(mean, variance)` for this batch.

    Every layer's momentum is 0 here, so the moving statistics it leaves are
    exactly the statistics of this batch as the layer computes them; they are
    reset to 0 and 1 first so that a non-finite old value cannot leak in as
    `inf * 0`. The layers' other state (renorm's averages) is put back before
    the call, so each batch is normalized from the same state.
    """
    for layer, saved in layers:
        variables = _variables(layer)
        for name, value in saved.items():
            if name in _RESET_VALUES:
                value = np.full_like(value, _RESET_VALUES[name])
            variables[name].assign(value)
    model(x, training=True)
    return [
        (
            _value(layer.moving_mean).astype(np.float64),
            _value(layer.moving_variance).astype(np.float64),
        )
        for layer, _ in layers
    ]


def _jax_batch_statistics(model, layers):
    """Returns a jitted JAX version of `_batch_statistics(model, layers, x)`, a function of `x`.

    Eager JAX runs a deep network op by op, orders of magnitude slower than
    one compiled call. `stateless_call` returns the moving statistics the
    training-mode pass would assign; they are read there, and every layer's
    other state is passed in again unchanged, as in the eager path. The
    momentum of 0 is traced into the function, which lives only as long as
    the recalibration does. Random states (dropout) are carried from batch to
    batch, as in training.
    """
    import jax

    variables = model.non_trainable_variables
    index = {id(v): i for i, v in enumerate(variables)}
    fixed = {}
    for layer, saved in layers:
        by_name = _variables(layer)
        for name, value in saved.items():
            if name in _RESET_VALUES:
                value = np.full_like(value, _RESET_VALUES[name])
            fixed[index[id(by_name[name])]] = value
    targets = [(index[id(layer.moving_mean)], index[id(layer.moving_variance)]) for layer, _ in layers]
    trainable = [v.value for v in model.trainable_variables]
    state = [fixed.get(i, v.value) for i, v in enumerate(variables)]

    # One compiled step per model and set of layers, kept for later calls (the
    # callback recalibrates at every evaluation): compiling a deep network
    # costs seconds. It depends on the structure only; values come as arguments.
    key = (tuple(targets), tuple(sorted(fixed)), len(variables), len(trainable))
    cached = _JAX_STEPS.get(model)
    if cached is not None and cached[0] == key:
        step = cached[1]
    else:
        fixed_positions = frozenset(fixed)

        @jax.jit
        def step(trainable, state, x):
            _, new = model.stateless_call(trainable, state, x, training=True)
            statistics = [(new[i], new[j]) for i, j in targets]
            return statistics, [
                state[i] if i in fixed_positions else v for i, v in enumerate(new)
            ]

        _JAX_STEPS[model] = (key, step)

    def run(x):
        nonlocal state
        statistics, state = step(trainable, state, x)
        return [(np.asarray(m, np.float64), np.asarray(v, np.float64)) for m, v in statistics]

    return run


def _assign_estimate(layer, means, variances, squares, count, estimator):
    """Assigns the averaged statistics of `count` batches to `layer`'s moving statistics."""
    mean = means / count
    variance = variances / count
    if estimator == "population":
        # Law of total variance: the variance of all values is the mean of the
        # batch variances plus the variance of the batch means. The clamp
        # removes the rounding of `E[m^2] - E[m]^2` when the means agree.
        variance = variance + np.maximum(squares / count - mean * mean, 0.0)
    layer.moving_mean.assign(mean.astype("float32"))
    layer.moving_variance.assign(variance.astype("float32"))
    variables = _variables(layer)
    if "moving_stddev" in variables:
        # Renorm keeps the standard deviation; its moving_variance is stddev^2 - eps.
        variables["moving_stddev"].assign(np.sqrt(variance + layer.epsilon).astype("float32"))
    if "num_batches_tracked" in variables:
        # ManualBatchNorm(momentum=None): a cumulative average over `count` batches.
        variables["num_batches_tracked"].assign(count)


def recalibrate_batch_norm(
    model, data, *, steps=None, batch_size=32, estimator="population"
):
    r"""Recomputes the moving mean and variance of every batch norm in `model` from `data`.

    This is PreciseBN (Wu and Johnson, 2021): the moving averages that batch
    norm keeps during training mix statistics of weights that have since
    changed, and with momentum 0.99 they remember roughly the last 100 batches.
    After training, after averaging weights (EMA, SWA), pruning, quantizing or
    fine-tuning, recomputing them with the current weights often restores
    much of the inference accuracy.

    The model is run in training mode on each of the `n` batches of `data`,
    as it is during training: every batch-norm layer normalizes with the
    statistics of the batch, and all layers' statistics come from the same
    forward passes (a later layer sees inputs normalized by the earlier
    layers' batch statistics, not by their old moving ones). For each layer
    and channel, with \(\mu_b\), \(\sigma^2_b\) the statistics of batch `b` as
    the layer computes them in training:

    $$\text{moving\_mean} = \bar\mu = \frac1n \sum_b \mu_b$$

    and, with `estimator="population"` (the default),

    $$\text{moving\_variance} = \frac1n \sum_b \sigma^2_b
        + \frac1n \sum_b \mu_b^2 - \bar\mu^2 ,$$

    the law of total variance: for batches of equal size and biased batch
    variances, this is exactly the mean and variance of all `n` batches pooled
    into one (the population statistics PreciseBN aims at). With
    `estimator="batch_mean"` the variance is the mean of the batch variances
    \(\frac1n \sum_b \sigma^2_b\), the rule of PyTorch's
    `torch.optim.swa_utils.update_bn` and fvcore's `update_bn_stats`; it is
    smaller by the variance of the batch means. Every batch counts the same,
    a short last batch included.

    The batch statistics are the layer's own: the biased variance for
    `keras.layers.BatchNormalization`; for `ManualBatchNorm`, the unbiased
    variance with `unbiased_variance=True`, the mean over ghost batches of
    their statistics with `virtual_batch_size`, and the masked statistics with
    a mask. With Batch Renormalization (`renorm=True`, either layer) the
    moving standard deviation becomes \(\sqrt{\text{moving\_variance} +
    \epsilon}\), and the renorm averages used in training are left as they
    were. `ManualBatchNorm(momentum=None)` ends with `num_batches_tracked = n`,
    as if its cumulative average had seen exactly these batches.

    Nothing else changes: no trainable weight, no optimizer variable, and every
    other non-trainable variable (renorm's averages, the random state of
    dropout layers) is put back as it was, as is each layer's `momentum`, even
    when an error interrupts the passes. Under a `tf.distribute` strategy each
    batch is run whole, in the strategy's cross-replica context, so the
    statistics are those of the global batch whether or not the layers are
    `synchronized`.

    !!! warning "Frozen layers are left alone"
        A batch-norm layer with `trainable=False` (or inside a frozen model)
        runs in inference mode in Keras, even in training mode, so it is not
        recalibrated and it normalizes with its moving statistics during the
        passes. This is what fine-tuning wants.

    Args:
        model: A built Keras model with at least one trainable batch-norm
            layer (`keras.layers.BatchNormalization` or `ManualBatchNorm`),
            possibly in nested models.
        data: The batches: a NumPy array (or backend tensor) of inputs, cut
            into batches of `batch_size`; a `keras.utils.PyDataset` such as
            `keras_bn.BatchFeeder`; a `tf.data.Dataset`; or any iterable of
            batches. A batch is `x`, `(x,)`, `(x, y)` or `(x, y, w)`, as for
            `model.fit`; only `x` is used. Use training data, batched as in
            training.
        steps: Number of batches to use, or `None` for all of `data` (which
            must then be finite). Defaults to `None`.
        batch_size: Batch size when `data` is an array. Defaults to `32`.
        estimator: `"population"` or `"batch_mean"`, the variance estimate
            above. Defaults to `"population"`.

    Returns:
        The number of batches used, `n`.

    Raises:
        ValueError: if the model has no trainable batch-norm layer, `data`
            has no batch, or `steps`, `batch_size` or `estimator` is invalid.
        TypeError: if `data` is not one of the accepted kinds.

    Example:

    >>> import numpy as np
    >>> import keras
    >>> from keras_bn import ManualBatchNorm, recalibrate_batch_norm
    >>> inputs = keras.Input((3,))
    >>> bn = ManualBatchNorm()
    >>> model = keras.Model(inputs, bn(inputs))
    >>> x = np.random.default_rng(0).normal(5.0, 2.0, size=(256, 3))
    >>> recalibrate_batch_norm(model, x, batch_size=64)
    4
    >>> np.allclose(keras.ops.convert_to_numpy(bn.moving_mean), x.mean(axis=0), atol=1e-5)
    True
    >>> np.allclose(keras.ops.convert_to_numpy(bn.moving_variance), x.var(axis=0), rtol=1e-5)
    True

    Reference:
        Yuxin Wu and Justin Johnson, "Rethinking 'Batch' in BatchNorm", 2021,
        [arXiv:2105.07576](https://arxiv.org/abs/2105.07576).
    """
    steps = _check_steps(steps)
    batch_size = _check_batch_size(batch_size)
    if estimator not in _ESTIMATORS:
        raise ValueError(
            f"`estimator` must be one of {_ESTIMATORS}. Received: estimator={estimator!r}"
        )
    layers = [layer for layer in batch_norm_layers(model) if layer.trainable]
    if not layers:
        raise ValueError(
            "`model` has no trainable batch-norm layer (keras.layers.BatchNormalization "
            "or keras_bn.ManualBatchNorm) to recalibrate; frozen layers are left "
            f"alone. Received: model {model.name!r}"
        )
    if not all(layer.built for layer in layers):
        raise ValueError(
            "`model` must be built (called once, or created with keras.Input) before "
            f"its batch norms can be recalibrated. Received: model {model.name!r}"
        )

    momenta = [layer.momentum for layer in layers]
    totals = None
    count = 0
    with _strategy_scope(model), _no_grad():
        with _saved_state(model):
            saved = [
                (layer, dict(zip(_variables(layer), _snapshot(_variables(layer).values()))))
                for layer in layers
            ]
            try:
                for layer in layers:
                    layer.momentum = 0.0
                if keras.backend.backend() == "jax":
                    run = _jax_batch_statistics(model, saved)
                else:
                    run = functools.partial(_batch_statistics, _tf_forward(model), saved)
                # islice stops before drawing a batch too many from an iterator.
                for x in itertools.islice(_batches(data, batch_size), steps):
                    statistics = run(x)
                    if totals is None:
                        totals = [[np.zeros_like(m)] * 3 for m, _ in statistics]
                    for total, (mean, variance) in zip(totals, statistics):
                        total[0] = total[0] + mean
                        total[1] = total[1] + variance
                        total[2] = total[2] + mean * mean
                    count += 1
            finally:
                for layer, momentum in zip(layers, momenta):
                    layer.momentum = momentum
        # Everything is back as it was; now the new statistics go in.
        if count == 0:
            raise ValueError(
                "`data` yielded no batch: recalibration needs at least one. "
                f"Received: data of type {type(data).__name__}"
            )
        for layer, (means, variances, squares) in zip(layers, totals):
            _assign_estimate(layer, means, variances, squares, count, estimator)
    if steps is not None and count < steps:
        warnings.warn(
            f"`data` ran out after {count} batches; recalibrated on those instead of "
            f"steps={steps}.",
            stacklevel=2,
        )
    return count


class RecalibrateBatchNorm(keras.callbacks.Callback):
    """Evaluates with recalibrated batch-norm statistics, leaving training untouched.

    Before each evaluation (`on_test_begin`: the validation of `model.fit`, or
    `model.evaluate(..., callbacks=[...])`), the moving statistics of the
    model's batch norms are recomputed from `steps` batches of `data` with
    `recalibrate_batch_norm`; after it (`on_test_end`), every non-trainable
    variable is put back, so training continues exactly as it would have
    without the callback: same batches, same weights, same moving averages.

    A callback that evaluates on its own (like `NotebookLogger`, which calls
    `predict_on_batch` from `on_train_batch_end`) can use the context manager
    `recalibrated()` around its evaluation instead.

    `data` is read anew at each evaluation: an array, a `PyDataset` or a
    `tf.data.Dataset` gives the same first `steps` batches every time; an
    iterator continues where it stopped. Give the callback its own data
    source, not the feeder that `fit` draws from.

    A model without any trainable batch norm is evaluated as it is (nothing
    to recalibrate), so one callback list can serve every model variant of an
    experiment; `last_num_batches` is then 0.

    Args:
        data: Training batches, as for `recalibrate_batch_norm`.
        steps: Number of batches used at each evaluation, or `None` for all
            of `data`. Defaults to `None`.
        batch_size: Batch size when `data` is an array. Defaults to `32`.
        estimator: `"population"` or `"batch_mean"`, as for
            `recalibrate_batch_norm`. Defaults to `"population"`.

    Example:

    >>> import numpy as np
    >>> import keras
    >>> from keras_bn import ManualBatchNorm, RecalibrateBatchNorm
    >>> inputs = keras.Input((3,))
    >>> model = keras.Model(inputs, keras.layers.Dense(1)(ManualBatchNorm()(inputs)))
    >>> model.compile(optimizer="sgd", loss="mse")
    >>> x = np.random.default_rng(0).normal(5.0, 2.0, size=(64, 3))
    >>> y = x.sum(axis=1, keepdims=True)
    >>> recalibrate = RecalibrateBatchNorm(x, steps=2, batch_size=32)
    >>> history = model.fit(x, y, batch_size=32, validation_data=(x, y),
    ...                     callbacks=[recalibrate], verbose=0)
    >>> recalibrate.last_num_batches
    2
    """

    def __init__(self, data, *, steps=None, batch_size=32, estimator="population"):
        super().__init__()
        self.data = data
        self.steps = _check_steps(steps)
        self.batch_size = _check_batch_size(batch_size)
        if estimator not in _ESTIMATORS:
            raise ValueError(
                f"`estimator` must be one of {_ESTIMATORS}. Received: estimator={estimator!r}"
            )
        self.estimator = estimator
        self.last_num_batches = None
        self._evaluation = None

    @contextlib.contextmanager
    def recalibrated(self):
        """Context manager: recalibrated statistics inside, the training's own restored on exit."""
        model = self.model
        if not any(layer.trainable for layer in batch_norm_layers(model)):
            self.last_num_batches = 0
            yield model
            return
        with _strategy_scope(model), _saved_state(model):
            self.last_num_batches = recalibrate_batch_norm(
                model,
                self.data,
                steps=self.steps,
                batch_size=self.batch_size,
                estimator=self.estimator,
            )
            yield model

    def on_test_begin(self, logs=None):
        self._evaluation = contextlib.ExitStack()
        self._evaluation.enter_context(self.recalibrated())

    def on_test_end(self, logs=None):
        evaluation, self._evaluation = self._evaluation, None
        if evaluation is not None:
            # self.model syncs the JAX trainer's state before the put-back.
            self.model  # noqa: B018
            evaluation.close()
