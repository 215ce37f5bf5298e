"""Tests for keras_bn.notebook.model: the notebook's deep MNIST network and its training setup."""

import functools

import numpy as np
import pytest

import keras
from keras_bn.batch_norm import ManualBatchNorm
from keras_bn.notebook.model import NUM_CONV_LAYERS, compile_like_notebook, deep_mnist_model

# (bn argument, expected normalization class or None)
BN_CASES = [
    pytest.param(None, None, id="None"),
    pytest.param(False, None, id="False"),
    pytest.param("keras", keras.layers.BatchNormalization, id="keras"),
    pytest.param("manual", ManualBatchNorm, id="manual"),
    pytest.param(True, ManualBatchNorm, id="True"),
    pytest.param(keras.layers.LayerNormalization, keras.layers.LayerNormalization, id="callable"),
    pytest.param(
        functools.partial(keras.layers.BatchNormalization, momentum=0.9),
        keras.layers.BatchNormalization,
        id="partial",
    ),
]


def _layers_of(model, cls):
    """Returns the model's layers that are instances of `cls`, in order."""
    return [layer for layer in model.layers if isinstance(layer, cls)]


@pytest.mark.parametrize("bn, norm_cls", BN_CASES)
def test_architecture_matches_notebook(bn, norm_cls):
    model = deep_mnist_model(bn=bn, seed=0)
    convs = _layers_of(model, keras.layers.Conv2D)
    assert [c.name for c in convs] == [f"conv{d}" for d in range(1, 20)]
    assert len(convs) == NUM_CONV_LAYERS == 19
    for depth, conv in enumerate(convs, start=1):
        assert conv.filters == 4 * depth
        assert conv.kernel_size == (3, 3)
        assert conv.padding == "same"
        assert conv.strides == ((2, 2) if depth % 3 == 0 else (1, 1))
    # 28 -> 14 -> 7 -> 4 -> 2 -> 1 -> 1, 76 channels.
    assert tuple(model.get_layer("conv19").output.shape) == (None, 1, 1, 76)
    assert tuple(model.get_layer("flatten").output.shape) == (None, 76)
    dense, logits = _layers_of(model, keras.layers.Dense)
    assert (dense.name, dense.units, logits.name, logits.units) == ("dense", 100, "logits", 10)
    assert logits.activation is keras.activations.linear and logits.use_bias
    assert model.input_shape == (None, 28, 28, 1)
    assert model.output_shape == (None, 10)
    out = model(np.zeros((2, 28, 28, 1), "float32"), training=False)
    assert tuple(out.shape) == (2, 10)


@pytest.mark.parametrize("bn, norm_cls", BN_CASES)
def test_normalization_bias_and_relu_placement(bn, norm_cls):
    model = deep_mnist_model(bn=bn)
    hidden = _layers_of(model, keras.layers.Conv2D) + [model.get_layer("dense")]
    if norm_cls is None:
        assert all(layer.use_bias for layer in hidden)
        assert all(layer.activation is keras.activations.relu for layer in hidden)
        assert not any(layer.name.startswith("bn") for layer in model.layers)
        assert len(model.layers) == 1 + 19 + 1 + 2  # input, convs, flatten, dense, logits
        return
    norms = [layer for layer in model.layers if layer.name.startswith("bn")]
    assert [n.name for n in norms] == [f"bn{d}" for d in range(1, 20)] + ["bn_dense"]
    assert all(type(n) is norm_cls for n in norms)
    assert not any(layer.use_bias for layer in hidden)
    assert all(layer.activation is keras.activations.linear for layer in hidden)
    # Each hidden layer is followed by its norm, then a ReLU: conv -> bn -> relu.
    names = [layer.name for layer in model.layers]
    pairs = [(str(d), f"conv{d}") for d in range(1, 20)] + [("_dense", "dense")]
    for suffix, hidden_name in pairs:
        k = names.index(hidden_name)
        assert names[k + 1 : k + 3] == [f"bn{suffix}", f"relu{suffix}"]
        assert model.get_layer(f"relu{suffix}").activation is keras.activations.relu
    assert len(model.layers) == 1 + 3 * 20 + 1 + 1


def test_callable_is_called_with_the_layer_name():
    names = []

    def factory(**kwargs):
        names.append(kwargs)
        return keras.layers.BatchNormalization(**kwargs)

    deep_mnist_model(bn=factory)
    assert names == [{"name": f"bn{d}"} for d in range(1, 20)] + [{"name": "bn_dense"}]


@pytest.mark.parametrize("bad", ["batch", "", "KERAS_BN", 1, 0, 0.5, ["keras"]])
def test_unknown_bn_raises(bad):
    with pytest.raises(ValueError, match=r"`bn` must be one of None/False, \"keras\", "
                       r"\"manual\"/True, or a callable.*Received: bn="):
        deep_mnist_model(bn=bad)


