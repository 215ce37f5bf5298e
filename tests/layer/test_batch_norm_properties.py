"""Property-based tests of ManualBatchNorm against the NumPy reference, and its edge cases.

Hypothesis draws shapes, axes, momenta, epsilons, dtypes and the path (`fused=None`,
the framework's kernel where it applies, or `False`); every draw must agree
with `numpy_batch_norm` (written from the paper, in float64) for a training step
followed by an inference step.
"""

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import keras
from helpers import kernel_at_any_size, numpy_batch_norm, to_numpy
from keras_bn import ManualBatchNorm


@pytest.fixture(autouse=True, scope="module")
def _kernel_at_any_size():
    """`fused=None` takes TensorFlow's kernel on these small inputs too (`helpers.kernel_at_any_size`)."""
    with kernel_at_any_size():
        yield


# Examples per property. JAX compiles every op again for each new shape, which
# made these five properties about a quarter of its CI time: it draws half as many.
EXAMPLES = 30 if keras.backend.backend() == "jax" else 60

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
    # The framework's kernel where it applies (None), or the hand-written path.
    fused = draw(st.sampled_from([None, False]))
    return shape, axis, momentum, epsilon, dtype, seed, fused


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_agrees_with_numpy_for_any_shape_axis_momentum_epsilon_and_dtype(case):
    shape, axis, momentum, epsilon, dtype, seed, fused = case
    rng = np.random.default_rng(seed)
    x = rng.normal(rng.uniform(-3, 3), rng.uniform(0.5, 3), size=shape).astype("float32")
    x_in = keras.ops.cast(x, dtype)
    x_seen = to_numpy(keras.ops.cast(x_in, "float32"))  # what the layer really got
    layer = ManualBatchNorm(
        axis=axis, momentum=momentum, epsilon=epsilon, fused=fused,
        dtype=f"mixed_{dtype}" if dtype != "float32" else None,
    )
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
            stored = to_numpy(getattr(layer, name))
            np.testing.assert_allclose(stored, state[name], rtol=2e-5, atol=2e-5)
            # The inference step is checked on the statistics as stored: their float32
            # rounding alone, divided by sqrt(variance + epsilon) of a channel whose
            # batch variance was ~0, can exceed the output tolerance.
            state[name] = stored


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


def test_a_variance_that_overflows_leaves_its_channel_alone():
    # Channel 0's mean is a finite 0, but its squares overflow float32: the
    # variance is Inf, so neither of its moving statistics may move.
    layer = ManualBatchNorm(momentum=0.5)
    x = np.ones((4, 2), "float32")
    x[:, 0] = [3e20, -3e20, 3e20, -3e20]
    x[:, 1] = [1.0, 2.0, 3.0, 4.0]
    layer(x, training=True)
    np.testing.assert_array_equal(to_numpy(layer.moving_mean), [0.0, 1.25])
    np.testing.assert_allclose(to_numpy(layer.moving_variance), [1.0, 1.125])


# -- masks, ghost batches, cumulative and unbiased statistics ----------------------------
#
# Each reference below works channel by channel on the values a channel really sees
# (boolean indexing, `np.var(ddof=...)`), a different route from the layer's weighted
# sums, in float64.

