"""ManualBatchNorm against Keras's BatchNormalization and an independent NumPy reference.

Runs on whichever backend KERAS_BACKEND selects; CI runs it once per backend.
"""

import inspect
import re

import numpy as np
import pytest

import keras
from helpers import check_layer_contract, input_and_weight_grads, kernel_at_any_size, numpy_batch_norm, to_numpy
from keras_bn import ManualBatchNorm

# Shapes and channel axes: first, middle and last axes, ranks 2 to 5.
CASES = [
    ((8, 5), 0),
    ((8, 5), -1),
    ((6, 4, 3), 0),
    ((6, 4, 3), 1),
    ((6, 4, 3), -1),
    ((4, 3, 5, 2), 0),
    ((4, 3, 5, 2), 1),
    ((4, 3, 5, 2), 2),
    ((4, 3, 5, 2), -1),
    ((3, 2, 4, 3, 2), 0),
    ((3, 2, 4, 3, 2), 2),
    ((3, 2, 4, 3, 2), -1),
]
# float32 round-off for values of order 10 after a few steps: a handful of ulps.
RTOL, ATOL = 1e-5, 1e-5


def _random_state(rng, channels):
    """Returns gamma, beta and moving statistics that are far from their initial values."""
    return {
        "gamma": rng.uniform(0.5, 2.0, channels).astype("float32"),
        "beta": rng.normal(0.0, 1.0, channels).astype("float32"),
        "moving_mean": rng.normal(0.0, 1.0, channels).astype("float32"),
        "moving_variance": rng.uniform(0.5, 2.0, channels).astype("float32"),
    }


def _set_state(layer, state):
    """Assigns the weights of a built layer by name."""
    by_name = {w.name: w for w in layer.weights}
    for name, value in state.items():
        by_name[name].assign(value)


def _batch(rng, shape):
    """Returns a float32 batch with a non-zero mean and scale per element."""
    return rng.normal(3.0, 4.0, size=shape).astype("float32")


@pytest.mark.parametrize("shape,axis", CASES)
def test_matches_keras_batch_normalization(shape, axis):
    rng = np.random.default_rng(abs(hash((shape, axis))) % 2**32)
    ours = ManualBatchNorm(axis=axis, momentum=0.9)
    ref = keras.layers.BatchNormalization(axis=axis, momentum=0.9)
    ours.build(shape)
    ref.build(shape)
    state = _random_state(rng, shape[axis])
    _set_state(ours, state)
    _set_state(ref, state)

    for _ in range(3):
        x = _batch(rng, shape)
        np.testing.assert_allclose(
            to_numpy(ours(x, training=True)), to_numpy(ref(x, training=True)), RTOL, ATOL
        )
        for name in ("moving_mean", "moving_variance"):
            np.testing.assert_allclose(
                to_numpy(getattr(ours, name)), to_numpy(getattr(ref, name)), RTOL, ATOL
            )

    x = _batch(rng, shape)
    upstream = rng.normal(size=shape).astype("float32")
    for g_ours, g_ref in zip(
        input_and_weight_grads(ours, x, upstream), input_and_weight_grads(ref, x, upstream)
    ):
        np.testing.assert_allclose(g_ours, g_ref, rtol=1e-4, atol=1e-4)

    x = _batch(rng, shape)
    np.testing.assert_allclose(
        to_numpy(ours(x, training=False)), to_numpy(ref(x, training=False)), RTOL, ATOL
    )
    np.testing.assert_allclose(to_numpy(ours(x)), to_numpy(ref(x)), RTOL, ATOL)


