"""ManualBatchNorm's options beyond Keras 3, each against an independent reference.

Ghost batches against separate batches, renorm against Keras's own renorm, PyTorch
parity against `torch.nn.BatchNorm2d`, list axes and the cumulative and unbiased
statistics against NumPy. Runs on every backend.
"""

import numpy as np
import pytest
import torch

import keras
from helpers import input_and_weight_grads, numpy_batch_norm, to_numpy
from keras_bn import ManualBatchNorm

RTOL = ATOL = 1e-5


def _batch(rng, shape, loc=2.0, scale=3.0):
    """Returns a float32 batch with a non-zero mean."""
    return rng.normal(loc, scale, size=shape).astype("float32")


# -- virtual_batch_size ---------------------------------------------------------------


def test_ghost_batches_equal_separate_batches():
    rng = np.random.default_rng(0)
    x = _batch(rng, (32, 5, 5, 3))
    x[8:16] += 4.0  # groups differ, so one batch-wide statistic would differ
    ghost = ManualBatchNorm(virtual_batch_size=8, momentum=0.9)
    y = to_numpy(ghost(x, training=True))

    means, variances = [], []
    for k in range(4):
        chunk = x[8 * k : 8 * (k + 1)]
        plain = ManualBatchNorm(momentum=0.9)
        np.testing.assert_allclose(y[8 * k : 8 * (k + 1)], to_numpy(plain(chunk, training=True)), RTOL, ATOL)
        c64 = chunk.astype("float64")
        means.append(c64.mean(axis=(0, 1, 2)))
        variances.append(c64.var(axis=(0, 1, 2)))
    # The documented update: the groups' mean statistics enter the moving averages.
    np.testing.assert_allclose(to_numpy(ghost.moving_mean), 0.1 * np.mean(means, 0), RTOL, ATOL)
    np.testing.assert_allclose(
        to_numpy(ghost.moving_variance), 0.9 + 0.1 * np.mean(variances, 0), RTOL, ATOL
    )
    # Inference ignores the groups.
    x_test = _batch(rng, (6, 5, 5, 3))
    plain = ManualBatchNorm()
    plain.build(x_test.shape)
    plain.set_weights(ghost.get_weights())
    np.testing.assert_allclose(to_numpy(ghost(x_test)), to_numpy(plain(x_test)), RTOL, ATOL)


def test_ghost_batches_with_channels_first_and_mask():
    rng = np.random.default_rng(1)
    x = _batch(rng, (8, 3, 6))
    mask = rng.random((8, 6)) > 0.3
    ghost = ManualBatchNorm(axis=1, virtual_batch_size=4, momentum=0.0)
    y = to_numpy(ghost(x, training=True, mask=mask))
    for k in range(2):
        plain = ManualBatchNorm(axis=1, momentum=0.0)
        part = slice(4 * k, 4 * (k + 1))
        np.testing.assert_allclose(
            y[part], to_numpy(plain(x[part], training=True, mask=mask[part])), RTOL, ATOL
        )


def test_ghost_batches_train_in_fit():
    rng = np.random.default_rng(2)
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(1)(ManualBatchNorm(virtual_batch_size=4)(inputs)))
    model.compile(optimizer="sgd", loss="mse")
    history = model.fit(_batch(rng, (32, 4)), _batch(rng, (32, 1)), batch_size=8, epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))


def test_ghost_batch_size_must_divide_the_batch():
    layer = ManualBatchNorm(virtual_batch_size=8)
    with pytest.raises(ValueError, match=r"multiple of `virtual_batch_size`.*batch of 30 with virtual_batch_size=8"):
        layer(np.zeros((30, 3), "float32"), training=True)
    # Inference does not group, so any batch size is fine.
    assert to_numpy(layer(np.zeros((30, 3), "float32"))).shape == (30, 3)