# Small shapes: on JAX every new shape compiles each op again.
OPTION_SETTINGS = settings(max_examples=EXAMPLES // 2, deadline=None, suppress_health_check=[HealthCheck.too_slow])
OPTION_TOL = 2e-5


def _channels_first(array, axis):
    """Returns `array` with the channel axis moved to the front and the rest flattened: (C, M)."""
    array = np.moveaxis(array, axis, 0)
    return array.reshape(array.shape[0], -1)


def _from_channels_first(flat, axis, shape):
    """Inverts `_channels_first` for an input of `shape`."""
    moved = np.moveaxis(np.empty(shape), axis, 0).shape
    return np.moveaxis(flat.reshape(moved), 0, axis)


def _assign_state(layer, rng, channels):
    """Gives the layer random weights; returns them in float64."""
    state = {
        "gamma": rng.uniform(0.5, 2, channels),
        "beta": rng.normal(size=channels),
        "moving_mean": rng.normal(size=channels),
        "moving_variance": rng.uniform(0.5, 2, channels),
    }
    for name, value in state.items():
        getattr(layer, name).assign(value.astype("float32"))
        state[name] = value.astype("float32").astype("float64")
    return state


def _reference_masked_step(x, keep, axis, state, *, momentum, epsilon, unbiased, keras_empty=False):
    """One training step on the values each channel keeps; updates `state` in place.

    A channel with no kept value is normalized with the moving statistics, which
    stay as they are; with `unbiased`, a channel needs 2 kept values for its
    variance to move. With `keras_empty` (a mask read as Keras reads it) such a
    channel gets Keras's numbers instead: a mean and a variance of 0, which the
    moving averages take in.
    """
    values, kept = _channels_first(x.astype("float64"), axis), _channels_first(keep, axis)
    out = np.empty_like(values)
    for c in range(values.shape[0]):
        seen = values[c][kept[c]]
        if seen.size:
            mean, var = seen.mean(), seen.var()
        elif keras_empty:
            mean = var = 0.0
        else:
            mean, var = state["moving_mean"][c], state["moving_variance"][c]
        out[c] = (values[c] - mean) / np.sqrt(var + epsilon) * state["gamma"][c] + state["beta"][c]
        if keras_empty and not seen.size:
            state["moving_mean"][c] *= momentum
            state["moving_variance"][c] *= momentum
        if seen.size >= 1:
            state["moving_mean"][c] = momentum * state["moving_mean"][c] + (1 - momentum) * mean
        if seen.size >= (2 if unbiased else 1):
            batch_var = seen.var(ddof=1) if unbiased else var
            state["moving_variance"][c] = momentum * state["moving_variance"][c] + (1 - momentum) * batch_var
    return _from_channels_first(out, axis, x.shape)


def _documented_keep(mask, shape, axis):
    """Returns which positions of an input of `shape` the mask keeps, by the rule of docs/guide/masking.md.

    A mask one dimension short gets a size-1 axis added last, as Keras reads it,
    wherever that broadcasts; otherwise at the channel `axis`. A full-rank mask
    broadcasts as it is.
    """
    return _read_mask(mask, shape, axis)[0]


def _read_mask(mask, shape, axis):
    """Returns `(keep, keras)`: the positions kept, and whether the mask was read as Keras reads it."""
    if mask.ndim == len(shape):
        return np.broadcast_to(mask, shape), False
    try:
        return np.broadcast_to(mask[..., None], shape), True
    except ValueError:
        return np.broadcast_to(np.expand_dims(mask, axis % len(shape)), shape), False


@st.composite
def masked_cases(draw, *, unbiased):
    """Draws a shape, an axis, a mask (sometimes all False) in either of the two mask shapes."""
    rank = draw(st.integers(2, 4))
    shape = (draw(st.integers(2, 4)),) + tuple(draw(st.lists(st.integers(1, 3), min_size=rank - 1, max_size=rank - 1)))
    axis = draw(st.integers(-rank, rank - 1))
    keep_fraction = draw(st.sampled_from([0.0, 0.2, 0.6, 1.0]))
    full_rank_mask = draw(st.booleans())
    use_mask = draw(st.booleans()) if unbiased else True
    if unbiased and not use_mask:
        # One value per channel is refused (tested elsewhere); a mask may leave one.
        assume(np.prod(np.delete(shape, axis)) >= 2)
    momentum = draw(st.floats(0.0, 0.99))
    seed = draw(st.integers(0, 2**16))
    return shape, axis, keep_fraction if use_mask else None, full_rank_mask, momentum, seed


def _check_masked_step(case, unbiased):
    """Runs one masked training step and an inference step against `_reference_masked_step`."""
    shape, axis, keep_fraction, full_rank_mask, momentum, seed = case
    rng = np.random.default_rng(seed)
    x = rng.normal(rng.uniform(-3, 3), rng.uniform(0.5, 3), size=shape).astype("float32")
    layer = ManualBatchNorm(axis=axis, momentum=momentum, unbiased_variance=unbiased)
    layer.build(shape)
    state = _assign_state(layer, rng, shape[axis])
    mask = None
    keep, keras_reading = np.ones(shape, dtype=bool), False
    if keep_fraction is not None:
        # A mask over every axis but the channel one, or the input's rank with
        # size 1 along the channel axis. One dimension short, it may also fit
        # Keras's reading (a size-1 axis last), which then wins.
        mask = rng.random(np.delete(shape, axis)) < keep_fraction
        if full_rank_mask:
            mask = np.expand_dims(mask, axis % len(shape))
        keep, keras_reading = _read_mask(mask, shape, axis)
    expected = _reference_masked_step(x, keep, axis, state, momentum=momentum, epsilon=1e-3, unbiased=unbiased,
                                      keras_empty=keras_reading and not unbiased)
    y = to_numpy(layer(x, training=True, mask=mask))
    np.testing.assert_allclose(y, expected, rtol=OPTION_TOL, atol=OPTION_TOL * (1 + np.abs(expected).max()))
    for name in ("moving_mean", "moving_variance"):
        np.testing.assert_allclose(to_numpy(getattr(layer, name)), state[name], rtol=OPTION_TOL, atol=OPTION_TOL)


@OPTION_SETTINGS
@given(masked_cases(unbiased=False))
def test_masked_statistics_agree_with_numpy(case):
    _check_masked_step(case, unbiased=False)


@OPTION_SETTINGS
@given(masked_cases(unbiased=True))
def test_unbiased_statistics_agree_with_numpy(case):
    _check_masked_step(case, unbiased=True)


@st.composite
def ghost_cases(draw):
    """Draws a ghost batch size, a number of groups, a shape, a channel axis other than 0 and a mask."""
    rank = draw(st.integers(2, 4))
    virtual = draw(st.integers(1, 3))
    groups = draw(st.integers(1, 3))
    shape = (virtual * groups,) + tuple(draw(st.lists(st.integers(1, 3), min_size=rank - 1, max_size=rank - 1)))
    axis = draw(st.integers(1, rank - 1))
    keep_fraction = draw(st.sampled_from([None, 0.0, 0.3, 1.0]))
    # Whole groups left out, so that some groups count and others do not.
    dropped = draw(st.lists(st.booleans(), min_size=groups, max_size=groups))
    momentum = draw(st.floats(0.0, 0.99))
    seed = draw(st.integers(0, 2**16))
    return shape, virtual, axis, keep_fraction, dropped, momentum, seed


@OPTION_SETTINGS
@given(ghost_cases())
def test_ghost_batches_agree_with_numpy(case):
    shape, virtual, axis, keep_fraction, dropped, momentum, seed = case
    rng = np.random.default_rng(seed)
    x = rng.normal(rng.uniform(-3, 3), rng.uniform(0.5, 3), size=shape).astype("float32")
    # Groups that differ, so one batch-wide statistic would not do.
    x += np.repeat(rng.normal(0, 2, len(x) // virtual), virtual).reshape((-1,) + (1,) * (len(shape) - 1)).astype("float32")
    layer = ManualBatchNorm(axis=axis, momentum=momentum, virtual_batch_size=virtual)
    layer.build(shape)
    state = _assign_state(layer, rng, shape[axis])
    mask = None
    keep = np.ones(shape, dtype=bool)
    if keep_fraction is not None:
        mask = rng.random(np.delete(shape, axis)) < keep_fraction
        mask[np.repeat(dropped, virtual)] = False
        keep = _documented_keep(mask, shape, axis)

    # Each group alone, from the same starting state; the moving statistics then
    # follow the mean of the statistics of the groups where a channel kept a value.
    expected = np.empty(shape)
    means, variances, counted = [], [], []
    for k in range(len(x) // virtual):
        part = slice(k * virtual, (k + 1) * virtual)
        group_state = {name: value.copy() for name, value in state.items()}
        expected[part] = _reference_masked_step(
            x[part], keep[part], axis, group_state, momentum=0.0, epsilon=1e-3, unbiased=False
        )
        # With momentum 0 the group's moving statistics are its batch statistics.
        means.append(group_state["moving_mean"])
        variances.append(group_state["moving_variance"])
        counted.append(_channels_first(keep[part], axis).any(axis=1))
    counted = np.array(counted)
    for name, stats in (("moving_mean", means), ("moving_variance", variances)):
        usable = counted.any(axis=0)
        group_mean = (np.array(stats) * counted).sum(axis=0) / np.maximum(counted.sum(axis=0), 1)
        state[name] = np.where(usable, momentum * state[name] + (1 - momentum) * group_mean, state[name])

    y = to_numpy(layer(x, training=True, mask=mask))
    np.testing.assert_allclose(y, expected, rtol=OPTION_TOL, atol=OPTION_TOL * (1 + np.abs(expected).max()))
    for name in ("moving_mean", "moving_variance"):
        np.testing.assert_allclose(to_numpy(getattr(layer, name)), state[name], rtol=OPTION_TOL, atol=OPTION_TOL)


@st.composite
def cumulative_cases(draw):
    """Draws several batch sizes of one feature shape, an axis, and maybe a batch to throw away."""
    rank = draw(st.integers(2, 4))
    features = tuple(draw(st.lists(st.integers(1, 3), min_size=rank - 1, max_size=rank - 1)))
    sizes = draw(st.lists(st.sampled_from([2, 3, 4]), min_size=2, max_size=4))
    axis = draw(st.integers(1, rank - 1))
    unbiased = draw(st.booleans())
    bad_batch = draw(st.one_of(st.none(), st.integers(0, len(sizes) - 1)))
    seed = draw(st.integers(0, 2**16))
    return features, sizes, axis, unbiased, bad_batch, seed


@OPTION_SETTINGS
@given(cumulative_cases())
def test_cumulative_average_agrees_with_numpy(case):
    """`momentum=None`: the moving statistics are the plain mean of the batch statistics."""
    features, sizes, axis, unbiased, bad_batch, seed = case
    rng = np.random.default_rng(seed)
    layer = ManualBatchNorm(axis=axis, momentum=None, unbiased_variance=unbiased)
    means, variances = [], []
    for k, size in enumerate(sizes):
        x = rng.normal(rng.uniform(-3, 3), rng.uniform(0.5, 3), size=(size,) + features).astype("float32")
        if k == bad_batch:
            x.flat[rng.integers(x.size)] = np.nan  # thrown away: not counted at all
        else:
            values = _channels_first(x.astype("float64"), axis)
            means.append(values.mean(axis=1))
            variances.append(values.var(axis=1, ddof=1 if unbiased else 0))
        layer(x, training=True)
    assert int(to_numpy(layer.num_batches_tracked)) == len(means)
    np.testing.assert_allclose(to_numpy(layer.moving_mean), np.mean(means, axis=0), rtol=OPTION_TOL, atol=OPTION_TOL)
    np.testing.assert_allclose(to_numpy(layer.moving_variance), np.mean(variances, axis=0), rtol=OPTION_TOL, atol=OPTION_TOL)
