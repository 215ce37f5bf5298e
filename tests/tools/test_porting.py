"""`from_torch_state_dict`, `load_torch_state_dict` and `to_torch_state_dict` against `torch.nn.BatchNorm{1,2,3}d`, step for step."""

import collections

import keras
import numpy as np
import pytest
import torch

from keras_bn import ManualBatchNorm, from_torch_state_dict, load_torch_state_dict, to_torch_state_dict

TORCH_MODULES = {2: torch.nn.BatchNorm1d, 3: torch.nn.BatchNorm1d, 4: torch.nn.BatchNorm2d,
                 5: torch.nn.BatchNorm3d}


def _np(value):
    return np.asarray(keras.ops.convert_to_numpy(value), dtype=np.float64)


def _batch(rng, ndim, channels=3, n=6):
    """A channels-first batch with per-channel offsets and scales, as PyTorch takes it."""
    shape = (n, channels) + (4, 5, 3)[: ndim - 2]
    scale = rng.uniform(0.5, 3.0, size=(1, channels) + (1,) * (ndim - 2))
    offset = rng.normal(0.0, 4.0, size=(1, channels) + (1,) * (ndim - 2))
    return (rng.normal(size=shape) * scale + offset).astype("float32")


def _trained_torch(ndim, momentum, affine, rng):
    """A PyTorch batch norm after 3 training steps, with gamma and beta away from 1 and 0."""
    torch.manual_seed(0)
    module = TORCH_MODULES[ndim](3, momentum=momentum, eps=1e-4, affine=affine)
    with torch.no_grad():
        if affine:
            module.weight.copy_(torch.from_numpy(rng.uniform(0.5, 2.0, 3).astype("float32")))
            module.bias.copy_(torch.from_numpy(rng.normal(size=3).astype("float32")))
        module.train()
        for _ in range(3):
            module(torch.from_numpy(_batch(rng, ndim)))
    return module


