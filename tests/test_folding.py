"""fold_batch_norm: same inference predictions, fewer layers, unfoldable layers kept."""

import numpy as np
import pytest

import keras
from helpers import to_numpy
from keras_bn import ManualBatchNorm, fold_batch_norm


def _warm_up(model, x, steps=3):
    """Calls `model` in training mode so the moving statistics leave their initial values."""
    for k in range(steps):
        model(x + k, training=True)


def _randomize_affine(model, rng):
    """Gives every gamma and beta a value far from its initializer."""
    for layer in model.layers:
        if isinstance(layer, (ManualBatchNorm, keras.layers.BatchNormalization)):
            if layer.scale:
                layer.gamma.assign(rng.uniform(0.5, 2.0, layer.gamma.shape).astype("float32"))
            if layer.center:
                layer.beta.assign(rng.normal(size=layer.beta.shape).astype("float32"))


def _kinds(model):
    """Returns the class names of a model's layers."""
    return [layer.__class__.__name__ for layer in model.layers]


@pytest.mark.parametrize("bn_cls", [ManualBatchNorm, keras.layers.BatchNormalization])
def test_conv_and_dense_followed_by_bn_are_folded(bn_cls):
    rng = np.random.default_rng(0)
    inputs = keras.Input((10, 10, 3))
    h = keras.layers.Conv2D(8, 3, strides=2, padding="same", use_bias=False, name="conv")(inputs)
    h = bn_cls(name="bn_conv")(h)
    h = keras.layers.ReLU()(h)
    h = keras.layers.Flatten()(h)
    h = keras.layers.Dense(5, name="dense")(h)  # with a bias of its own
    h = bn_cls(center=False, name="bn_dense")(h)
    model = keras.Model(inputs, h)
    x = rng.normal(1.0, 2.0, size=(16, 10, 10, 3)).astype("float32")
    _warm_up(model, x)
    _randomize_affine(model, rng)
    model.get_layer("dense").bias.assign(rng.normal(size=5).astype("float32"))

    folded = fold_batch_norm(model)
    assert _kinds(folded) == ["InputLayer", "Conv2D", "FoldedBatchNorm", "ReLU", "Flatten", "Dense", "FoldedBatchNorm"]
    assert folded.get_layer("conv").use_bias
    np.testing.assert_allclose(
        to_numpy(folded(x, training=False)), to_numpy(model(x, training=False)), rtol=1e-5, atol=1e-5
    )
    # The original model is untouched.
    assert _kinds(model).count(bn_cls.__name__) == 2


def test_channels_first_conv_folds_with_axis_1():
    rng = np.random.default_rng(1)
    model = keras.Sequential(
        [
            keras.Input((2, 6, 9)),
            keras.layers.Conv2D(5, 3, data_format="channels_first", use_bias=False),
            ManualBatchNorm(axis=1),
        ]
    )
    x = rng.normal(size=(8, 2, 6, 9)).astype("float32")
    _warm_up(model, x)
    _randomize_affine(model, rng)
    folded = fold_batch_norm(model)
    assert isinstance(folded, keras.Sequential)
    assert _kinds(folded) == ["Conv2D", "FoldedBatchNorm"]
    np.testing.assert_allclose(to_numpy(folded(x)), to_numpy(model(x)), rtol=1e-5, atol=1e-5)


def test_unfoldable_layers_are_kept():
    rng = np.random.default_rng(2)
    inputs = keras.Input((6, 6, 3))
    a = keras.layers.Conv2D(4, 3, activation="relu", name="conv_relu")(inputs)
    a = ManualBatchNorm(name="after_activation")(a)
    b = keras.layers.MaxPooling2D(name="pool")(a)
    b = ManualBatchNorm(name="after_pool")(b)
    c = keras.layers.Conv2D(4, 1, name="shared_out")(b)
    d = ManualBatchNorm(name="bn_of_shared")(c)
    e = keras.layers.Conv2D(4, 1, name="conv_axis")(d)
    e = ManualBatchNorm(axis=1, name="other_axis")(e)
    out = keras.layers.Concatenate()([keras.layers.Flatten()(c), keras.layers.Flatten()(d), keras.layers.Flatten()(e)])
    model = keras.Model(inputs, out)
    x = rng.normal(size=(8, 6, 6, 3)).astype("float32")
    _warm_up(model, x)
    _randomize_affine(model, rng)
    folded = fold_batch_norm(model)
    # Nothing here is foldable: after an activation, after pooling, a conv whose
    # output is also used elsewhere, and a normalization over another axis.
    assert _kinds(folded).count("ManualBatchNorm") == 4
    assert "FoldedBatchNorm" not in _kinds(folded)
    np.testing.assert_allclose(to_numpy(folded(x)), to_numpy(model(x)), rtol=1e-6, atol=1e-6)


def test_subclassed_and_unbuilt_models_are_refused():
    class Custom(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(2)

        def call(self, x):
            return self.dense(x)

    with pytest.raises(ValueError, match=r"Sequential or Functional.*Received: model of type Custom"):
        fold_batch_norm(Custom())
    with pytest.raises(ValueError, match=r"needs a built model"):
        fold_batch_norm(keras.Sequential([keras.layers.Dense(2)]))
