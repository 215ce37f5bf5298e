"""What every figure of `bench.py` shares: the timing loop, the statistics, the data, the names."""

import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BATCH = 32

NATIVE = "ManualBatchNorm, fused=None (default)"

CLOSED_FORM = "ManualBatchNorm, fused=False, closed-form"

AUTODIFF = "ManualBatchNorm, fused=False, autodiff"

KERAS = "Keras BatchNormalization"

IDENTITY = "keras.layers.Identity in place of BN"

PLAIN_NO_BN, PLAIN_BN = "plain PyTorch, no BN", "plain PyTorch, nn.BatchNorm2d"


def synchronize():
    """Waits for the GPU's queued work, so that a timing covers it (PyTorch runs it asynchronously)."""
    import keras

    if keras.backend.backend() == "torch":
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()


def torch_device():
    """Returns the device Keras's PyTorch backend puts its tensors on."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def summary(samples):
    """Returns the median of `samples`, its quartiles, range and `spread`: half the IQR over the median."""
    ordered = sorted(samples)
    median = statistics.median(ordered)
    q1, _, q3 = statistics.quantiles(ordered, n=4, method="inclusive") if len(ordered) > 1 else ordered * 3
    return {"median": median, "q1": q1, "q3": q3, "min": ordered[0], "max": ordered[-1], "n": len(ordered),
            "spread": (q3 - q1) / (2 * abs(median)) if median else 0.0}


def describe(samples, unit):
    """Formats the median of `samples` with its spread, interquartile range and range."""
    s = summary(samples)
    return (f"median {s['median']:.3f} {unit} ±{s['spread']:.1%} (IQR {s['q1']:.3f}..{s['q3']:.3f}, "
            f"range {s['min']:.3f}..{s['max']:.3f}, n={s['n']})")


def alternate(runners, repeats, block, warmup=1):
    """Runs each `runners[name]()` `block` times per round, in turn, and returns ms per call, round by round.

    The `warmup` rounds first are not timed. Round r starts with the r-th runner,
    so that none always runs right after the same other one; `times[name][r]` of
    two runners are always from the same round, taken seconds apart, which is what
    `Figure.ratio` divides.
    """
    names = list(runners)
    times = {name: [] for name in names}
    for round_ in range(warmup + repeats):
        for name in names[round_ % len(names):] + names[:round_ % len(names)]:
            started = time.perf_counter()
            for _ in range(block):
                runners[name]()
            synchronize()
            if round_ >= warmup:
                times[name].append((time.perf_counter() - started) / block * 1000)
    return times


class Figure:
    """One figure's samples per row, its ratios per round, and notes: printed, and recorded as JSON."""

    def __init__(self, name, unit):
        self.name, self.unit = name, unit
        self.rows, self.ratios, self.notes = {}, {}, []

    def add(self, row, samples):
        """Records the samples of `row`, one a round."""
        self.rows[row] = list(samples)

    def ratio(self, label, numerator, denominator):
        """Records the ratio of two rows round by round, if both were measured.

        The median of per-round ratios is steadier than the ratio of medians: a
        machine that slows down for a while slows both sides of a round alike.
        """
        if numerator in self.rows and denominator in self.rows:
            self.ratios[label] = [a / b for a, b in zip(self.rows[numerator], self.rows[denominator])]

    def note(self, text):
        """Records a line of text that belongs with the figure."""
        self.notes.append(text)

    def report(self):
        """Prints the rows, the ratios and the notes; returns the figure."""
        for row, samples in self.rows.items():
            print(f"{self.name:11s} {row:38s}: {describe(samples, self.unit)}")
        for label, ratios in self.ratios.items():
            s = summary(ratios)
            print(f"{self.name:11s} ratio {label}: {s['median']:.3f} ±{s['spread']:.1%} "
                  f"(IQR {s['q1']:.3f}..{s['q3']:.3f}, per round)")
        for text in self.notes:
            print(f"{self.name:11s} {text}")
        return self

    def record(self):
        """Returns the figure as plain data: each row's and ratio's summary and samples."""
        def table(series):
            return {name: {**summary(samples), "samples": samples} for name, samples in series.items()}

        return {"name": self.name, "unit": self.unit, "rows": table(self.rows),
                "ratios": table(self.ratios), "notes": self.notes}


def _mnist():
    """Loads MNIST once for the in-process figures."""
    from keras_bn import load_mnist

    return load_mnist()


def _random_batches(count, seed=0):
    """Returns `count` random MNIST-shaped batches `(images, one-hot labels)` of 32."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return [
        (
            rng.random((BATCH, 28, 28, 1), dtype="float32"),
            np.eye(10, dtype="float32")[rng.integers(0, 10, BATCH)],
        )
        for _ in range(count)
    ]


def _hand_written(enabled):
    """The context in which `ManualBatchNorm` uses the closed-form backward (`enabled`), autodiff
    (`False`), or the backend's default (`None`)."""
    import contextlib

    from keras_bn._layer.paths import use_hand_written

    return contextlib.nullcontext() if enabled is None else use_hand_written(enabled)
