"""Prints how far ManualBatchNorm is from keras.layers.BatchNormalization on this backend.

Usage: KERAS_BACKEND=jax python scripts/parity_report.py

Same weights, same batches: three training steps, then inference, for the axes and
ranks the parity tests use. Prints the largest absolute difference of outputs and
moving statistics, and the largest relative difference of gradients.
"""

import sys
from pathlib import Path

import numpy as np

import keras

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "layer"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers import input_and_weight_grads, to_numpy  # noqa: E402
from test_batch_norm import CASES, _batch, _random_state, _set_state  # noqa: E402

from keras_bn import ManualBatchNorm  # noqa: E402


def main():
    """Runs every case and prints the worst differences."""
    worst_out = worst_stat = worst_grad = 0.0
    for shape, axis in CASES:
        rng = np.random.default_rng(0)
        ours = ManualBatchNorm(axis=axis, momentum=0.9)
        ref = keras.layers.BatchNormalization(axis=axis, momentum=0.9)
        for layer in (ours, ref):
            layer.build(shape)
        state = _random_state(rng, shape[axis])
        _set_state(ours, state)
        _set_state(ref, state)
        for step in range(4):
            x = _batch(rng, shape)
            training = step < 3
            diff = np.abs(to_numpy(ours(x, training=training)) - to_numpy(ref(x, training=training)))
            worst_out = max(worst_out, float(diff.max()))
            for name in ("moving_mean", "moving_variance"):
                d = np.abs(to_numpy(getattr(ours, name)) - to_numpy(getattr(ref, name)))
                worst_stat = max(worst_stat, float(d.max()))
        up = rng.normal(size=shape).astype("float32")
        for a, b in zip(input_and_weight_grads(ours, x, up), input_and_weight_grads(ref, x, up)):
            worst_grad = max(worst_grad, float((np.abs(a - b) / (np.abs(b) + 1e-3)).max()))
    print(
        f"backend={keras.backend.backend()} cases={len(CASES)} "
        f"max|output diff|={worst_out:.3g} max|moving stat diff|={worst_stat:.3g} "
        f"max relative gradient diff={worst_grad:.3g}"
    )


if __name__ == "__main__":
    main()