@pytest.mark.parametrize("shape,axis", CASES)
def test_matches_numpy_reference(shape, axis):
    rng = np.random.default_rng(7)
    state = _random_state(rng, shape[axis])
    layer = ManualBatchNorm(axis=axis, momentum=0.8, epsilon=1e-2)
    layer.build(shape)
    _set_state(layer, state)
    for training in (True, True, False, True, False):
        x = _batch(rng, shape)
        expected = numpy_batch_norm(
            x, (axis,), state, momentum=0.8, epsilon=1e-2, training=training
        )
        np.testing.assert_allclose(to_numpy(layer(x, training=training)), expected, RTOL, ATOL)
        for name in ("moving_mean", "moving_variance"):
            np.testing.assert_allclose(to_numpy(getattr(layer, name)), state[name], RTOL, ATOL)


def test_gradients_flow_through_batch_statistics():
    """The input gradient is the paper's, not the one of a fixed affine map."""
    rng = np.random.default_rng(3)
    shape = (16, 3)
    x = _batch(rng, shape)
    dy = rng.normal(size=shape).astype("float32")
    layer = ManualBatchNorm(epsilon=1e-3)
    layer.build(shape)
    gamma = rng.uniform(0.5, 2.0, 3).astype("float32")
    layer.gamma.assign(gamma)
    gx, ggamma, gbeta = input_and_weight_grads(layer, x, dy)

    # Ioffe & Szegedy, section 3: dL/dx for y = gamma * xhat + beta.
    x64, dy64 = x.astype("float64"), dy.astype("float64")
    mean, var = x64.mean(0), x64.var(0)
    inv = 1.0 / np.sqrt(var + 1e-3)
    xhat = (x64 - mean) * inv
    n = shape[0]
    expected_gx = gamma * inv / n * (n * dy64 - dy64.sum(0) - xhat * (dy64 * xhat).sum(0))
    np.testing.assert_allclose(gx, expected_gx, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ggamma, (dy64 * xhat).sum(0), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(gbeta, dy64.sum(0), rtol=1e-5, atol=1e-5)
    # Were the statistics constants, the gradient would be gamma * inv * dy.
    assert not np.allclose(gx, gamma * inv * dy64, atol=1e-3)


def test_constructor_matches_keras():
    """Every argument of Keras's layer exists here, in the same order, with the same default."""
    ours = inspect.signature(ManualBatchNorm.__init__).parameters
    theirs = inspect.signature(keras.layers.BatchNormalization.__init__).parameters
    keras_args = [name for name in theirs if name not in ("self", "kwargs")]
    for name in keras_args:
        assert name in ours, name
        assert ours[name].default == theirs[name].default, name
    # keras-bn's own options come after Keras's, so positional calls agree too.
    assert list(ours) == ["self", *keras_args, "virtual_batch_size", "unbiased_variance", "fused", "kwargs"]
    assert ours["virtual_batch_size"].default is None
    assert ours["unbiased_variance"].default is False
    assert ours["fused"].default is None  # tf.keras's argument and default


def test_weights_have_keras_names_and_shapes():
    ours = ManualBatchNorm(axis=1)
    ref = keras.layers.BatchNormalization(axis=1)
    ours.build((2, 5, 3))
    ref.build((2, 5, 3))
    assert [(w.name, tuple(w.shape), w.trainable) for w in ours.weights] == [
        (w.name, tuple(w.shape), w.trainable) for w in ref.weights
    ]
    assert [w.name for w in ours.weights] == ["gamma", "beta", "moving_mean", "moving_variance"]


def test_center_and_scale_off():
    layer = ManualBatchNorm(center=False, scale=False)
    x = _batch(np.random.default_rng(0), (10, 4))
    y = to_numpy(layer(x, training=True))
    assert [w.name for w in layer.weights] == ["moving_mean", "moving_variance"]
    np.testing.assert_allclose(y, (x - x.mean(0)) / np.sqrt(x.var(0) + 1e-3), RTOL, ATOL)


def test_layer_contract(tmp_path):
    check_layer_contract(ManualBatchNorm, {"axis": -1, "momentum": 0.9}, (4, 3, 5), tmp_path)


def test_config_round_trips_every_argument():
    layer = ManualBatchNorm(
        axis=1,
        momentum=0.5,
        epsilon=1e-5,
        center=False,
        scale=True,
        beta_initializer="ones",
        gamma_initializer=keras.initializers.Constant(2.0),
        moving_mean_initializer="glorot_uniform",
        moving_variance_initializer=keras.initializers.Constant(3.0),
        beta_regularizer="l2",
        gamma_regularizer=keras.regularizers.L1(0.01),
        beta_constraint="non_neg",
        gamma_constraint=keras.constraints.MaxNorm(2.0),
        name="bn_custom",
    )
    config = layer.get_config()
    clone = ManualBatchNorm.from_config(config)
    assert clone.get_config() == config
    assert (config["axis"], config["momentum"], config["epsilon"]) == (1, 0.5, 1e-5)
    assert (config["center"], config["scale"], config["name"]) == (False, True, "bn_custom")
    assert isinstance(clone.gamma_regularizer, keras.regularizers.L1)
    assert isinstance(clone.gamma_constraint, keras.constraints.MaxNorm)
    assert float(to_numpy(clone.gamma_initializer((1,)))[0]) == 2.0


def test_drop_in_from_keras_config():
    """A Keras BatchNormalization config builds an equivalent ManualBatchNorm."""
    ref = keras.layers.BatchNormalization(axis=2, momentum=0.7, epsilon=1e-4, center=False)
    ours = ManualBatchNorm.from_config(ref.get_config())
    assert (ours.axis, ours.momentum, ours.epsilon, ours.center) == (2, 0.7, 1e-4, False)


def test_save_and_load_keras_file(tmp_path):
    rng = np.random.default_rng(1)
    inputs = keras.Input((6, 6, 3))
    h = keras.layers.Conv2D(4, 3, use_bias=False)(inputs)
    h = ManualBatchNorm(momentum=0.5)(h)
    outputs = keras.layers.Dense(2)(keras.layers.Flatten()(h))
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="adam", loss="mse")
    x = rng.normal(size=(16, 6, 6, 3)).astype("float32")
    model.fit(x, rng.normal(size=(16, 2)).astype("float32"), epochs=2, batch_size=8, verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded.layers[2], ManualBatchNorm)
    np.testing.assert_array_equal(to_numpy(loaded.predict(x, verbose=0)), model.predict(x, verbose=0))
    np.testing.assert_array_equal(
        to_numpy(loaded.layers[2].moving_mean), to_numpy(model.layers[2].moving_mean)
    )


