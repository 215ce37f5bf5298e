"""Transfer learning on MNIST: batch norm frozen, trained, or recalibrated when fine-tuning on little data.

Usage (from the repository root, with the real MNIST):

    KERAS_BN_MNIST_DIR=/path/to/mnist python examples/transfer_learning.py
    python examples/transfer_learning.py --seeds 5 --pretrain-batches 800 --labelled 300

For each seed, `keras_bn.deep_mnist_model(bn="manual")` is pretrained on the
digits 0-4 of MNIST's training split (`--pretrain-batches` batches of 32, the
notebook's loss and Adam at 0.002). Then it is fine-tuned on `--labelled`
images of the digits 5-9, drawn from the training split with the seed
(`--finetune-batches` batches of 32, Adam at 0.0005), twice from the same
pretrained weights:

- with every batch norm frozen (`layer.trainable = False`: inference mode,
  moving statistics of the digits 0-4, `gamma` and `beta` fixed), and then
  recalibrated on the labelled images (`include_frozen=True`);
- with the batch norms trained as usual, and then recalibrated on the
  labelled images, with dropout in inference and in training mode.

Each model is scored on the test split's digits 5-9. The table gives the mean,
the standard deviation and the range over the seeds.
"""

import argparse
import importlib.util
import os
import statistics
import sys
import time

if importlib.util.find_spec("keras_bn") is None:  # Run from a checkout that is not installed.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np

from keras_bn import (
    compile_like_notebook,
    deep_mnist_model,
    load_mnist,
    recalibrate_batch_norm,
)
from keras_bn.recalibrate import batch_norm_layers

#: The rows of the table, in order.
ROWS = (
    "frozen",
    "frozen, recalibrated (include_frozen=True)",
    "trained",
    "trained, recalibrated (dropout off)",
    "trained, recalibrated (dropout on)",
)
BATCH_SIZE = 32


def digits(split, wanted):
    """Returns the images and one-hot labels of `split` whose digit is in `wanted`."""
    keep = np.isin(split.labels.argmax(axis=1), wanted)
    return split.images[keep], split.labels[keep]


def pretrained_weights(data, seed, batches):
    """Trains `deep_mnist_model(bn="manual")` on the digits 0-4; returns its weights."""
    model = compile_like_notebook(deep_mnist_model(bn="manual", seed=seed))
    x, y = digits(data.train, [0, 1, 2, 3, 4])
    order = np.random.default_rng(seed).permutation(len(x))[: batches * BATCH_SIZE]
    model.fit(x[order], y[order], batch_size=BATCH_SIZE, epochs=1, shuffle=False, verbose=0)
    return model.get_weights()


def fine_tuned(weights, labelled, seed, batches, frozen):
    """Returns the pretrained model fine-tuned on `labelled`, its batch norms `frozen` or not."""
    keras.utils.set_random_seed(seed)
    model = deep_mnist_model(bn="manual", seed=seed)
    model.set_weights(weights)
    for layer in batch_norm_layers(model):
        layer.trainable = not frozen
    compile_like_notebook(model, learning_rate=5e-4)
    x, y = labelled
    epochs = -(-batches * BATCH_SIZE // len(x))  # enough epochs, cut at `batches` steps
    model.fit(x, y, batch_size=BATCH_SIZE, epochs=epochs, steps_per_epoch=None, shuffle=True,
              verbose=0, callbacks=[_StopAfter(batches)])
    return model


class _StopAfter(keras.callbacks.Callback):
    """Stops `fit` after `batches` training batches."""

    def __init__(self, batches):
        super().__init__()
        self.batches, self.seen = batches, 0

    def on_train_batch_end(self, batch, logs=None):
        self.seen += 1
        if self.seen >= self.batches:
            self.model.stop_training = True


def accuracy(model, test):
    """Returns the test accuracy of `model` on `test` (images, one-hot labels)."""
    return float(model.evaluate(*test, batch_size=500, verbose=0)[1])


def study(data, seed, args):
    """Pretrains and fine-tunes for one seed; returns `{row: test accuracy on 5-9}`."""
    weights = pretrained_weights(data, seed, args.pretrain_batches)
    pool = digits(data.train, [5, 6, 7, 8, 9])
    chosen = np.random.default_rng(1000 + seed).choice(len(pool[0]), args.labelled, replace=False)
    labelled = (pool[0][chosen], pool[1][chosen])
    test = digits(data.test, [5, 6, 7, 8, 9])
    row = {}
    model = fine_tuned(weights, labelled, seed, args.finetune_batches, frozen=True)
    row["frozen"] = accuracy(model, test)
    recalibrate_batch_norm(model, labelled[0], batch_size=BATCH_SIZE, include_frozen=True)
    row["frozen, recalibrated (include_frozen=True)"] = accuracy(model, test)
    model = fine_tuned(weights, labelled, seed, args.finetune_batches, frozen=False)
    row["trained"] = accuracy(model, test)
    for mode, name in (("inference", "off"), ("training", "on")):
        recalibrate_batch_norm(model, labelled[0], batch_size=BATCH_SIZE, dropout=mode)
        row[f"trained, recalibrated (dropout {name})"] = accuracy(model, test)
    return row


def table(rows):
    """Returns the summary table over seeds: mean, standard deviation and range per row."""
    lines = [f"{'batch norm in fine-tuning':42s} {'mean':6s} {'std':6s} min-max"]
    for name in ROWS:
        values = [row[name] for row in rows]
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        lines.append(f"{name:42s} {statistics.mean(values):.4f} {spread:.4f} "
                     f"{min(values):.4f}-{max(values):.4f}")
    return "\n".join(lines)


def main(argv=None):
    """Parses the flags, runs every seed, prints one line per seed and the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5, help="number of seeds, 0..N-1")
    parser.add_argument("--pretrain-batches", type=int, default=800)
    parser.add_argument("--labelled", type=int, default=300, help="labelled images of 5-9")
    parser.add_argument("--finetune-batches", type=int, default=200)
    parser.add_argument("--data-dir", default=None, help="MNIST folder (default: $KERAS_BN_MNIST_DIR)")
    args = parser.parse_args(argv)
    data = load_mnist(args.data_dir)
    layers = deep_mnist_model(bn="manual").layers
    has_dropout = any(isinstance(layer, keras.layers.Dropout) for layer in layers)
    print(f"backend {keras.backend.backend()}; pretrained on 0-4: {args.pretrain_batches} "
          f"batches of {BATCH_SIZE}")
    print(f"fine-tuned on {args.labelled} images of 5-9: {args.finetune_batches} batches; "
          f"{'a' if has_dropout else 'no'} dropout layer")
    rows, start = [], time.perf_counter()
    for seed in range(args.seeds):
        rows.append(study(data, seed, args))
        print(f"seed {seed}: " + " ".join(f"{rows[-1][name]:.4f}" for name in ROWS)
              + f"  ({time.perf_counter() - start:.0f} s)")
    print(f"test accuracy on the digits 5-9 ({len(digits(data.test, [5, 6, 7, 8, 9])[0])} images), "
          f"over {args.seeds} seeds:")
    print(table(rows))
    return rows


if __name__ == "__main__":
    main()