def test_callable_returning_non_layer_raises():
    with pytest.raises(TypeError, match="must return a `keras.layers.Layer`"):
        deep_mnist_model(bn=lambda name: "not a layer")


def test_bad_kernel_initializer_and_seed_raise():
    with pytest.raises(ValueError, match="kernel_initializer"):
        deep_mnist_model(kernel_initializer="no_such_initializer")
    with pytest.raises(ValueError, match=r"`seed` must be an int or None. Received: seed=1.5"):
        deep_mnist_model(seed=1.5)


def test_notebook_initializer_is_truncated_normal_on_convs_only():
    model = deep_mnist_model(bn="manual", kernel_initializer="notebook", seed=7)
    for conv in _layers_of(model, keras.layers.Conv2D):
        init = conv.kernel_initializer
        assert isinstance(init, keras.initializers.TruncatedNormal)
        assert init.stddev == 0.05 and init.mean == 0.0
        kernel = keras.ops.convert_to_numpy(conv.kernel)
        # Truncated at two stddevs. (Keras's PyTorch sampler keeps the first of 4 draws when
        # all 4 fall outside, about 4 weights in a million, hence not `all`.)
        assert np.mean(np.abs(kernel) <= 2 * 0.05 + 1e-7) > 0.999
    big = keras.ops.convert_to_numpy(model.get_layer("conv19").kernel)
    # The std of N(0, s) truncated to [-2s, 2s] is 0.8796 s.
    assert abs(big.std() - 0.8796 * 0.05) < 0.002
    for name in ("dense", "logits"):
        init = model.get_layer(name).kernel_initializer
        assert isinstance(init, keras.initializers.GlorotUniform)


def test_seed_makes_weights_reproducible_and_layers_distinct():
    a = deep_mnist_model(bn="keras", kernel_initializer="notebook", seed=3)
    b = deep_mnist_model(bn="keras", kernel_initializer="notebook", seed=3)
    c = deep_mnist_model(bn="keras", kernel_initializer="notebook", seed=4)
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(wa, wb)
    wa, wc = a.get_layer("conv5").get_weights()[0], c.get_layer("conv5").get_weights()[0]
    assert not np.array_equal(wa, wc)
    inits = [conv.kernel_initializer for conv in _layers_of(a, keras.layers.Conv2D)]
    assert len({id(init) for init in inits}) == len(inits)
    assert len({init.seed for init in inits}) == len(inits)


def test_initializer_instance_is_cloned_per_layer():
    shared = keras.initializers.HeNormal()
    model = deep_mnist_model(kernel_initializer=shared, seed=1)
    inits = [layer.kernel_initializer for layer in _layers_of(model, keras.layers.Conv2D)]
    assert all(isinstance(init, keras.initializers.HeNormal) for init in inits)
    assert all(init is not shared for init in inits)


def _sigmoid_ce(logits, labels):
    """The notebook's loss written out naively in float64 (fine for moderate logits)."""
    z = np.asarray(logits, np.float64)
    p = 1.0 / (1.0 + np.exp(-z))
    return float(np.mean(-(labels * np.log(p) + (1 - labels) * np.log(1 - p))))


def test_compile_like_notebook():
    model = compile_like_notebook(deep_mnist_model(bn="keras", seed=0), learning_rate=0.01)
    opt = model.optimizer
    assert isinstance(opt, keras.optimizers.Adam)
    assert np.isclose(float(opt.learning_rate), 0.01)
    assert (opt.beta_1, opt.beta_2, opt.epsilon) == (0.9, 0.999, 1e-8)
    rng = np.random.default_rng(0)
    x = rng.random((16, 28, 28, 1), dtype="float32")
    y = np.eye(10, dtype="float32")[rng.integers(0, 10, 16)]
    result = model.evaluate(x, y, batch_size=16, verbose=0, return_dict=True)
    logits = keras.ops.convert_to_numpy(model(x, training=False))
    assert np.isclose(result["loss"], _sigmoid_ce(logits, y), rtol=1e-5)
    expected_acc = np.mean(np.argmax(logits, 1) == np.argmax(y, 1))
    assert np.isclose(result["accuracy"], expected_acc)
    assert np.isfinite(model.train_on_batch(x, y, return_dict=True)["loss"])


@pytest.mark.parametrize("bad", [0, -0.1, "fast", float("nan"), float("inf"), True])
def test_compile_bad_learning_rate_raises(bad):
    with pytest.raises(ValueError, match="`learning_rate` must be a positive finite number"):
        compile_like_notebook(deep_mnist_model(), learning_rate=bad)
