"""`synchronized=True` on real distributed engines, with two CPU devices.

Each case runs in its own Python process: the device count must be set before
TensorFlow or JAX starts, and Keras picks its backend once per process. The check:
two replicas of 16 give the outputs and moving statistics of one batch of 32
normalized on one device; without synchronization (on TensorFlow) they do not.
"""

import json
import os
import subprocess
import sys
import textwrap

COMMON = """
import json
import numpy as np
import keras
from keras_bn import ManualBatchNorm

rng = np.random.default_rng(0)
x = rng.normal(2.0, 3.0, size=(32, 4, 4, 3)).astype("float32")
x[16:] += 5.0  # the halves differ: per-replica statistics would differ from global ones
reference = ManualBatchNorm(momentum=0.5)
y_reference = keras.ops.convert_to_numpy(reference(x, training=True))

def gap(layer):
    return max(
        float(np.abs(keras.ops.convert_to_numpy(getattr(layer, name))
                     - keras.ops.convert_to_numpy(getattr(reference, name))).max())
        for name in ("moving_mean", "moving_variance")
    )

def fit_gap(synchronized, scope):
    with scope:
        inputs = keras.Input((4, 4, 3))
        bn = ManualBatchNorm(synchronized=synchronized, momentum=0.5)
        model = keras.Model(inputs, bn(inputs))
        model.compile(optimizer="sgd", loss="mse")
    model.fit(x, np.zeros_like(x), batch_size=32, epochs=1, verbose=0, shuffle=False)
    return gap(bn)
"""

TENSORFLOW = """
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
""" + COMMON + """
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    layer = ManualBatchNorm(synchronized=True, momentum=0.5)
    layer.build(x.shape)
batch = next(iter(strategy.experimental_distribute_dataset(
    tf.data.Dataset.from_tensor_slices(x).batch(32))))

@tf.function
def step(b):
    return strategy.run(lambda t: layer(t, training=True), args=(b,))

parts = strategy.experimental_local_results(step(batch))
y = np.concatenate([p.numpy() for p in parts])

# Input gradients with the global statistics, both backward passes, against
# one device holding the whole batch.
from keras_bn._layer import paths
dy = rng.normal(size=x.shape).astype("float32")
xt = tf.constant(x)
with tf.GradientTape() as tape:
    tape.watch(xt)
    loss = tf.reduce_sum(ManualBatchNorm(momentum=0.5)(xt, training=True) * dy)
grad_reference = tape.gradient(loss, xt).numpy()
pairs = next(iter(strategy.experimental_distribute_dataset(
    tf.data.Dataset.from_tensor_slices((x, dy)).batch(32))))

def grad_gap(hand_written):
    with strategy.scope():
        synced = ManualBatchNorm(synchronized=True, momentum=0.5)
        synced.build(x.shape)

    def replica(t, d):
        with tf.GradientTape() as tape:
            tape.watch(t)
            loss = tf.reduce_sum(synced(t, training=True) * d)
        return tape.gradient(loss, t)

    with paths.use_hand_written(hand_written):
        grads = strategy.run(tf.function(replica), args=pairs)
    grads = np.concatenate([g.numpy() for g in strategy.experimental_local_results(grads)])
    return float(np.abs(grads - grad_reference).max())

print(json.dumps({
    "grad_gap_closed_form": grad_gap(True),
    "grad_gap_autodiff": grad_gap(False),
    "replicas": strategy.num_replicas_in_sync,
    "replica_batch": int(parts[0].shape[0]),
    "output_gap": float(np.abs(y - y_reference).max()),
    "stat_gap": gap(layer),
    "fit_gap_synchronized": fit_gap(True, strategy.scope()),
    "fit_gap_local": fit_gap(False, strategy.scope()),
}))
"""

JAX = """
import jax
""" + COMMON + """
import contextlib
keras.distribution.set_distribution(keras.distribution.DataParallel(devices=jax.devices()))
print(json.dumps({
    "replicas": len(jax.devices()),
    "fit_gap_synchronized": fit_gap(True, contextlib.nullcontext()),
    "fit_gap_local": fit_gap(False, contextlib.nullcontext()),
}))
"""


def _run(backend, code):
    """Runs `code` in a fresh interpreter on `backend` with two CPU devices; returns its JSON line."""
    env = dict(
        os.environ,
        KERAS_BACKEND=backend,
        TF_CPP_MIN_LOG_LEVEL="3",
        XLA_FLAGS="--xla_force_host_platform_device_count=2",
    )
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_synchronized_under_tensorflow_mirrored_strategy():
    result = _run("tensorflow", TENSORFLOW)
    assert result["replicas"] == 2 and result["replica_batch"] == 16
    assert result["output_gap"] < 1e-5
    assert result["stat_gap"] < 1e-5
    assert result["fit_gap_synchronized"] < 1e-5
    # Without synchronization each replica sees only its half: far off.
    assert result["fit_gap_local"] > 0.5
    assert result["grad_gap_closed_form"] < 1e-5
    assert result["grad_gap_autodiff"] < 1e-5


def test_global_statistics_under_jax_data_parallel():
    result = _run("jax", JAX)
    assert result["replicas"] == 2
    assert result["fit_gap_synchronized"] < 1e-5
    # Under DataParallel the batch is one global sharded array: the statistics are
    # global with or without `synchronized` (documented).
    assert result["fit_gap_local"] < 1e-5
