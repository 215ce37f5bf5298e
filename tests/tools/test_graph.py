"""The graph walker under every tool: the graphs that broke the tools before, against the models themselves."""

import numpy as np
import pytest

import keras
from helpers import to_numpy
from keras_bn import (
    LayerStatistics,
    ManualBatchNorm,
    convert_batch_norm,
    fold_batch_norm,
    freeze_batch_norm,
    recalibrate_batch_norm,
)


def _randomize(model, seed=0):
    """Moves every batch norm's statistics and affine weights off their initial values."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            _randomize(layer, seed + 1)
        elif isinstance(layer, (keras.layers.BatchNormalization, ManualBatchNorm)):
            for name, draw in (("gamma", rng.uniform(0.5, 1.5)), ("beta", rng.normal(0, 0.3)),
                               ("moving_mean", rng.normal(0, 0.3)), ("moving_variance", rng.uniform(0.5, 2))):
                variable = getattr(layer, name)
                variable.assign(np.full(variable.shape, draw, "float32") + rng.normal(0, 0.05, variable.shape).astype("float32"))
    return model


def _two_inputs_two_outputs():
    """Two inputs, a layer shared by both, a Lambda, plain operations, a nested model, two outputs."""
    keras.utils.set_random_seed(1)
    shared = keras.layers.Dense(6, use_bias=False, name="shared")
    block_in = keras.Input((6,))
    block = keras.Model(block_in, keras.layers.BatchNormalization(name="inner_bn")(
        keras.layers.Dense(6, name="inner_dense")(block_in)), name="block")
    a, b = keras.Input((4,), name="a"), keras.Input((4,), name="b")
    ha = keras.layers.BatchNormalization(name="bn_a")(shared(a))  # shared: kept
    hb = shared(b)
    mixed = keras.layers.Lambda(lambda t: t * 0.5, name="half")(ha) + keras.ops.tanh(hb)  # plain ops
    h = keras.layers.Dense(6, name="dense")(mixed)
    out1 = keras.layers.BatchNormalization(name="bn_out")(h)  # folds into dense
    out2 = block(mixed * 2.0 + 1.0)
    return _randomize(keras.Model([a, b], [out1, out2]))


def _masked():
    """Masking -> a batch norm that takes the mask -> an LSTM that needs it."""
    keras.utils.set_random_seed(2)
    inputs = keras.Input((5, 3))
    h = keras.layers.Masking(mask_value=0.0)(inputs)
    h = keras.layers.Dense(4, name="dense")(h)
    h = ManualBatchNorm(name="bn")(h)
    return _randomize(keras.Model(inputs, keras.layers.LSTM(2, name="lstm")(h)))


def _data():
    rng = np.random.default_rng(3)
    x = [rng.normal(size=(8, 4)).astype("float32"), rng.normal(size=(8, 4)).astype("float32")]
    sequences = rng.normal(size=(8, 5, 3)).astype("float32")
    sequences[:, 3:] = 0.0  # masked steps
    return x, sequences


def _same(a, b, rtol=1e-5):
    for x, y in zip(keras.tree.flatten(a), keras.tree.flatten(b), strict=True):
        np.testing.assert_allclose(to_numpy(x), to_numpy(y), rtol=rtol, atol=rtol)


def test_fold_and_convert_on_several_inputs_outputs_a_shared_layer_a_lambda_and_operations():
    model = _two_inputs_two_outputs()
    x, _ = _data()
    folded, report = fold_batch_norm(model, return_report=True)
    assert report.folded == {"bn_out": "dense", "block/inner_bn": "block/inner_dense"}
    assert report.kept == {"bn_a": "its input comes from 'shared', which is called at 2 places"}
    _same(folded(x), model(x))
    converted = convert_batch_norm(model)
    assert type(converted.get_layer("block").get_layer("inner_bn")) is ManualBatchNorm
    _same(converted(x), model(x))
    _same(converted(x, training=True), model(x, training=True))
    frozen = freeze_batch_norm(model)
    _same(frozen(x, training=True), model(x))


def test_a_mask_passes_through_every_rebuilt_model():
    model = _masked()
    _, x = _data()
    for rebuilt in (fold_batch_norm(model), convert_batch_norm(model), freeze_batch_norm(model)):
        _same(rebuilt(x), model(x))
        # The LSTM still sees the mask: changing a masked step changes nothing.
        changed = x.copy()
        changed[:, 4] = 0.0
        _same(rebuilt(changed), rebuilt(x))


def test_recalibration_and_layer_statistics_on_several_inputs():
    model = _two_inputs_two_outputs()
    x, _ = _data()
    recalibrate_batch_norm(model, [(x,)])  # one batch: the two inputs
    inner = model.get_layer("block").get_layer("inner_bn")
    # The nested batch norm's input in training mode, computed by hand from the layers.
    shared, dense = model.get_layer("shared"), model.get_layer("block").get_layer("inner_dense")
    ha = to_numpy(model.get_layer("bn_a")(shared(x[0]), training=True))
    mixed = ha * 0.5 + np.tanh(to_numpy(shared(x[1])))
    h = to_numpy(dense(mixed * 2.0 + 1.0))
    np.testing.assert_allclose(to_numpy(inner.moving_mean), h.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(to_numpy(inner.moving_variance), h.var(0), rtol=1e-4, atol=1e-6)

    model.compile(optimizer="sgd", loss=["mse", "mse"])
    y = [np.zeros((8, 6), "float32"), np.zeros((8, 6), "float32")]
    stats = LayerStatistics(x, kernels_of=["shared", "block/inner_dense"], inputs_of=[], every=1)
    model.fit(x, y, batch_size=4, verbose=0, callbacks=[stats], shuffle=False)
    assert list(stats.history["gradient_norms"]) == ["shared", "block/inner_dense"]
    assert all(len(v) == 2 for v in stats.history["gradient_norms"].values())


def test_a_layer_that_cannot_be_rebuilt_is_named():
    class NoConfig(keras.layers.Layer):
        def __init__(self, scale):
            super().__init__(name="no_config")
            self.scale = scale

        def build(self, input_shape):
            self.factor = self.add_weight(name="factor", shape=(), initializer="ones")

        def call(self, x):
            return x * self.scale * self.factor

    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.BatchNormalization()(NoConfig(2.0)(inputs)))
    with pytest.raises(ValueError, match=r"Layer 'no_config' of type NoConfig cannot be rebuilt.*get_config"
                                         r".*Nor from its call\(\).*state of its own \('no_config/factor'\)"):
        fold_batch_norm(model)


def test_a_layer_without_a_config_or_state_is_rebuilt_from_its_call():
    class NoConfig(keras.layers.Layer):
        def __init__(self, scale):
            super().__init__(name="no_config")
            self.scale = scale

        def call(self, x):
            return x * self.scale

    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.BatchNormalization()(NoConfig(2.0)(inputs)))
    x = np.random.default_rng(0).normal(size=(4, 3)).astype("float32")
    converted = convert_batch_norm(model)
    assert [type(layer).__name__ for layer in converted.layers] == ["InputLayer", "Functional", "ManualBatchNorm"]
    np.testing.assert_allclose(to_numpy(converted(x, training=True)), to_numpy(model(x, training=True)), rtol=1e-5)


