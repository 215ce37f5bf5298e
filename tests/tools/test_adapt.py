"""Test-time adaptation (`adapt_batch_norm`, `BatchNormAdapter`) against a NumPy forward pass.

The references are written here: the small models' forward passes in NumPy
(float64), each batch norm normalizing with the statistics the docstrings
give, and TENT's step from the entropy's gradient worked out by hand. Keras's
own batch norm in training mode is the reference for a keras-hub model.
"""

import warnings

import keras
import numpy as np
import pytest

import zoo
from keras_bn import BatchNormAdapter, FrozenBatchNorm, ManualBatchNorm, adapt_batch_norm, freeze_batch_norm
from keras_bn import _graph
from keras_bn._adaptive import AdaptiveBatchNorm
from keras_bn._batch_statistics import saved_state

EPSILON = 1e-3
WIDTHS = {"d1": 5, "d2": 4, "d3": 3}


def _np(value):
    return np.asarray(keras.ops.convert_to_numpy(value), dtype=np.float64)


def _data(n, seed=0):
    """Shifted target inputs: far from what the drawn moving statistics describe."""
    return np.random.default_rng(seed).normal(2.0, 3.0, size=(n, 6)).astype("float32")


def _layer(model, name):
    """Returns the layer called `name` at any depth of `model`."""
    return next(layer for layer in _graph.sublayers(model).values() if layer.name == name)


def _bn(kind, name):
    return (ManualBatchNorm if kind == "manual" else keras.layers.BatchNormalization)(name=name)


def _model(structure, kind):
    """Dense(5) -> bn1 -> relu -> Dense(4) -> bn2 -> relu -> Dense(3), in a Sequential, a Functional
    or with its first block in a nested Sequential; `kind` "frozen" is the Keras one through
    `freeze_batch_norm`. Batch-norm weights are drawn so that none is the identity."""
    keras.utils.set_random_seed(3)
    make = "keras" if kind == "frozen" else kind
    block = [keras.layers.Dense(5, name="d1"), _bn(make, "bn1"), keras.layers.ReLU()]
    head = [keras.layers.Dense(4, name="d2"), _bn(make, "bn2"), keras.layers.ReLU(),
            keras.layers.Dense(3, name="d3")]
    if structure == "sequential":
        model = keras.Sequential([keras.Input((6,)), *block, *head])
    else:
        inputs = keras.Input((6,))
        if structure == "nested":
            h = keras.Sequential([keras.Input((6,)), *block], name="inner")(inputs)
        else:
            h = inputs
            for layer in block:
                h = layer(h)
        for layer in head:
            h = layer(h)
        model = keras.Model(inputs, h)
    rng = np.random.default_rng(5)
    for name in ("bn1", "bn2"):
        layer = _layer(model, name)
        layer.gamma.assign(rng.uniform(0.5, 1.5, layer.gamma.shape))
        layer.beta.assign(rng.normal(0.0, 0.3, layer.beta.shape))
        layer.moving_mean.assign(rng.normal(0.0, 1.0, layer.moving_mean.shape))
        layer.moving_variance.assign(rng.uniform(0.5, 2.0, layer.moving_variance.shape))
    return freeze_batch_norm(model) if kind == "frozen" else model


def _weights(model):
    """The small model's weights as float64 arrays, by layer name."""
    found = {}
    for name in WIDTHS:
        layer = _layer(model, name)
        found[name] = (_np(layer.kernel), _np(layer.bias))
    for name in ("bn1", "bn2"):
        layer = _layer(model, name)
        found[name] = {w: _np(getattr(layer, w)) for w in ("gamma", "beta", "moving_mean", "moving_variance")}
    return found


def _moments(h):
    return h.mean(axis=0), h.var(axis=0)


def _forward(p, x, statistics):
    """The small model in NumPy; `statistics(name, h)` gives the mean and variance bn `name` uses on `h`."""
    h = np.asarray(x, np.float64)
    for dense, bn in (("d1", "bn1"), ("d2", "bn2")):
        h = h @ p[dense][0] + p[dense][1]
        mean, variance = statistics(bn, h)
        h = np.maximum(p[bn]["gamma"] * (h - mean) / np.sqrt(variance + EPSILON) + p[bn]["beta"], 0.0)
    return h @ p["d3"][0] + p["d3"][1]