def test_trainable_false_means_inference_mode():
    rng = np.random.default_rng(2)
    layer = ManualBatchNorm()
    layer.build((8, 3))
    state = _random_state(rng, 3)
    _set_state(layer, state)
    layer.trainable = False
    x = _batch(rng, (8, 3))
    y_train = to_numpy(layer(x, training=True))
    np.testing.assert_array_equal(y_train, to_numpy(layer(x, training=False)))
    np.testing.assert_array_equal(to_numpy(layer.moving_mean), state["moving_mean"])
    expected = numpy_batch_norm(x, (-1,), dict(state), momentum=0.99, epsilon=1e-3, training=False)
    np.testing.assert_allclose(y_train, expected, RTOL, ATOL)


def test_frozen_layer_is_left_alone_by_fit():
    rng = np.random.default_rng(4)
    inputs = keras.Input((3,))
    bn = ManualBatchNorm()
    model = keras.Model(inputs, keras.layers.Dense(1)(bn(inputs)))
    bn.trainable = False
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    x = _batch(rng, (32, 3))
    model.fit(x, rng.normal(size=(32, 1)), epochs=1, batch_size=8, verbose=0)
    for w, initial in zip(bn.weights, (1.0, 0.0, 0.0, 1.0)):
        np.testing.assert_array_equal(to_numpy(w), np.full(3, initial, "float32"))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_low_precision_inputs_are_normalized_in_float32(dtype):
    rng = np.random.default_rng(5)
    # Values near 3000: their squares overflow float16 (max 65504).
    x = rng.normal(3000.0, 40.0, size=(64, 4)).astype("float32")
    layer = ManualBatchNorm(dtype=f"mixed_{dtype}", momentum=0.0)
    y = layer(keras.ops.cast(x, dtype), training=True)
    assert keras.backend.standardize_dtype(y.dtype) == dtype
    assert all(keras.backend.standardize_dtype(w.dtype) == "float32" for w in layer.weights)
    x_seen = to_numpy(keras.ops.cast(keras.ops.cast(x, dtype), "float32")).astype("float64")
    expected = (x_seen - x_seen.mean(0)) / np.sqrt(x_seen.var(0) + 1e-3)
    y = to_numpy(keras.ops.cast(y, "float32"))
    assert np.all(np.isfinite(y))
    tol = 1e-2 if dtype == "float16" else 5e-2  # the output's own rounding
    np.testing.assert_allclose(y, expected, rtol=tol, atol=tol)
    np.testing.assert_allclose(to_numpy(layer.moving_mean), x_seen.mean(0), rtol=1e-6)
    np.testing.assert_allclose(to_numpy(layer.moving_variance), x_seen.var(0), rtol=1e-4)


