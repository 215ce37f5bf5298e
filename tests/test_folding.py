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


@pytest.mark.skipif(
    keras.backend.backend() == "tensorflow",
    reason="TensorFlow's CPU Conv2D implements channels_first only on some CPUs (with "
    "AVX-512); the same case runs on the JAX and PyTorch backends",
)
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


def test_channels_first_axis_check_without_running_a_conv():
    # The same rule on every backend, with no channels_first convolution to run:
    # a BN over axis 1 after a channels_last conv is kept, with the reason.
    model = keras.Sequential(
        [keras.Input((6, 6, 6)), keras.layers.Conv2D(6, 1, name="conv"), ManualBatchNorm(axis=1, name="bn")]
    )
    _, report = fold_batch_norm(model, return_report=True)
    assert report.folded == {}
    assert "axis 1 is not the channel axis (3) of 'conv'" in report.kept["bn"]


@pytest.mark.parametrize("merge", ["add", "concatenate", "multiply"])
def test_a_linear_output_with_another_consumer_is_not_folded(merge):
    # Dense -> BN, and the Dense output also feeds a multi-input layer: folding
    # would change what that layer sees, so the BN must stay.
    rng = np.random.default_rng(6)
    inputs = keras.Input((4,))
    dense = keras.layers.Dense(4, name="dense")(inputs)
    bn = ManualBatchNorm(name="bn")(dense)
    merged = {
        "add": keras.layers.Add(name="merge"),
        "concatenate": keras.layers.Concatenate(name="merge"),
        "multiply": keras.layers.Multiply(name="merge"),
    }[merge]([bn, dense])
    model = keras.Model(inputs, merged)
    x = rng.normal(2.0, 3.0, size=(16, 4)).astype("float32")
    _warm_up(model, x)
    _randomize_affine(model, rng)
    folded, report = fold_batch_norm(model, return_report=True)
    assert report.folded == {}
    assert report.kept["bn"] == "the output of 'dense' also goes to 'merge', which folding would change"
    np.testing.assert_allclose(to_numpy(folded(x)), to_numpy(model(x)), rtol=1e-6, atol=1e-6)


def test_a_linear_output_returned_by_the_model_is_not_folded():
    inputs = keras.Input((4,))
    dense = keras.layers.Dense(4, name="dense")(inputs)
    model = keras.Model(inputs, [ManualBatchNorm(name="bn")(dense), dense])
    _, report = fold_batch_norm(model, return_report=True)
    assert report.folded == {}
    assert report.kept["bn"] == (
        "the output of 'dense' also goes to the model's outputs, which folding would change"
    )


