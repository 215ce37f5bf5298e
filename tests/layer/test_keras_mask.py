"""Keras's mask convention, against `keras.layers.BatchNormalization` itself, on every backend.

Keras's layer reads a mask one dimension short of its input with a size-1 axis added
last, whatever `axis` is; `ManualBatchNorm` reads it the same way wherever that
broadcasts, and at `axis` only where it does not (docs/guide/masking.md). Both layers
get the same weights and the same masks here: outputs, moving statistics and
gradients must agree, in training and inference, for channel axes first, middle and
last, ranks 3 and 4, with a `Masking` layer upstream in a fitted model, with ghost
batches, on the kernel path and with statistics synchronized over real replicas
(each engine in its own processes). Keras's own masking tests
(keras/src/layers/normalization/batch_normalization_test.py, Keras 3.15) are ported
and run on both layers, so a port that drifted from Keras would fail on Keras's.
"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import keras
from helpers import input_and_weight_grads, kernel_at_any_size, to_numpy
from keras_bn import ManualBatchNorm
from keras_bn._layer import paths

BACKEND = keras.backend.backend()
# Keras's layer divides by `count + 1e-7` where ours divides by `count`, and its
# backward is autodiff where ours may be the closed form: float32 round-off apart.
# Worst seen (Keras 3.15, relative to the largest reference value, outputs, weights
# and gradients alike): 3.5e-7 on TensorFlow and JAX, 1.1e-7 on PyTorch.
TOL = 2e-6
STATISTICS = ("gamma", "beta", "moving_mean", "moving_variance")

# (input shape, axis, mask shape): every mask is one dimension short, as Keras takes it.
KERAS_CASES = [
    pytest.param((5, 2, 3), 1, (5, 2), id="rank3-axis1"),  # issue 27's two shapes
    pytest.param((5, 3, 3, 2), 1, (5, 3, 3), id="rank4-axis1"),
    pytest.param((6, 4, 3), -1, (6, 4), id="rank3-last"),
    pytest.param((4, 3, 5, 2), 2, (4, 3, 5), id="rank4-axis2"),
    pytest.param((4, 3, 5, 2), -2, (4, 3, 5), id="rank4-axis-2"),
    pytest.param((4, 3, 3), 1, (4, 3), id="both-readings-fit"),  # Keras's must win
    pytest.param((2, 2, 3, 4), -1, (2, 2, 1), id="broadcast"),
]


def _assert_close(ours, reference, tol=TOL):
    """Asserts two arrays agree to `tol` relative to the reference's largest value."""
    reference = np.asarray(reference)
    np.testing.assert_allclose(ours, reference, rtol=0, atol=tol * max(1.0, np.abs(reference).max()))


def _mask(rng, shape, axis, rank):
    """Returns a random bool mask of `shape` under which every channel keeps a position."""
    mask = rng.random(shape) > 0.4
    mask.flat[-1] = False  # never all True: the mask must change something
    axis = axis % rank
    if axis < len(shape):  # Keras's reading: mask axis `axis` runs along the channels
        index = [0] * len(shape)
        for c in range(shape[axis]):
            index[axis] = c
            mask[tuple(index)] = True
    mask.flat[0] = True
    return mask


def _pair(shape, axis, rng, **kwargs):
    """Returns `(ours, Keras's)`, built for `shape`, with the same random weights."""
    ours = ManualBatchNorm(axis=axis, **kwargs)
    # Options Keras's layer lacks (or, for synchronized, has on TensorFlow only).
    keras_kwargs = {
        k: v for k, v in kwargs.items() if k not in ("fused", "virtual_batch_size", "synchronized")
    }
    reference = keras.layers.BatchNormalization(axis=axis, **keras_kwargs)
    channels = shape[axis]
    weights = [
        rng.uniform(0.5, 2.0, channels), rng.normal(size=channels),
        rng.normal(size=channels), rng.uniform(0.5, 2.0, channels),
    ]
    for layer in (ours, reference):
        layer.build(shape)
        layer.set_weights([w.astype("float32") for w in weights])
    return ours, reference


def _assert_same_state(ours, reference):
    """Asserts the four weights of both layers agree."""
    for name in STATISTICS:
        _assert_close(to_numpy(getattr(ours, name)), to_numpy(getattr(reference, name)))