def test_mixed_precision_model_trains():
    inputs = keras.Input((5,))
    h = keras.layers.Dense(4, dtype="mixed_float16")(inputs)
    h = ManualBatchNorm(dtype="mixed_float16")(h)
    model = keras.Model(inputs, keras.layers.Dense(1, dtype="float32")(h))
    model.compile(optimizer="adam", loss="mse")
    rng = np.random.default_rng(6)
    history = model.fit(
        rng.normal(size=(32, 5)), rng.normal(size=(32, 1)), epochs=2, batch_size=8, verbose=0
    )
    assert all(np.isfinite(history.history["loss"]))
    bn = model.layers[2]
    assert bn.compute_dtype == "float16" and bn.variable_dtype == "float32"
    assert keras.backend.standardize_dtype(bn.moving_mean.dtype) == "float32"


def test_integer_input_is_normalized_as_float32():
    x = np.arange(12, dtype="int32").reshape(6, 2)
    y = ManualBatchNorm()(x, training=True)
    assert keras.backend.standardize_dtype(y.dtype) == "float32"
    xf = x.astype("float64")
    np.testing.assert_allclose(to_numpy(y), (xf - xf.mean(0)) / np.sqrt(xf.var(0) + 1e-3), 1e-5)


# -- masking ------------------------------------------------------------------------


def test_sequence_mask_matches_keras_for_last_axis():
    rng = np.random.default_rng(8)
    x = _batch(rng, (4, 7, 3))
    mask = rng.random((4, 7)) > 0.3
    ours, ref = ManualBatchNorm(momentum=0.5), keras.layers.BatchNormalization(momentum=0.5)
    y_ours = to_numpy(ours(x, training=True, mask=mask))
    y_ref = to_numpy(ref(x, training=True, mask=mask))
    np.testing.assert_allclose(y_ours, y_ref, 1e-5, 1e-5)
    np.testing.assert_allclose(to_numpy(ours.moving_variance), to_numpy(ref.moving_variance), 1e-5)


