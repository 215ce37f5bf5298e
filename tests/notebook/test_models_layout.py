"""`deep_mnist_model(data_format=...)`: the same network, weights and numbers in either layout.

Runs on every backend (scripts/test.sh). The numerical comparison runs on PyTorch,
whose default is channels-first; the structure and weights are checked everywhere.
TensorFlow's CPU convolutions refuse channels-first on CPUs without AVX-512.

On JAX the same comparison was run by hand (2026-11-28): this test's batch sits on a
ReLU kink, one of bn18's outputs being 8.6e-7, so round-off decides whether its
gradient passes. XLA's jitted channels-first step lands on the other side: conv1's
gradient differs by 2.5% (0.104 of 4.19) from a float64 reference, while the eager
channels-first and both channels-last gradients agree with it to 2e-5. On another
batch the jitted layouts agree to 3e-5. JAX's default layout is channels-last.
"""

import keras
import numpy as np
import pytest

from keras_bn import ManualBatchNorm, deep_mnist_model

BACKEND = keras.backend.backend()


def test_default_layout_per_backend():
    expected = "channels_first" if BACKEND == "torch" else "channels_last"
    assert deep_mnist_model(bn="manual").get_layer("conv1").data_format == expected
    assert deep_mnist_model().get_layer("conv1").data_format == expected
    # A `bn` callable is called without an axis: it keeps channels-last.
    custom = deep_mnist_model(bn=keras.layers.LayerNormalization)
    assert custom.get_layer("conv1").data_format == "channels_last"


@pytest.mark.parametrize("bad", ["NCHW", "channels-first", 1])
def test_bad_data_format_raises(bad):
    with pytest.raises(ValueError, match=r"`data_format` must be .*Received: data_format="):
        deep_mnist_model(data_format=bad)


@pytest.mark.parametrize("bn", ["manual", "keras"])
def test_channels_first_structure_and_weights(bn):
    first = deep_mnist_model(bn=bn, data_format="channels_first", seed=5)
    last = deep_mnist_model(bn=bn, data_format="channels_last", seed=5)
    assert first.input_shape == last.input_shape == (None, 28, 28, 1)
    assert first.output_shape == (None, 10)
    assert first.layers[1].name == "to_channels_first"
    assert tuple(first.get_layer("conv19").output.shape) == (None, 76, 1, 1)
    for depth in range(1, 20):
        assert first.get_layer(f"conv{depth}").data_format == "channels_first"
        assert first.get_layer(f"bn{depth}").axis in (1, [1])
    assert first.get_layer("bn_dense").axis in (-1, [-1])
    assert [w.shape for w in first.weights] == [w.shape for w in last.weights]
    for a, b in zip(first.get_weights(), last.get_weights()):
        np.testing.assert_array_equal(a, b)


@pytest.mark.skipif(
    BACKEND != "torch",
    reason="channels-first is PyTorch's default layout. TensorFlow's CPU Conv2D refuses it; "
    "on JAX, XLA compiling two 19-layer models eagerly cost a minute of CI, and its "
    "channels-first step was checked once against float64 (see below)",
)
@pytest.mark.parametrize("bn", [None, "manual"])
def test_channels_first_computes_the_same_numbers(bn):
    rng = np.random.default_rng(0)
    x = rng.random((8, 28, 28, 1), dtype="float32")
    y = np.eye(10, dtype="float32")[rng.integers(0, 10, 8)]
    models = []
    for data_format in ("channels_first", "channels_last"):
        model = deep_mnist_model(bn=bn, data_format=data_format, seed=2)
        model.compile(optimizer=keras.optimizers.SGD(0.05), loss=keras.losses.BinaryCrossentropy(from_logits=True))
        models.append(model)
    first, last = models
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(first(x, training=True)),
        keras.ops.convert_to_numpy(last(x, training=True)),
        rtol=1e-4, atol=1e-5,
    )
    # One step: the same weights up to round-off. (Nineteen normalized layers on
    # batches of 8 amplify round-off from step to step, so later steps compare losses.)
    losses = [[float(m.train_on_batch(x, y))] for m in models]
    for a, b in zip(first.get_weights(), last.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    for model, history in zip(models, losses):
        history += [float(model.train_on_batch(x, y)) for _ in range(2)]
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-4)
    if bn == "manual":
        assert isinstance(first.get_layer("bn1"), ManualBatchNorm)