@pytest.mark.parametrize("ndim", [2, 3, 4, 5])
@pytest.mark.parametrize("momentum", [0.1, 0.3, None])
@pytest.mark.parametrize("affine", [True, False])
def test_training_and_inference_step_for_step(ndim, momentum, affine):
    rng = np.random.default_rng(ndim)
    module = _trained_torch(ndim, momentum, affine, rng)
    layer = from_torch_state_dict(module.state_dict(), ndim=ndim, momentum=momentum, eps=1e-4)
    assert (layer.center, layer.scale, layer.unbiased_variance) == (affine, affine, True)
    for step in range(4):
        x = _batch(rng, ndim)
        with torch.no_grad():
            expected = module.train()(torch.from_numpy(x)).numpy()
        got = _np(layer(x, training=True))
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5, err_msg=f"step {step}")
        np.testing.assert_allclose(_np(layer.moving_mean), module.running_mean.numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(_np(layer.moving_variance), module.running_var.numpy(), rtol=1e-5, atol=1e-6)
        if momentum is None:
            assert int(_np(layer.num_batches_tracked)) == int(module.num_batches_tracked)
        x = _batch(rng, ndim)
        with torch.no_grad():
            expected = module.eval()(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(_np(layer(x, training=False)), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("momentum", [0.1, None])
def test_round_trip_into_a_fresh_torch_module(momentum):
    rng = np.random.default_rng(1)
    module = _trained_torch(4, momentum, True, rng)
    layer = from_torch_state_dict(module.state_dict(), momentum=momentum, eps=1e-4)
    layer(_batch(rng, 4), training=True)
    back = to_torch_state_dict(layer, prefix="bn.")
    assert list(back) == ["bn.weight", "bn.bias", "bn.running_mean", "bn.running_var",
                          "bn.num_batches_tracked"]
    fresh = torch.nn.Module()
    fresh.bn = torch.nn.BatchNorm2d(3, eps=layer.epsilon, momentum=momentum)
    fresh.load_state_dict(back)  # strict: every key, nothing else
    for key, value in fresh.bn.state_dict().items():
        np.testing.assert_array_equal(value.numpy(), back["bn." + key].numpy())
    np.testing.assert_array_equal(back["bn.running_var"].numpy(), _np(layer.moving_variance).astype("float32"))
    expected_count = 4 if momentum is None else 0
    assert back["bn.num_batches_tracked"].dtype == torch.long
    assert int(back["bn.num_batches_tracked"]) == expected_count


def test_a_channels_last_layer_in_a_model_by_prefix():
    """A PyTorch network's state dict fills a channels-last Keras layer: the values are per channel."""
    rng = np.random.default_rng(2)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 1), torch.nn.BatchNorm2d(3))
    module = net[1]
    with torch.no_grad():
        module.running_mean.copy_(torch.tensor([1.0, -2.0, 0.5]))
        module.running_var.copy_(torch.tensor([4.0, 0.25, 9.0]))
        module.weight.copy_(torch.tensor([2.0, 1.0, 0.5]))
    inputs = keras.Input((4, 5, 3))
    layer = ManualBatchNorm(epsilon=1e-5, momentum=0.9, unbiased_variance=True)
    keras.Model(inputs, layer(inputs))
    load_torch_state_dict(layer, net.state_dict(), prefix="1.")
    x = _batch(rng, 4)
    with torch.no_grad():
        expected = module.eval()(torch.from_numpy(x)).numpy()
    got = _np(layer(np.moveaxis(x, 1, -1), training=False))
    np.testing.assert_allclose(np.moveaxis(got, -1, 1), expected, rtol=1e-5, atol=1e-5)


def test_arrays_and_an_old_state_dict_without_the_count():
    state = collections.OrderedDict(
        weight=np.ones(2), bias=np.zeros(2), running_mean=np.array([1.0, 2.0]), running_var=np.array([3.0, 4.0])
    )
    layer = from_torch_state_dict(state, ndim=2, momentum=None)
    np.testing.assert_array_equal(_np(layer.moving_variance), [3.0, 4.0])
    assert int(_np(layer.num_batches_tracked)) == 0


def _state(channels=3, **changes):
    state = dict(torch.nn.BatchNorm2d(channels).state_dict())
    state.update(changes)
    return {k: v for k, v in state.items() if v is not None}


@pytest.mark.parametrize(
    ("state", "kwargs", "error", "match"),
    [
        (_state(running_var=torch.ones(4)), {}, ValueError,
         r"state_dict\['running_var'\] must have shape \(3,\) to match layer .* Received: shape \(4,\)"),
        (_state(running_var=None), {}, ValueError,
         r"Missing keys: \['running_var'\]; unexpected keys: \[\]"),
        (_state(bias=None), {}, ValueError, r"Missing keys: \['bias'\]"),
        (_state(extra=torch.ones(3)), {}, ValueError, r"unexpected keys: \['extra'\]"),
        (_state(running_mean=torch.ones(3, 1)), {}, ValueError,
         r"one value per channel. Received: shape \(3, 1\)"),
        (_state(num_batches_tracked=torch.ones(2)), {}, ValueError,
         r"state_dict\['num_batches_tracked'\] must be a scalar. Received: shape \(2,\)"),
        (_state(), {"prefix": "bn."}, ValueError, r"must hold 'bn.running_mean'.* Received: None"),
        (_state(), {"ndim": 1}, ValueError, r"`ndim` must be at least 2 .* Received: ndim=1"),
        (_state(), {"ndim": 4.0}, TypeError, r"`ndim` must be an int.* Received: ndim=4.0"),
        (_state(), {"axis": 4}, ValueError, r"`axis` must be an int in \[-4, 4\). Received: axis=4"),
        (_state(), {"momentum": 1.5}, ValueError, r"`momentum` \(PyTorch's\) must be in \[0, 1\] or None. Received: momentum=1.5"),
        ([("weight", torch.ones(3))], {}, TypeError, r"`state_dict` must be a mapping.* Received: state_dict of type list"),
        (_state(weight="ones"), {}, ValueError, r"state_dict\['weight'\] must have shape \(3,\)"),
    ],
)
def test_bad_state_dicts(state, kwargs, error, match):
    with pytest.raises(error, match=match):
        from_torch_state_dict(state, **kwargs)


def test_bad_layers():
    with pytest.raises(TypeError, match=r"`layer` must be a keras_bn.ManualBatchNorm. Received: BatchNormalization"):
        to_torch_state_dict(keras.layers.BatchNormalization())
    with pytest.raises(ValueError, match=r"`layer` must be built"):
        load_torch_state_dict(ManualBatchNorm(), _state())
    renorm = ManualBatchNorm(renorm=True)
    renorm.build((None, 3))
    with pytest.raises(ValueError, match=r"Batch Renormalization has no PyTorch counterpart"):
        to_torch_state_dict(renorm)
    several = ManualBatchNorm(axis=[1, 2])
    several.build((None, 3, 2))
    with pytest.raises(ValueError, match=r"several channel axes. Received: .* axis=\(1, 2\)"):
        to_torch_state_dict(several)