class _WithMask(keras.layers.Layer):
    """Calls `inner` with a fixed mask, so the shared gradient helper can pass one."""

    def __init__(self, inner, mask, **kwargs):
        super().__init__(**kwargs)
        self.inner, self.mask = inner, mask
        self.built = True

    def call(self, x, training=None):
        return self.inner(x, training=training, mask=self.mask)


@pytest.mark.parametrize("backward", ["closed-form", "autodiff"])
@pytest.mark.parametrize("shape,axis,mask_shape", KERAS_CASES)
def test_keras_masks_give_keras_numbers(shape, axis, mask_shape, backward):
    rng = np.random.default_rng(sum(shape) + axis)
    x = rng.normal(2.0, 3.0, size=shape).astype("float32")
    mask = _mask(rng, mask_shape, axis, len(shape))
    ours, reference = _pair(shape, axis, rng, momentum=0.7)
    with paths.use_hand_written(backward == "closed-form"):
        y = to_numpy(ours(x, training=True, mask=mask))
    _assert_close(y, to_numpy(reference(x, training=True, mask=mask)))
    _assert_same_state(ours, reference)
    # The check can fail: the mask moved the statistics away from the unmasked ones.
    unmasked = keras.layers.BatchNormalization(axis=axis, momentum=0.7)
    unmasked.build(shape)
    unmasked.set_weights(ours.get_weights())
    assert not np.allclose(to_numpy(unmasked(x, training=True)), y, atol=1e-3)

    # Inference ignores the mask, in both layers.
    inference = to_numpy(ours(x, training=False, mask=mask))
    _assert_close(inference, to_numpy(reference(x, training=False, mask=mask)))
    _assert_close(inference, to_numpy(ours(x, training=False)), tol=0)

    dy = rng.normal(size=shape).astype("float32")
    ours, reference = _pair(shape, axis, rng)
    with paths.use_hand_written(backward == "closed-form"):
        grads = input_and_weight_grads(_WithMask(ours, mask), x, dy)
    for a, b in zip(grads, input_and_weight_grads(_WithMask(reference, mask), x, dy), strict=True):
        _assert_close(a, b)


def test_keras_reading_wins_where_both_readings_fit():
    # Channels-first (batch, 3, 3): a (batch, 3) mask fits at the end (Keras) and at axis 1.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 3, 3)).astype("float32")
    mask = np.array([[1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 0, 1]], bool)
    layer = ManualBatchNorm(axis=1, momentum=0.0)
    layer(x, training=True, mask=mask)
    per_channel = np.moveaxis(x.astype("float64"), 1, 0).reshape(3, -1)

    def means(keep):
        keep = np.moveaxis(np.broadcast_to(keep, x.shape), 1, 0).reshape(3, -1)
        return [row[k].mean() for row, k in zip(per_channel, keep)]

    np.testing.assert_allclose(to_numpy(layer.moving_mean), means(mask[:, :, None]), 1e-5, 1e-6)
    assert not np.allclose(means(mask[:, :, None]), means(mask[:, None, :]), atol=1e-3)


def test_at_axis_where_keras_reading_does_not_fit():
    # Channels-first (batch, 3, 7) with a (batch, 7) sequence mask: Keras's layer
    # cannot broadcast it; ours reads it at axis 1, as the full-rank (batch, 1, 7).
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4, 3, 7)).astype("float32")
    mask = _mask(rng, (4, 7), 0, 3)
    with pytest.raises(Exception):  # its type depends on the backend
        keras.layers.BatchNormalization(axis=1)(x, training=True, mask=mask)
    short, full = ManualBatchNorm(axis=1, momentum=0.0), ManualBatchNorm(axis=1, momentum=0.0)
    y = to_numpy(short(x, training=True, mask=mask))
    _assert_close(y, to_numpy(full(x, training=True, mask=mask[:, None, :])), tol=0)
    kept = np.moveaxis(x, 1, 0)[:, mask]  # (channels, kept positions)
    _assert_close(to_numpy(short.moving_mean), kept.mean(axis=1), tol=1e-6)


