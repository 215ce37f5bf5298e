r"""Test-time adaptation of batch norm: `adapt_batch_norm` and `BatchNormAdapter`.

A network trained on one distribution (the *source*) and run on shifted data
(the *target*: noise, blur, contrast) normalizes with statistics that no
longer describe its inputs. Two label-free remedies adapt its batch norms:

- statistics adaptation (Schneider et al., 2020): normalize with the target
  data's statistics, optionally mixed with the source ones by a prior;
- TENT (Wang et al., 2021): normalize with the test batch's statistics and
  train only the batch norms' `gamma` and `beta` to lower the entropy of the
  predictions, batch by batch.

`BatchNormAdapter` does either online, batch by batch, for serving;
`adapt_batch_norm` adapts over a whole data set and returns a static model.
The layers and models they run on live in `keras_bn._adaptive`.
"""

import itertools
import math
import warnings

import keras
import numpy as np

from keras_bn import _adaptive, _checks, _graph
from keras_bn import _batch_statistics as passes
from keras_bn.recalibrate import recalibrate_batch_norm

__all__ = ["BatchNormAdapter", "adapt_batch_norm"]

#: The adaptation methods.
METHODS = ("statistics", "tent")


def _check_prior(prior_strength):
    """Returns `prior_strength` as a float, or raises naming it unless it is finite and >= 0."""
    number = isinstance(prior_strength, (int, float, np.integer, np.floating))
    if isinstance(prior_strength, bool) or not number:
        raise TypeError(f"`prior_strength` must be a number. Received: prior_strength={prior_strength!r}")
    prior = float(prior_strength)
    if not (math.isfinite(prior) and prior >= 0):
        raise ValueError(
            "`prior_strength` must be a finite number >= 0: how many samples the source "
            f"statistics count as. Received: prior_strength={prior_strength!r}"
        )
    return prior


def _check_arguments(method, prior_strength, outputs, steps_per_batch):
    """Checks the arguments both entry points share; returns the prior strength as a float."""
    _checks.one_of("method", method, METHODS)
    _checks.one_of("outputs", outputs, _adaptive.OUTPUTS)
    _checks.positive_int("steps_per_batch", steps_per_batch)
    return _check_prior(prior_strength)


def _check_flag(name, value):
    """Raises a `TypeError` naming `name` unless `value` is a bool."""
    if not isinstance(value, bool):
        raise TypeError(f"`{name}` must be a bool. Received: {name}={value!r}")


def _adaptable(path, layer):
    """Whether the tools adapt `layer`: a batch norm or a `FrozenBatchNorm` (kinds.folds_like_batch_norm)."""
    return _graph.folds_like_batch_norm(layer)


def _check_model(model, caller):
    """Raises from `caller` unless `model` is a built Keras model with a batch norm to adapt."""
    _graph.check_model(model, caller)
    if not any(_adaptable(path, layer) for path, layer in _graph.sublayers(model).items()):
        raise ValueError(
            f"{caller}: `model` has no batch norm to adapt (keras.layers.BatchNormalization, "
            f"keras_bn.ManualBatchNorm or keras_bn.FrozenBatchNorm). Received: model {model.name!r}"
        )


def _copy(model, caller):
    """Returns a copy of `model`, weights included, rebuilt as `_swap_in` rebuilds it."""
    _check_model(model, caller)
    return _graph.rebuild(model, lambda path, layer: None, reach=_adaptable, caller=caller)


def _swap_in(model, make, caller):
    """Rebuilds `model` with `make(path, layer)` in place of each batch norm, weights carried.

    Returns the new model and the `(old layer, new layer)` pairs.
    """
    _check_model(model, caller)
    pairs, made = [], set()

    def replace(path, layer):
        if not _adaptable(path, layer):
            return None
        new = make(path, layer)
        pairs.append((layer, new))
        made.add(id(new))
        return new

    def weights_for(path, old, new):
        return _graph.weights_by_name(old) if id(new) in made else None

    network = _graph.rebuild(model, replace, weights_for, reach=_adaptable, caller=caller)
    return network, pairs


