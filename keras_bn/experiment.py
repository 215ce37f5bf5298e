"""`run_experiment`: the seed notebook's experiment, no BN vs Keras BN vs `ManualBatchNorm`."""

import json
import os
import time

import keras
import numpy as np

from keras_bn.callbacks import NotebookLogger
from keras_bn.feeder import BatchFeeder
from keras_bn.models import compile_like_notebook, deep_mnist_model

__all__ = [
    "VARIANTS",
    "format_summary",
    "parse_variants",
    "plot_curves",
    "run_experiment",
    "train_variant",
]

#: The model variants, in the notebook's order: no normalization, the
#: high-level batch normalization, and the hand-written one.
VARIANTS = ("none", "keras", "manual")

_DESCRIPTIONS = {
    "none": "no batch normalization",
    "keras": "keras.layers.BatchNormalization",
    "manual": "keras_bn.ManualBatchNorm",
}


def _positive_int(name, value):
    """Returns `int(value)`, raising a `ValueError` naming `name` unless it is a positive int."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"`{name}` must be a positive int. Received: {name}={value!r}")
    return int(value)


def parse_variants(variants):
    """Returns `variants` (a comma-separated string or a sequence of names) as a tuple.

    Raises:
        ValueError: if a name is not one of `VARIANTS`, a name repeats, or
            there is none.
    """
    if isinstance(variants, str):
        names = [name.strip() for name in variants.split(",") if name.strip()]
    else:
        try:
            names = [str(name).strip() for name in variants]
        except TypeError:
            names = None
    allowed = ", ".join(VARIANTS)
    if not names:
        raise ValueError(
            f"`variants` must name at least one of {allowed}. Received: variants={variants!r}"
        )
    for name in names:
        if name not in VARIANTS:
            raise ValueError(
                f"`variants` may only hold {allowed}. Received: {name!r} in variants={variants!r}"
            )
    if len(set(names)) != len(names):
        raise ValueError(f"`variants` must not repeat a name. Received: variants={variants!r}")
    return tuple(names)


def _split(data, name):
    """Returns the `(images, labels)` pair of split `name` of an MNIST-like `data`."""
    split = getattr(data, name, None)
    if split is None:
        split = data[("train", "validation", "test").index(name)]
    images = getattr(split, "images", None)
    if images is None:
        images, labels = split
    else:
        labels = split.labels
    return np.asarray(images), np.asarray(labels)


def _fit(model, feeder, logger):
    """Runs the training loop: one `fit` over every batch of `feeder`, `logger` watching.

    This is the one place that trains; a faster loop (or one that saves
    checkpoints and resumes from `feeder.get_state()`) replaces this function.
    """
    model.fit(feeder, epochs=1, shuffle=False, callbacks=[logger], verbose=0)


def train_variant(
    variant,
    data,
    *,
    batches=800,
    batch_size=32,
    learning_rate=0.002,
    seed=0,
    kernel_initializer="glorot_uniform",
    validate_every=100,
    check_every=25,
    num_samples=100,
    print_fn=print,
):
    """Builds, compiles and trains one variant of the notebook's network; returns its results.

    The global seed is set with `keras.utils.set_random_seed(seed)` first and
    the batches come from `BatchFeeder(..., seed=seed)`, so every variant
    trained with the same arguments sees the same batches in the same order.

    Args:
        variant: `"none"`, `"keras"` or `"manual"`, the `bn` of
            `deep_mnist_model`.
        data: MNIST-like `(train, validation, test)` splits, each an
            `(images, labels)` pair or having `images` and `labels` (such as
            `keras_bn.load_mnist()`); labels one-hot.
        batches: Training batches. Defaults to `800`.
        batch_size: Examples per batch. Defaults to `32`.
        learning_rate: Adam's learning rate. Defaults to `0.002`.
        seed: Global and batch-order seed. Defaults to `0`.
        kernel_initializer: Passed to `deep_mnist_model`. Defaults to
            `"glorot_uniform"`.
        validate_every: `NotebookLogger` validation cadence. Defaults to `100`.
        check_every: `NotebookLogger` training-batch cadence. Defaults to `25`.
        num_samples: Test images scored one at a time. Defaults to `100`.
        print_fn: Receives every log line. Defaults to `print`.

    Returns:
        A dict with `final_validation_accuracy`, `final_test_accuracy`,
        `accuracy_on_100_samples`, `train_seconds` (the wall time of `fit`
        minus the logger's evaluations), `eval_seconds` (the logger's
        evaluations), `fit_seconds` (both), and `history` (the logger's).

    Raises:
        ValueError: if `variant` or a number is invalid.
    """
    (variant,) = parse_variants([variant])
    batches = _positive_int("batches", batches)
    train_images, train_labels = _split(data, "train")
    keras.utils.set_random_seed(seed)
    model = deep_mnist_model(bn=variant, kernel_initializer=kernel_initializer)
    compile_like_notebook(model, learning_rate=learning_rate)
    feeder = BatchFeeder(
        train_images, train_labels, batch_size, seed=seed, num_batches=batches
    )
    logger = NotebookLogger(
        feeder,
        _split(data, "validation"),
        _split(data, "test"),
        validate_every=validate_every,
        check_every=check_every,
        num_samples=num_samples,
        print_fn=print_fn,
    )
    started = time.perf_counter()
    _fit(model, feeder, logger)
    fit_seconds = time.perf_counter() - started
    return {
        **logger.summary(),
        "train_seconds": fit_seconds - logger.eval_seconds,
        "eval_seconds": logger.eval_seconds,
        "fit_seconds": fit_seconds,
        "history": logger.history,
    }


def _format_accuracy(value):
    """Formats an accuracy for the summary table, or a dash when it was not measured."""
    return "-" if value is None else f"{value:.4f}"


def format_summary(results):
    """Returns the summary table of `run_experiment`'s results as a string."""
    fmt = _format_accuracy
    header = ("variant", "final val acc", "final test acc", "acc on 100", "train s")
    rows = [header]
    for name, result in results["variants"].items():
        rows.append(
            (
                name,
                fmt(result["final_validation_accuracy"]),
                fmt(result["final_test_accuracy"]),
                fmt(result["accuracy_on_100_samples"]),
                f"{result['train_seconds']:.1f}",
            )
        )
    widths = [max(len(row[k]) for row in rows) for k in range(len(header))]
    lines = [
        "  ".join(
            cell.ljust(width) if k == 0 else cell.rjust(width)
            for k, (cell, width) in enumerate(zip(row, widths))
        )
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _validation_curve(history):
    """Returns `(batches, losses, accuracies)` of the validation entries, final one included."""
    points = {}
    for entry in history:
        if entry["event"] == "validation":
            points[entry["batch"]] = (entry["loss"], entry["accuracy"])
        elif entry["event"] == "final_validation" and entry["batch"] is not None:
            # After the last batch: the same model state as a validation entry there.
            points.setdefault(entry["batch"], (entry["loss"], entry["accuracy"]))
    xs = sorted(points)
    return xs, [points[x][0] for x in xs], [points[x][1] for x in xs]


def plot_curves(results, path):
    """Draws validation accuracy and loss against batch, one line per variant, to `path` (PNG).

    Uses Matplotlib's Agg canvas directly, so it needs no display and leaves
    `pyplot`'s global state alone.

    Args:
        results: The dict `run_experiment` returns.
        path: Where to write the image.

    Returns:
        `path`.

    Raises:
        ImportError: if Matplotlib is not installed (`pip install keras-bn[plot]`).
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError(
            "plot_curves needs Matplotlib: pip install 'keras-bn[plot]'"
        ) from error
    config = results["config"]
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax_acc, ax_loss = fig.subplots(1, 2)
    for name, result in results["variants"].items():
        xs, losses, accs = _validation_curve(result["history"])
        label = f"{name} ({_DESCRIPTIONS.get(name, name)})"
        ax_acc.plot(xs, accs, marker="o", markersize=3, label=label)
        ax_loss.plot(xs, losses, marker="o", markersize=3, label=label)
    ax_acc.set(
        xlabel="batch", ylabel="validation accuracy", title="Validation accuracy", ylim=(0, 1)
    )
    ax_loss.set(
        xlabel="batch",
        ylabel="validation loss (mean sigmoid cross-entropy)",
        title="Validation loss",
    )
    for ax in (ax_acc, ax_loss):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle(
        "Deep MNIST CNN (19 conv layers): batch normalization vs none — "
        f"batch size {config['batch_size']}, lr {config['learning_rate']}, seed {config['seed']}"
    )
    fig.savefig(os.fspath(path), dpi=120)
    return path


def run_experiment(
    variants=VARIANTS,
    *,
    batches=800,
    batch_size=32,
    learning_rate=0.002,
    seed=0,
    data=None,
    data_dir=None,
    out_dir=None,
    kernel_initializer="glorot_uniform",
    validate_every=100,
    check_every=25,
    num_samples=100,
    print_fn=print,
):
    """Runs the seed notebook's experiment: the same deep CNN with and without batch norm.

    For each variant, in order, `train_variant` sets the same global seed,
    builds `deep_mnist_model(bn=variant)`, compiles it like the notebook and
    trains it with `model.fit` on a `BatchFeeder` with the same batch order,
    while `NotebookLogger` prints the notebook's log. Then a summary table is
    printed and, with `out_dir`, `results.json` and `curves.png` are written
    there.

    Args:
        variants: Names from `VARIANTS`, as a sequence or a comma-separated
            string. Defaults to all three.
        batches: Training batches per variant. Defaults to `800`.
        batch_size: Examples per batch. Defaults to `32`.
        learning_rate: Adam's learning rate. Defaults to `0.002`.
        seed: The seed of every variant (weights and batch order). Defaults
            to `0`.
        data: MNIST-like `(train, validation, test)` splits to use instead of
            loading MNIST. Defaults to `None`: `keras_bn.load_mnist(data_dir)`.
        data_dir: Folder of the MNIST files for `load_mnist`. Defaults to
            `None` (`KERAS_BN_MNIST_DIR`, then the Keras download).
        out_dir: Folder for `results.json` and `curves.png`, created when
            missing. Defaults to `None`: write nothing.
        kernel_initializer: Passed to `deep_mnist_model`; `"notebook"` is the
            low-level notebook's truncated normal. Defaults to
            `"glorot_uniform"`.
        validate_every: Validation cadence in batches. Defaults to `100`.
        check_every: Training-batch cadence in batches. Defaults to `25`.
        num_samples: Test images scored one at a time. Defaults to `100`.
        print_fn: Receives every line printed. Defaults to `print`.

    Returns:
        A dict with `config` (the arguments, the Keras version and backend)
        and `variants`, mapping each variant to the dict `train_variant`
        returns; this is also what `results.json` holds.

    Raises:
        ValueError: if an argument is invalid.
        keras_bn.datasets.MNISTError: if MNIST cannot be loaded.
    """
    variants = parse_variants(variants)
    batches = _positive_int("batches", batches)
    batch_size = _positive_int("batch_size", batch_size)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"`seed` must be an int >= 0. Received: seed={seed!r}")
    seed = int(seed)
    try:
        rate = float(learning_rate)
    except (TypeError, ValueError):
        rate = float("nan")
    if isinstance(learning_rate, bool) or not 0 < rate < float("inf"):
        raise ValueError(
            "`learning_rate` must be a positive number. "
            f"Received: learning_rate={learning_rate!r}"
        )
    if data is None:
        from keras_bn.datasets import load_mnist

        data = load_mnist(data_dir)
    results = {
        "config": {
            "variants": list(variants),
            "batches": batches,
            "batch_size": batch_size,
            "learning_rate": rate,
            "seed": seed,
            "kernel_initializer": str(kernel_initializer),
            "validate_every": validate_every,
            "check_every": check_every,
            "num_samples": num_samples,
            "backend": keras.backend.backend(),
            "keras_version": keras.__version__,
        },
        "variants": {},
    }
    for variant in variants:
        print_fn(f"=== {variant}: {_DESCRIPTIONS[variant]} ===")
        results["variants"][variant] = train_variant(
            variant,
            data,
            batches=batches,
            batch_size=batch_size,
            learning_rate=rate,
            seed=seed,
            kernel_initializer=kernel_initializer,
            validate_every=validate_every,
            check_every=check_every,
            num_samples=num_samples,
            print_fn=print_fn,
        )
        print_fn("")
    print_fn(format_summary(results))
    if out_dir is not None:
        os.makedirs(out_dir, exist_ok=True)
        results_path = os.path.join(out_dir, "results.json")
        with open(results_path, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)
        curves_path = plot_curves(results, os.path.join(out_dir, "curves.png"))
        print_fn(f"Wrote {results_path} and {curves_path}")
    return results
