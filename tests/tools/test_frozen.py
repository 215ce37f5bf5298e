"""FrozenBatchNorm, freeze_batch_norm and unfreeze_batch_norm: frozen stays frozen, against NumPy and Keras."""

import warnings

import keras
import numpy as np
import pytest
from helpers import to_numpy, warns_once

from keras_bn import (
    FrozenBatchNorm,
    ManualBatchNorm,
    convert_batch_norm,
    fold_batch_norm,
    freeze_batch_norm,
    unfreeze_batch_norm,
)


def _model(bn_cls=keras.layers.BatchNormalization, seed=0):
    """Conv -> BN -> ReLU -> Conv -> BN -> pooling -> Dense, with statistics and affine weights off their start."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6, 6, 2))
    h = keras.layers.Conv2D(4, 3, padding="same", name="conv1")(inputs)
    h = keras.layers.ReLU()(bn_cls(name="block1_bn")(h))
    h = keras.layers.Conv2D(3, 3, name="conv2")(h)
    h = bn_cls(name="block2_bn")(h)
    outputs = keras.layers.Dense(2, name="head")(keras.layers.GlobalAveragePooling2D()(h))
    model = keras.Model(inputs, outputs)
    rng = np.random.default_rng(seed)
    for name in ("block1_bn", "block2_bn"):
        layer = model.get_layer(name)
        c = layer.gamma.shape[0]
        layer.gamma.assign(rng.uniform(0.5, 1.5, c).astype("float32"))
        layer.beta.assign(rng.normal(0, 0.3, c).astype("float32"))
        layer.moving_mean.assign(rng.normal(0, 0.5, c).astype("float32"))
        layer.moving_variance.assign(rng.uniform(0.5, 2.0, c).astype("float32"))
    return model


def _data(seed=1, n=8):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 6, 6, 2)).astype("float32"), rng.normal(size=(n, 2)).astype("float32")


def _numpy_frozen(x, gamma, beta, mean, variance, epsilon):
    """The inference transform of a batch norm over the last axis, in float64."""
    return gamma * (x - mean) / np.sqrt(variance + epsilon) + beta


@pytest.mark.parametrize("training", [False, True])
def test_the_layer_is_the_inference_transform_in_both_modes(training):
    rng = np.random.default_rng(2)
    layer = FrozenBatchNorm(epsilon=1e-2)
    x = rng.normal(3.0, 2.0, size=(5, 4)).astype("float32")
    layer.build(x.shape)
    weights = [rng.uniform(0.5, 1.5, 4), rng.normal(size=4), rng.normal(size=4), rng.uniform(0.5, 2, 4)]
    for variable, value in zip([layer.gamma, layer.beta, layer.moving_mean, layer.moving_variance], weights):
        variable.assign(value.astype("float32"))
    expected = _numpy_frozen(x.astype("float64"), *weights, 1e-2)
    np.testing.assert_allclose(to_numpy(layer(x, training=training)), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(to_numpy(layer.moving_mean), weights[2], rtol=1e-6)


@pytest.mark.parametrize("bn_cls", [keras.layers.BatchNormalization, ManualBatchNorm])
def test_frozen_model_predicts_the_same_and_stays_frozen_through_trainable_compile_and_fit(bn_cls):
    model = _model(bn_cls)
    x, y = _data()
    frozen = freeze_batch_norm(model)
    assert [type(layer).__name__ for layer in frozen.layers].count("FrozenBatchNorm") == 2
    np.testing.assert_allclose(to_numpy(frozen(x)), to_numpy(model(x, training=False)), rtol=1e-5, atol=1e-5)

    frozen.trainable = True  # what unfreezes a Keras batch norm for fine-tuning
    frozen.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    bn = frozen.get_layer("block1_bn")
    before = {w.name: to_numpy(w).copy() for w in bn.weights}
    conv_before = to_numpy(frozen.get_layer("conv1").kernel).copy()
    frozen.fit(x, y, batch_size=4, epochs=2, verbose=0)
    assert bn.trainable_weights == []
    for w in bn.weights:
        np.testing.assert_array_equal(to_numpy(w), before[w.name])
    assert not np.allclose(to_numpy(frozen.get_layer("conv1").kernel), conv_before)  # the rest trained


def test_trainable_affine_trains_gamma_and_beta_but_never_the_statistics():
    x, y = _data()
    frozen = freeze_batch_norm(_model(), trainable_affine=True)
    frozen.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    bn = frozen.get_layer("block2_bn")
    mean, gamma = to_numpy(bn.moving_mean).copy(), to_numpy(bn.gamma).copy()
    frozen.fit(x, y, batch_size=4, verbose=0)
    np.testing.assert_array_equal(to_numpy(bn.moving_mean), mean)
    assert not np.allclose(to_numpy(bn.gamma), gamma)


def test_frozen_model_saves_loads_converts_and_folds(tmp_path):
    model = _model()
    x, _ = _data()
    frozen = freeze_batch_norm(model, "block2_*")
    assert type(frozen.get_layer("block1_bn")) is keras.layers.BatchNormalization
    path = tmp_path / "frozen.keras"
    frozen.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded.get_layer("block2_bn")) is FrozenBatchNorm
    loaded.trainable = True
    assert loaded.get_layer("block2_bn").trainable_weights == []
    np.testing.assert_allclose(to_numpy(loaded(x, training=True)), to_numpy(frozen(x, training=True)), rtol=1e-6)
    # Conversion swaps the other batch norm and leaves the frozen one frozen.
    converted = convert_batch_norm(frozen)
    assert type(converted.get_layer("block1_bn")) is ManualBatchNorm
    assert type(converted.get_layer("block2_bn")) is FrozenBatchNorm
    # (The training-mode calls above moved block1_bn's statistics: fold a fresh copy.)
    folded, report = fold_batch_norm(freeze_batch_norm(model, "block2_*"), return_report=True)
    assert report.folded == {"block1_bn": "conv1", "block2_bn": "conv2"}
    np.testing.assert_allclose(to_numpy(folded(x)), to_numpy(model(x)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bn_cls", [keras.layers.BatchNormalization, ManualBatchNorm])
def test_unfreeze_restores_the_layer_it_replaced_with_its_weights(bn_cls):
    model = _model(bn_cls)
    model.get_layer("block1_bn").trainable = False
    original = model.get_layer("block1_bn").get_config()
    x, _ = _data()
    back = unfreeze_batch_norm(freeze_batch_norm(model), layers=lambda path, layer: path == "block1_bn")
    layer = back.get_layer("block1_bn")
    assert type(layer) is bn_cls and layer.trainable
    assert {**layer.get_config(), "trainable": False} == original
    assert type(back.get_layer("block2_bn")) is FrozenBatchNorm
    np.testing.assert_allclose(to_numpy(back(x)), to_numpy(model(x)), rtol=1e-5, atol=1e-5)
    # Trainable again: a training-mode call moves its statistics.
    before = to_numpy(layer.moving_mean).copy()
    back(x, training=True)
    assert not np.allclose(to_numpy(layer.moving_mean), before)


def test_a_frozen_layer_made_by_hand_unfreezes_to_manual_batch_norm():
    inputs = keras.Input((3,))
    model = keras.Model(inputs, FrozenBatchNorm(epsilon=0.01, name="bn")(inputs))
    layer = unfreeze_batch_norm(model).get_layer("bn")
    assert type(layer) is ManualBatchNorm and layer.epsilon == 0.01


def test_bad_selections_are_refused_by_name():
    model = _model()
    with pytest.raises(ValueError, match=r"selects none of the model's 2 candidate layer\(s\) \(block1_bn, block2_bn\).*'conv\*'"):
        freeze_batch_norm(model, "conv*")
    with pytest.raises(TypeError, match=r"`layers` must be None, a name pattern.*Received: layers=3"):
        freeze_batch_norm(model, 3)
    with pytest.raises(ValueError, match=r"unfreeze_batch_norm: `layers` selects none.*0 candidate"):
        unfreeze_batch_norm(model)
    with pytest.raises(ValueError, match=r"epsilon must be positive. Received: epsilon=0"):
        FrozenBatchNorm(epsilon=0)


class ScaledNorm(keras.layers.Layer):
    """A batch norm, then a scale of the layer's own: a weight outside its sub-layers, so no tool can inline it."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.norm = keras.layers.BatchNormalization(name="inner_bn")

    def build(self, input_shape):
        self.scale = self.add_weight(name="scale", shape=(input_shape[-1],), initializer="ones")

    def call(self, x, training=None):
        return self.norm(x, training=training) * self.scale