def _like(layer):
    """Returns the constructor arguments a replacement shares with the batch norm `layer`."""
    return {"axis": layer.axis, "epsilon": layer.epsilon, "center": layer.center, "scale": layer.scale,
            "name": layer.name, "dtype": layer.dtype_policy.name}


def _adaptive_network(model, prior_strength, caller):
    """Returns a copy of `model` with an `AdaptiveBatchNorm` for each batch norm, and the pairs."""

    def make(path, layer):
        new = _adaptive.AdaptiveBatchNorm(prior_strength=prior_strength, **_like(layer))
        new.source_path = path
        return new

    return _swap_in(model, make, caller)


def _fresh_optimizer(optimizer):
    """Returns a new optimizer configured like `optimizer`, or TENT's Adam(1e-3) for `None`."""
    if optimizer is None:
        return keras.optimizers.Adam(learning_rate=1e-3)
    try:
        optimizer = keras.optimizers.get(optimizer)
    except ValueError as error:
        raise ValueError(
            "`optimizer` must be a keras.optimizers.Optimizer, its name or its config. "
            f"Received: optimizer={optimizer!r}"
        ) from error
    # A copy: the caller's instance keeps its state, and one built for another model works too.
    return type(optimizer).from_config(optimizer.get_config())


def _train_only_batch_norms(network):
    """Makes every layer of `network` but its `AdaptiveBatchNorm`s non-trainable."""
    for layer in _graph.graph_layers(network).values():
        if not isinstance(layer, _adaptive.AdaptiveBatchNorm):
            layer.trainable = False


def _batch_size(x):
    """Returns the number of samples in a batch of inputs (an array or a structure of them)."""
    return int(keras.tree.flatten(x)[0].shape[0])