def test_a_channel_with_nothing_to_count():
    # Keras's convention with axis=1 masks whole channels of a sample: a channel that
    # is all padding in every sample (a time step padded in the whole batch) has no
    # batch statistics. Keras's layer divides 0 by 1e-7 and normalizes it with a mean
    # and variance of 0, which its moving averages then take in: a mask in Keras's
    # shape gets those numbers. The same mask at the input's rank is keras-bn's own
    # reading: that channel is normalized with its moving statistics, which stay
    # (docs/guide/masking.md).
    rng = np.random.default_rng(9)
    x = rng.normal(2.0, 3.0, size=(6, 3, 4)).astype("float32")
    x[:, 1, :] = 0.0
    mask = np.any(x != 0.0, axis=-1)  # what keras.layers.Masking() gives: (6, 3)
    ours, reference = _pair(x.shape, 1, rng, momentum=0.7)
    start = ours.get_weights()
    y, y_keras = (to_numpy(layer(x, training=True, mask=mask)) for layer in (ours, reference))
    _assert_close(y, y_keras)
    _assert_same_state(ours, reference)
    _assert_close(y_keras[:, 1], np.full((6, 4), start[1][1]))  # Keras's: (0 - 0) / sqrt(0 + eps) + beta
    _assert_close(to_numpy(reference.moving_variance)[1], 0.7 * start[3][1])

    own = ManualBatchNorm(axis=1, momentum=0.7)
    own.build(x.shape)
    own.set_weights(start)
    y = to_numpy(own(x, training=True, mask=mask[:, :, None]))  # the input's rank
    gamma, beta, moving_mean, moving_variance = (w[1] for w in start)
    _assert_close(y[:, 1], (0.0 - moving_mean) / np.sqrt(moving_variance + 1e-3) * gamma + beta)
    _assert_close(to_numpy(own.moving_variance)[1], moving_variance, tol=0)
    kept = [0, 2]
    _assert_close(y[:, kept], y_keras[:, kept])


def test_numeric_mask_counts_where_not_zero():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(6, 2, 3)).astype("float32")
    weights = np.array([1.0, 0.5, 0.0, 2.0, 0.0, 0.25], "float32")[:, None].repeat(2, 1)
    ours, reference = _pair(x.shape, 1, rng, momentum=0.5)
    y = to_numpy(ours(x, training=True, mask=weights))
    _assert_close(y, to_numpy(reference(x, training=True, mask=weights)))
    _assert_same_state(ours, reference)
    bool_mask = ManualBatchNorm(axis=1, momentum=0.5)
    bool_mask.build(x.shape)
    bool_mask.set_weights(reference.get_weights())  # after the step: replay it from there
    ours.set_weights(reference.get_weights())
    _assert_close(to_numpy(ours(x, training=True, mask=weights)),
                  to_numpy(bool_mask(x, training=True, mask=weights != 0)), tol=0)


@pytest.mark.skipif(BACKEND != "tensorflow", reason="only a TensorFlow graph has sizes unknown when run")
def test_a_graph_traced_for_any_size_reads_each_mask_as_an_eager_call():
    import tensorflow as tf

    layer = ManualBatchNorm(axis=1, momentum=0.0)
    layer.build((None, 3, None))
    signature = [tf.TensorSpec((None, 3, None)), tf.TensorSpec((None, None), tf.bool)]
    step = tf.function(lambda x, m: layer(x, training=True, mask=m), input_signature=signature)
    rng = np.random.default_rng(3)
    for steps in (3, 7):  # Keras's reading fits, then only the one at axis 1
        x = rng.normal(size=(4, 3, steps)).astype("float32")
        mask = _mask(rng, (4, steps), 1 if steps == 3 else 0, 3)
        eager = ManualBatchNorm(axis=1, momentum=0.0)
        _assert_close(step(x, mask).numpy(), to_numpy(eager(x, training=True, mask=mask)), tol=0)
        _assert_close(to_numpy(layer.moving_variance), to_numpy(eager.moving_variance), tol=0)