def _model_with_a_custom_layer():
    """`_model`'s first block, then a `ScaledNorm` holding a batch norm the tools cannot reach."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6, 6, 2))
    h = keras.layers.Conv2D(4, 3, padding="same", name="conv1")(inputs)
    h = keras.layers.BatchNormalization(name="block1_bn")(h)
    h = ScaledNorm(name="scaled")(keras.layers.ReLU()(h))
    outputs = keras.layers.Dense(2, name="head")(keras.layers.GlobalAveragePooling2D()(h))
    return keras.Model(inputs, outputs)


def _fit_changes(model, layer, x, y):
    """Fits `model` as a fine-tuning recipe does; returns which of `layer`'s weights changed."""
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    before = {w.name: to_numpy(w).copy() for w in layer.weights}
    model.fit(x, y, batch_size=4, epochs=2, verbose=0)
    return sorted(w.name for w in layer.weights if not np.array_equal(to_numpy(w), before[w.name]))


def test_keeping_a_batch_norm_inside_a_custom_layer_warns_once_and_says_what_it_does():
    model = _model_with_a_custom_layer()
    x, y = _data()
    with pytest.raises(ValueError, match=r"(?s)freeze_batch_norm cannot reach.*'scaled/inner_bn'"):
        freeze_batch_norm(model)
    with warns_once(UserWarning, r"^freeze_batch_norm kept 1 batch norm") as record:
        frozen = freeze_batch_norm(model, custom_layers="keep")
    message = str(record[0].message)
    assert message.startswith(
        "freeze_batch_norm kept 1 batch norm(s) as they were, inside custom layers that keras-bn "
        "could not turn into graphs:\n  'scaled/inner_bn': inside 'scaled' (ScaledNorm): it has "
        "state of its own ('scaled/scale'), outside its sub-layers")
    assert "in fit they keep updating their moving statistics and training their gamma and beta" in message
    assert "set trainable=False on the custom layers that hold them" in message
    assert "docs/guide/custom_layers.md" in message
    assert record[0].filename == __file__  # It points at the call, not into keras-bn.
    assert type(frozen.get_layer("block1_bn")) is FrozenBatchNorm

    # What it says is what fit does: the frozen layer stays, the kept one trains...
    frozen.trainable = True
    kept = frozen.get_layer("scaled").norm
    assert type(kept) is keras.layers.BatchNormalization
    assert _fit_changes(frozen, frozen.get_layer("block1_bn"), x, y) == []
    assert _fit_changes(frozen, kept, x, y) == ["beta", "gamma", "moving_mean", "moving_variance"]
    # ...until its custom layer is made non-trainable, as the warning advises.
    frozen.get_layer("scaled").trainable = False
    assert _fit_changes(frozen, kept, x, y) == []