@pytest.mark.parametrize(
    "shape,axis,mask_shape",
    [
        ((4, 7, 3), -1, (4, 7)),
        ((4, 3, 7), 1, (4, 7)),
        ((3, 2, 5, 4), 1, (3, 5, 4)),
        ((3, 5, 4, 2), 2, (3, 5, 2)),
        ((3, 2, 5, 4), 1, (3, 1, 5, 4)),
    ],
)
def test_masked_positions_are_left_out_of_the_statistics(shape, axis, mask_shape):
    rng = np.random.default_rng(9)
    x = _batch(rng, shape)
    mask = rng.random(mask_shape) > 0.4
    full_mask = np.expand_dims(mask, axis % len(shape)) if len(mask_shape) < len(shape) else mask
    # Masked positions hold huge values: they must not move anything.
    x = np.where(full_mask, x, np.float32(1e6)).astype("float32")
    state = _random_state(rng, shape[axis])
    layer = ManualBatchNorm(axis=axis, momentum=0.5)
    layer.build(shape)
    _set_state(layer, state)
    expected = numpy_batch_norm(
        x, (axis,), state, momentum=0.5, epsilon=1e-3, training=True, mask=full_mask
    )
    y = to_numpy(layer(x, training=True, mask=mask))
    np.testing.assert_allclose(np.where(full_mask, y, 0), np.where(full_mask, expected, 0), 1e-5, 1e-5)
    for name in ("moving_mean", "moving_variance"):
        np.testing.assert_allclose(to_numpy(getattr(layer, name)), state[name], 1e-5, 1e-5)
        assert np.all(np.abs(state[name]) < 1e3)


def test_fully_masked_channel_keeps_its_moving_statistics():
    x = _batch(np.random.default_rng(10), (2, 3, 5))  # channels on axis 1
    mask = np.ones((2, 3, 5), bool)
    mask[:, 1, :] = False
    layer = ManualBatchNorm(axis=1, momentum=0.5)
    y = to_numpy(layer(x, training=True, mask=mask[:, :1, :].repeat(3, 1) & mask))
    np.testing.assert_allclose(to_numpy(layer.moving_mean)[1], 0.0)
    np.testing.assert_allclose(to_numpy(layer.moving_variance)[1], 1.0)
    np.testing.assert_allclose(y[:, 1, :], x[:, 1, :] / np.sqrt(1.0 + 1e-3), 1e-5)


def test_mask_propagates_through_a_model():
    inputs = keras.Input((None,), dtype="int32")
    h = keras.layers.Embedding(10, 4, mask_zero=True)(inputs)
    h = ManualBatchNorm()(h)
    outputs = keras.layers.GlobalAveragePooling1D()(h)
    model = keras.Model(inputs, outputs)
    tokens = np.array([[1, 2, 3, 0, 0], [4, 5, 0, 0, 0]])
    assert to_numpy(model(tokens, training=True)).shape == (2, 4)


# -- errors -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"momentum": 1.5}, ValueError, r"`momentum` must be in \[0, 1\].*momentum=1.5"),
        ({"momentum": -0.1}, ValueError, r"momentum=-0.1"),
        ({"momentum": float("nan")}, ValueError, r"momentum=nan"),
        ({"momentum": "fast"}, TypeError, r"`momentum` must be a real number.*'fast'"),
        ({"momentum": True}, TypeError, r"momentum=True"),
        ({"epsilon": 0.0}, ValueError, r"`epsilon` must be > 0.*epsilon=0.0"),
        ({"epsilon": -1e-3}, ValueError, r"epsilon=-0.001"),
        ({"epsilon": float("inf")}, ValueError, r"epsilon=inf"),
        ({"axis": 1.5}, TypeError, r"`axis` must be an int.*axis=1.5"),
        ({"axis": "channels"}, TypeError, r"axis='channels'"),
        ({"axis": []}, ValueError, r"at least one axis.*axis=\[\]"),
        ({"center": "yes"}, TypeError, r"`center` must be a bool.*center='yes'"),
        ({"scale": 1}, TypeError, r"scale=1"),
        ({"beta_initializer": "no_such_init"}, ValueError, r"no_such_init"),
    ],
)
def test_bad_configuration_is_refused_at_construction(kwargs, error, match):
    with pytest.raises(error, match=match):
        ManualBatchNorm(**kwargs)


