r"""Recompute the moving statistics of every batch norm in a model: PreciseBN for Keras.

`recalibrate_batch_norm` replaces the exponential moving averages, which mix
statistics computed with weights that have changed since, by statistics of the
current weights on a given set of batches. `RecalibrateBatchNorm` does it before
each evaluation and puts the training's own averages back afterwards. The
training-mode passes themselves, per backend, live in `keras_bn._batch_statistics`.
"""

import contextlib
import warnings

import keras
import numpy as np

from keras_bn import _batch_statistics as passes
from keras_bn import _checks, _precise_bn
from keras_bn._graph import batch_norm_layers  # also imported from here

__all__ = ["RecalibrateBatchNorm", "recalibrate_batch_norm"]

_ESTIMATORS = ("population", "batch_mean")


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


def _check_options(estimator, dropout, include_frozen):
    """Raises naming the argument if `estimator`, `dropout` or `include_frozen` is invalid."""
    if estimator not in _ESTIMATORS:
        raise ValueError(
            f"`estimator` must be one of {_ESTIMATORS}. Received: estimator={estimator!r}"
        )
    _checks.one_of("dropout", dropout, _checks.DROPOUT_MODES)
    if not isinstance(include_frozen, bool):
        raise TypeError(
            f"`include_frozen` must be a bool. Received: include_frozen={include_frozen!r}"
        )


def recalibrate_batch_norm(
    model,
    data,
    *,
    steps=None,
    batch_size=32,
    estimator="population",
    dropout="inference",
    include_frozen=False,
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

    Dropout layers (`Dropout` and its spatial variants, `GaussianDropout`,
    `GaussianNoise`, `AlphaDropout`) run in inference mode during the passes
    by default (`dropout="inference"`), so that a batch norm after a dropout
    sees the inputs it will see at inference: with dropout in training mode
    the recomputed variance includes the dropout's extra variance, the
    "variance shift" of Li et al. (2019), about twice the inference variance
    after `Dropout(0.5)` (see the recalibration guide for the measurement).
    `dropout="training"` keeps them in training mode, as PreciseBN and
    `update_bn` do.

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
    dropout layers) is put back as it was, as is each layer's `momentum` and
    `trainable` flag, even when an error interrupts the passes. Under a
    `tf.distribute` strategy each batch is run whole, in the strategy's
    cross-replica context, so the statistics are those of the global batch
    whether or not the layers are `synchronized`.

    !!! warning "Frozen layers are left alone, unless `include_frozen=True`"
        A batch-norm layer with `trainable=False` (or inside a frozen model)
        runs in inference mode in Keras, even in training mode, so by default
        it is not recalibrated and it normalizes with its moving statistics
        during the passes. This is what fine-tuning wants. With
        `include_frozen=True` it is made trainable for the passes,
        recalibrated like the others, and frozen again.

    Args:
        model: A built Keras model with at least one trainable batch-norm
            layer (`keras.layers.BatchNormalization` or `ManualBatchNorm`),
            possibly in nested models; with `include_frozen=True`, at least
            one batch-norm layer.
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
        dropout: `"inference"` or `"training"`, the mode of the dropout
            layers during the passes. Defaults to `"inference"`.
        include_frozen: Whether to recalibrate the frozen batch norms
            (`trainable=False`) too; their `trainable` flag is put back
            afterwards. Defaults to `False`.

    Returns:
        The number of batches used, `n`.

    Raises:
        ValueError: if the model has no batch-norm layer to recalibrate,
            `data` has no batch, or `steps`, `batch_size`, `estimator` or
            `dropout` is invalid.
        TypeError: if `data` is not one of the accepted kinds, or
            `include_frozen` is not a bool.

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
        - Yuxin Wu and Justin Johnson, "Rethinking 'Batch' in BatchNorm", 2021,
          [arXiv:2105.07576](https://arxiv.org/abs/2105.07576).
        - Xiang Li, Shuo Chen, Xiaolin Hu and Jian Yang, "Understanding the
          Disharmony between Dropout and Batch Normalization by Variance
          Shift", CVPR 2019, [arXiv:1801.05134](https://arxiv.org/abs/1801.05134).
    """
    steps = _check_steps(steps)
    batch_size = _check_batch_size(batch_size)
    _check_options(estimator, dropout, include_frozen)
    layers = _precise_bn.select_layers(model, batch_norm_layers(model), include_frozen)
    with passes.strategy_scope(model), passes.no_grad():
        totals, count = _precise_bn.collect(model, layers, data, batch_size, steps, dropout)
        # Everything is back as it was; now the new statistics go in.
        if count == 0:
            raise ValueError(
                "`data` yielded no batch: recalibration needs at least one. "
                f"Received: data of type {type(data).__name__}"
            )
        for layer, (means, variances, squares) in zip(layers, totals):
            if not _precise_bn.never_called(means, variances, count):  # else it is left as it was
                _precise_bn.assign_estimate(layer, means, variances, squares, count, estimator)
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

    A model without any batch norm to recalibrate is evaluated as it is, so
    one callback list can serve every model variant of an experiment;
    `last_num_batches` is then 0.

    Args:
        data: Training batches, as for `recalibrate_batch_norm`.
        steps: Number of batches used at each evaluation, or `None` for all
            of `data`. Defaults to `None`.
        batch_size: Batch size when `data` is an array. Defaults to `32`.
        estimator: `"population"` or `"batch_mean"`, as for
            `recalibrate_batch_norm`. Defaults to `"population"`.
        dropout: `"inference"` or `"training"`, the mode of the dropout
            layers during the passes, as for `recalibrate_batch_norm`.
            Defaults to `"inference"`.
        include_frozen: Whether to recalibrate the frozen batch norms too, as
            for `recalibrate_batch_norm`. Defaults to `False`.

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

    def __init__(
        self,
        data,
        *,
        steps=None,
        batch_size=32,
        estimator="population",
        dropout="inference",
        include_frozen=False,
    ):
        super().__init__()
        self.data = data
        self.steps = _check_steps(steps)
        self.batch_size = _check_batch_size(batch_size)
        _check_options(estimator, dropout, include_frozen)
        self.estimator = estimator
        self.dropout = dropout
        self.include_frozen = include_frozen
        self.last_num_batches = None
        self._evaluation = None

    @contextlib.contextmanager
    def recalibrated(self):
        """Context manager: recalibrated statistics inside, the training's own restored on exit."""
        model = self.model
        layers = batch_norm_layers(model)
        if not any(self.include_frozen or layer.trainable for layer in layers):
            self.last_num_batches = 0
            yield model
            return
        with passes.strategy_scope(model), passes.saved_state(model):
            self.last_num_batches = recalibrate_batch_norm(
                model,
                self.data,
                steps=self.steps,
                batch_size=self.batch_size,
                estimator=self.estimator,
                dropout=self.dropout,
                include_frozen=self.include_frozen,
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
