"""Property-based tests of ManualBatchNorm against the NumPy reference, and its edge cases.

Hypothesis draws shapes, axes, momenta, epsilons and dtypes; every draw must agree
with `numpy_batch_norm` (written from the paper, in float64) for a training step
followed by an inference step.
"""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import keras
from helpers import numpy_batch_norm, to_numpy
from keras_bn import ManualBatchNorm

# Output tolerance per input dtype: float32 round-off, or the rounding of the
# low-precision output itself (statistics are computed in float32 either way).
TOLERANCE = {"float32": 2e-5, "float16": 4e-3, "bfloat16": 3e-2}


@st.composite
def cases(draw):
    """Draws an input shape, a channel axis, layer arguments and a dtype."""
    rank = draw(st.integers(2, 4))
    shape = tuple(draw(st.lists(st.integers(1, 5), min_size=rank, max_size=rank)))
    shape = (draw(st.integers(2, 6)),) + shape[1:]  # at least 2 samples to train on
    axis = draw(st.integers(-rank, rank - 1))
    momentum = draw(st.floats(0.0, 0.999))
    epsilon = draw(st.floats(1e-5, 1.0))
    dtype = draw(st.sampled_from(sorted(TOLERANCE)))
    seed = draw(st.integers(0, 2**16))
    return shape, axis, momentum, epsilon, dtype, seed


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_agrees_with_numpy_for_any_shape_axis_momentum_epsilon_and_dtype(case):
    shape, axis, momentum, epsilon, dtype, seed = case
    rng = np.random.default_rng(seed)
    x = rng.normal(rng.uniform(-3, 3), rng.uniform(0.5, 3), size=shape).astype("float32")
    x_in = keras.ops.cast(x, dtype)
    x_seen = to_numpy(keras.ops.cast(x_in, "float32"))  # what the layer really got
    layer = ManualBatchNorm(axis=axis, momentum=momentum, epsilon=epsilon, dtype=f"mixed_{dtype}" if dtype != "float32" else None)
    layer.build(shape)
    channels = shape[axis]
    state = {
        "gamma": rng.uniform(0.5, 2, channels).astype("float32"),
        "beta": rng.normal(size=channels).astype("float32"),
        "moving_mean": rng.normal(size=channels).astype("float32"),
        "moving_variance": rng.uniform(0.5, 2, channels).astype("float32"),
    }
    for name, value in state.items():
        getattr(layer, name).assign(value)
    tol = TOLERANCE[dtype]

    for training in (True, False):
        expected = numpy_batch_norm(
            x_seen, (axis,), state, momentum=momentum, epsilon=epsilon, training=training
        )
        y = layer(x_in, training=training)
        assert keras.backend.standardize_dtype(y.dtype) == dtype
        y = to_numpy(keras.ops.cast(y, "float32"))
        # Relative to the output's scale: a channel with variance ~0 maps its
        # values to beta +- gamma * noise / sqrt(epsilon).
        np.testing.assert_allclose(y, expected, rtol=tol, atol=tol * (1 + np.abs(expected).max()))
        for name in ("moving_mean", "moving_variance"):
            np.testing.assert_allclose(to_numpy(getattr(layer, name)), state[name], rtol=2e-5, atol=2e-5)


def test_batch_of_one_normalizes_to_beta():
    """One sample in training: variance 0, so every output is beta (as in Keras and the paper)."""
    layer = ManualBatchNorm(momentum=0.5)
    layer.build((1, 3))
    layer.beta.assign(np.array([1.0, 2.0, 3.0], "float32"))
    y = to_numpy(layer(np.array([[5.0, -7.0, 9.0]], "float32"), training=True))
    np.testing.assert_allclose(y, [[1.0, 2.0, 3.0]])
    np.testing.assert_allclose(to_numpy(layer.moving_mean), [2.5, -3.5, 4.5])
    np.testing.assert_allclose(to_numpy(layer.moving_variance), [0.5, 0.5, 0.5])


def test_empty_batch_leaves_the_moving_statistics_alone():
    layer = ManualBatchNorm(momentum=0.5)
    layer.build((None, 3))
    y = to_numpy(layer(np.zeros((0, 3), "float32"), training=True))
    assert y.shape == (0, 3)
    np.testing.assert_array_equal(to_numpy(layer.moving_mean), np.zeros(3))
    np.testing.assert_array_equal(to_numpy(layer.moving_variance), np.ones(3))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_inputs_never_reach_the_moving_statistics(bad):
    layer = ManualBatchNorm(momentum=0.5)
    x = np.ones((4, 2), "float32")
    x[1, 0] = bad
    layer(x, training=True)
    assert np.all(np.isfinite(to_numpy(layer.moving_mean)))
    assert np.all(np.isfinite(to_numpy(layer.moving_variance)))
    np.testing.assert_array_equal(to_numpy(layer.moving_mean)[0], 0.0)  # unchanged
    np.testing.assert_allclose(to_numpy(layer.moving_mean)[1], 0.5)  # updated