@pytest.mark.parametrize("run_eagerly", [False, True])
@pytest.mark.parametrize("shape,axis", [((2, 3), 1), ((3, 3, 2), 1), ((4, 3), -1), ((3, 4, 2), 2)])
def test_masking_layer_upstream_in_a_fitted_model(shape, axis, run_eagerly):
    rng = np.random.default_rng(4)
    x = rng.normal(1.0, 2.0, size=(16,) + shape).astype("float32")
    padding = rng.random((16,) + shape[:-1]) < 0.3
    padding[0] = False  # every channel keeps a position in every batch
    padding[8] = False
    x[padding] = 0.0
    y = rng.normal(size=x.shape).astype("float32")
    models = []
    for layer_class in (ManualBatchNorm, keras.layers.BatchNormalization):
        inputs = keras.Input(shape)
        outputs = layer_class(axis=axis, momentum=0.5, name="bn")(keras.layers.Masking()(inputs))
        model = keras.Model(inputs, outputs)
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse", run_eagerly=run_eagerly)
        model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
        models.append(model)
    ours, reference = (m.get_layer("bn") for m in models)
    _assert_same_state(ours, reference)
    assert not np.allclose(to_numpy(ours.gamma), 1.0)  # the fit moved the weights
    _assert_close(models[0].predict(x, verbose=0), models[1].predict(x, verbose=0))


# -- ghost batches, the kernel path, synchronized statistics -------------------------


def test_ghost_batches_with_a_keras_mask():
    # Each ghost batch is normalized as Keras's layer normalizes it alone, with its
    # part of the mask; the moving statistics follow the mean of the groups' ones.
    rng = np.random.default_rng(5)
    x = rng.normal(2.0, 3.0, size=(12, 2, 3)).astype("float32")
    x[4:8] += 3.0  # the groups differ
    mask = _mask(rng, (12, 2), 1, 3)
    mask[4:8] = mask[8:] = mask[:4]  # every group keeps every channel
    ours, _ = _pair(x.shape, 1, rng, momentum=0.6, virtual_batch_size=4)
    start = ours.get_weights()
    y = to_numpy(ours(x, training=True, mask=mask))
    means, variances = [], []
    for part in (slice(0, 4), slice(4, 8), slice(8, 12)):
        group = keras.layers.BatchNormalization(axis=1, momentum=0.0)
        group.build(x.shape)
        group.set_weights(start)
        _assert_close(y[part], to_numpy(group(x[part], training=True, mask=mask[part])))
        means.append(to_numpy(group.moving_mean))
        variances.append(to_numpy(group.moving_variance))
    _assert_close(to_numpy(ours.moving_mean), 0.6 * start[2] + 0.4 * np.mean(means, 0))
    _assert_close(to_numpy(ours.moving_variance), 0.6 * start[3] + 0.4 * np.mean(variances, 0))


@pytest.mark.parametrize("shape,axis,mask_shape", KERAS_CASES[:4])
def test_kernel_path_with_keras_masks(shape, axis, mask_shape):
    rng = np.random.default_rng(6)
    x = rng.normal(2.0, 3.0, size=shape).astype("float32")
    mask = _mask(rng, mask_shape, axis, len(shape))
    # fused=None: the kernel wherever it applies (here at any size), and a masked
    # training call takes the hand-written path with Keras's numbers.
    with kernel_at_any_size():
        ours, reference = _pair(shape, axis, rng, momentum=0.7, fused=None)
        _assert_close(to_numpy(ours(x, training=True, mask=mask)),
                      to_numpy(reference(x, training=True, mask=mask)))
        _assert_same_state(ours, reference)
    if BACKEND not in paths.NATIVE_BACKENDS:
        return  # JAX has no kernel: fused=True is refused at construction (tests/layer/test_native.py)
    # fused=True: the kernel in inference, where the mask changes nothing; refused in
    # training, where the kernel cannot leave positions out.
    kernel = ManualBatchNorm(axis=axis, fused=True)
    kernel.build(shape)
    kernel.set_weights(reference.get_weights())
    _assert_close(to_numpy(kernel(x, training=False, mask=mask)),
                  to_numpy(reference(x, training=False, mask=mask)))
    with pytest.raises(ValueError, match=r"`fused=True` needs .* cannot use with: a mask"):
        kernel(x, training=True, mask=mask)