# -- renorm ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "clipping", [None, {"rmax": 1.5, "rmin": 0.7, "dmax": 0.5}, {"rmax": 2.0}, {"dmax": 0.1}]
)
def test_renorm_matches_keras_step_for_step(clipping):
    rng = np.random.default_rng(3)
    kwargs = dict(axis=-1, momentum=0.8, renorm=True, renorm_clipping=clipping, renorm_momentum=0.6)
    ours = ManualBatchNorm(**kwargs)
    ref = keras.layers.BatchNormalization(**kwargs)
    shape = (16, 4, 3)
    for layer in (ours, ref):
        layer.build(shape)
    names = ["moving_mean", "moving_variance", "moving_stddev", "renorm_mean", "renorm_stddev"]
    for step in range(5):
        x = _batch(rng, shape, loc=step, scale=1.0 + step)
        np.testing.assert_allclose(
            to_numpy(ours(x, training=True)), to_numpy(ref(x, training=True)), RTOL, ATOL
        )
        for name in names:
            np.testing.assert_allclose(
                to_numpy(getattr(ours, name)), to_numpy(getattr(ref, name)), RTOL, ATOL, err_msg=name
            )
    x = _batch(rng, shape)
    up = rng.normal(size=shape).astype("float32")
    for a, b in zip(input_and_weight_grads(ours, x, up), input_and_weight_grads(ref, x, up)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(to_numpy(ours(x)), to_numpy(ref(x)), RTOL, ATOL)


def test_renorm_weights_save_and_load(tmp_path):
    inputs = keras.Input((3,))
    model = keras.Model(inputs, ManualBatchNorm(renorm=True, renorm_clipping={"rmax": 3.0})(inputs))
    model(_batch(np.random.default_rng(4), (8, 3)), training=True)
    model.save(tmp_path / "renorm.keras")
    loaded = keras.saving.load_model(tmp_path / "renorm.keras")
    for a, b in zip(model.weights, loaded.weights):
        assert a.name == b.name
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b))
    assert loaded.layers[1].renorm_clipping == {"rmax": 3.0}


# -- PyTorch parity ------------------------------------------------------------------


@pytest.mark.parametrize("torch_momentum", [0.1, 0.3, None])
def test_matches_torch_batchnorm2d(torch_momentum):
    rng = np.random.default_rng(5)
    channels = 3
    ref = torch.nn.BatchNorm2d(channels, momentum=torch_momentum, eps=1e-5).double()
    with torch.no_grad():
        ref.weight.copy_(torch.as_tensor(rng.uniform(0.5, 2, channels)))
        ref.bias.copy_(torch.as_tensor(rng.normal(size=channels)))
    ours = ManualBatchNorm(
        axis=1,
        momentum=None if torch_momentum is None else 1.0 - torch_momentum,
        epsilon=1e-5,
        unbiased_variance=True,
    )
    ours.build((4, channels, 5, 5))
    ours.gamma.assign(ref.weight.detach().numpy().astype("float32"))
    ours.beta.assign(ref.bias.detach().numpy().astype("float32"))

    ref.train()
    for step in range(4):
        x = _batch(rng, (4, channels, 5, 5), loc=step, scale=1.0 + step)
        expected = ref(torch.as_tensor(x, dtype=torch.float64)).detach().numpy()
        np.testing.assert_allclose(to_numpy(ours(x, training=True)), expected, RTOL, ATOL)
        np.testing.assert_allclose(to_numpy(ours.moving_mean), ref.running_mean.numpy(), RTOL, ATOL)
        np.testing.assert_allclose(to_numpy(ours.moving_variance), ref.running_var.numpy(), RTOL, ATOL)
    assert int(ref.num_batches_tracked) == 4
    if torch_momentum is None:
        assert int(to_numpy(ours.num_batches_tracked)) == 4

    ref.eval()
    x = _batch(rng, (2, channels, 5, 5))
    expected = ref(torch.as_tensor(x, dtype=torch.float64)).detach().numpy()
    np.testing.assert_allclose(to_numpy(ours(x, training=False)), expected, RTOL, ATOL)


def test_cumulative_average_and_its_counter_survive_saving(tmp_path):
    rng = np.random.default_rng(6)
    inputs = keras.Input((2,))
    bn = ManualBatchNorm(momentum=None)
    model = keras.Model(inputs, bn(inputs))
    batches = [_batch(rng, (10, 2), loc=k) for k in range(3)]
    for b in batches:
        model(b, training=True)
    # The cumulative average of the batch means is the plain mean of the means.
    np.testing.assert_allclose(
        to_numpy(bn.moving_mean), np.mean([b.astype("float64").mean(0) for b in batches], 0), RTOL, ATOL
    )
    model.save(tmp_path / "cma.keras")
    loaded = keras.saving.load_model(tmp_path / "cma.keras")
    assert int(to_numpy(loaded.layers[1].num_batches_tracked)) == 3
    assert loaded.layers[1].get_config()["momentum"] is None