@pytest.mark.parametrize(
    "axis,shape,match",
    [
        (3, (2, 3, 4), r"`axis` must be in \[-3, 3\) for an input of rank 3. Received: axis=3"),
        (-4, (2, 3, 4), r"Received: axis=-4"),
        ((1, -2), (2, 3, 4), r"names the same axis twice.*axis=\(1, -2\)"),
        (1, (2, None, 4), r"axis 1 of the input is `None`"),
    ],
)
def test_bad_axis_for_the_input_is_refused_at_build(axis, shape, match):
    with pytest.raises(ValueError, match=match):
        ManualBatchNorm(axis=axis)(keras.Input(batch_shape=shape))


def test_rank_zero_input_is_refused():
    with pytest.raises(ValueError, match=r"rank at least 1"):
        ManualBatchNorm().build(())


@pytest.mark.parametrize("training", [True, False])
def test_wrong_mask_shape_is_refused(training):
    # In inference too, as Keras's layer refuses a mask of the wrong rank there.
    layer = ManualBatchNorm(axis=1)
    x = np.zeros((2, 3, 4), "float32")
    with pytest.raises(ValueError, match=r"one dimension less.*mask.shape=\(2,\) for inputs.shape=\(2, 3, 4\)"):
        layer(x, training=training, mask=np.ones((2,), bool))
    with pytest.raises(ValueError, match=r"does not broadcast.*added last.*nor at `axis` \(1\).*mask.shape=\(2, 5\)"):
        layer(x, training=training, mask=np.ones((2, 5), bool))
    with pytest.raises(ValueError, match=r"does not broadcast against the input as it is.*mask.shape=\(2, 3, 5\)"):
        layer(x, training=training, mask=np.ones((2, 3, 5), bool))


# Where Keras's layer raises for an argument, our message contains its words (users'
# code and tests match on them) and then ours, which name the argument and the value.
# Each case runs on Keras's layer too: the test fails if Keras changes its words.
KERAS_WORDS = [
    pytest.param({"renorm": True, "renorm_clipping": {"random_key": 1.0}},
                 "Received invalid keys for `renorm_clipping` argument", id="clipping-keys"),
    pytest.param({"renorm": True, "renorm_clipping": {"rmax": 0.0, "rmin": 1.0}},
                 "rmax should be greater than rmin in the `renorm_clipping` argument", id="rmax"),
    pytest.param({"renorm": True, "renorm_clipping": {"rmax": 1.0, "dmax": -1.0}},
                 "dmax should be non-negative in the `renorm_clipping` argument", id="dmax"),
]


@pytest.mark.parametrize("kwargs,words", KERAS_WORDS)
def test_configuration_errors_carry_keras_words(kwargs, words):
    with pytest.raises(ValueError, match=re.escape(words)):
        keras.layers.BatchNormalization(**kwargs)
    with pytest.raises(ValueError, match=re.escape(words) + r".*Received: renorm_clipping=\{"):
        ManualBatchNorm(**kwargs)


def test_axis_out_of_bounds_carries_keras_words():
    words = re.escape("Axis 5 is out of bounds for input shape (2, 3)")
    with pytest.raises(ValueError, match=words):
        keras.layers.BatchNormalization(axis=5).compute_output_shape((2, 3))
    ours = words + r".*must be in \[-2, 2\).*Received: axis=5"
    with pytest.raises(ValueError, match=ours):
        ManualBatchNorm(axis=5).compute_output_shape((2, 3))
    with pytest.raises(ValueError, match=ours):
        ManualBatchNorm(axis=5)(np.zeros((2, 3), "float32"))


@pytest.mark.parametrize("training", [True, False])
def test_mask_of_the_wrong_rank_carries_keras_words(training):
    words = "The mask provided should be one dimension less than the inputs"
    x, mask = np.zeros((5, 2, 3), "float32"), np.ones((5,), bool)
    for layer in (keras.layers.BatchNormalization(), ManualBatchNorm()):
        with pytest.raises(ValueError, match=re.escape(words)):
            layer(x, training=training, mask=mask)