class BatchNormAdapter:
    r"""Adapts a model's batch norms to each batch it predicts: test-time adaptation, online.

    The adapter holds a copy of `model` in which every batch norm
    (`keras.layers.BatchNormalization`, `ManualBatchNorm`, `FrozenBatchNorm`,
    at any depth: nested models and custom blocks included) is replaced by
    one that normalizes each batch with that batch's own statistics, mixed
    with the source (moving) statistics by the prior strength \(N\). For a
    batch of \(n\) samples with per-channel mean \(\mu_t\) and biased
    variance \(\sigma^2_t\), each batch norm normalizes with

    $$\bar\mu = \tfrac{N}{N+n}\,\mu_s + \tfrac{n}{N+n}\,\mu_t, \qquad
      \bar\sigma^2 = \tfrac{N}{N+n}\,\sigma^2_s + \tfrac{n}{N+n}\,\sigma^2_t ,$$

    the rule of Schneider et al. (2020): the source statistics count as
    \(N\) samples, and the variances mix as variances (no term for the
    distance between the means). With \(N = 0\) each batch is normalized with
    its own statistics alone, as in a training step. Every batch norm sees
    inputs normalized by the adapted batch norms before it, in one forward
    pass. Every other layer runs in inference mode (dropout off).

    - `method="statistics"`: `predict_on_batch(x)` normalizes `x` this way
      and returns the predictions. Nothing is learned: a batch does not
      change how the next one is predicted.
    - `method="tent"` (Wang et al., 2021): for each batch, `steps_per_batch`
      optimizer steps on the mean entropy of the predictions for `x`,
      updating only the batch norms' `gamma` and `beta` (gradients flow
      through the batch statistics, as in training), then the predictions for
      `x` with the updated weights. TENT's reference code returns the outputs
      of the forward pass the last step used, before that step's update; here
      the batch benefits from its own update, at the cost of one more
      forward pass. The updates carry over to the next batch (continual
      TENT), unless `episodic=True`, which resets to the source before each
      batch. The loss is the entropy the `outputs` argument describes.

    What is never changed: the weights of every other layer, the source
    moving statistics (the adapted layers read them and never write them),
    and `model` itself. `reset()` puts the adapted weights and the
    optimizer's state back to the source, bit for bit.

    !!! warning "Small batches without a prior"
        With `prior_strength=0`, statistics of a few samples are noisy: a
        batch of 1 to 16 images can do much worse than no adaptation at all.
        Give a prior (a source worth a few to a few dozen samples) or
        larger batches; the test-time adaptation guide measures both. A batch that gives some batch norm a
        single value per channel (one sample into a batch norm after a
        `Dense` layer) is refused with `prior_strength=0`: its variance is 0.

    Args:
        model: A built Keras model with at least one batch norm. With
            `method="tent"`, it must have one output: the predictions.
        method: `"statistics"` or `"tent"`. Defaults to `"statistics"`.
        prior_strength: \(N\), how many samples the source statistics
            count as; a finite number >= 0. Defaults to `0.0`.
        outputs: What the model's output is, for TENT's entropy:
            `"logits"` (the entropy of their softmax), `"probabilities"` (a
            distribution per row, checked), or `"sigmoid"` (independent
            sigmoid logits per class, as for a network trained with binary
            cross-entropy, like `deep_mnist_model`): the entropy of the
            sigmoids normalized to sum to one,
            \(p_c = \sigma(z_c) / \sum_k \sigma(z_k)\). That distribution
            ranks the classes as the prediction (the largest logit) does;
            the mean binary entropy of the sigmoids would instead be lowered
            just as well by pushing every class to "absent", which picks no
            class. Unused by `"statistics"`. Defaults to `"logits"`.
        optimizer: TENT's optimizer: a `keras.optimizers.Optimizer` (copied
            from its config: the instance itself is not used), its name or
            config, or `None` for `Adam(learning_rate=1e-3)`, what TENT's
            authors use for their CIFAR-10 network (Adam with a learning
            rate of 1e-3, beta_1 0.9, no weight decay; the paper takes SGD
            with momentum for ImageNet's ResNet-50). Defaults to `None`.
        steps_per_batch: Optimizer steps per batch with `"tent"`. Defaults
            to `1`.
        episodic: With `"tent"`, whether to reset to the source before each
            batch, so that every batch is adapted from the source alone (TENT's
            episodic variant). Defaults to `False`.

    Attributes:
        model: The adapted model, a `keras.Model` around the copy: its
            `predict_on_batch` normalizes each batch with its statistics as
            above, with the current adapted weights.
        optimizer: TENT's optimizer, `None` for `"statistics"`.

    Raises:
        ValueError: the model has no batch norm, several outputs with
            `"tent"`, a batch norm inside a custom layer that cannot be
            turned into a graph, or an argument is out of range.
        TypeError: `model` is not a Keras model, or `prior_strength` or
            `episodic` is of the wrong type.

    Example:

    >>> import numpy as np
    >>> import keras
    >>> from keras_bn import BatchNormAdapter
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3),
    ...                           keras.layers.BatchNormalization()])
    >>> adapter = BatchNormAdapter(model, method="tent")
    >>> x = np.random.default_rng(0).normal(5.0, 2.0, (32, 4))
    >>> adapter.predict_on_batch(x).shape
    (32, 3)
    >>> adapter.reset()

    Reference:
        - Steffen Schneider, Evgenia Rusak, Luisa Eck, Oliver Bringmann,
          Wieland Brendel and Matthias Bethge, "Improving robustness against
          common corruptions by covariate shift adaptation", NeurIPS 2020,
          [arXiv:2006.16971](https://arxiv.org/abs/2006.16971).
        - Dequan Wang, Evan Shelhamer, Shaoteng Liu, Bruno Olshausen and
          Trevor Darrell, "Tent: Fully Test-Time Adaptation by Entropy
          Minimization", ICLR 2021,
          [arXiv:2006.10726](https://arxiv.org/abs/2006.10726).
    """

    def __init__(self, model, *, method="statistics", prior_strength=0.0, outputs="logits",
                 optimizer=None, steps_per_batch=1, episodic=False):
        self.prior_strength = _check_arguments(method, prior_strength, outputs, steps_per_batch)
        _check_flag("episodic", episodic)
        self.method, self.outputs, self.episodic = method, outputs, episodic
        self.steps_per_batch = int(steps_per_batch)
        network, self._pairs = _adaptive_network(model, self.prior_strength, "BatchNormAdapter")
        self.model = _adaptive.EntropyModel(network, outputs)
        self.optimizer = None
        if method == "tent":
            count = len(keras.tree.flatten(network.outputs))
            if count != 1:
                raise ValueError(f"BatchNormAdapter(method='tent') needs a model with one output, the "
                                 f"predictions. Received: model {model.name!r} with {count} outputs")
            _train_only_batch_norms(network)
            self.model.compile(optimizer=_fresh_optimizer(optimizer))
            # Under mixed_float16, compile wraps it in a LossScaleOptimizer, whose state counts too.
            self.optimizer = self.model.optimizer
            self.optimizer.build(self.model.trainable_variables)
        self._state = list(self.model.trainable_variables)
        if self.optimizer is not None:
            self._state += list(self.optimizer.variables)
        self._source = passes.snapshot(self._state)
        self._checked = False  # whether the outputs were seen to be distributions

    def adapt_on_batch(self, x):
        """Adapts to the batch `x` without predicting: TENT's steps (and nothing with `"statistics"`)."""
        n = _batch_size(x)
        for _, layer in self._pairs:
            layer.check_batch(n)
        if self.method != "tent":
            return
        if self.episodic:
            self.reset()
        if self.outputs == "probabilities" and not self._checked:
            # Before the first step: an entropy of values that are not probabilities is no loss.
            _adaptive.check_distributions(self.model.predict_on_batch(x))
            self._checked = True
        for _ in range(self.steps_per_batch):
            self.model.train_on_batch(x)

    def predict_on_batch(self, x):
        """Adapts to the batch `x` and returns the predictions for `x`, as NumPy arrays.

        Args:
            x: One batch of inputs (an array, or what the model takes).

        Returns:
            The model's predictions for `x`, after adapting to it.
        """
        self.adapt_on_batch(x)
        predictions = self.model.predict_on_batch(x)
        if self.method == "tent" and self.outputs == "probabilities":
            _adaptive.check_distributions(predictions)
        return predictions

    def predict(self, x, batch_size=64):
        """Streams `x` through `predict_on_batch`, `batch_size` samples at a time; returns all predictions.

        Args:
            x: The inputs: an array (cut into batches of `batch_size`), or
                what `recalibrate_batch_norm` takes as `data` (a dataset, an
                iterable of batches).
            batch_size: Samples per batch when `x` is an array. Defaults to `64`.

        Returns:
            The predictions of every batch, concatenated.
        """
        batch_size = _checks.positive_int("batch_size", batch_size)
        parts = [self.predict_on_batch(batch) for batch in passes.batches(x, batch_size)]
        if not parts:
            raise ValueError(f"`x` yielded no batch. Received: x of type {type(x).__name__}")
        return keras.tree.map_structure(lambda *arrays: np.concatenate(arrays), *parts)

    def reset(self):
        """Puts the adapted weights and the optimizer's state back to the source, bit for bit."""
        for variable, saved in zip(self._state, self._source):
            variable.assign(saved)
        self.model.reset_metrics()

    def _copy_affine(self):
        """Writes the adapted `gamma` and `beta` into the batch norms of the model adapted."""
        for layer, adapted in self._pairs:
            for name in ("gamma", "beta"):
                if getattr(adapted, name, None) is not None:
                    getattr(layer, name).assign(passes.value(getattr(adapted, name)))