def test_unbiased_variance_against_numpy():
    rng = np.random.default_rng(7)
    x = _batch(rng, (6, 4))
    layer = ManualBatchNorm(momentum=0.0, unbiased_variance=True)
    y = to_numpy(layer(x, training=True))
    x64 = x.astype("float64")
    np.testing.assert_allclose(to_numpy(layer.moving_variance), x64.var(0, ddof=1), RTOL, ATOL)
    # Normalization itself still uses the biased variance.
    np.testing.assert_allclose(y, (x64 - x64.mean(0)) / np.sqrt(x64.var(0) + 1e-3), RTOL, ATOL)


def test_unbiased_variance_needs_two_values_per_channel():
    layer = ManualBatchNorm(unbiased_variance=True)
    with pytest.raises(ValueError, match=r"at least 2 values per channel.*Received: 1 value"):
        layer(np.ones((1, 3), "float32"), training=True)


# -- list-valued axis ----------------------------------------------------------------


def test_list_axis_keeps_one_statistic_per_position_of_all_listed_axes():
    rng = np.random.default_rng(8)
    x = _batch(rng, (6, 3, 4, 2))
    layer = ManualBatchNorm(axis=[1, 3], momentum=0.5)
    layer.build(x.shape)
    assert tuple(layer.gamma.shape) == (3, 2)
    state = {k: to_numpy(getattr(layer, k)).copy() for k in ("gamma", "beta", "moving_mean", "moving_variance")}
    expected = numpy_batch_norm(x, (1, 3), state, momentum=0.5, epsilon=1e-3, training=True)
    np.testing.assert_allclose(to_numpy(layer(x, training=True)), expected, RTOL, ATOL)
    np.testing.assert_allclose(to_numpy(layer.moving_variance), state["moving_variance"], RTOL, ATOL)
    assert ManualBatchNorm.from_config(layer.get_config()).axis == (1, 3)
    assert layer.get_config()["axis"] == [1, 3]


# -- bad batches ---------------------------------------------------------------------


def test_nan_batch_does_not_poison_the_moving_statistics():
    rng = np.random.default_rng(9)
    layer = ManualBatchNorm(momentum=0.5)
    clean = _batch(rng, (8, 3))
    layer(clean, training=True)
    before = [to_numpy(layer.moving_mean).copy(), to_numpy(layer.moving_variance).copy()]
    bad = _batch(rng, (8, 3))
    bad[2, 0] = np.nan
    bad[5, 1] = np.inf
    y = to_numpy(layer(bad, training=True))
    assert np.all(np.isnan(y[:, 0])) and np.all(np.isfinite(y[:, 2]))
    after = [to_numpy(layer.moving_mean), to_numpy(layer.moving_variance)]
    for b, a in zip(before, after):
        np.testing.assert_array_equal(a[:2], b[:2])  # the bad channels kept their values
        assert not np.allclose(a[2], b[2])  # the clean channel moved on
    assert np.all(np.isfinite(to_numpy(layer(clean))))


# -- errors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"virtual_batch_size": 0}, ValueError, r"`virtual_batch_size` must be a positive int.*=0"),
        ({"virtual_batch_size": 2.5}, ValueError, r"virtual_batch_size=2.5"),
        ({"virtual_batch_size": 4, "synchronized": True}, ValueError, r"cannot be combined"),
        ({"renorm": "yes"}, TypeError, r"`renorm` must be a bool"),
        ({"renorm_momentum": 1.2}, ValueError, r"`renorm_momentum` must be in \[0, 1\].*=1.2"),
        ({"renorm": True, "renorm_clipping": {"rmax": 1, "max": 2}}, ValueError, r"unknown: \['max'\]"),
        ({"renorm": True, "renorm_clipping": {"rmax": 0.5, "rmin": 2}}, ValueError, r"rmax.*must be >="),
        ({"renorm": True, "renorm_clipping": {"dmax": -1}}, ValueError, r"dmax.*must be >= 0"),
        ({"renorm": True, "renorm_clipping": {"rmin": -1}}, ValueError, r"rmin.*must be >= 0"),
        ({"renorm": True, "renorm_clipping": [1, 2]}, TypeError, r"must be a dict"),
        ({"renorm": True, "renorm_clipping": {"rmax": "big"}}, TypeError, r"renorm_clipping\['rmax'\]"),
        ({"renorm_clipping": [1, 2]}, TypeError, r"must be a dict.*renorm_clipping=\[1, 2\]"),
        ({"synchronized": 1}, TypeError, r"`synchronized` must be a bool.*synchronized=1"),
        ({"unbiased_variance": None}, TypeError, r"`unbiased_variance` must be a bool"),
        ({"momentum": 1.5}, ValueError, r"or None \(a cumulative average\).*momentum=1.5"),
    ],
)
def test_bad_option_values_are_refused(kwargs, error, match):
    with pytest.raises(error, match=match):
        ManualBatchNorm(**kwargs)


