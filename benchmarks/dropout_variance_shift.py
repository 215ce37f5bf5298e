"""Dropout before a batch norm: what `recalibrate_batch_norm` gives with dropout on and off.

Usage (any backend, from the repository root, with the real MNIST):

    KERAS_BN_MNIST_DIR=/path/to/mnist python benchmarks/dropout_variance_shift.py
    python benchmarks/dropout_variance_shift.py --seeds 5 --steps 800 --batch-size 64

For each seed, a small conv net with `Dropout(0.5)` before its second convolution
and batch norm (conv16-bn-relu-pool, dropout, conv32-bn-relu-pool, dense) is
trained with Adam on MNIST's training split. Then `recalibrate_batch_norm` runs
on 50 training batches twice, with `dropout="training"` and `dropout="inference"`.
After each, the script compares the second batch norm's moving variance with the
variance of its input at inference (dropout off, the first batch norm on its
moving statistics), channel by channel, over the same 50 batches, and scores the
test split. A script, not a test: it asserts nothing.
"""

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np

from keras_bn import ManualBatchNorm, load_mnist, recalibrate_batch_norm


def build(rate, seed):
    """Returns the conv net with `Dropout(rate)` before `conv2` and `bn2`, compiled."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((28, 28, 1))
    h = keras.layers.Conv2D(16, 3, padding="same", use_bias=False)(inputs)
    h = keras.layers.MaxPooling2D()(keras.layers.ReLU()(ManualBatchNorm(name="bn1")(h)))
    h = keras.layers.Dropout(rate, seed=seed)(h)
    h = keras.layers.Conv2D(32, 3, padding="same", use_bias=False, name="conv2")(h)
    h = keras.layers.MaxPooling2D()(keras.layers.ReLU()(ManualBatchNorm(name="bn2")(h)))
    outputs = keras.layers.Dense(10)(keras.layers.Flatten()(h))
    model = keras.Model(inputs, outputs)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def inference_variance(model, x, batch_size):
    """Returns the per-channel variance of `bn2`'s input over `x`, the model in inference mode."""
    probe = keras.Model(model.inputs, model.get_layer("conv2").output)
    h = probe.predict(x, batch_size=batch_size, verbose=0).astype(np.float64)
    return h.reshape(-1, h.shape[-1]).var(axis=0)


def measure(seed, args, data):
    """Trains one seed; returns the ratios and accuracies of each recalibration."""
    model = build(args.rate, seed)
    train, test = data.train, data.test
    model.fit(train.images, train.labels, batch_size=args.batch_size, epochs=1,
              steps_per_epoch=args.steps, shuffle=True, verbose=0)
    calibration = train.images[: 50 * args.batch_size]
    result = {"trained": model.evaluate(test.images, test.labels, batch_size=500, verbose=0)[1]}
    for mode in ("training", "inference"):
        recalibrate_batch_norm(model, calibration, batch_size=args.batch_size, dropout=mode)
        moving = np.asarray(keras.ops.convert_to_numpy(model.get_layer("bn2").moving_variance))
        ratio = moving / inference_variance(model, calibration, args.batch_size)
        accuracy = model.evaluate(test.images, test.labels, batch_size=500, verbose=0)[1]
        result[mode] = (ratio, accuracy)
    return result


def main():
    """Parses the flags, runs every seed, prints one line per seed and a summary."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=800, help="training batches (at most one epoch)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rate", type=float, default=0.5, help="the dropout rate")
    args = parser.parse_args()
    data = load_mnist(one_hot=False)
    print(f"backend {keras.backend.backend()}, Dropout({args.rate}), {args.steps} batches of "
          f"{args.batch_size}, recalibrated on 50")
    print("variance ratio of bn2, recalibrated / at inference, with dropout on")
    print("and off: mean [min, max] over channels; test accuracy: trained, then")
    print("recalibrated with dropout on, then off")
    rows, start = [], time.perf_counter()
    for seed in range(args.seeds):
        r = measure(seed, args, data)
        rows.append(r)
        on, off = r["training"], r["inference"]
        print(f"{seed:2d}  on {on[0].mean():.3f} [{on[0].min():.3f}, {on[0].max():.3f}]"
              f"  off {off[0].mean():.3f} [{off[0].min():.3f}, {off[0].max():.3f}]"
              f"  {r['trained']:.4f} {on[1]:.4f} {off[1]:.4f}")

    def summary(values):
        return f"{statistics.mean(values):.4f} +- {statistics.pstdev(values):.4f}"

    print(f"ratio on {summary([r['training'][0].mean() for r in rows])}, "
          f"off {summary([r['inference'][0].mean() for r in rows])}")
    print(f"accuracy trained {summary([r['trained'] for r in rows])}, "
          f"on {summary([r['training'][1] for r in rows])}, "
          f"off {summary([r['inference'][1] for r in rows])}")
    print(f"time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