def test_nothing_is_warned_when_every_batch_norm_is_frozen():
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # the configuration's rule, said here
        frozen = freeze_batch_norm(_model(), custom_layers="keep")
    assert [type(layer).__name__ for layer in frozen.layers].count("FrozenBatchNorm") == 2


def test_mixed_precision_keeps_float32_statistics_and_float16_outputs():
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = _model()
    finally:
        keras.config.set_dtype_policy("float32")
    x, _ = _data()
    frozen = freeze_batch_norm(model)
    bn = frozen.get_layer("block1_bn")
    assert bn.moving_variance.dtype == "float32" and bn.compute_dtype == "float16"
    assert keras.backend.standardize_dtype(frozen(x).dtype) == "float16"
    np.testing.assert_allclose(to_numpy(frozen(x)), to_numpy(model(x)), rtol=1e-2, atol=1e-2)


def test_mixed_precision_normalizes_in_float32_as_keras_layer_does():
    """Statistics a float16 copy would round (2999 is 3000 in float16): Keras's numbers."""
    x = np.full((2, 3), 3000.0, "float16")
    outputs = {}
    for cls in (keras.layers.BatchNormalization, FrozenBatchNorm):
        layer = cls(dtype="mixed_float16")
        layer.build((2, 3))
        layer.moving_mean.assign(np.full(3, 2999.0, "float32"))
        outputs[cls.__name__] = to_numpy(layer(keras.ops.convert_to_tensor(x, "float16"))).astype("float64")
    np.testing.assert_allclose(outputs["BatchNormalization"], 1 / np.sqrt(1 + 1e-3), rtol=1e-3)
    np.testing.assert_allclose(outputs["FrozenBatchNorm"], outputs["BatchNormalization"], rtol=1e-3)