def test_ghost_batches_cannot_use_the_batch_axis_as_channel():
    with pytest.raises(ValueError, match=r"axis 0 is the batch axis.*axis=0"):
        ManualBatchNorm(axis=0, virtual_batch_size=2).build((4, 3))


# -- statistics that must not move, and sizes known only at run time --------------------


def _unbiased_update(moving, x, momentum):
    """NumPy: one moving-variance update with the unbiased variance of `x` over axis 0."""
    return moving * momentum + x.astype("float64").var(axis=0, ddof=1) * (1 - momentum)


def test_unbiased_variance_in_fit_with_a_ragged_last_batch():
    # 10 examples in batches of 4: the last batch has 2, and the compiled step
    # sees an unknown batch size (a tensor count, not a Python int).
    rng = np.random.default_rng(3)
    x = _batch(rng, (10, 3))
    model = keras.Sequential([keras.Input((3,)), ManualBatchNorm(momentum=0.5, unbiased_variance=True)])
    model.compile(optimizer="sgd", loss="mse")
    model.fit(x, np.zeros_like(x), batch_size=4, shuffle=False, epochs=1, verbose=0)
    expected = np.ones(3)
    for start in range(0, 10, 4):
        expected = _unbiased_update(expected, x[start : start + 4], 0.5)
    np.testing.assert_allclose(to_numpy(model.layers[0].moving_variance), expected, rtol=1e-5)


def test_unbiased_variance_keeps_a_fully_masked_channel():
    rng = np.random.default_rng(4)
    x = _batch(rng, (2, 5, 3))
    layer = ManualBatchNorm(momentum=0.5, unbiased_variance=True, moving_variance_initializer="ones")
    layer(x, training=True, mask=np.zeros((2, 5), dtype=bool))
    np.testing.assert_array_equal(to_numpy(layer.moving_variance), np.ones(3, dtype="float32"))
    np.testing.assert_array_equal(to_numpy(layer.moving_mean), np.zeros(3, dtype="float32"))


@pytest.mark.parametrize(
    "bad",
    ["nan", "empty", "masked"],
)
def test_cumulative_average_skips_thrown_away_batches(bad):
    # Batch means 1, (thrown away), 3: the cumulative mean is 2 over 2 batches.
    layer = ManualBatchNorm(momentum=None)
    layer(np.full((2, 1), 1.0, "float32"), training=True)
    if bad == "nan":
        layer(np.full((2, 1), np.nan, "float32"), training=True)
    elif bad == "empty":
        layer(np.zeros((0, 1), "float32"), training=True)
    else:
        layer(np.full((2, 1), 7.0, "float32"), training=True, mask=np.zeros((2,), dtype=bool))
    layer(np.full((2, 1), 3.0, "float32"), training=True)
    np.testing.assert_allclose(to_numpy(layer.moving_mean), [2.0], rtol=1e-6)
    assert int(to_numpy(layer.num_batches_tracked)) == 2


def test_momentum_one_freezes_the_statistics():
    x = _batch(np.random.default_rng(5), (8, 3))
    layer = ManualBatchNorm(momentum=1.0)
    layer(x, training=True)
    np.testing.assert_array_equal(to_numpy(layer.moving_mean), np.zeros(3, "float32"))
    np.testing.assert_array_equal(to_numpy(layer.moving_variance), np.ones(3, "float32"))
    renorm = ManualBatchNorm(momentum=1.0, renorm=True, renorm_momentum=1.0)
    renorm(x, training=True)
    for name, value in (("moving_stddev", 1.0), ("renorm_mean", 0.0), ("renorm_stddev", 1.0)):
        np.testing.assert_array_equal(to_numpy(getattr(renorm, name)), np.full(3, value, "float32"))


def test_loads_every_config_keras_accepts():
    # Keras keeps renorm_clipping without renorm, and accepts momentum=1.0.
    for kwargs in (
        {"momentum": 1.0},
        {"renorm_clipping": {"rmax": 3.0, "rmin": 0.3, "dmax": 5.0}},
        {"renorm": True},  # Keras stores renorm_clipping={} here
        {"axis": 1, "center": False, "epsilon": 1e-5, "momentum": 0.9},
    ):
        config = keras.layers.BatchNormalization(**kwargs).get_config()
        layer = ManualBatchNorm.from_config(config)
        for key, value in config.items():
            if key not in ("dtype",):
                assert layer.get_config()[key] == value, key
