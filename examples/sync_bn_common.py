"""What the three `sync_bn_*.py` examples check: the data, the model and the references.

Each example script is both the launcher (`sync_bn_launch.py`) and the worker: with
`--rank`, it joins the engine's process group and does the work below. Nothing here
imports an engine at module level, so the test suite can import this file under any
Keras backend.

What every worker checks, against independent references:

- *fit*: two workers train the same small conv net with
  `ManualBatchNorm(synchronized=True)` for a few steps, each on its half of
  every global batch of 32; afterwards the weights and moving statistics must
  equal those of one process (the same worker, once the distributed run is over)
  training from the same initial weights on the concatenated batches.
- *uneven*: a synchronized `ManualBatchNorm` alone sees 12 examples on worker 0
  and 20 on worker 1; its outputs, its moving statistics and the gradients with
  respect to each worker's inputs must be those of the 32 examples together,
  computed here in NumPy (sums and counts, not a mean of the two means).
"""

import numpy as np

WORLD_SIZE = 2
GLOBAL_BATCH = 32
EVEN_SPLIT = (16, 16)
UNEVEN_SPLIT = (12, 20)
STEPS = 4
IMAGE_SHAPE = (6, 6, 3)
OUTPUTS = 2
LEARNING_RATE = 0.1
MOMENTUM = 0.5
EPSILON = 1e-3  # ManualBatchNorm's default, as Keras's.
# Worker 1's examples are shifted: statistics of one worker alone, or a mean of
# the two workers' means (with uneven batches), are far from the global ones.
SHIFT = 4.0


# ----------------------------------------------------------------------------- data


def global_data():
    """Returns the training data: images `(STEPS, 32, 6, 6, 3)` and targets `(STEPS, 32, 2)`."""
    rng = np.random.default_rng(0)
    x = rng.normal(1.0, 2.0, size=(STEPS, GLOBAL_BATCH, *IMAGE_SHAPE)).astype("float32")
    x[:, EVEN_SPLIT[0] :] += SHIFT
    y = rng.normal(size=(STEPS, GLOBAL_BATCH, OUTPUTS)).astype("float32")
    return x, y


def uneven_data():
    """Returns `(x, w)`: 32 inputs `(32, 4, 4, 3)`, worker 1's shifted, and the loss weights."""
    rng = np.random.default_rng(1)
    x = rng.normal(1.0, 2.0, size=(GLOBAL_BATCH, 4, 4, 3)).astype("float32")
    x[UNEVEN_SPLIT[0] :] += SHIFT
    w = rng.normal(size=x.shape).astype("float32")
    return x, w


def local_slice(rank, split):
    """Returns the slice of the global batch that worker `rank` holds."""
    start = sum(split[:rank])
    return slice(start, start + split[rank])


