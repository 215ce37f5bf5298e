"""`recalibrate_batch_norm` and `RecalibrateBatchNorm` against a NumPy forward pass, layer by layer."""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from keras_bn import BatchFeeder, ManualBatchNorm
from keras_bn.recalibrate import RecalibrateBatchNorm, batch_norm_layers, recalibrate_batch_norm


def _np(value):
    return np.asarray(keras.ops.convert_to_numpy(value), dtype=np.float64)


def _data(n=96, features=4, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(1.5, 2.0, size=(n, features)).astype("float32")
    x[: n // 2] += 3.0  # batches with different means: the two estimators differ
    y = rng.normal(size=(n, 2)).astype("float32")
    return x, y


def _model():
    """Dense -> Keras BN -> relu -> [nested: Dense -> ManualBatchNorm] -> Dropout -> Dense."""
    keras.utils.set_random_seed(1)
    inner_inputs = keras.Input((5,))
    inner = keras.Model(
        inner_inputs,
        ManualBatchNorm(name="bn2", epsilon=1e-2)(keras.layers.Dense(3, name="dense2")(inner_inputs)),
        name="inner",
    )
    inputs = keras.Input((4,))
    h = keras.layers.Dense(5, name="dense1")(inputs)
    h = keras.layers.BatchNormalization(name="bn1", epsilon=1e-3)(h)
    h = keras.layers.Activation("relu")(h)
    h = inner(h)
    h = keras.layers.Dropout(0.5, seed=3)(h)
    model = keras.Model(inputs, keras.layers.Dense(2, name="head")(h))
    rng = np.random.default_rng(7)
    for bn in batch_norm_layers(model):
        bn.gamma.assign(rng.uniform(0.5, 2.0, bn.gamma.shape))
        bn.beta.assign(rng.normal(size=bn.beta.shape))
    return model


def _scramble(model, seed=11):
    rng = np.random.default_rng(seed)
    for bn in batch_norm_layers(model):
        bn.moving_mean.assign(rng.normal(50.0, 10.0, bn.moving_mean.shape))
        bn.moving_variance.assign(rng.uniform(100.0, 200.0, bn.moving_variance.shape))


def _reference(model, batches, estimator):
    """The documented estimator, from a NumPy forward pass in training mode, layer by layer."""
    layer = {name: model.get_layer(name) for name in ("dense1", "bn1")}
    dense2, bn2 = model.get_layer("inner").get_layer("dense2"), model.get_layer("inner").get_layer("bn2")

    def bn_train(h, bn):
        mean, var = h.mean(axis=0), h.var(axis=0)
        out = _np(bn.gamma) * (h - mean) / np.sqrt(var + bn.epsilon) + _np(bn.beta)
        return out, mean, var

    stats = {"bn1": [], "bn2": []}
    for x in batches:
        h1 = x.astype(np.float64) @ _np(layer["dense1"].kernel) + _np(layer["dense1"].bias)
        out1, m1, v1 = bn_train(h1, layer["bn1"])
        h2 = np.maximum(out1, 0.0) @ _np(dense2.kernel) + _np(dense2.bias)
        _, m2, v2 = bn_train(h2, bn2)
        stats["bn1"].append((h1, m1, v1))
        stats["bn2"].append((h2, m2, v2))
    result = {}
    for name, per_batch in stats.items():
        mean = np.mean([m for _, m, _ in per_batch], axis=0)
        if estimator == "population":
            # Independent of the law of total variance: the pooled values themselves.
            variance = np.concatenate([h for h, _, _ in per_batch]).var(axis=0)
        else:
            variance = np.mean([v for _, _, v in per_batch], axis=0)
        result[name] = (mean, variance)
    return result


def _statistics(model):
    return {bn.name: (_np(bn.moving_mean), _np(bn.moving_variance)) for bn in batch_norm_layers(model)}


@pytest.mark.parametrize("estimator", ["population", "batch_mean"])
def test_statistics_match_numpy_layer_by_layer(estimator):
    x, _ = _data()
    model = _model()
    _scramble(model)
    used = recalibrate_batch_norm(model, x, batch_size=32, estimator=estimator)
    assert used == 3
    expected = _reference(model, [x[:32], x[32:64], x[64:]], estimator)
    for name, (mean, variance) in _statistics(model).items():
        np.testing.assert_allclose(mean, expected[name][0], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(variance, expected[name][1], rtol=1e-5, atol=1e-5)


def test_estimators_differ_by_the_variance_of_the_batch_means():
    x, _ = _data()
    model = _model()
    recalibrate_batch_norm(model, x, batch_size=32, estimator="batch_mean")
    batch_mean = _np(model.get_layer("bn1").moving_variance)
    recalibrate_batch_norm(model, x, batch_size=32)
    population = _np(model.get_layer("bn1").moving_variance)
    assert np.all(population > batch_mean + 1e-3)


def test_steps_limits_the_batches():
    x, _ = _data()
    model = _model()
    assert recalibrate_batch_norm(model, x, batch_size=32, steps=2) == 2
    expected = _reference(model, [x[:32], x[32:64]], "population")
    np.testing.assert_allclose(_statistics(model)["bn2"][1], expected["bn2"][1], rtol=1e-5, atol=1e-5)


class _PairDataset(keras.utils.PyDataset):
    def __init__(self, x, y):
        super().__init__()
        self.x, self.y = x, y

    def __len__(self):
        return 3

    def __getitem__(self, i):
        return self.x[32 * i : 32 * (i + 1)], self.y[32 * i : 32 * (i + 1)]


def _kinds(x, y):
    yield "feeder", BatchFeeder(x, y, batch_size=32, shuffle=False)
    yield "py_dataset", _PairDataset(x, y)
    yield "list_of_triples", [(x[i : i + 32], y[i : i + 32], np.ones(32)) for i in range(0, 96, 32)]
    yield "generator_of_x", (x[i : i + 32] for i in range(0, 96, 32))
    yield "tensor", keras.ops.convert_to_tensor(x)
    tf = pytest.importorskip("tensorflow")
    yield "tf_data", tf.data.Dataset.from_tensor_slices((x, y)).batch(32)


@pytest.mark.parametrize("kind", ["feeder", "py_dataset", "list_of_triples", "generator_of_x", "tensor", "tf_data"])
def test_every_kind_of_data(kind):
    x, y = _data()
    data = dict(_kinds(x, y))[kind]
    model = _model()
    _scramble(model)
    assert recalibrate_batch_norm(model, data, batch_size=32) == 3
    expected = _reference(model, [x[:32], x[32:64], x[64:]], "population")
    for name, (mean, variance) in _statistics(model).items():
        np.testing.assert_allclose(mean, expected[name][0], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(variance, expected[name][1], rtol=1e-5, atol=1e-5)


def test_weights_optimizer_state_and_momentum_are_unchanged():
    x, y = _data()
    model = _model()
    model.get_layer("bn1").momentum = 0.9
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    model.fit(x, y, batch_size=32, epochs=1, verbose=0, shuffle=False)
    statistics = {id(v) for bn in batch_norm_layers(model) for v in (bn.moving_mean, bn.moving_variance)}
    others = [v for v in model.non_trainable_variables if id(v) not in statistics]
    assert others  # the dropout layer's random state
    before = [_np(v) for v in model.trainable_variables + model.optimizer.variables + others]
    recalibrate_batch_norm(model, x, batch_size=32)
    after = [_np(v) for v in model.trainable_variables + model.optimizer.variables + others]
    for old, new in zip(before, after):
        np.testing.assert_array_equal(old, new)
    assert model.get_layer("bn1").momentum == 0.9
    assert model.get_layer("inner").get_layer("bn2").momentum == 0.99


def test_an_error_mid_way_restores_momentum_and_statistics():
    x, _ = _data()
    model = _model()
    before = _statistics(model)

    def batches():
        yield x[:32]
        raise RuntimeError("data source failed")

    with pytest.raises(RuntimeError, match="data source failed"):
        recalibrate_batch_norm(model, batches())
    assert [bn.momentum for bn in batch_norm_layers(model)] == [0.99, 0.99]
    for name, (mean, variance) in _statistics(model).items():
        np.testing.assert_array_equal(mean, before[name][0])
        np.testing.assert_array_equal(variance, before[name][1])


def _single_layer(layer):
    keras.utils.set_random_seed(2)
    inputs = keras.Input((4,))
    dense = keras.layers.Dense(6, name="dense")
    return keras.Model(inputs, layer(dense(inputs))), dense


def _dense_outputs(dense, x):
    return x.astype(np.float64) @ _np(dense.kernel) + _np(dense.bias)


@pytest.mark.parametrize(
    "option",
    ["unbiased_variance", "momentum_none", "virtual_batch_size", "renorm_manual", "renorm_keras"],
)
def test_layer_options(option):
    x, _ = _data()
    layer = {
        "unbiased_variance": lambda: ManualBatchNorm(unbiased_variance=True),
        "momentum_none": lambda: ManualBatchNorm(momentum=None),
        "virtual_batch_size": lambda: ManualBatchNorm(virtual_batch_size=8),
        "renorm_manual": lambda: ManualBatchNorm(renorm=True),
        "renorm_keras": lambda: keras.layers.BatchNormalization(renorm=True),
    }[option]()
    model, dense = _single_layer(layer)
    _scramble(model)
    renorm_before = (
        [_np(layer.renorm_mean), _np(layer.renorm_stddev)] if option.startswith("renorm") else []
    )
    recalibrate_batch_norm(model, x, batch_size=32, estimator="batch_mean")
    h = [_dense_outputs(dense, x[i : i + 32]) for i in range(0, 96, 32)]
    if option == "unbiased_variance":
        variances = [b.var(axis=0, ddof=1) for b in h]
    elif option == "virtual_batch_size":
        variances = [np.mean([g.var(axis=0) for g in np.split(b, 4)], axis=0) for b in h]
    else:
        variances = [b.var(axis=0) for b in h]
    np.testing.assert_allclose(_np(layer.moving_mean), np.mean([b.mean(axis=0) for b in h], axis=0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(_np(layer.moving_variance), np.mean(variances, axis=0), rtol=1e-4, atol=1e-4)
    if option == "momentum_none":
        assert int(keras.ops.convert_to_numpy(layer.num_batches_tracked)) == 3
        assert layer.momentum is None
    if option.startswith("renorm"):
        np.testing.assert_allclose(
            _np(layer.moving_stddev), np.sqrt(_np(layer.moving_variance) + layer.epsilon), rtol=1e-5
        )
        for old, new in zip(renorm_before, [_np(layer.renorm_mean), _np(layer.renorm_stddev)]):
            np.testing.assert_array_equal(old, new)


def test_frozen_layers_are_left_alone():
    x, _ = _data()
    model = _model()
    _scramble(model)
    frozen = model.get_layer("bn1")
    frozen.trainable = False
    before = _np(frozen.moving_mean)
    recalibrate_batch_norm(model, x, batch_size=32)
    np.testing.assert_array_equal(_np(frozen.moving_mean), before)
    assert _np(model.get_layer("inner").get_layer("bn2").moving_variance).max() < 100.0


def test_a_batch_norm_that_is_never_called_is_left_alone():
    # A custom layer may hold a batch norm its call() never uses (RetinaNet's
    # feature pyramid makes some for levels it does not compute).
    class Spare(keras.layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.used = keras.layers.BatchNormalization(name="used")
            self.spare = keras.layers.BatchNormalization(name="spare")

        def build(self, input_shape):
            self.used.build(input_shape)
            self.spare.build(input_shape)

        def call(self, x, training=None):
            return self.used(x, training=training)

    inputs = keras.Input((3,))
    model = keras.Model(inputs, Spare(name="block")(inputs))
    block = model.get_layer("block")
    block.spare.moving_mean.assign(np.array([0.5, -0.5, 2.0], "float32"))
    x = np.random.default_rng(0).normal(3.0, 2.0, size=(16, 3)).astype("float32")
    recalibrate_batch_norm(model, x, batch_size=8)
    np.testing.assert_array_equal(_np(block.spare.moving_mean), [0.5, -0.5, 2.0])
    np.testing.assert_array_equal(_np(block.spare.moving_variance), [1.0, 1.0, 1.0])
    np.testing.assert_allclose(_np(block.used.moving_mean), x.mean(0), rtol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"steps": 0}, ValueError, r"`steps` must be a positive int or None. Received: steps=0"),
        ({"steps": -2}, ValueError, r"Received: steps=-2"),
        ({"steps": 1.5}, TypeError, r"Received: steps=1.5"),
        ({"steps": True}, TypeError, r"Received: steps=True"),
        ({"batch_size": 0}, ValueError, r"`batch_size` must be a positive int. Received: batch_size=0"),
        ({"estimator": "mean"}, ValueError, r"`estimator` must be one of .* Received: estimator='mean'"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    x, _ = _data()
    with pytest.raises(error, match=match):
        recalibrate_batch_norm(_model(), x, **kwargs)
    with pytest.raises(error, match=match):
        RecalibrateBatchNorm(x, **kwargs)


def test_bad_data_and_models():
    x, _ = _data()
    model = _model()
    with pytest.raises(ValueError, match="`data` yielded no batch"):
        recalibrate_batch_norm(model, [])
    with pytest.raises(ValueError, match="`data` yielded no batch"):
        recalibrate_batch_norm(model, x[:0])
    with pytest.raises(TypeError, match="Received: data of type str"):
        recalibrate_batch_norm(model, "train.npz")
    with pytest.raises(TypeError, match="Received: data of type int"):
        recalibrate_batch_norm(model, 3)
    inputs = keras.Input((4,))
    plain = keras.Model(inputs, keras.layers.Dense(2)(inputs), name="plain")
    with pytest.raises(ValueError, match="no trainable batch-norm layer.*'plain'"):
        recalibrate_batch_norm(plain, x)
    with pytest.warns(UserWarning, match="ran out after 3 batches"):
        assert recalibrate_batch_norm(model, x, batch_size=32, steps=5) == 3


def _fit(with_callback):
    x, y = _data()
    model = _model()
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    callbacks = [RecalibrateBatchNorm(x[:64], batch_size=32)] if with_callback else []
    history = model.fit(
        x, y, batch_size=16, epochs=2, validation_data=(x, y), shuffle=False, verbose=0, callbacks=callbacks
    )
    return model, history.history, callbacks


def test_callback_leaves_training_untouched():
    plain, plain_history, _ = _fit(with_callback=False)
    model, history, (callback,) = _fit(with_callback=True)
    assert callback.last_num_batches == 2
    np.testing.assert_array_equal(history["loss"], plain_history["loss"])
    for old, new in zip(plain.weights, model.weights):
        np.testing.assert_array_equal(_np(old), _np(new))
    # The validation itself did change: it used the recalibrated statistics.
    assert abs(history["val_loss"][-1] - plain_history["val_loss"][-1]) > 1e-4

    # ...and it equals an evaluation after recalibrating the final model by hand.
    x, y = _data()
    recalibrate_batch_norm(plain, x[:64], batch_size=32)
    expected = plain.evaluate(x, y, batch_size=32, verbose=0)
    np.testing.assert_allclose(history["val_loss"][-1], expected, rtol=1e-5)


def test_recalibrated_context_manager_restores():
    x, _ = _data()
    model = _model()
    callback = RecalibrateBatchNorm(x, batch_size=32, steps=3)
    callback.set_model(model)
    before = _statistics(model)
    stale = _np(model(x, training=False))
    with callback.recalibrated():
        fresh = _np(model(x, training=False))
    assert np.abs(fresh - stale).max() > 1e-3
    for name, (mean, variance) in _statistics(model).items():
        np.testing.assert_array_equal(mean, before[name][0])
        np.testing.assert_array_equal(variance, before[name][1])


def test_callback_on_a_model_without_batch_norm_evaluates_as_is():
    x, y = _data()
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    model.compile(optimizer="sgd", loss="mse")
    callback = RecalibrateBatchNorm(x, batch_size=32)
    model.evaluate(x, y, verbose=0, callbacks=[callback])
    assert callback.last_num_batches == 0


MIRRORED = """
import json
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
from keras_bn import ManualBatchNorm
from keras_bn.recalibrate import RecalibrateBatchNorm, recalibrate_batch_norm

rng = np.random.default_rng(0)
x = rng.normal(2.0, 3.0, size=(64, 3)).astype("float32")
x[16:32] += 5.0  # one replica's half of the first batch differs from the other's
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    inputs = keras.Input((3,))
    keras_bn_layer = keras.layers.BatchNormalization()
    manual = ManualBatchNorm()
    model = keras.Model(inputs, manual(keras_bn_layer(inputs)))
    model.compile(optimizer="sgd", loss="mse")
used = recalibrate_batch_norm(model, x, batch_size=32, estimator="batch_mean")
batches = [x[:32], x[32:]]
gap = max(
    float(np.abs(keras.ops.convert_to_numpy(keras_bn_layer.moving_mean) - np.mean([b.mean(0) for b in batches], 0)).max()),
    float(np.abs(keras.ops.convert_to_numpy(keras_bn_layer.moving_variance) - np.mean([b.var(0) for b in batches], 0)).max()),
)
history = model.fit(x, x, batch_size=32, epochs=1, validation_data=(x, x), verbose=0,
                    callbacks=[RecalibrateBatchNorm(x, batch_size=32)])
print(json.dumps({"replicas": strategy.num_replicas_in_sync, "used": used, "gap": gap,
                  "val_loss": history.history["val_loss"][0]}))
"""


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="tf.distribute is TensorFlow's")
def test_global_batch_statistics_under_mirrored_strategy():
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3")
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(MIRRORED)], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["replicas"] == 2 and result["used"] == 2
    # Per-replica statistics of the first batch would be off by about 2.5 in the mean.
    assert result["gap"] < 1e-4
    assert np.isfinite(result["val_loss"])


def test_images_statistics_over_batch_height_and_width():
    rng = np.random.default_rng(3)
    x = rng.normal(2.0, 3.0, size=(40, 5, 5, 2)).astype("float32")
    inputs = keras.Input((5, 5, 2))
    first = keras.layers.BatchNormalization()
    second = ManualBatchNorm(epsilon=1e-2)
    model = keras.Model(inputs, second(keras.layers.Activation("relu")(first(inputs))))
    _scramble(model)
    recalibrate_batch_norm(model, x, batch_size=20, estimator="batch_mean")
    means, variances = [], []
    for batch in (x[:20].astype(np.float64), x[20:].astype(np.float64)):
        mean, var = batch.mean(axis=(0, 1, 2)), batch.var(axis=(0, 1, 2))
        h = np.maximum(_np(first.gamma) * (batch - mean) / np.sqrt(var + first.epsilon) + _np(first.beta), 0.0)
        means.append((mean, h.mean(axis=(0, 1, 2))))
        variances.append((var, h.var(axis=(0, 1, 2))))
    for i, layer in enumerate((first, second)):
        np.testing.assert_allclose(_np(layer.moving_mean), np.mean([m[i] for m in means], axis=0), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(
            _np(layer.moving_variance), np.mean([v[i] for v in variances], axis=0), rtol=1e-5, atol=1e-5
        )


# -- dropout in inference mode, frozen layers included ----------------------------


def _dropout_model(layer):
    """Dense -> `layer` (a dropout) -> ManualBatchNorm -> Dense: the batch norm sees the dropout."""
    keras.utils.set_random_seed(2)
    inputs = keras.Input((4,))
    h = keras.layers.Dense(6, name="dense")(inputs)
    h = ManualBatchNorm(name="bn")(layer(h))
    return keras.Model(inputs, keras.layers.Dense(2, name="head")(h))


@pytest.mark.parametrize(
    "make",
    [
        lambda: keras.layers.Dropout(0.5, seed=1),
        lambda: keras.layers.GaussianDropout(0.5, seed=1),
        lambda: keras.layers.GaussianNoise(1.0, seed=1),
        lambda: keras.layers.AlphaDropout(0.5, seed=1),
    ],
    ids=["Dropout", "GaussianDropout", "GaussianNoise", "AlphaDropout"],
)
def test_dropout_inference_sees_the_inference_inputs(make):
    x, _ = _data(n=512)
    model = _dropout_model(make())
    dense, bn = model.get_layer("dense"), model.get_layer("bn")
    h = x.astype(np.float64) @ _np(dense.kernel) + _np(dense.bias)
    recalibrate_batch_norm(model, x, batch_size=64)  # the default: dropout="inference"
    np.testing.assert_allclose(_np(bn.moving_mean), h.mean(axis=0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(_np(bn.moving_variance), h.var(axis=0), rtol=1e-5, atol=1e-5)
    recalibrate_batch_norm(model, x, batch_size=64, dropout="training")
    # Training-mode noise changes the variance: GaussianNoise(1.0) adds 1 per channel,
    # the others change it more; sampling error over 512 rows is a fraction of that.
    assert np.mean(np.abs(_np(bn.moving_variance) - h.var(axis=0))) > 0.5
    # The dropout layer is itself again: noisy in training mode, the identity in inference.
    dropout = model.layers[2]
    assert "call" not in vars(dropout)
    noisy = _np(dropout(h.astype("float32"), training=True))
    assert not np.allclose(noisy, h, atol=1e-3)


def test_dropout_training_matches_dropout_s_own_variance():
    """`dropout="training"`: E[var] of inverted dropout is (E[h^2] / (1 - p) - E[h]^2), per channel."""
    x, _ = _data(n=4096)
    model = _dropout_model(keras.layers.Dropout(0.5, seed=1))
    dense, bn = model.get_layer("dense"), model.get_layer("bn")
    h = x.astype(np.float64) @ _np(dense.kernel) + _np(dense.bias)
    recalibrate_batch_norm(model, x, batch_size=256, dropout="training")
    expected = (h * h).mean(axis=0) / 0.5 - h.mean(axis=0) ** 2
    np.testing.assert_allclose(_np(bn.moving_variance), expected, rtol=0.1)


def test_include_frozen_recalibrates_frozen_layers_and_keeps_them_frozen():
    x, _ = _data()
    model = _model()
    _scramble(model)
    frozen = model.get_layer("bn1")
    frozen.trainable = False
    with pytest.raises(ValueError, match="unless include_frozen=True"):
        recalibrate_batch_norm(_frozen_copy(), x)
    recalibrate_batch_norm(model, x, batch_size=32, include_frozen=True)
    assert frozen.trainable is False
    assert {v.name for v in frozen.trainable_variables} == set()
    # All layers as if none were frozen: the NumPy reference in training mode.
    expected = _reference(model, [x[:32], x[32:64], x[64:]], "population")
    for name, (mean, variance) in _statistics(model).items():
        np.testing.assert_allclose(mean, expected[name][0], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(variance, expected[name][1], rtol=1e-5, atol=1e-5)


def _frozen_copy():
    """`_model()` with the whole model frozen: no trainable batch norm."""
    model = _model()
    model.trainable = False
    return model


def test_include_frozen_on_a_frozen_model_then_without():
    """A frozen model recalibrates with include_frozen; the trace kept for it is not reused wrongly."""
    x, _ = _data()
    model = _frozen_copy()
    _scramble(model)
    recalibrate_batch_norm(model, x, batch_size=32, include_frozen=True)
    assert not model.trainable and not any(layer.trainable for layer in batch_norm_layers(model))
    expected = _reference(model, [x[:32], x[32:64], x[64:]], "population")
    np.testing.assert_allclose(_statistics(model)["bn2"][1], expected["bn2"][1], rtol=1e-5, atol=1e-5)
    # Now only bn2 is trainable: bn1 normalizes with its (new) moving statistics.
    model.get_layer("inner").trainable = True
    bn1 = model.get_layer("bn1")
    recalibrate_batch_norm(model, x, batch_size=32)
    h1 = x.astype(np.float64) @ _np(model.get_layer("dense1").kernel) + _np(model.get_layer("dense1").bias)
    out1 = _np(bn1.gamma) * (h1 - _np(bn1.moving_mean)) / np.sqrt(_np(bn1.moving_variance) + bn1.epsilon)
    inner = model.get_layer("inner")
    dense2 = inner.get_layer("dense2")
    h2 = np.maximum(out1 + _np(bn1.beta), 0.0) @ _np(dense2.kernel) + _np(dense2.bias)
    np.testing.assert_allclose(_statistics(model)["bn2"][1], h2.var(axis=0), rtol=1e-4, atol=1e-5)


def test_callback_include_frozen():
    x, y = _data()
    model = _frozen_copy()
    model.compile(optimizer="sgd", loss="mse")
    skipped = RecalibrateBatchNorm(x, batch_size=32)
    model.evaluate(x, y, callbacks=[skipped], verbose=0)
    assert skipped.last_num_batches == 0
    callback = RecalibrateBatchNorm(x, batch_size=32, include_frozen=True, dropout="training")
    model.evaluate(x, y, callbacks=[callback], verbose=0)
    assert callback.last_num_batches == 3
    assert not any(layer.trainable for layer in batch_norm_layers(model))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"dropout": "off"}, ValueError, r"`dropout` must be one of \('inference', 'training'\). Received: dropout='off'"),
        ({"include_frozen": "yes"}, TypeError, r"`include_frozen` must be a bool. Received: include_frozen='yes'"),
    ],
)
def test_bad_dropout_and_include_frozen(kwargs, error, match):
    x, _ = _data()
    with pytest.raises(error, match=match):
        recalibrate_batch_norm(_model(), x, **kwargs)
    with pytest.raises(error, match=match):
        RecalibrateBatchNorm(x, **kwargs)


def test_the_command_and_run_config_take_the_dropout_mode():
    from keras_bn.experiment import RunConfig
    from keras_bn.experiment.cli import build_parser

    assert RunConfig().recalibrate_dropout == "inference"
    assert RunConfig(recalibrate_dropout="training").name != RunConfig().name
    with pytest.raises(ValueError, match=r"`recalibrate_dropout` must be one of \('inference', "
                       r"'training'\). Received: recalibrate_dropout='on'"):
        RunConfig(recalibrate_dropout="on")
    args = build_parser().parse_args(["--recalibrate", "3", "--recalibrate-dropout", "training"])
    assert (args.recalibrate, args.recalibrate_dropout) == (3, "training")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--recalibrate-dropout", "on"])


@pytest.mark.skipif(keras.backend.backend() == "jax",
                    reason="compiling EfficientNetB0's training-mode step takes 30 s of CI on JAX "
                    "(it passes there, measured); the JAX path is checked on the small models above")
def test_efficientnet_frozen_with_dropout_in_inference_matches_a_copy_without_dropout():
    """keras.applications.EfficientNetB0 (drop-connect Dropout layers before its batch norms), frozen.

    The reference is the same network with every Dropout replaced by an Identity,
    trainable, recalibrated with dropout in training mode: there is none to run.
    """
    keras.utils.set_random_seed(0)
    model = keras.applications.EfficientNetB0(weights=None, input_shape=(32, 32, 3), classes=4)
    assert any(isinstance(layer, keras.layers.Dropout) for layer in model.layers)

    def without_dropout(layer):
        if isinstance(layer, keras.layers.Dropout):
            return keras.layers.Identity(name=layer.name)
        return layer.__class__.from_config(layer.get_config())

    reference = keras.models.clone_model(model, clone_function=without_dropout)
    reference.set_weights(model.get_weights())
    x = np.random.default_rng(0).uniform(0.0, 255.0, size=(16, 32, 32, 3)).astype("float32")
    model.trainable = False
    recalibrate_batch_norm(model, x, batch_size=8, include_frozen=True)
    recalibrate_batch_norm(reference, x, batch_size=8, dropout="training")
    assert not any(layer.trainable for layer in batch_norm_layers(model))
    pairs = list(zip(batch_norm_layers(model), batch_norm_layers(reference)))
    assert len(pairs) == 49
    for ours, expected in pairs:
        np.testing.assert_allclose(_np(ours.moving_mean), _np(expected.moving_mean), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(_np(ours.moving_variance), _np(expected.moving_variance), rtol=1e-4, atol=1e-5)


def test_keras_hub_backbone_frozen_include_frozen_matches_the_trainable_copy():
    """keras_hub.ResNetBackbone (tests/zoo.py), frozen whole: include_frozen=True recalibrates every batch norm.

    The first batch norm's statistics are those of the stem convolution's outputs
    (NumPy); every batch norm matches the same backbone, trainable, recalibrated plainly.
    """
    pytest.importorskip("keras_hub")
    import zoo

    frozen, trainable = (zoo.build("keras_hub.ResNetBackbone(v1)", seed=0) for _ in range(2))
    x = np.concatenate([zoo.sample_input(frozen, batch=8, seed=s) for s in range(2)])
    frozen.trainable = False
    assert recalibrate_batch_norm(frozen, x, batch_size=8, include_frozen=True) == 2
    recalibrate_batch_norm(trainable, x, batch_size=8)
    assert not any(layer.trainable for layer in batch_norm_layers(frozen))
    first = batch_norm_layers(frozen)[0]
    conv = keras.Model(frozen.inputs, first.input).predict(x, verbose=0).astype(np.float64)
    conv = conv.reshape(-1, conv.shape[-1])
    np.testing.assert_allclose(_np(first.moving_mean), conv.mean(axis=0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(_np(first.moving_variance), conv.var(axis=0), rtol=1e-4, atol=1e-5)
    for ours, expected in zip(batch_norm_layers(frozen), batch_norm_layers(trainable), strict=True):
        np.testing.assert_allclose(_np(ours.moving_mean), _np(expected.moving_mean), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(_np(ours.moving_variance), _np(expected.moving_variance), rtol=1e-5, atol=1e-6)