def _check_rereadable(data):
    """Raises a `ValueError` if `data` is an iterator, which `method="tent"` cannot read twice."""
    if isinstance(data, np.ndarray) or keras.ops.is_tensor(data):
        return
    try:
        one_shot = iter(data) is data
    except TypeError:
        return  # `batches` names the kinds it reads
    if one_shot:
        raise ValueError(
            "adapt_batch_norm(method='tent') reads `data` twice (the TENT steps, then the "
            "statistics with the adapted weights), and an iterator or generator can be read "
            "once. Pass an array, a list of batches, a tf.data.Dataset or a keras.utils.PyDataset. "
            f"Received: data of type {type(data).__name__}"
        )


def _target_statistics(model, data, batch_size, steps):
    """Returns the pairs `(batch norm, layer holding its target statistics)` and the sample count.

    The statistics are those `recalibrate_batch_norm` estimates with its
    population estimator, each batch norm in training mode and every other
    layer in inference mode.
    """

    def make(path, layer):
        new = _adaptive.TrainingBatchNorm(**_like(layer))
        new.source_path = path
        return new

    probe, pairs = _swap_in(model, make, "adapt_batch_norm")
    batches = itertools.islice(passes.batches(data, batch_size), steps)
    first = next(batches, None)
    if first is None:
        raise ValueError(f"`data` yielded no batch. Received: data of type {type(data).__name__}")
    tally = {"samples": 0, "batches": 0}

    def counted():
        for x in itertools.chain([first], batches):
            tally["samples"] += _batch_size(x)
            tally["batches"] += 1
            yield (x,)  # a 1-tuple: a list of inputs is not read as (x, y)

    recalibrate_batch_norm(_adaptive.InferenceModel(probe), counted(), include_frozen=True)
    if steps is not None and tally["batches"] < steps:
        warnings.warn(f"`data` ran out after {tally['batches']} batches; adapted on those instead "
                      f"of steps={steps}.", stacklevel=3)
    return pairs, tally["samples"]


