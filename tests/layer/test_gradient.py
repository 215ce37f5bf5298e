"""The closed-form backward of `ManualBatchNorm` (keras_bn/_layer/reference.py) against autodiff.

Two references: autodiff of the plain formula written here (a small Keras layer,
so each backend differentiates it its own way), and autodiff of `ManualBatchNorm`'s
own forward pass with the hand-written backward switched off. Input gradients and
gamma/beta gradients, plain, masked, ghost batches, renorm, no gamma or beta,
float32 and mixed precision. Synchronized statistics are checked with real
replicas in tests/experiment/test_multiprocess.py and tests/experiment/test_distributed.py. Every layer
here is `fused=False`: with the default, TensorFlow and PyTorch would run their own
kernel (tests/layer/test_native.py) and neither backward written here.
"""

import keras
import numpy as np
import pytest
from helpers import gradient_penalty_grads, input_and_weight_grads
from keras import ops

from keras_bn._layer import paths
from keras_bn.batch_norm import ManualBatchNorm


class _PlainFormula(keras.layers.Layer):
    """`gamma * (x - mean) / sqrt(var + epsilon) + beta` over all axes but the last, optionally weighted or in ghost groups."""

    def __init__(self, epsilon, weights=None, ghost=None, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = epsilon
        self.weights_ = weights
        self.ghost = ghost

    def build(self, input_shape):
        self.gamma = self.add_weight(name="gamma", shape=(input_shape[-1],), initializer="ones")
        self.beta = self.add_weight(name="beta", shape=(input_shape[-1],), initializer="zeros")

    def call(self, x, training=None):
        shape = ops.shape(x)
        w = ops.ones_like(x) if self.weights_ is None else ops.broadcast_to(
            ops.convert_to_tensor(self.weights_, x.dtype), shape
        )
        axes = tuple(range(len(shape) - 1))
        if self.ghost:
            x = ops.reshape(x, (-1, self.ghost) + tuple(shape[1:]))
            w = ops.reshape(w, ops.shape(x))
            axes = tuple(a + 1 for a in axes)
        n = ops.sum(w, axis=axes, keepdims=True)
        mean = ops.sum(w * x, axis=axes, keepdims=True) / n
        var = ops.sum(w * ops.square(x - mean), axis=axes, keepdims=True) / n
        y = self.gamma * (x - mean) / ops.sqrt(var + self.epsilon) + self.beta
        return ops.reshape(y, shape)


class _WithMask(keras.layers.Layer):
    """Calls `inner` with a fixed mask, so the shared gradient helper can pass one."""

    def __init__(self, inner, mask, **kwargs):
        super().__init__(**kwargs)
        self.inner = inner
        self.mask = mask
        self.built = True

    def call(self, x, training=None):
        return self.inner(x, training=training, mask=self.mask)


def _same_weights(layer, gamma, beta):
    """Assigns gamma and beta to `layer` (absent ones skipped)."""
    if getattr(layer, "gamma", None) is not None:
        layer.gamma.assign(gamma)
    if getattr(layer, "beta", None) is not None:
        layer.beta.assign(beta)


def _grads(layer, x, dy, hand_written):
    with paths.use_hand_written(hand_written):
        return input_and_weight_grads(layer, x, dy)


def _data(shape, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(3.0, 2.0, size=shape).astype("float32")
    dy = rng.normal(size=shape).astype("float32")
    gamma = rng.uniform(0.5, 2.0, shape[-1]).astype("float32")
    beta = rng.normal(size=shape[-1]).astype("float32")
    return x, dy, gamma, beta


def _assert_close(ours, reference, rtol=2e-4, atol=2e-4):
    assert len(ours) == len(reference)
    for a, b in zip(ours, reference):
        scale = max(1.0, float(np.abs(b).max()))
        np.testing.assert_allclose(a, b, rtol=rtol, atol=atol * scale)


@pytest.mark.parametrize(
    "shape, ghost, masked",
    [
        pytest.param((16, 5), None, False, id="dense"),
        pytest.param((8, 4, 4, 3), None, False, id="conv"),
        pytest.param((8, 4, 4, 3), 4, False, id="ghost"),
        pytest.param((6, 7, 3), None, True, id="masked"),
        pytest.param((8, 5, 3), 2, True, id="ghost-masked"),
    ],
)
def test_hand_written_matches_autodiff_of_the_plain_formula(shape, ghost, masked):
    x, dy, gamma, beta = _data(shape)
    mask = None
    if masked:
        mask = np.random.default_rng(1).random(shape[:-1]) > 0.3
        mask[:, 0] = True  # every sample keeps a position
    ours = ManualBatchNorm(epsilon=1e-3, virtual_batch_size=ghost, fused=False)
    ours.build(shape)
    _same_weights(ours, gamma, beta)
    reference = _PlainFormula(1e-3, weights=None if mask is None else mask[..., None], ghost=ghost)
    reference.build(shape)
    _same_weights(reference, gamma, beta)
    if mask is not None:
        ours = _WithMask(ours, mask)
    hand = _grads(ours, x, dy, hand_written=True)
    _assert_close(hand, input_and_weight_grads(reference, x, dy))
    _assert_close(hand, _grads(ours, x, dy, hand_written=False))


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"axis": 1}, id="channels-first"),
        pytest.param({"axis": [1, 3]}, id="two-axes"),
        pytest.param({"scale": False}, id="no-gamma"),
        pytest.param({"center": False}, id="no-beta"),
        pytest.param({"scale": False, "center": False}, id="neither"),
        pytest.param({"renorm": True, "renorm_clipping": {"rmax": 1.5, "dmax": 0.5}}, id="renorm"),
        pytest.param({"renorm": True, "virtual_batch_size": 2}, id="renorm-ghost"),
        pytest.param({"unbiased_variance": True, "momentum": None}, id="cumulative"),
    ],
)
def test_hand_written_matches_autodiff_for_every_option(options):
    shape = (4, 3, 5, 2)
    x, dy, _, _ = _data(shape, seed=2)
    layers = []
    for _ in range(2):
        layer = ManualBatchNorm(fused=False, **options)
        layer.build(shape)
        rng = np.random.default_rng(3)
        for weight in layer.trainable_weights:
            weight.assign(rng.uniform(0.5, 2.0, weight.shape).astype("float32"))
        if options.get("renorm"):
            # Moving renorm statistics away from the batch's, so r and d matter.
            layer.renorm_mean.assign(np.full(layer.renorm_mean.shape, 2.5, "float32"))
            layer.renorm_stddev.assign(np.full(layer.renorm_stddev.shape, 1.5, "float32"))
        layers.append(layer)
    _assert_close(
        _grads(layers[0], x, dy, hand_written=True), _grads(layers[1], x, dy, hand_written=False)
    )