def build_model(synchronized=True):
    """Returns the small conv net of the checks: Conv2D, synchronized ManualBatchNorm, ReLU, pooling, Dense."""
    import keras

    from keras_bn import ManualBatchNorm

    inputs = keras.Input(IMAGE_SHAPE)
    h = keras.layers.Conv2D(4, 3, padding="same", use_bias=False, name="conv")(inputs)
    h = ManualBatchNorm(synchronized=synchronized, momentum=MOMENTUM, name="bn")(h)
    h = keras.layers.ReLU()(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    return keras.Model(inputs, keras.layers.Dense(OUTPUTS, name="dense")(h))


def weights_of(model):
    """Returns `{variable path: NumPy array}` for every variable of `model`, moving statistics included."""
    import keras

    return {
        v.path: np.asarray(keras.ops.convert_to_numpy(v.value)) for v in model.variables
    }


def max_gap(a, b):
    """Returns the largest absolute difference between two `{name: array}` dicts with the same keys."""
    if set(a) != set(b):
        raise ValueError(f"different variables: {sorted(a)} vs {sorted(b)}")
    return max(float(np.abs(np.asarray(a[k]) - np.asarray(b[k])).max()) for k in a)


# ----------------------------------------------------------------------------- NumPy reference


def numpy_reference(x, w, momentum=MOMENTUM, epsilon=EPSILON):
    """Returns batch norm of `x` (channels last, gamma 1, beta 0) in NumPy, independent of keras-bn.

    The loss is `sum(y * w) / len(x)`; `grad` is its gradient with respect to
    `x`, from the closed form of batch norm's backward pass:
    `dx = inv / n * (n * dy - sum(dy) - x_hat * sum(dy * x_hat))`.
    The moving statistics start at 0 and 1 and take one step of `momentum`.
    """
    x = x.astype("float64")
    axes = tuple(range(x.ndim - 1))
    n = np.prod([x.shape[a] for a in axes])
    mean = x.mean(axis=axes)
    variance = ((x - mean) ** 2).mean(axis=axes)
    inv = 1.0 / np.sqrt(variance + epsilon)
    x_hat = (x - mean) * inv
    dy = w.astype("float64") / x.shape[0]
    grad = inv / n * (n * dy - dy.sum(axis=axes) - x_hat * (dy * x_hat).sum(axis=axes))
    return {
        "outputs": x_hat,
        "grad": grad,
        "moving_mean": momentum * 0.0 + (1 - momentum) * mean,
        "moving_variance": momentum * 1.0 + (1 - momentum) * variance,
    }


def uneven_report(rank, outputs, grad, moving_mean, moving_variance):
    """Compares one worker's uneven-batch results with the NumPy reference of all 32 examples.

    Returns the largest errors, and (as a control that the check can fail) how
    far the statistics of a mean of the two workers' means would have been.
    """
    x, w = uneven_data()
    ref = numpy_reference(x, w)
    part = local_slice(rank, UNEVEN_SPLIT)
    parts = [
        x[local_slice(r, UNEVEN_SPLIT)].astype("float64") for r in range(WORLD_SIZE)
    ]
    mean_of_means = np.mean([p.mean(axis=(0, 1, 2)) for p in parts], axis=0)
    return {
        "local_batch": int(np.asarray(outputs).shape[0]),
        "grad_scale": float(np.abs(ref["grad"]).max()),
        "moving_variance_scale": float(np.abs(ref["moving_variance"]).max()),
        "outputs_error": float(
            np.abs(np.asarray(outputs) - ref["outputs"][part]).max()
        ),
        "grad_error": float(np.abs(np.asarray(grad) - ref["grad"][part]).max()),
        "moving_mean_error": float(
            np.abs(np.asarray(moving_mean) - ref["moving_mean"]).max()
        ),
        "moving_variance_error": float(
            np.abs(np.asarray(moving_variance) - ref["moving_variance"]).max()
        ),
        "mean_of_means_gap": float(
            np.abs((1 - MOMENTUM) * mean_of_means - ref["moving_mean"]).max()
        ),
    }


def summarize(results):
    """Returns the largest errors over the workers, and how far apart the workers' weights are."""
    keys = [k for k in results[0] if k.endswith("_error")]
    summary = {k: max(r[k] for r in results) for k in keys}
    for section in ("fit", "uneven"):
        if section in results[0]:
            for k in results[0][section]:
                summary[f"{section}.{k}"] = max(r[section][k] for r in results)
    if "uneven" in results[0]:
        summary["uneven.local_batches"] = [r["uneven"]["local_batch"] for r in results]
    summary["warnings"] = sorted({w for r in results for w in r.get("warnings", [])})
    if "benchmark" in results[0]:
        summary["benchmark"] = [r["benchmark"] for r in results]
    if "final_weights" in results[0]:
        summary["fit.workers_gap"] = max_gap(
            {k: np.array(v) for k, v in results[0]["final_weights"].items()},
            {k: np.array(v) for k, v in results[1]["final_weights"].items()},
        )
    return summary
