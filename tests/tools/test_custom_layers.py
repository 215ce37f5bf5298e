"""Batch norms inside custom layers (a `call()` in Python), reached by every tool through the layers' stand-ins.

The references are the original models themselves, with Keras's own
`BatchNormalization`: the rebuilt models must predict what they predict, in
inference and in training mode, and leave them untouched.
"""

import keras
import numpy as np
import pytest
import zoo
from helpers import to_numpy, warns_once

from keras_bn import (
    FoldedBatchNorm,
    FrozenBatchNorm,
    LayerStatistics,
    ManualBatchNorm,
    convert_batch_norm,
    fold_batch_norm,
    freeze_batch_norm,
    recalibrate_batch_norm,
    unfreeze_batch_norm,
)

BN = keras.layers.BatchNormalization


@keras.saving.register_keras_serializable(package="keras_bn_tests")
class ListDictBlock(keras.layers.Layer):
    """Convolutions and batch norms kept in a list and a dict, a residual add and plain operations."""

    def __init__(self, filters=4, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.convs = [keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"conv{i}")
                      for i in range(2)]
        self.norms = {"a": BN(name="bn_a"), "b": BN(name="bn_b", momentum=0.9)}
        self.act = keras.layers.Activation("relu", name="act")

    def call(self, x, training=None):
        y = self.act(self.norms["a"](self.convs[0](x), training=training))
        y = self.norms["b"](self.convs[1](y), training=training)
        return keras.ops.relu(x + y * 0.5)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters}


@keras.saving.register_keras_serializable(package="keras_bn_tests")
class Outer(keras.layers.Layer):
    """A custom layer around another custom layer and a batch norm of its own."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.inner = ListDictBlock(name="inner")
        self.bn = BN(name="outer_bn")

    def call(self, x, training=None):
        return self.bn(self.inner(x, training=training), training=training)


@keras.saving.register_keras_serializable(package="keras_bn_tests")
class Branching(keras.layers.Layer):
    """Adds noise in training only, by a Python `if` on `training`."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.bn = BN(name="bn")
        self.noise = keras.layers.GaussianNoise(0.1)

    def call(self, x, training=None):
        if training:
            x = self.noise(x, training=training)
        return self.bn(x, training=training)


@keras.saving.register_keras_serializable(package="keras_bn_tests")
class AlwaysInference(keras.layers.Layer):
    """Calls its batch norm with training=False, whatever it is called with."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.bn = BN(name="bn")

    def call(self, x, training=None):
        return self.bn(x, training=False)


@keras.saving.register_keras_serializable(package="keras_bn_tests")
class LayerScale(keras.layers.Layer):
    """A batch norm and a weight of the block's own."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.bn = BN(name="bn")

    def build(self, input_shape):
        self.scale = self.add_weight(name="scale", shape=(input_shape[-1],), initializer="ones")

    def call(self, x, training=None):
        return self.bn(x, training=training) * self.scale


@keras.saving.register_keras_serializable(package="keras_bn_tests")
class TwoInputs(keras.layers.Layer):
    """Called on two positional tensors and one by keyword, as detection heads are."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.bn = BN(name="bn")
        self.conv = keras.layers.Conv2D(4, 1, name="conv")

    def call(self, x, skip, scale=None, training=None):
        return self.bn(self.conv(x + skip) * scale, training=training)


def _images(n=4, seed=0):
    return np.random.default_rng(seed).normal(size=(n, 6, 6, 4)).astype("float32")


def _model(block=None):
    """Conv -> BN -> a custom block -> pooling -> Dense, with drawn batch-norm statistics."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6, 6, 4))
    x = BN(name="stem_bn")(keras.layers.Conv2D(4, 1, name="stem")(inputs))
    x = (block or Outer(name="outer"))(x)
    outputs = keras.layers.Dense(3, name="head")(keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inputs, outputs)
    _draw(model)
    return model


def _batch_norms(model, cls=BN):
    """Every `cls` layer reachable through the layers' attributes, at any depth (the test bed's walk)."""
    return [layer for layer in zoo.walk_layers(model) if isinstance(layer, cls)]


def _draw(model, seed=1):
    rng = np.random.default_rng(seed)
    for layer in _batch_norms(model):
        for weight, value in ((layer.moving_mean, rng.normal(0, 0.3, layer.moving_mean.shape)),
                              (layer.moving_variance, rng.uniform(0.5, 1.5, layer.moving_variance.shape)),
                              (layer.gamma, rng.uniform(0.5, 1.5, layer.gamma.shape)),
                              (layer.beta, rng.normal(0, 0.3, layer.beta.shape))):
            weight.assign(value.astype("float32"))


