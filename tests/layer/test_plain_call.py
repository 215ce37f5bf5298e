"""PyTorch's plain call: `ManualBatchNorm.__call__` without Keras's per-call work must change nothing.

On PyTorch a built layer called on one tensor of its compute dtype, with `training`
a bool and no mask, skips `keras.layers.Layer.__call__` (keras_bn/_layer/torch.py,
`plain_call`). Each test here calls two copies of a layer, one through the layer as
users do and one through `keras.layers.Layer.__call__` itself, the call Keras makes,
and checks outputs, moving statistics and gradients are the same bit for bit. The
other tests check the calls where Keras's work matters still get it: a mask on the
tensor, an input of another dtype, a wrong shape, a `StatelessScope`, `training`
left to the caller, a nested model.
"""

import numpy as np
import pytest

import keras
from helpers import to_numpy
from keras_bn import ManualBatchNorm

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "torch",
    reason="the plain call exists on PyTorch only; TensorFlow and JAX trace the layer once",
)

CASES = {  # name: (input shape, layer options)
    "nchw_kernel": ((8, 3, 5, 4), {"axis": 1}),
    "nhwc_kernel": ((8, 5, 4, 3), {"axis": -1}),
    "nchw_hand_written": ((8, 3, 5, 4), {"axis": 1, "fused": False}),
    "dense_unbiased": ((16, 6), {"unbiased_variance": True}),
    "ghost_batches": ((8, 3, 5, 4), {"axis": 1, "virtual_batch_size": 4}),
    "cumulative_average": ((8, 6), {"momentum": None}),
    "renorm": ((8, 6), {"renorm": True}),
}


def _pair(shape, options, seed=0):
    """Returns two built copies of one layer, with the same drawn weights and statistics."""
    rng = np.random.default_rng(seed)
    layers = [ManualBatchNorm(**options) for _ in range(2)]
    for layer in layers:
        layer.build(shape)
    values = [rng.normal(size=v.shape).astype(v.dtype) for v in layers[0].weights]
    for layer in layers:
        for variable, value in zip(layer.weights, values):
            variable.assign(np.abs(value) + 0.5 if "variance" in variable.path or "stddev" in variable.path else value)
    return layers


def _keras_call(layer, *args, **kwargs):
    """Calls `layer` through `keras.layers.Layer.__call__`, the way every other layer is called."""
    return keras.layers.Layer.__call__(layer, *args, **kwargs)


def layer_call(layer, *args, **kwargs):
    """Calls `layer` as users do."""
    return layer(*args, **kwargs)


@pytest.mark.parametrize("case", sorted(CASES))
def test_outputs_statistics_and_gradients_are_those_of_keras_call(case):
    import torch

    shape, options = CASES[case]
    plain, reference = _pair(shape, options)
    rng = np.random.default_rng(1)
    for step in range(3):
        x = rng.normal(2.0, 3.0, size=shape).astype("float32")
        dy = torch.tensor(rng.normal(size=shape).astype("float32"))
        results = []
        for layer, call in ((plain, layer_call), (reference, _keras_call)):
            xt = torch.tensor(x, requires_grad=True)
            y = call(layer, xt, training=True)
            params = [v.value for v in layer.trainable_variables]
            grads = torch.autograd.grad(y, [xt, *params], dy)
            inference = call(layer, xt, training=False)
            results.append([y, *grads, inference, *(v.value for v in layer.non_trainable_variables)])
        for got, want in zip(*results):
            np.testing.assert_array_equal(to_numpy(got), to_numpy(want), err_msg=f"{case}, step {step}")