@pytest.mark.parametrize(
    "options, masked",
    [
        pytest.param({}, False, id="plain"),
        pytest.param({"axis": 1}, False, id="channels-first"),
        pytest.param({"virtual_batch_size": 4}, False, id="ghost"),
        pytest.param({"renorm": True}, False, id="renorm"),
        pytest.param({"center": False}, False, id="no-beta"),
        pytest.param({}, True, id="masked"),
    ],
)
def test_second_derivatives_match_autodiff(options, masked):
    """A gradient penalty differentiates the backward pass: the closed form must stay exact.

    Its saved statistics carry no gradient, so the backward recomputes them from
    `x` when it is differentiated; without that, TensorFlow returned no
    gradient for `x` and JAX a zero one.
    """
    shape = (8, 3, 3, 2)
    x, upstream, _, _ = _data(shape, seed=6)
    direction = np.random.default_rng(7).normal(size=shape).astype("float32")
    mask = np.random.default_rng(8).random(shape[:-1]) > 0.3 if masked else None
    results = []
    for hand_written in (True, False):
        layer = ManualBatchNorm(fused=False, **options)
        layer.build(shape)
        layer.gamma.assign(np.linspace(0.5, 2.0, layer.gamma.shape[0]).astype("float32"))
        if mask is not None:
            layer = _WithMask(layer, mask)
        with paths.use_hand_written(hand_written):
            results.append(gradient_penalty_grads(layer, x, upstream, direction))
    _assert_close(*results)
    assert np.abs(results[1][0]).max() > 0.1  # the reference is not trivially zero


def test_hand_written_matches_autodiff_in_mixed_precision():
    shape = (16, 4, 4, 3)
    x, dy, gamma, beta = _data(shape, seed=4)
    x = x.astype("float16")
    layers = []
    for _ in range(2):
        layer = ManualBatchNorm(dtype="mixed_float16", fused=False)
        layer.build(shape)
        _same_weights(layer, gamma, beta)
        layers.append(layer)
    hand = _grads(layers[0], x, dy, hand_written=True)
    auto = _grads(layers[1], x, dy, hand_written=False)
    assert hand[1].dtype == np.float32  # gamma's gradient stays float32
    # The input gradient is float16 on both paths: compare to float16's precision.
    _assert_close(hand, auto, rtol=2e-3, atol=2e-3)


def test_hand_written_trains_the_same_as_autodiff():
    """A few `fit` steps of a small conv net: the same weights either way, up to round-off."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(32, 6, 6, 2)).astype("float32")
    y = rng.normal(size=(32, 3)).astype("float32")
    weights = []
    for hand_written in (True, False):
        with paths.use_hand_written(hand_written):
            keras.utils.set_random_seed(0)
            model = keras.Sequential(
                [
                    keras.Input((6, 6, 2)),
                    keras.layers.Conv2D(4, 3, use_bias=False),
                    ManualBatchNorm(fused=False),
                    keras.layers.ReLU(),
                    keras.layers.Flatten(),
                    keras.layers.Dense(3),
                ]
            )
            model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
            model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
            weights.append([np.asarray(w) for w in model.get_weights()])
    for a, b in zip(*weights):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_default_is_a_bool_per_backend():
    assert set(paths.DEFAULT) == {"tensorflow", "jax", "torch"}
    with paths.use_hand_written(False):
        assert paths.hand_written() is False
        with paths.use_hand_written(True):
            assert paths.hand_written() is True
        assert paths.hand_written() is False
    assert paths.hand_written() is paths.DEFAULT[keras.backend.backend()]