def test_input_with_other_channel_count_is_refused():
    layer = ManualBatchNorm()
    layer(np.zeros((2, 3), "float32"))
    with pytest.raises(ValueError, match=r"expected axis 1 of input shape to have value 3.*received input with shape \(2, 4\)"):
        layer(np.zeros((2, 4), "float32"))


def test_statistics_keep_their_digits_when_the_mean_dwarfs_the_spread():
    """A channel at 1e4 +- 1: one-pass E[x^2] - E[x]^2 would lose every digit of the variance."""
    rng = np.random.default_rng(11)
    x = rng.normal(1e4, 1.0, size=(256, 2)).astype("float32")
    layer = ManualBatchNorm(momentum=0.0)
    y = to_numpy(layer(x, training=True))
    x64 = x.astype("float64")
    np.testing.assert_allclose(to_numpy(layer.moving_variance), x64.var(0), rtol=1e-3)
    np.testing.assert_allclose(y, (x64 - x64.mean(0)) / np.sqrt(x64.var(0) + 1e-3), atol=2e-3)


@pytest.mark.parametrize("path", ["fused=None", "kernel", "closed form", "autodiff"])
@pytest.mark.parametrize("shape, axis", [((256, 2), -1), ((16, 5, 5, 3), -1), ((16, 3, 5, 5), 1)])
def test_the_variance_keeps_four_digits_at_a_large_offset_on_every_path(path, shape, axis):
    """Inputs at 1e4 with unit spread: every path's batch and moving variance within 1e-4 of NumPy's.

    Keras's own layer on PyTorch computes `E[x^2] - E[x]^2` there and is off by far
    more (docs/benchmarks.md); every path of ManualBatchNorm is two-pass.
    """
    from keras_bn._layer import paths

    if path == "kernel" and keras.backend.backend() == "jax":
        pytest.skip("JAX has no batch-norm kernel (fused=True is refused there)")
    rng = np.random.default_rng(12)
    x = rng.normal(1e4, 1.0, size=shape).astype("float32")
    fused = {"fused=None": None, "kernel": True}.get(path, False)
    layer = ManualBatchNorm(axis=axis, momentum=0.0, fused=fused)
    with kernel_at_any_size(), paths.use_hand_written(path == "closed form"):
        y = to_numpy(layer(x, training=True))
    reduced = tuple(a for a in range(len(shape)) if a != axis % len(shape))
    x64 = x.astype("float64")
    variance = x64.var(reduced)
    np.testing.assert_allclose(to_numpy(layer.moving_variance), variance, rtol=1e-4)
    broadcast = [1] * len(shape)
    broadcast[axis] = shape[axis]
    expected = (x64 - x64.mean(reduced).reshape(broadcast)) / np.sqrt(variance + 1e-3).reshape(broadcast)
    # The float32 mean of values at 1e4 is off by a few thousandths (sums near 1e6
    # round to 0.1 or so), and every output with it: a spread-sized error it is not.
    np.testing.assert_allclose(y, expected, atol=1e-2)


@pytest.mark.skipif(
    keras.backend.backend() == "jax",
    reason="JAX computes in float64 only with jax_enable_x64, which the suite leaves off",
)
def test_float64_inputs_are_normalized_in_float64():
    # keras.backend.result_type and Keras's ops.mean demote float64 to float32
    # on PyTorch; the layer must not.
    x = np.random.default_rng(11).normal(3.0, 2.0, size=(4, 5, 5, 8))
    layer = ManualBatchNorm(dtype="float64", momentum=0.5)
    y = to_numpy(layer(x, training=True))
    mean, var = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))
    assert y.dtype == np.float64
    np.testing.assert_allclose(y, (x - mean) / np.sqrt(var + 1e-3), rtol=0, atol=1e-12)
    np.testing.assert_allclose(to_numpy(layer.moving_variance), 0.5 + 0.5 * var, rtol=1e-13)