def _assign_statistics(layer, mean, variance):
    """Assigns `mean` and `variance` to `layer`'s moving statistics, each in its variable's dtype."""
    layer.moving_mean.assign(mean.astype(layer.moving_mean.dtype))
    layer.moving_variance.assign(variance.astype(layer.moving_variance.dtype))
    stddev = passes.variables_by_name(layer).get("moving_stddev")
    if stddev is not None:  # renorm keeps the standard deviation; its variance is stddev^2 - eps
        stddev.assign(np.sqrt(variance + layer.epsilon).astype(stddev.dtype))


def _set_statistics(model, data, batch_size, steps, prior_strength):
    """Sets the moving statistics of `model`'s batch norms to the target ones over `data`, mixed by the prior."""
    pairs, n = _target_statistics(model, data, batch_size, steps)
    if prior_strength == 0:
        for _, probe in pairs:
            if probe.values_per_sample is not None and n * probe.values_per_sample == 1:
                raise _adaptive.single_value_error(probe.source_path, (n, *probe.moving_mean.shape))
    source = prior_strength / (prior_strength + n)
    for layer, probe in pairs:
        mean, variance = (
            source * passes.value(getattr(layer, name)).astype(np.float64)
            + (1.0 - source) * passes.value(getattr(probe, name)).astype(np.float64)
            for name in ("moving_mean", "moving_variance")
        )
        _assign_statistics(layer, mean, variance)