def test_synchronized_with_a_keras_mask_in_one_process():
    # One replica: synchronized statistics are the batch's own (Keras's layer takes
    # synchronized=True on TensorFlow only; without replicas it changes nothing).
    rng = np.random.default_rng(7)
    x = rng.normal(2.0, 3.0, size=(5, 3, 3, 2)).astype("float32")
    mask = _mask(rng, (5, 3, 3), 1, 4)
    ours, reference = _pair(x.shape, 1, rng, momentum=0.7, synchronized=True)
    _assert_close(to_numpy(ours(x, training=True, mask=mask)),
                  to_numpy(reference(x, training=True, mask=mask)))
    _assert_same_state(ours, reference)


# -- Keras's own masking tests, ported: each runs on Keras's layer and on ours -------

LAYERS = [
    pytest.param(keras.layers.BatchNormalization, id="keras"),
    pytest.param(ManualBatchNorm, id="manual"),
]


@pytest.mark.parametrize("layer_class", LAYERS)
@pytest.mark.parametrize("moving_variance_initializer", ["zeros", "ones"])
@pytest.mark.parametrize("moving_mean_initializer", ["zeros", "ones"])
@pytest.mark.parametrize("input_shape", [(5, 2, 3), (5, 3, 3, 2)])
@pytest.mark.parametrize("axis", [-1, 1])
def test_keras_correctness(layer_class, axis, input_shape, moving_mean_initializer, moving_variance_initializer):
    """Keras's `test_correctness`: training, inference, then `Masking` output with axis -1 and 1."""
    layer = layer_class(
        axis=axis, momentum=0,
        moving_mean_initializer=moving_mean_initializer,
        moving_variance_initializer=moving_variance_initializer,
    )
    x = np.random.default_rng(8).normal(loc=5.0, scale=10.0, size=input_shape)
    out = x
    for _ in range(3):
        out = layer(out, training=True)
    broadcast_shape = [1] * len(input_shape)
    broadcast_shape[axis] = input_shape[axis]
    out = to_numpy(out) - np.reshape(to_numpy(layer.beta), broadcast_shape)
    out = out / np.reshape(to_numpy(layer.gamma), broadcast_shape)
    reduction_axes = tuple(i for i in range(len(input_shape)) if i != axis % len(input_shape))
    np.testing.assert_allclose(np.mean(out, axis=reduction_axes), 0.0, atol=1e-3)
    np.testing.assert_allclose(np.std(out, axis=reduction_axes), 1.0, atol=1e-3)
    np.testing.assert_allclose(to_numpy(layer.moving_mean), 0.0, atol=1e-3)
    np.testing.assert_allclose(to_numpy(layer.moving_variance), 1.0, atol=1e-3)

    inference_out = layer(x, training=False)
    training_out = layer(x, training=True)
    assert not np.allclose(to_numpy(inference_out), to_numpy(training_out), atol=1e-6, rtol=1e-6)
    training_out = layer(x, training=True)
    inference_out = layer(x, training=False)
    np.testing.assert_allclose(to_numpy(inference_out), to_numpy(training_out), atol=1e-6, rtol=1e-6)

    # Masked result with no training should not differ.
    x[:, 1, :] = 0.0
    unmasked_out = layer(x, training=False)
    masked_out = layer(keras.layers.Masking()(x), training=False)
    np.testing.assert_allclose(to_numpy(unmasked_out), to_numpy(masked_out), atol=1e-6, rtol=1e-6)
    # Masked result should differ from unmasked result.
    masked_out = layer(keras.layers.Masking()(x), training=True)
    assert not np.allclose(to_numpy(unmasked_out), to_numpy(masked_out), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("synchronized", [False, True])
@pytest.mark.parametrize("layer_class", LAYERS)
def test_keras_input_fully_masked(layer_class, synchronized):
    """Keras's `test_input_fully_masked` (its synchronized=True on TensorFlow only)."""
    if synchronized and layer_class is not ManualBatchNorm and BACKEND != "tensorflow":
        pytest.skip("Keras's layer takes synchronized=True on TensorFlow only")
    norm = layer_class(scale=False, center=False, synchronized=synchronized)
    x = np.zeros((4, 5))
    y = norm(x, mask=np.zeros((4,), dtype=np.float32), training=True)
    np.testing.assert_allclose(to_numpy(y), np.zeros_like(x, dtype=np.float32), atol=1e-6)


@pytest.mark.parametrize("layer_class", LAYERS)
@pytest.mark.parametrize("mask_value", [0.0, 0.1, 1])
@pytest.mark.parametrize("run_eagerly", [True, False])
def test_keras_ignore_masked_values(run_eagerly, mask_value, layer_class):
    """Keras's `test_bachnorm_ignore_masked_values`: padding left out of a fit's statistics."""
    row = [[1, 5], [2, 5], [mask_value, mask_value], [mask_value, mask_value]]
    padded_data = np.array([row for _ in range(10)], dtype="float32")
    inputs = keras.layers.Input((None, 2))
    masked = keras.layers.Masking(mask_value=mask_value)(inputs)
    model = keras.Model(inputs, layer_class(momentum=0.0)(masked))
    model.compile("rmsprop", loss=keras.losses.MeanSquaredError(), run_eagerly=run_eagerly)
    model.fit(x=padded_data, y=padded_data, batch_size=10, epochs=5, verbose=0)
    np.testing.assert_allclose(to_numpy(model.layers[2].moving_mean), [1.5, 5.0], atol=1e-6)
    np.testing.assert_allclose(to_numpy(model.layers[2].moving_variance), [0.25, 0.0], atol=1e-6)


@pytest.mark.parametrize("layer_class", LAYERS)
def test_keras_masked_broadcast_normalization(layer_class):
    """Keras's `test_masked_broadcast_normalization`: a (1, 2, 1) mask for a (1, 2, 3, 4) input."""
    layer = layer_class(axis=-1, momentum=0.0, epsilon=1e-3)
    y = to_numpy(layer(keras.ops.ones((1, 2, 3, 4)), training=True, mask=keras.ops.ones((1, 2, 1))))
    np.testing.assert_allclose(y.mean(axis=(0, 1, 2)), np.zeros(4), atol=1e-6)
    np.testing.assert_allclose(y, np.zeros_like(y), atol=1e-6)
    np.testing.assert_allclose(to_numpy(layer.moving_mean), np.ones(4), atol=1e-6)
    np.testing.assert_allclose(to_numpy(layer.moving_variance), np.zeros(4), atol=1e-6)


# -- synchronized statistics over two replicas, each engine in its own processes ------
#
# The replicas hold 8 examples each of one batch of 16 (the halves differ), with a
# Keras-convention mask for axis=1; outputs and moving statistics must be those of
# Keras's layer normalizing the 16 examples at once. Each engine needs its devices or
# processes set up before it starts, so these run once per suite, in the TensorFlow
# run, whatever engine they start.

DATA = """
import json, numpy as np
rng = np.random.default_rng(10)
x = rng.normal(2.0, 3.0, size=(16, 2, 3)).astype("float32")
x[8:] += 5.0
mask = rng.random((16, 2)) > 0.3
mask[[0, 8]] = True
"""

TENSORFLOW = """
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
from keras_bn import ManualBatchNorm
""" + DATA + """
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
data = tf.data.Dataset.from_tensor_slices((x, mask)).batch(16)
results = {}
for synchronized in (True, False, "keras"):
    with strategy.scope():
        if synchronized == "keras":  # Keras's own, which synchronizes no masked statistics
            layer = keras.layers.BatchNormalization(axis=1, momentum=0.5, synchronized=True)
        else:
            layer = ManualBatchNorm(axis=1, momentum=0.5, synchronized=synchronized)
        layer.build(x.shape)
    step = tf.function(lambda b, m: strategy.run(lambda t, u: layer(t, training=True, mask=u), args=(b, m)))
    parts = strategy.experimental_local_results(step(*next(iter(strategy.experimental_distribute_dataset(data)))))
    results[str(synchronized)] = {
        "replicas": len(parts),
        "y": np.concatenate([p.numpy() for p in parts]).tolist(),
        "moving_mean": layer.moving_mean.numpy().tolist(),
        "moving_variance": layer.moving_variance.numpy().tolist(),
    }
print(json.dumps(results))
"""

TORCH = """
import os, sys
import torch.distributed as dist
import torch.multiprocessing as mp

def worker(rank, init_file, out):
    os.environ["KERAS_BACKEND"] = "torch"
    dist.init_process_group("gloo", init_method="file://" + init_file, rank=rank, world_size=2)
    import keras
    from keras_bn import ManualBatchNorm
""" + textwrap.indent(DATA, "    ") + """
    layer = ManualBatchNorm(axis=1, momentum=0.5, synchronized=True)
    part = slice(8 * rank, 8 * rank + 8)
    y = keras.ops.convert_to_numpy(layer(x[part], training=True, mask=mask[part]))
    with open(os.path.join(out, f"{rank}.json"), "w") as f:
        json.dump({"replicas": dist.get_world_size(), "y": y.tolist(),
                   "moving_mean": keras.ops.convert_to_numpy(layer.moving_mean).tolist(),
                   "moving_variance": keras.ops.convert_to_numpy(layer.moving_variance).tolist()}, f)
    dist.destroy_process_group()

if __name__ == "__main__":
    import json
    mp.spawn(worker, args=(sys.argv[1], sys.argv[2]), nprocs=2)
    parts = [json.load(open(os.path.join(sys.argv[2], f"{r}.json"))) for r in (0, 1)]
    merged = dict(parts[0], y=parts[0]["y"] + parts[1]["y"])
    assert parts[0]["moving_mean"] == parts[1]["moving_mean"], "the replicas disagree"
    print(json.dumps({"True": merged}))
"""

JAX = """
import jax
import keras
from keras_bn import ManualBatchNorm
""" + DATA + """
# Under DataParallel the batch is one array sharded over the two devices: a fit step
# on it, the mask from a Masking layer (x is 0 where the mask is False).
x[~mask] = 0.0
keras.distribution.set_distribution(keras.distribution.DataParallel(devices=jax.devices()))
inputs = keras.Input((2, 3))
bn = ManualBatchNorm(axis=1, momentum=0.5, synchronized=True)
model = keras.Model(inputs, bn(keras.layers.Masking()(inputs)))
model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")
model.fit(x, np.zeros_like(x), batch_size=16, epochs=1, shuffle=False, verbose=0)
print(json.dumps({"True": {
    "replicas": len(jax.devices()),
    "y": None,
    "moving_mean": keras.ops.convert_to_numpy(bn.moving_mean).tolist(),
    "moving_variance": keras.ops.convert_to_numpy(bn.moving_variance).tolist(),
}}))
"""


def _run_engine(engine, code, tmp_path):
    """Runs `code` in fresh processes on `engine` with two devices or workers; returns its JSON line."""
    script = tmp_path / "replicas.py"
    script.write_text(textwrap.dedent(code))
    (tmp_path / "out").mkdir()
    env = dict(os.environ, KERAS_BACKEND=engine, TF_CPP_MIN_LOG_LEVEL="3",
               XLA_FLAGS="--xla_force_host_platform_device_count=2")
    command = [sys.executable, str(script), str(tmp_path / "init"), str(tmp_path / "out")]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(BACKEND != "tensorflow", reason="starts its own engines: runs once, in the TensorFlow run")
@pytest.mark.parametrize("engine,code", [
    pytest.param("tensorflow", TENSORFLOW, id="tensorflow-mirrored"),
    pytest.param("torch", TORCH, id="torch-gloo"),
    pytest.param("jax", JAX, id="jax-data-parallel"),
])
def test_synchronized_replicas_with_a_keras_mask(engine, code, tmp_path):
    namespace = {}
    exec(DATA, namespace)
    x, mask = namespace["x"], namespace["mask"]
    if engine == "jax":
        x[~mask] = 0.0  # as the script: the mask comes from a Masking layer
    reference = keras.layers.BatchNormalization(axis=1, momentum=0.5)
    y_reference = to_numpy(reference(x, training=True, mask=mask))
    results = _run_engine(engine, code, tmp_path)
    synchronized = results["True"]
    assert synchronized["replicas"] == 2
    if synchronized["y"] is not None:
        _assert_close(np.array(synchronized["y"]), y_reference)
    for name in ("moving_mean", "moving_variance"):
        _assert_close(np.array(synchronized[name]), to_numpy(getattr(reference, name)))
    if engine == "tensorflow":
        # The check can fail: each replica alone sees only its half. So does Keras's
        # layer with a mask, synchronized=True or not (docs/guide/masking.md).
        for local in ("False", "keras"):
            mean = np.array(results[local]["moving_mean"])
            assert np.abs(mean - to_numpy(reference.moving_mean)).max() > 0.5, local