def test_the_plain_call_skips_keras_call_and_keras_call_still_runs_when_it_matters(monkeypatch):
    """Counts `Layer.__call__`: skipped for the plain call, taken for every other kind."""
    import torch

    layer = ManualBatchNorm(axis=1)
    layer.build((4, 3, 2, 2))
    calls = []
    original = keras.layers.Layer.__call__

    def counted(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(keras.layers.Layer, "__call__", counted)
    x = torch.randn(4, 3, 2, 2)
    layer(x, training=True)
    layer(x, training=False)
    layer(x, training=True, mask=None)
    assert calls == []
    layer(x)  # training left to Keras: inference at the top level
    layer(x, training=None)
    layer(x.double(), training=True)  # Keras casts the input to float32
    layer(np.ones((4, 3, 2, 2), "float32"), training=True)
    assert len(calls) == 4


def test_a_float64_input_is_cast_by_keras_as_before():
    import torch

    layer = ManualBatchNorm(axis=1)
    y = layer(torch.randn(4, 3, 2, 2, dtype=torch.float64), training=True)
    assert y.dtype == torch.float32


def test_a_mask_on_the_tensor_is_used():
    """Keras passes the mask it finds on the tensor: the statistics see only the unmasked steps."""
    import torch

    x = np.random.default_rng(0).normal(size=(2, 5, 3)).astype("float32")
    x[:, 3:] = 1000.0  # padding that must not reach the statistics
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 0, 0]], bool)
    layer = ManualBatchNorm(momentum=0.0)
    tensor = torch.tensor(x)
    tensor._keras_mask = torch.tensor(mask)
    layer(tensor, training=True)
    np.testing.assert_allclose(to_numpy(layer.moving_mean), x[:, :3].reshape(-1, 3).mean(0), rtol=1e-5)
    np.testing.assert_allclose(to_numpy(layer.moving_variance), x[:, :3].reshape(-1, 3).var(0), rtol=1e-4)


def test_a_wrong_channel_count_gets_keras_input_spec_error():
    import torch

    layer = ManualBatchNorm(axis=1)
    layer.build((4, 3, 2, 2))
    with pytest.raises(ValueError, match="expected axis 1 of input shape to have value 3"):
        layer(torch.randn(4, 5, 2, 2), training=True)


def test_a_stateless_scope_records_the_new_statistics_and_leaves_the_variables():
    import torch

    layer = ManualBatchNorm(axis=1, momentum=0.5)
    layer.build((4, 3, 2, 2))
    before = [to_numpy(v) for v in layer.non_trainable_variables]
    x = torch.randn(4, 3, 2, 2) + 5.0
    with keras.StatelessScope() as scope:
        layer(x, training=True)
    after = [to_numpy(v) for v in layer.non_trainable_variables]
    for old, new in zip(before, after):
        np.testing.assert_array_equal(old, new)
    recorded = to_numpy(scope.get_current_value(layer.moving_mean))
    want = 0.5 * before[0] + 0.5 * to_numpy(x).mean(axis=(0, 2, 3))
    np.testing.assert_allclose(recorded, want, rtol=1e-6)
    _, updated = layer.stateless_call(layer.trainable_variables, layer.non_trainable_variables, x, training=True)
    np.testing.assert_allclose(to_numpy(updated[0]), want, rtol=1e-6)


def test_inside_a_model_training_reaches_the_layer():
    """`model(x, training=True)` passes training on; `model(x)` and `predict` infer."""
    import torch

    model = keras.Sequential([keras.Input((3, 2, 2)), ManualBatchNorm(axis=1, momentum=0.0)])
    layer = model.layers[0]
    x = torch.randn(4, 3, 2, 2) * 3.0 + 2.0
    model(x)
    np.testing.assert_array_equal(to_numpy(layer.moving_mean), np.zeros(3, "float32"))
    model(x, training=True)
    np.testing.assert_allclose(to_numpy(layer.moving_mean), to_numpy(x).mean(axis=(0, 2, 3)), rtol=1e-5)


def test_mixed_precision_takes_the_plain_call_and_matches_keras_call():
    import torch

    shape = (8, 3, 4, 4)
    plain, reference = (ManualBatchNorm(axis=1, dtype="mixed_float16") for _ in range(2))
    for layer in (plain, reference):
        layer.build(shape)
    x = torch.tensor(np.random.default_rng(0).normal(size=shape).astype("float16"))
    y, want = plain(x, training=True), _keras_call(reference, x, training=True)
    assert y.dtype == torch.float16
    np.testing.assert_array_equal(to_numpy(y), to_numpy(want))
    np.testing.assert_array_equal(to_numpy(plain.moving_variance), to_numpy(reference.moving_variance))