def adapt_batch_norm(model, data, *, method="statistics", prior_strength=0.0, batch_size=64, steps=None,
                     outputs="logits", optimizer=None, steps_per_batch=1, in_place=False):
    r"""Adapts the batch norms of `model` to unlabeled target data; returns the adapted model.

    The model returned normalizes, in inference mode, with the target
    statistics: for each batch norm (`keras.layers.BatchNormalization`,
    `ManualBatchNorm`, `FrozenBatchNorm`, at any depth) with source moving
    statistics \(\mu_s\), \(\sigma^2_s\), and \(\mu_t\), \(\sigma^2_t\) the
    population statistics of its inputs over the \(n\) samples of `data`,

    $$\text{moving\_mean} = \tfrac{N}{N+n}\,\mu_s + \tfrac{n}{N+n}\,\mu_t, \qquad
      \text{moving\_variance} = \tfrac{N}{N+n}\,\sigma^2_s + \tfrac{n}{N+n}\,\sigma^2_t ,$$

    with \(N\) = `prior_strength`: the prior of Schneider et al. (2020),
    who mix the variances as variances. The target statistics are estimated
    as `recalibrate_batch_norm` estimates them (its population estimator):
    in one pass over the batches of `data`, every batch norm normalizing
    with its batch's own (biased) statistics and every other layer in
    inference mode (dropout off); the mean of the batch means, and the mean
    of the batch variances plus the variance of the batch means. Whatever
    options a `ManualBatchNorm` trained with (ghost batches, the unbiased
    running variance, renorm), these are the plain statistics of its inputs.

    - `method="statistics"`: only the moving statistics change.
    - `method="tent"`: first continual TENT over the batches of `data`
      (`BatchNormAdapter(method="tent")`: each batch normalized with its own
      statistics mixed by the prior, `steps_per_batch` steps on the entropy
      of its predictions, updating only `gamma` and `beta`); then the model
      gets the adapted `gamma` and `beta`, and moving statistics computed as
      above with them. A static model needs statistics of its own: those of
      the target population under the final weights are what the adapted
      network would see on average. `data` is read twice, so it cannot be
      an iterator.

    Every other weight is left as it was. The original model is not changed
    unless `in_place=True`.

    Args:
        model: A built Keras model with at least one batch norm.
        data: Unlabeled target inputs: a NumPy array (cut into batches of
            `batch_size`) or what `recalibrate_batch_norm` takes (a
            `PyDataset`, a `tf.data.Dataset`, an iterable of batches `x`,
            `(x,)` or `(x, y)`, of which only `x` is used).
        method: `"statistics"` or `"tent"`. Defaults to `"statistics"`.
        prior_strength: \(N\), how many samples the source statistics
            count as; a finite number >= 0. Defaults to `0.0`.
        batch_size: Samples per batch when `data` is an array. Defaults to
            `64`.
        steps: Number of batches to use, or `None` for all of `data`.
            Defaults to `None`.
        outputs: What the model's output is, for TENT's entropy:
            `"logits"`, `"probabilities"` or `"sigmoid"`, as for
            `BatchNormAdapter`. Defaults to `"logits"`.
        optimizer: TENT's optimizer, as for `BatchNormAdapter`; `None` for
            `Adam(learning_rate=1e-3)`. Defaults to `None`.
        steps_per_batch: TENT's optimizer steps per batch. Defaults to `1`.
        in_place: Whether to adapt `model` itself rather than a copy.
            Defaults to `False`.

    Returns:
        The adapted model: `model` itself with `in_place=True`, else a copy
        built as `freeze_batch_norm` builds one (custom blocks that hold a
        batch norm become Functional models of their sub-layers).

    Raises:
        ValueError: the model has no batch norm, `data` has no batch, a
            batch norm would see a single value per channel with
            `prior_strength=0`, `data` is an iterator with `"tent"`, or an
            argument is out of range.
        TypeError: `model` is not a Keras model, or `prior_strength` or
            `in_place` is of the wrong type.

    Example:

    >>> import numpy as np
    >>> import keras
    >>> from keras_bn import adapt_batch_norm
    >>> model = keras.Sequential([keras.Input((3,)),
    ...                           keras.layers.BatchNormalization()])
    >>> x = np.random.default_rng(0).normal(5.0, 2.0, size=(256, 3))
    >>> adapted = adapt_batch_norm(model, x, prior_strength=256)
    >>> mean = keras.ops.convert_to_numpy(adapted.layers[0].moving_mean)
    >>> bool(np.allclose(mean, x.mean(axis=0) / 2, atol=1e-5))
    True

    Reference:
        - Schneider et al., NeurIPS 2020,
          [arXiv:2006.16971](https://arxiv.org/abs/2006.16971).
        - Wang et al., ICLR 2021,
          [arXiv:2006.10726](https://arxiv.org/abs/2006.10726).
    """
    prior = _check_arguments(method, prior_strength, outputs, steps_per_batch)
    batch_size = _checks.positive_int("batch_size", batch_size)
    steps = _checks.positive_int("steps", steps, allow_none=True)
    _check_flag("in_place", in_place)
    _check_model(model, "adapt_batch_norm")
    if method == "tent":
        _check_rereadable(data)
    target = model if in_place else _copy(model, "adapt_batch_norm")
    if method == "tent":
        adapter = BatchNormAdapter(target, method="tent", prior_strength=prior, outputs=outputs,
                                   optimizer=optimizer, steps_per_batch=steps_per_batch)
        for x in itertools.islice(passes.batches(data, batch_size), steps):
            adapter.adapt_on_batch(x)
        adapter._copy_affine()
    _set_statistics(target, data, batch_size, steps, prior)
    return target