def _weights(model):
    return [np.array(to_numpy(w)) for w in model.weights]


def test_convert_reaches_batch_norms_in_lists_dicts_and_nested_custom_layers():
    model = _model()
    before = _weights(model)
    converted = convert_batch_norm(model)
    assert len(_batch_norms(converted, ManualBatchNorm)) == 4
    assert not _batch_norms(converted)
    assert type(converted.get_layer("outer")).__name__ == "Functional"
    x = _images()
    np.testing.assert_allclose(to_numpy(converted(x, training=False)), to_numpy(model(x, training=False)),
                               rtol=1e-5, atol=1e-5)
    # Training mode: the same outputs and the same updates of the moving statistics.
    np.testing.assert_allclose(to_numpy(converted(x, training=True)), to_numpy(model(x, training=True)),
                               rtol=1e-4, atol=1e-4)
    for old, new in zip(_batch_norms(model), _batch_norms(converted, ManualBatchNorm), strict=True):
        assert old.name == new.name
        np.testing.assert_allclose(to_numpy(new.moving_variance), to_numpy(old.moving_variance), rtol=1e-5)
    # The user's model is not changed: the training call above is the only change.
    fresh = _model()
    assert [type(layer) for layer in _batch_norms(model)] == [BN] * 4
    for a, b in zip(_weights(fresh), before, strict=True):
        np.testing.assert_array_equal(a, b)


def test_freeze_and_unfreeze_reach_inside_and_predict_the_inference_outputs():
    model = _model()
    frozen = freeze_batch_norm(model)
    assert len(_batch_norms(frozen, FrozenBatchNorm)) == 4
    frozen.trainable = True
    x = _images()
    np.testing.assert_allclose(to_numpy(frozen(x, training=True)), to_numpy(model(x, training=False)),
                               rtol=1e-5, atol=1e-5)
    thawed = unfreeze_batch_norm(frozen, layers="outer/*")
    assert len(_batch_norms(thawed, FrozenBatchNorm)) == 1  # the stem's, outside "outer"
    assert len(_batch_norms(thawed)) == 3


def test_fold_sees_the_convolutions_inside_custom_layers():
    model = _model()
    folded, report = fold_batch_norm(model, return_report=True)
    assert report.folded == {"stem_bn": "stem", "outer/inner/bn_a": "outer/inner/conv0",
                             "outer/inner/bn_b": "outer/inner/conv1"}
    assert list(report.kept) == ["outer/outer_bn"]
    assert len(_batch_norms(folded, FoldedBatchNorm)) == 3
    x = _images()
    np.testing.assert_allclose(to_numpy(folded(x)), to_numpy(model(x, training=False)), rtol=1e-5, atol=1e-5)


def test_a_converted_model_round_trips_through_a_keras_file(tmp_path):
    model = _model()
    x = _images()
    for rebuilt in (convert_batch_norm(model), freeze_batch_norm(model)):
        path = str(tmp_path / "model.keras")
        rebuilt.save(path)
        loaded = keras.saving.load_model(path)
        np.testing.assert_allclose(to_numpy(loaded(x, training=False)), to_numpy(rebuilt(x, training=False)),
                                   rtol=1e-6, atol=1e-6)
        assert [type(layer) for layer in _batch_norms(loaded, (ManualBatchNorm, FrozenBatchNorm))] == \
            [type(layer) for layer in _batch_norms(rebuilt, (ManualBatchNorm, FrozenBatchNorm))]


@pytest.mark.parametrize(
    "block, why",
    [
        (Branching(name="block"), r"other steps in training than in inference"),
        (AlwaysInference(name="block"), r"passes training=False to 'bn' itself"),
        (LayerScale(name="block"), r"state of its own \('block/scale'\)"),
    ],
)
def test_a_custom_layer_that_is_no_graph_is_named_with_the_reason(block, why):
    model = _model(block)
    pattern = r"(?s)convert_batch_norm cannot reach these layers inside custom layers.*'block/bn': inside 'block' \(\w+\): .*" + why
    with pytest.raises(ValueError, match=pattern):
        convert_batch_norm(model)
    with pytest.raises(ValueError, match=r"(?s)freeze_batch_norm cannot reach.*'block/bn'"):
        freeze_batch_norm(model)
    with warns_once(UserWarning, r"(?s)convert_batch_norm kept 1 batch norm\(s\) as they were.*"
                      r"'block/bn': inside 'block' \(\w+\): .*" + why + r".*They are left unconverted"):
        kept = convert_batch_norm(model, custom_layers="keep")
    assert [layer.name for layer in _batch_norms(kept, ManualBatchNorm)] == ["stem_bn"]
    x = _images()
    np.testing.assert_allclose(to_numpy(kept(x, training=False)), to_numpy(model(x, training=False)),
                               rtol=1e-5, atol=1e-5)
    _, report = fold_batch_norm(model, return_report=True)
    assert "block/bn" in report.kept and "whose call() keras-bn cannot turn into a graph" in report.kept["block/bn"]