@pytest.mark.parametrize(
    "make",
    [
        lambda: keras.layers.DepthwiseConv2D(3, depth_multiplier=2, padding="same", name="linear"),
        lambda: keras.layers.DepthwiseConv1D(3, depth_multiplier=3, name="linear"),
        lambda: keras.layers.SeparableConv2D(5, 3, depth_multiplier=2, name="linear"),
        lambda: keras.layers.SeparableConv1D(5, 3, use_bias=False, name="linear"),
        lambda: keras.layers.Conv3D(4, 2, name="linear"),
        lambda: keras.layers.Conv2D(6, 3, groups=3, use_bias=False, name="linear"),
    ],
    ids=["depthwise2d", "depthwise1d", "separable2d", "separable1d", "conv3d", "grouped"],
)
@pytest.mark.parametrize("bn_cls", [ManualBatchNorm, keras.layers.BatchNormalization])
def test_every_foldable_layer_type(make, bn_cls):
    rng = np.random.default_rng(7)
    linear = make()
    rank = {"1D": 3, "2D": 4, "3D": 5}[next(k for k in ("1D", "2D", "3D") if k in type(linear).__name__)]
    shape = (6, 6, 6, 3)[: rank - 2] + (3,)
    model = keras.Sequential([keras.Input(shape), linear, bn_cls(name="bn")])
    x = rng.normal(1.0, 2.0, size=(8,) + shape).astype("float32")
    _warm_up(model, x)
    _randomize_affine(model, rng)
    folded, report = fold_batch_norm(model, return_report=True)
    assert report.folded == {"bn": "linear"}, report.kept
    expected = to_numpy(model(x, training=False))
    np.testing.assert_allclose(to_numpy(folded(x, training=False)), expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


def test_nested_models_are_folded_inside():
    rng = np.random.default_rng(8)
    block = keras.Sequential(
        [keras.Input((6, 6, 3)), keras.layers.Conv2D(4, 3, name="conv"), ManualBatchNorm(name="bn"), keras.layers.ReLU()],
        name="block",
    )
    inputs = keras.Input((6, 6, 3))
    h = block(inputs)
    h = keras.layers.GlobalAveragePooling2D()(h)
    h = keras.layers.Dense(3, name="head")(h)
    outputs = keras.layers.BatchNormalization(name="head_bn")(h)
    model = keras.Model(inputs, outputs)
    x = rng.normal(size=(8, 6, 6, 3)).astype("float32")
    _warm_up(model, x)
    _randomize_affine(block, rng)
    _randomize_affine(model, rng)
    folded, report = fold_batch_norm(model, return_report=True)
    assert report.folded == {"block/bn": "block/conv", "head_bn": "head"}
    assert _kinds(folded.get_layer("block")) == ["Conv2D", "FoldedBatchNorm", "ReLU"]
    np.testing.assert_allclose(to_numpy(folded(x)), to_numpy(model(x)), rtol=1e-5, atol=1e-5)


def test_report_explains_what_was_kept(capsys):
    inputs = keras.Input((4,))
    h = keras.layers.Dense(4, activation="relu", name="relu_dense")(inputs)
    h = ManualBatchNorm(name="after_relu")(h)
    h = keras.layers.Dense(4, name="plain")(h)
    h = ManualBatchNorm(name="folds")(h)
    h = ManualBatchNorm(name="after_bn")(h)
    bn_train = ManualBatchNorm(name="always_training")
    h = bn_train(keras.layers.Dense(4, name="d2")(h), training=True)
    model = keras.Model(inputs, h)
    folded, report = fold_batch_norm(model, verbose=True, return_report=True)
    assert report.folded == {"folds": "plain"}
    assert "activation 'relu'" in report.kept["after_relu"]
    assert report.kept["after_bn"] == "its input comes from 'folds' (ManualBatchNorm), which cannot absorb it"
    assert "training=True" in report.kept["always_training"]
    printed = capsys.readouterr().out
    # Each reason reads as a sentence: no doubled quotes, the paths quoted once.
    assert printed.splitlines()[:3] == [
        "Folded 1 batch norm(s), kept 3.",
        "  folded folds into plain",
        "  kept after_relu: 'relu_dense' applies the activation 'relu' before it",
    ]
    assert "''" not in printed


def test_mixed_precision_model_keeps_its_dtypes():
    rng = np.random.default_rng(9)
    model = keras.Sequential(
        [
            keras.Input((5,)),
            keras.layers.Dense(4, dtype="mixed_float16", name="dense"),
            ManualBatchNorm(dtype="mixed_float16", name="bn"),
        ]
    )
    x = rng.normal(size=(8, 5)).astype("float32")
    _warm_up(model, x)
    folded = fold_batch_norm(model)
    y = folded(x)
    assert keras.backend.standardize_dtype(y.dtype) == "float16"
    np.testing.assert_allclose(to_numpy(y).astype("float32"), to_numpy(model(x)).astype("float32"), rtol=2e-2, atol=2e-2)


def test_folded_model_saves_and_loads(tmp_path):
    rng = np.random.default_rng(10)
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(4), ManualBatchNorm()])
    x = rng.normal(size=(8, 5)).astype("float32")
    _warm_up(model, x)
    folded = fold_batch_norm(model)
    folded.save(tmp_path / "folded.keras")
    loaded = keras.saving.load_model(tmp_path / "folded.keras")
    np.testing.assert_array_equal(to_numpy(loaded(x)), to_numpy(folded(x)))


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


def test_a_subclassed_model_is_copied_with_every_batch_norm_kept():
    @keras.saving.register_keras_serializable(package="test_folding")
    class Custom(keras.Model):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.dense = keras.layers.Dense(3, name="dense")
            self.bn = keras.layers.BatchNormalization(name="bn")

        def call(self, x, training=None):
            return self.bn(self.dense(x), training=training)

    model = Custom(name="custom")
    x = np.random.default_rng(0).normal(size=(8, 4)).astype("float32")
    model(x, training=True)
    folded, report = fold_batch_norm(model, return_report=True)
    assert report.folded == {}
    assert report.kept == {"bn": "it is inside the subclassed model 'custom', whose call() keras-bn cannot see"}
    assert folded is not model
    np.testing.assert_allclose(to_numpy(folded(x)), to_numpy(model(x)), rtol=1e-6, atol=1e-6)


def test_a_subclassed_model_without_config_is_refused_by_name():
    class NoConfig(keras.Model):
        def __init__(self, units):
            super().__init__(name="no_config")
            self.dense = keras.layers.Dense(units)

        def call(self, x):
            return self.dense(x)

    model = NoConfig(2)
    model(np.zeros((1, 3), "float32"))
    with pytest.raises(ValueError, match=r"cannot copy model 'no_config'.*subclassed NoConfig.*Functional API"):
        fold_batch_norm(model)


def test_unbuilt_models_and_non_models_are_refused():
    with pytest.raises(TypeError, match=r"needs a keras.Model.*Received: model of type Dense"):
        fold_batch_norm(keras.layers.Dense(2))
    with pytest.raises(ValueError, match=r"needs a built model"):
        fold_batch_norm(keras.Sequential([keras.layers.Dense(2)]))