def _mixed(p, prior):
    """`statistics` for `_forward`: the batch's own, mixed with the source ones by the prior."""

    def statistics(name, h):
        mean, variance = _moments(h)
        source = prior / (prior + len(h))
        return (source * p[name]["moving_mean"] + (1 - source) * mean,
                source * p[name]["moving_variance"] + (1 - source) * variance)

    return statistics


def _population(p, batches):
    """The documented whole-set statistics: training-mode passes, population estimator; and n."""
    seen = {"bn1": [], "bn2": []}

    def statistics(name, h):
        seen[name].append(_moments(h))
        return seen[name][-1]

    for x in batches:
        _forward(p, x, statistics)
    result = {}
    for name, moments in seen.items():
        means = np.array([m for m, _ in moments])
        variances = np.array([v for _, v in moments])
        result[name] = (means.mean(0), variances.mean(0) + means.var(0))
    return result, sum(len(x) for x in batches)


def _all_weights(model):
    return [np.array(w) for w in model.get_weights()]


def _same(a, b):
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


# -- statistics, per batch and over the whole set ---------------------------------


@pytest.mark.parametrize("structure", ["sequential", "functional", "nested"])
@pytest.mark.parametrize("kind", ["keras", "manual", "frozen"])
def test_per_batch_statistics_match_numpy(structure, kind):
    model = _model(structure, kind)
    before = _all_weights(model)
    p = _weights(model)
    x = _data(21)
    for prior in (0.0, 12.0):
        adapter = BatchNormAdapter(model, prior_strength=prior)
        for batch in (x[:16], x[16:]):  # two batch sizes: the prior's weight moves with n
            expected = _forward(p, batch, _mixed(p, prior))
            np.testing.assert_allclose(adapter.predict_on_batch(batch), expected, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(adapter.predict(x, batch_size=16),
                                   np.concatenate([_forward(p, b, _mixed(p, prior)) for b in (x[:16], x[16:])]),
                                   rtol=1e-4, atol=1e-4)
    assert _same(_all_weights(model), before)


def test_per_batch_statistics_of_images_on_their_channel_axes():
    """A batch norm on rank-4 inputs reduces over the batch and spatial axes; axis=1 and Keras's axis=-1."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((3, 5, 4))
    first = ManualBatchNorm(axis=1, name="first")
    second = keras.layers.BatchNormalization(name="second")
    h = second(first(inputs))
    model = keras.Model(inputs, keras.layers.Dense(2, name="head")(keras.layers.GlobalAveragePooling2D()(h)))
    rng = np.random.default_rng(1)
    for layer in (first, second):
        layer.gamma.assign(rng.uniform(0.5, 1.5, layer.gamma.shape))
        layer.moving_mean.assign(rng.normal(size=layer.moving_mean.shape))
        layer.moving_variance.assign(rng.uniform(0.5, 2.0, layer.moving_variance.shape))
    x = rng.normal(1.0, 2.0, (7, 3, 5, 4)).astype("float32")
    prior = 5.0
    source = prior / (prior + len(x))
    h = x.astype(np.float64)
    for layer, axes, shape in ((first, (0, 2, 3), (1, 3, 1, 1)), (second, (0, 1, 2), (1, 1, 1, 4))):
        mean = source * _np(layer.moving_mean).reshape(shape) + (1 - source) * h.mean(axes, keepdims=True)
        var = source * _np(layer.moving_variance).reshape(shape) + (1 - source) * h.var(axes, keepdims=True)
        h = _np(layer.gamma).reshape(shape) * (h - mean) / np.sqrt(var + EPSILON) + _np(layer.beta).reshape(shape)
    head = model.get_layer("head")
    expected = h.mean((1, 2)) @ _np(head.kernel) + _np(head.bias)
    predictions = BatchNormAdapter(model, prior_strength=prior).predict_on_batch(x)
    np.testing.assert_allclose(predictions, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", ["keras", "manual", "frozen"])
@pytest.mark.parametrize("prior", [0.0, 40.0])
def test_whole_set_statistics_match_numpy(kind, prior):
    model = _model("nested", kind)
    before = _all_weights(model)
    p = _weights(model)
    x = _data(56)
    adapted = adapt_batch_norm(model, x, prior_strength=prior, batch_size=16)
    population, n = _population(p, [x[i : i + 16] for i in range(0, 56, 16)])  # 16, 16, 16, 8
    for name, (mean, variance) in population.items():
        layer = _layer(adapted, name)
        source = prior / (prior + n)
        np.testing.assert_allclose(_np(layer.moving_mean), source * p[name]["moving_mean"] + (1 - source) * mean,
                                   rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(_np(layer.moving_variance),
                                   source * p[name]["moving_variance"] + (1 - source) * variance,
                                   rtol=1e-5, atol=1e-5)
        for weight in ("gamma", "beta"):
            assert np.array_equal(_np(getattr(layer, weight)), p[name][weight])
    assert type(_layer(adapted, "bn1")) is type(_layer(model, "bn1"))
    assert _same(_all_weights(model), before)


def test_whole_set_in_place_and_steps():
    model = _model("functional", "keras")
    x = _data(64)
    p = _weights(model)
    assert adapt_batch_norm(model, x, batch_size=16, steps=2, in_place=True) is model
    population, _ = _population(p, [x[:16], x[16:32]])
    np.testing.assert_allclose(_np(model.get_layer("bn2").moving_mean), population["bn2"][0], rtol=1e-5, atol=1e-5)
    # Not pytest.warns: it would re-raise Keras's own DeprecationWarnings, which pyproject ignores.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        adapt_batch_norm(model, x, batch_size=16, steps=9)
    ours = [w for w in caught if issubclass(w.category, UserWarning)]
    assert len(ours) == 1 and "ran out after 4 batches; adapted on those instead of steps=9" in str(ours[0].message)


# -- TENT --------------------------------------------------------------------------


def _tent_model(outputs):
    """Dense(5) -> bn -> relu -> Dense(3) [-> softmax for "probabilities"]."""
    keras.utils.set_random_seed(7)
    layers = [keras.Input((6,)), keras.layers.Dense(5, name="d1"), keras.layers.BatchNormalization(name="bn"),
              keras.layers.ReLU(), keras.layers.Dense(3, name="d2")]
    if outputs == "probabilities":
        layers.append(keras.layers.Softmax())
    model = keras.Sequential(layers)
    bn = model.get_layer("bn")
    rng = np.random.default_rng(2)
    bn.gamma.assign(rng.uniform(0.5, 1.5, 5))
    bn.beta.assign(rng.normal(0.0, 0.3, 5))
    bn.moving_mean.assign(rng.normal(size=5))
    bn.moving_variance.assign(rng.uniform(0.5, 2.0, 5))
    return model


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _entropy_gradient(z, outputs):
    """d(mean entropy)/d(logits z): for H = -sum p log p with p = softmax(u), dH/du = -p (log p + H)."""
    u = -np.log1p(np.exp(-z)) if outputs == "sigmoid" else z  # log sigmoid(z)
    p = _softmax(u)
    h = -(p * np.log(p)).sum(-1, keepdims=True)
    du = -p * (np.log(p) + h) / len(z)
    return du * (1.0 / (1.0 + np.exp(z))) if outputs == "sigmoid" else du  # d log sigmoid / dz = sigmoid(-z)


@pytest.mark.parametrize("outputs", ["logits", "probabilities", "sigmoid"])
@pytest.mark.parametrize("prior", [0.0, 10.0])
def test_one_tent_step_matches_the_entropy_gradient_by_hand(outputs, prior):
    model = _tent_model(outputs)
    x = _data(12, seed=4)
    (w1, b1), (w2, b2) = [(_np(model.get_layer(n).kernel), _np(model.get_layer(n).bias)) for n in ("d1", "d2")]
    bn = {w: _np(getattr(model.get_layer("bn"), w)) for w in ("gamma", "beta", "moving_mean", "moving_variance")}
    h = x @ w1 + b1
    source = prior / (prior + len(x))
    mean = source * bn["moving_mean"] + (1 - source) * h.mean(0)
    variance = source * bn["moving_variance"] + (1 - source) * h.var(0)
    normalized = (h - mean) / np.sqrt(variance + EPSILON)
    y = bn["gamma"] * normalized + bn["beta"]
    dz = _entropy_gradient(np.maximum(y, 0) @ w2 + b2, outputs)
    dy = (dz @ w2.T) * (y > 0)
    rate = 0.5
    gamma = bn["gamma"] - rate * (dy * normalized).sum(0)
    beta = bn["beta"] - rate * dy.sum(0)

    adapter = BatchNormAdapter(model, method="tent", prior_strength=prior, outputs=outputs,
                               optimizer=keras.optimizers.SGD(learning_rate=rate))
    predictions = adapter.predict_on_batch(x)
    adapted = _layer(adapter.model, "bn")
    np.testing.assert_allclose(_np(adapted.gamma), gamma, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(_np(adapted.beta), beta, rtol=1e-5, atol=1e-6)
    logits = np.maximum(gamma * normalized + beta, 0) @ w2 + b2  # predicted after the step
    expected = _softmax(logits) if outputs == "probabilities" else logits
    np.testing.assert_allclose(predictions, expected, rtol=1e-4, atol=1e-5)
    for name, (kernel, bias) in (("d1", (w1, b1)), ("d2", (w2, b2))):
        layer = _layer(adapter.model, name)
        assert np.array_equal(_np(layer.kernel), kernel) and np.array_equal(_np(layer.bias), bias)
    for name in ("moving_mean", "moving_variance"):
        assert np.array_equal(_np(getattr(adapted, name)), bn[name])


def _entropy(p, x):
    """The mean softmax entropy of the small model's logits, batch statistics in every batch norm."""
    probabilities = _softmax(_forward(p, x, _mixed(p, 0.0)))
    return -(probabilities * np.log(probabilities)).sum(-1).mean()


def test_tent_gradient_flows_through_the_batch_statistics():
    """Two batch norms: bn1's gradient passes through bn2's batch statistics; against central differences."""
    model = _model("functional", "keras")
    p = _weights(model)
    x = _data(10, seed=9)
    adapter = BatchNormAdapter(model, method="tent", optimizer=keras.optimizers.SGD(learning_rate=1.0))
    adapter.adapt_on_batch(x)
    step = 1e-6
    for name in ("bn1", "bn2"):
        for weight in ("gamma", "beta"):
            numeric = np.zeros_like(p[name][weight])
            for c in range(len(numeric)):
                for sign in (1, -1):
                    shifted = {**p, name: {**p[name], weight: p[name][weight].copy()}}
                    shifted[name][weight][c] += sign * step
                    numeric[c] += sign * _entropy(shifted, x) / (2 * step)
            change = _np(getattr(_layer(adapter.model, name), weight)) - p[name][weight]
            np.testing.assert_allclose(-change, numeric, rtol=1e-3, atol=2e-6)


def _frozen_weights(model):
    """Every weight of the model that is not an adaptive batch norm's, by path."""
    return {w.path: _np(w) for layer in _graph.sublayers(model).values()
            if not _graph.sublayers(layer) and not isinstance(layer, AdaptiveBatchNorm) for w in layer.weights}


@pytest.mark.parametrize("structure", ["sequential", "nested"])
@pytest.mark.parametrize("kind", ["keras", "manual", "frozen"])
def test_tent_changes_only_gamma_and_beta_and_resets_bit_for_bit(structure, kind):
    model = _model(structure, kind)
    before = _all_weights(model)
    x = _data(48, seed=1)
    adapter = BatchNormAdapter(model, method="tent", optimizer=keras.optimizers.Adam(0.05))
    adaptive = [layer for layer in _graph.sublayers(adapter.model).values() if isinstance(layer, AdaptiveBatchNorm)]
    assert [layer.name for layer in adaptive] == ["bn1", "bn2"]
    assert {id(v) for v in adapter.model.trainable_variables} == {
        id(v) for layer in adaptive for v in (layer.gamma, layer.beta)}
    source = [np.array(_np(v)) for v in adapter.model.variables + adapter.optimizer.variables]
    frozen, gamma = _frozen_weights(adapter.model), _np(adaptive[0].gamma)
    statistics = [_np(v) for layer in adaptive for v in (layer.moving_mean, layer.moving_variance)]
    first = adapter.predict_on_batch(x[:16])
    for batch in (x[16:32], x[32:]):
        adapter.predict_on_batch(batch)
    assert not np.array_equal(_np(adaptive[0].gamma), gamma)
    now = _frozen_weights(adapter.model)
    assert len(frozen) == 6 and now.keys() == frozen.keys()  # three Dense layers' kernels and biases
    assert all(np.array_equal(value, frozen[path]) for path, value in now.items())
    assert _same([_np(v) for layer in adaptive for v in (layer.moving_mean, layer.moving_variance)], statistics)
    adapter.reset()
    after = [_np(v) for v in adapter.model.variables + adapter.optimizer.variables]
    assert _same(after, source)
    np.testing.assert_array_equal(adapter.predict_on_batch(x[:16]), first)
    assert _same(_all_weights(model), before)


def test_episodic_equals_a_fresh_adapter_on_each_batch():
    model = _model("functional", "manual")
    x = _data(40, seed=2)
    episodic = BatchNormAdapter(model, method="tent", episodic=True, steps_per_batch=2,
                                optimizer=keras.optimizers.Adam(0.05))
    continual = BatchNormAdapter(model, method="tent", steps_per_batch=2, optimizer=keras.optimizers.Adam(0.05))
    batches = (x[:16], x[16:32], x[32:])
    for k, batch in enumerate(batches):
        fresh = BatchNormAdapter(model, method="tent", steps_per_batch=2, optimizer=keras.optimizers.Adam(0.05))
        expected = fresh.predict_on_batch(batch)
        np.testing.assert_allclose(episodic.predict_on_batch(batch), expected, rtol=1e-6, atol=1e-6)
        if k:  # continual TENT carries the earlier batches' updates
            assert not np.allclose(continual.predict_on_batch(batch), expected, rtol=1e-4, atol=1e-4)
        else:
            continual.predict_on_batch(batch)


def test_adapt_batch_norm_tent_is_the_adapter_then_the_statistics():
    model = _model("nested", "frozen")
    before = _all_weights(model)
    x = _data(48, seed=6)
    adapted = adapt_batch_norm(model, x, method="tent", batch_size=16, prior_strength=8.0,
                               optimizer=keras.optimizers.Adam(0.05))
    adapter = BatchNormAdapter(model, method="tent", prior_strength=8.0, optimizer=keras.optimizers.Adam(0.05))
    for batch in (x[:16], x[16:32], x[32:]):
        adapter.adapt_on_batch(batch)
    p = _weights(model)
    for name in ("bn1", "bn2"):
        for weight in ("gamma", "beta"):
            value = _np(getattr(_layer(adapted, name), weight))
            np.testing.assert_allclose(value, _np(getattr(_layer(adapter.model, name), weight)), rtol=1e-6)
            p[name][weight] = value
    population, n = _population(p, [x[:16], x[16:32], x[32:]])
    source = 8.0 / (8.0 + n)
    for name, (mean, variance) in population.items():
        layer = _layer(adapted, name)
        assert isinstance(layer, FrozenBatchNorm)
        np.testing.assert_allclose(_np(layer.moving_mean), source * p[name]["moving_mean"] + (1 - source) * mean,
                                   rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(_np(layer.moving_variance),
                                   source * p[name]["moving_variance"] + (1 - source) * variance,
                                   rtol=1e-5, atol=1e-5)
    for name in WIDTHS:
        for weight in ("kernel", "bias"):
            assert np.array_equal(_np(getattr(_layer(adapted, name), weight)), _np(getattr(_layer(model, name), weight)))
    assert _same(_all_weights(model), before)


def test_mixed_precision_adapts_in_float32_and_resets_the_loss_scale_too():
    x = _data(16, seed=3)
    reference = BatchNormAdapter(_tent_model("logits"), method="tent").predict_on_batch(x)
    keras.config.set_dtype_policy("mixed_float16")
    try:
        adapter = BatchNormAdapter(_tent_model("logits"), method="tent")
    finally:
        keras.config.set_dtype_policy("float32")
    bn = _layer(adapter.model, "bn")
    assert bn.compute_dtype == "float16" and bn.gamma.dtype == "float32"
    state = adapter.model.variables + adapter.optimizer.variables
    assert any("dynamic_scale" in v.path for v in adapter.optimizer.variables)
    source = [_np(v) for v in state]
    np.testing.assert_allclose(adapter.predict_on_batch(x), reference, rtol=2e-2, atol=2e-2)
    adapter.reset()
    assert _same([_np(v) for v in state], source)


# -- a keras-hub model with batch norms inside custom blocks ------------------------


def test_keras_hub_mobilenet_with_custom_blocks():
    backbone = zoo.build("keras_hub.MobileNetBackbone")
    inputs = keras.Input((32, 32, 3))
    features = keras.layers.GlobalAveragePooling2D()(backbone(inputs))
    model = keras.Model(inputs, keras.layers.Dense(4, name="head")(features))
    before = _all_weights(model)
    x = np.random.default_rng(0).normal(0.5, 1.5, (8, 32, 32, 3)).astype("float32")
    with saved_state(model):
        expected = _np(model(x, training=True))  # Keras's batch norms on the batch's statistics
    adapter = BatchNormAdapter(model)
    reached = [layer for layer in _graph.sublayers(adapter.model).values() if isinstance(layer, AdaptiveBatchNorm)]
    assert len(reached) == len(zoo.batch_norm_layers(backbone)) and zoo.custom_batch_norm_layers(backbone)
    np.testing.assert_allclose(adapter.predict_on_batch(x), expected, rtol=1e-3, atol=1e-3)

    adapted = adapt_batch_norm(model, x, method="tent", batch_size=4, optimizer=keras.optimizers.Adam(0.01))

    def others(m):
        return sorted(np.asarray(w).tobytes() for layer in _graph.sublayers(m).values()
                      if not _graph.sublayers(layer) and not _graph.folds_like_batch_norm(layer)
                      for w in layer.get_weights())

    assert others(adapted) == others(model)
    gammas = [_np(layer.gamma) for layer in _graph.sublayers(adapted).values() if _graph.is_batch_norm(layer)]
    assert len(gammas) == len(reached)
    assert _same(_all_weights(model), before)


# -- errors ------------------------------------------------------------------------


def test_no_batch_norm_is_refused():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="has no batch norm to adapt"):
        BatchNormAdapter(model)
    with pytest.raises(ValueError, match="has no batch norm to adapt"):
        adapt_batch_norm(model, np.ones((4, 3)))


def test_probabilities_that_are_not_distributions_are_refused_before_any_step():
    model = _tent_model("logits")
    adapter = BatchNormAdapter(model, method="tent", outputs="probabilities")
    source = [_np(v) for v in adapter.model.trainable_variables]
    with pytest.raises(ValueError, match=r"outputs='probabilities' needs .* distribution"):
        adapter.predict_on_batch(_data(8))
    assert _same([_np(v) for v in adapter.model.trainable_variables], source)


def test_one_value_per_channel_is_refused_without_a_prior():
    model = _model("nested", "keras")
    x = _data(4)
    adapter = BatchNormAdapter(model)
    with pytest.raises(ValueError, match=r"'inner/bn1' sees a single value per channel.*prior_strength"):
        adapter.predict_on_batch(x[:1])
    with pytest.raises(ValueError, match="sees a single value per channel"):
        adapter.model(x[:1])  # the layer's own check, outside the adapter
    with pytest.raises(ValueError, match="sees a single value per channel"):
        adapt_batch_norm(model, x[:1])
    with pytest.raises(ValueError, match="sees a single value per channel"):
        adapt_batch_norm(model, x, method="tent", batch_size=1)
    assert BatchNormAdapter(model, prior_strength=4).predict_on_batch(x[:1]).shape == (1, 3)


@pytest.mark.parametrize(
    ("arguments", "error", "match"),
    [
        ({"prior_strength": -1.0}, ValueError, "prior_strength"),
        ({"prior_strength": float("inf")}, ValueError, "prior_strength"),
        ({"prior_strength": True}, TypeError, "prior_strength"),
        ({"method": "bn"}, ValueError, "`method` must be one of"),
        ({"outputs": "softmax"}, ValueError, "`outputs` must be one of"),
        ({"steps_per_batch": 0}, ValueError, "steps_per_batch"),
        ({"method": "tent", "optimizer": "no-such-optimizer"}, ValueError, "`optimizer` must be"),
    ],
)
def test_bad_arguments_are_refused(arguments, error, match):
    model = _tent_model("logits")
    with pytest.raises(error, match=match):
        BatchNormAdapter(model, **arguments)
    with pytest.raises(error, match=match):
        adapt_batch_norm(model, _data(8), **arguments)


def test_several_outputs_only_with_statistics():
    inputs = keras.Input((6,))
    h = keras.layers.BatchNormalization()(keras.layers.Dense(4)(inputs))
    model = keras.Model(inputs, [keras.layers.Dense(2)(h), keras.layers.Dense(3)(h)])
    with pytest.raises(ValueError, match="needs a model with one output.*2 outputs"):
        BatchNormAdapter(model, method="tent")
    first, second = BatchNormAdapter(model).predict_on_batch(_data(5))
    assert first.shape == (5, 2) and second.shape == (5, 3)


def test_tent_refuses_data_it_can_read_only_once():
    model = _tent_model("logits")
    with pytest.raises(ValueError, match="reads `data` twice"):
        adapt_batch_norm(model, (batch for batch in [_data(8)]), method="tent")
    assert adapt_batch_norm(model, [_data(8)], method="tent") is not model