def test_a_shared_custom_layer_stays_shared():
    keras.utils.set_random_seed(0)
    block = ListDictBlock(name="shared")
    inputs = keras.Input((6, 6, 4))
    outputs = block(block(inputs))
    model = keras.Model(inputs, outputs)
    _draw(model)
    converted = convert_batch_norm(model)
    assert len(_batch_norms(converted, ManualBatchNorm)) == 2
    assert len(converted.weights) == len(model.weights)
    x = _images()
    np.testing.assert_allclose(to_numpy(converted(x, training=False)), to_numpy(model(x, training=False)),
                               rtol=1e-5, atol=1e-5)


def test_a_sequential_holding_a_custom_layer_and_a_ragged_last_batch():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6, 6, 4)), ListDictBlock(name="block"), keras.layers.Flatten()],
                             name="seq")
    _draw(model)
    converted = convert_batch_norm(model)
    assert converted.name == "seq" and len(_batch_norms(converted, ManualBatchNorm)) == 2
    x = _images(5)
    np.testing.assert_allclose(converted.predict(x, batch_size=4, verbose=0), model.predict(x, batch_size=4, verbose=0),
                               rtol=1e-5, atol=1e-5)


def test_mixed_precision_custom_layers():
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = _model()
    finally:
        keras.config.set_dtype_policy("float32")
    converted = convert_batch_norm(model)
    assert {layer.dtype_policy.name for layer in _batch_norms(converted, ManualBatchNorm)} == {"mixed_float16"}
    x = _images()
    expected = to_numpy(model(x, training=False)).astype("float32")
    np.testing.assert_allclose(to_numpy(converted(x, training=False)).astype("float32"), expected, rtol=1e-2, atol=1e-2)


def test_recalibration_and_layer_statistics_reach_inside():
    model = _model()
    x = _images(8)
    recalibrate_batch_norm(model, x, batch_size=8)
    inner = model.get_layer("outer").inner
    h = to_numpy(inner.convs[0](to_numpy(model.get_layer("stem_bn")(model.get_layer("stem")(x), training=True))))
    np.testing.assert_allclose(to_numpy(inner.norms["a"].moving_mean), h.mean((0, 1, 2)), rtol=1e-4, atol=1e-5)
    stats = LayerStatistics(x, inputs_of=["outer/inner/act"], kernels_of=["outer/inner/conv1"], every=1)
    model.compile(optimizer="sgd", loss="mse")
    model.fit(x, np.zeros((8, 3), "float32"), batch_size=4, verbose=0, callbacks=[stats])
    assert list(stats.history["inputs"]) == ["outer/inner/act"]
    assert len(stats.history["gradient_norms"]["outer/inner/conv1"]) == 2


def test_a_custom_layer_called_on_several_tensors_and_keywords(tmp_path):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6, 6, 4))
    stem = keras.layers.Conv2D(4, 1, name="stem")(inputs)
    outputs = TwoInputs(name="pair")(stem, inputs, scale=keras.ops.sigmoid(stem))
    model = keras.Model(inputs, outputs)
    _draw(model)
    converted = convert_batch_norm(model)
    assert len(_batch_norms(converted, ManualBatchNorm)) == 1
    x = _images()
    for training in (False, True):
        np.testing.assert_allclose(to_numpy(converted(x, training=training)), to_numpy(model(x, training=training)),
                                   rtol=1e-5, atol=1e-5)
    path = str(tmp_path / "pair.keras")
    converted.save(path)
    np.testing.assert_allclose(to_numpy(keras.saving.load_model(path)(x)), to_numpy(converted(x)), rtol=1e-6, atol=1e-6)
    report = fold_batch_norm(model, return_report=True)[1]
    assert report.folded == {} and "pair/bn" in report.kept  # a product, not the convolution, feeds it
