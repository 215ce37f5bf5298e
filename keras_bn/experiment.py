"""`run_experiment`: the notebook's experiment (no BN, Keras BN, `ManualBatchNorm`) over seeds."""

import contextlib
import functools
import hashlib
import json
import os
import time

import keras
import numpy as np

from keras_bn.batch_norm import ManualBatchNorm
from keras_bn.callbacks import NotebookLogger
from keras_bn.checkpoint import (
    CheckpointCallback,
    atomic_write,
    check_config,
    load_checkpoint,
    restore_checkpoint,
    rng_state,
    save_checkpoint,
)
from keras_bn.feeder import BatchFeeder
from keras_bn.interrupt import StopOnSignal, TrainingInterrupted
from keras_bn.models import compile_like_notebook, deep_mnist_model
from keras_bn.progress import ProgressBar
from keras_bn.training import fit_batches

__all__ = [
    "VARIANTS",
    "ExperimentError",
    "checkpoint_path",
    "format_summary",
    "parse_seeds",
    "parse_variants",
    "plot_curves",
    "run_experiment",
    "seed_statistics",
    "train_variant",
]

#: The model variants, in the notebook's order: no normalization, the
#: high-level batch normalization, and the hand-written one.
VARIANTS = ("none", "keras", "manual")

#: The sub-folder of `out_dir` that holds one checkpoint per variant and seed.
CHECKPOINT_FOLDER = "checkpoints"

_DESCRIPTIONS = {
    "none": "no batch normalization",
    "keras": "keras.layers.BatchNormalization",
    "manual": "keras_bn.ManualBatchNorm",
}

#: The per-run numbers `seed_statistics` summarizes.
_STATISTICS = (
    "final_test_accuracy",
    "final_validation_accuracy",
    "accuracy_on_100_samples",
    "train_seconds",
)


class ExperimentError(ValueError):
    """An experiment that cannot start as asked.

    Raised for an `out_dir` that cannot be written, and for
    `distribute="mirrored"` on a backend other than TensorFlow. Checkpoints
    of another configuration raise `keras_bn.checkpoint.CheckpointMismatchError`.
    """


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


def _is_seed(value):
    """Whether `value` is an int >= 0 (not a bool)."""
    return not isinstance(value, bool) and isinstance(value, (int, np.integer)) and value >= 0


def parse_seeds(seeds):
    """Returns `seeds` (an int, a comma-separated string or a sequence of ints) as a tuple of ints.

    Example:

    >>> parse_seeds("0, 1,2"), parse_seeds(3), parse_seeds([4, 5])
    ((0, 1, 2), (3,), (4, 5))

    Raises:
        ValueError: if a seed is not an int >= 0, a seed repeats, or there is
            none.
    """
    if _is_seed(seeds):
        return (int(seeds),)
    if isinstance(seeds, str):
        values = []
        for text in (part.strip() for part in seeds.split(",")):
            if not text:
                continue
            try:
                values.append(int(text))
            except ValueError:
                values.append(text)
    else:
        try:
            values = list(seeds)
        except TypeError:
            values = None
    if not values:
        raise ValueError(f"`seeds` must hold at least one seed. Received: seeds={seeds!r}")
    for value in values:
        if not _is_seed(value):
            raise ValueError(
                f"`seeds` must be ints >= 0. Received: {value!r} in seeds={seeds!r}"
            )
    if len(set(int(v) for v in values)) != len(values):
        raise ValueError(f"`seeds` must not repeat a seed. Received: seeds={seeds!r}")
    return tuple(int(v) for v in values)


def checkpoint_path(out_dir, variant, seed):
    """Returns the checkpoint of `variant` and `seed`: `out_dir/checkpoints/<variant>-seed<seed>.npz`."""
    return os.path.join(os.fspath(out_dir), CHECKPOINT_FOLDER, f"{variant}-seed{int(seed)}.npz")


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


def _data_fingerprint(data):
    """Returns a hex digest of the three splits' arrays (shapes, dtypes and bytes)."""
    digest = hashlib.blake2b(digest_size=16)
    for name in ("train", "validation", "test"):
        for array in _split(data, name):
            array = np.ascontiguousarray(array)
            digest.update(f"{name}{array.shape}{array.dtype.str}".encode())
            digest.update(memoryview(array).cast("B"))
    return digest.hexdigest()


def _describe(value):
    """Returns a JSON-serializable, stable description of an initializer argument."""
    if isinstance(value, str):
        return value
    if isinstance(value, keras.initializers.Initializer):
        return json.loads(json.dumps(keras.initializers.serialize(value), default=repr))
    return repr(value)


def _strategy(distribute):
    """Returns the `tf.distribute` strategy that `distribute` asks for, or `None`."""
    if distribute is None:
        return None
    if isinstance(distribute, str) and distribute == "mirrored":
        backend = keras.backend.backend()
        if backend != "tensorflow":
            raise ExperimentError(
                "`distribute='mirrored'` trains with tf.distribute.MirroredStrategy, which needs "
                f"the TensorFlow backend. Received: backend {backend!r}; set "
                "KERAS_BACKEND=tensorflow"
            )
        import tensorflow as tf

        # Every GPU, else every (logical) CPU: MirroredStrategy()'s own default
        # ignores CPU devices beyond the first.
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([device.name for device in devices])
    if hasattr(distribute, "scope") and hasattr(distribute, "num_replicas_in_sync"):
        return distribute  # A tf.distribute.Strategy made by the caller.
    raise ValueError(
        "`distribute` must be None, 'mirrored' or a tf.distribute.Strategy. "
        f"Received: distribute={distribute!r}"
    )


def _describe_strategy(strategy):
    """Returns `(name, replicas)` of a strategy for the configuration: `(None, 1)` for none."""
    if strategy is None:
        return None, 1
    name = type(strategy).__name__
    return ("mirrored" if name == "MirroredStrategy" else name), int(strategy.num_replicas_in_sync)


def _bn(variant, strategy):
    """Returns the `bn` argument of `deep_mnist_model`: synchronized layers under a strategy."""
    if strategy is None or variant == "none":
        return variant
    layer = keras.layers.BatchNormalization if variant == "keras" else ManualBatchNorm
    return functools.partial(layer, synchronized=True)


def _run_config(variant, seed, *, settings):
    """Returns the configuration a run's checkpoint must match: `settings` plus variant and seed."""
    return {"variant": variant, "seed": int(seed), **settings}


def _settings(
    *, batches, batch_size, learning_rate, kernel_initializer, validate_every, check_every,
    num_samples, strategy, data,
):
    """Returns everything but variant and seed that decides a run's numbers, for its checkpoint."""
    distribute, replicas = _describe_strategy(strategy)
    return {
        "batches": batches,
        "batch_size": batch_size,
        "learning_rate": float(learning_rate),
        "kernel_initializer": _describe(kernel_initializer),
        "validate_every": validate_every,
        "check_every": check_every,
        "num_samples": num_samples,
        "backend": keras.backend.backend(),
        "distribute": distribute,
        "replicas": replicas,
        "data": _data_fingerprint(data),
    }


def _shifted(history, keep, seconds):
    """Returns `history` with `seconds` added to the time of every entry from index `keep` on."""
    return history[:keep] + [dict(e, seconds=e["seconds"] + seconds) for e in history[keep:]]


def _fit(model, feeder, callbacks):
    """Runs the training loop: one `fit` over every batch of `feeder`, `callbacks` watching.

    This is the one place that trains: `fit_batches` is `model.fit` with a
    faster loop on TensorFlow. Whatever loop runs must call each callback's
    `on_train_begin`, `on_train_batch_end(j)` (with `j` the index into
    `feeder`, whose `start` the callbacks add) at least every 25th batch and
    every checkpoint interval, and `on_train_end`, and let a
    `TrainingInterrupted` raised by a callback propagate.
    """
    fit_batches(model, feeder, callbacks)


def _progress_stream(progress):
    """Returns the stream a `progress` argument asks for, `None` for no progress bar."""
    if progress is True:
        return None  # ProgressBar's default: sys.stderr when it writes.
    if progress is False or progress is None:
        return False
    if callable(getattr(progress, "write", None)):
        return progress
    raise ValueError(
        f"`progress` must be a bool or a writable text stream. Received: progress={progress!r}"
    )


class _ReplicaSafeModel:
    """Stands in for a model trained under a `tf.distribute` strategy while it is scored.

    Keras's `predict_on_batch` under a strategy runs the whole batch on every
    replica and concatenates the copies (two replicas: twice the rows). This
    calls the model once, in inference mode, on the whole batch instead; every
    other attribute is the model's.
    """

    def __init__(self, model):
        self._model = model

    def predict_on_batch(self, x):
        """Returns the model's inference-mode outputs for `x` as a NumPy array."""
        return keras.ops.convert_to_numpy(self._model(x, training=False))

    def __getattr__(self, name):
        return getattr(self._model, name)


class _DistributedLogger(NotebookLogger):
    """`NotebookLogger` for a model under a `tf.distribute` strategy (see `_ReplicaSafeModel`)."""

    def set_model(self, model):
        """Scores `model` through `_ReplicaSafeModel`."""
        super().set_model(_ReplicaSafeModel(model))


def _train(
    variant, data, *, seed, batches, batch_size, learning_rate, kernel_initializer,
    validate_every, check_every, num_samples, checkpoint, checkpoint_every, config,
    strategy, progress, label, print_fn, stop=None,
):
    """Trains (or resumes, or skips when finished) one run; returns its results dict.

    `stop` is the caller's `StopOnSignal`; without one the run installs its own.
    """
    saved = None
    if checkpoint is not None and os.path.exists(checkpoint):
        saved = load_checkpoint(checkpoint)
        check_config(saved, config)
        if saved.state.get("finished"):
            print_fn(f"Already finished ({checkpoint}); not trained again.")
            return saved.state["result"]
    train_images, train_labels = _split(data, "train")
    keras.utils.set_random_seed(seed)
    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        model = deep_mnist_model(
            bn=_bn(variant, strategy),
            kernel_initializer=kernel_initializer,
            name=f"deep_mnist_{variant}",
        )
        compile_like_notebook(model, learning_rate=learning_rate)
        if saved is not None:
            # Weights, Adam's iteration count and moments, and the RNG state.
            restore_checkpoint(model, saved)
    if saved is None:
        start, earlier, restored = 0, {"fit": 0.0, "eval": 0.0}, []
        feeder = BatchFeeder(train_images, train_labels, batch_size, seed=seed, num_batches=batches)
    else:
        start = saved.state["batches_done"]
        earlier, restored = saved.state["seconds"], saved.state["history"]
        feeder = BatchFeeder.from_state(
            train_images, train_labels, saved.state["feeder"], start=start,
            num_batches=batches - start,
        )
        print_fn(f"Resuming from {checkpoint}: {start} of {batches} batches done.")
    stream = _progress_stream(progress)
    bar = None
    if stream is not False:
        bar = ProgressBar(batches, label=label, stream=stream, batch_offset=start)
        print_fn = bar.wrap(print_fn)
    logger = (NotebookLogger if strategy is None else _DistributedLogger)(
        feeder,
        _split(data, "validation"),
        _split(data, "test"),
        validate_every=validate_every,
        check_every=check_every,
        num_samples=num_samples,
        print_fn=print_fn,
    )
    logger.history = list(restored)  # Kept by `on_train_begin`: the log goes on.
    callbacks = [logger]
    if bar is not None:
        bar.logger = logger
        callbacks.append(bar)
    started = time.perf_counter()

    def state(done, result=None):
        """The JSON state saved with the weights after `done` batches (`result` once finished)."""
        return {
            "config": config,
            "batches_done": done,
            "feeder": {**feeder.get_state(), "start": 0, "num_batches": batches, "position": done},
            "history": _shifted(logger.history, len(restored), earlier["fit"]),
            "seconds": {
                "fit": earlier["fit"] + time.perf_counter() - started,
                "eval": earlier["eval"] + logger.eval_seconds,
            },
            "rng": rng_state(),
            "finished": result is not None,
            "result": result,
        }

    with StopOnSignal() if stop is None else contextlib.nullcontext(stop) as stop:
        callbacks.append(
            CheckpointCallback(
                checkpoint, state, every=checkpoint_every, total=batches, batch_offset=start,
                stop=stop, run=label,
            )
        )
        started = time.perf_counter()
        try:
            _fit(model, feeder, callbacks)
        finally:
            if bar is not None:
                bar.close()
        fit_seconds = earlier["fit"] + time.perf_counter() - started
        eval_seconds = earlier["eval"] + logger.eval_seconds
        result = {
            **logger.summary(),
            "train_seconds": fit_seconds - eval_seconds,
            "eval_seconds": eval_seconds,
            "fit_seconds": fit_seconds,
            "history": _shifted(logger.history, len(restored), earlier["fit"]),
        }
        if checkpoint is not None:
            save_checkpoint(checkpoint, model, state(batches, result))
        if stop.requested:  # Asked during the final evaluation: the run is saved, now stop.
            raise TrainingInterrupted(stop.signal_number, checkpoint=checkpoint, run=label)
    return result


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
    checkpoint=None,
    checkpoint_every=100,
    distribute=None,
    progress=False,
    print_fn=print,
):
    """Builds, compiles and trains one variant of the notebook's network; returns its results.

    The global seed is set with `keras.utils.set_random_seed(seed)` first and
    the batches come from `BatchFeeder(..., seed=seed)`, so every variant
    trained with the same arguments sees the same batches in the same order.

    With `checkpoint`, the run's state is saved to that file every
    `checkpoint_every` batches and when it finishes; if the file exists the
    run resumes from it (or, when it finished, returns the saved results
    without training). SIGINT (Ctrl-C) and SIGTERM stop training after the
    current batch: a checkpoint is written and `TrainingInterrupted` raised.

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
        checkpoint: The run's checkpoint file, or `None` for none. Defaults
            to `None`.
        checkpoint_every: Batches between two checkpoints. Defaults to `100`.
        distribute: `None`, or `"mirrored"` to train under
            `tf.distribute.MirroredStrategy` over every GPU (else every
            logical CPU) with synchronized batch normalization (TensorFlow
            only), or a `tf.distribute.Strategy`. Defaults to `None`.
        progress: `True` for a `keras_bn.progress.ProgressBar` on standard
            error, a text stream to write it to, or `False`. Defaults to
            `False`.
        print_fn: Receives every log line. Defaults to `print`.

    Returns:
        A dict with `final_validation_accuracy`, `final_test_accuracy`,
        `accuracy_on_100_samples`, `train_seconds` (the wall time of `fit`
        minus the logger's evaluations), `eval_seconds` (the logger's
        evaluations), `fit_seconds` (both), and `history` (the logger's). The
        times add up over the sessions of a resumed run.

    Raises:
        ValueError: if `variant` or a number is invalid.
        ExperimentError: if `distribute="mirrored"` off TensorFlow.
        keras_bn.checkpoint.CheckpointMismatchError: if `checkpoint` was
            written with another configuration.
        keras_bn.interrupt.TrainingInterrupted: after SIGINT or SIGTERM.
    """
    (variant,) = parse_variants([variant])
    batches = _positive_int("batches", batches)
    checkpoint_every = _positive_int("checkpoint_every", checkpoint_every)
    if not _is_seed(seed):
        raise ValueError(f"`seed` must be an int >= 0. Received: seed={seed!r}")
    strategy = _strategy(distribute)
    config = None
    if checkpoint is not None:
        checkpoint = os.fspath(checkpoint)
        settings = _settings(
            batches=batches, batch_size=batch_size, learning_rate=learning_rate,
            kernel_initializer=kernel_initializer, validate_every=validate_every,
            check_every=check_every, num_samples=num_samples, strategy=strategy, data=data,
        )
        config = _run_config(variant, seed, settings=settings)
        folder = os.path.dirname(os.path.abspath(checkpoint))
        os.makedirs(folder, exist_ok=True)
    return _train(
        variant, data, seed=int(seed), batches=batches, batch_size=batch_size,
        learning_rate=learning_rate, kernel_initializer=kernel_initializer,
        validate_every=validate_every, check_every=check_every, num_samples=num_samples,
        checkpoint=checkpoint, checkpoint_every=checkpoint_every, config=config,
        strategy=strategy, progress=progress, label=f"{variant}, seed {int(seed)}",
        print_fn=print_fn,
    )


# --- Results ------------------------------------------------------------------


def _runs(results):
    """Returns `{variant: {seed: run}}` of a results dict, also of a 0.1.0 one without `runs`."""
    if "runs" in results:
        return results["runs"]
    seed = str(results["config"].get("seed"))
    return {name: {seed: run} for name, run in results["variants"].items()}


def _spread(values):
    """Returns mean, sample std (`None` for one value), min and max of the non-`None` values."""
    values = np.asarray([float(v) for v in values if v is not None], dtype=np.float64)
    if values.size == 0:
        return {"mean": None, "std": None, "min": None, "max": None}
    return {
        "mean": float(values.mean()),
        "std": float(values.std(ddof=1)) if values.size > 1 else None,
        "min": float(values.min()),
        "max": float(values.max()),
    }


def seed_statistics(runs):
    """Summarizes each variant's runs over seeds.

    The standard deviation is the sample one (divided by `n - 1`), the usual
    estimate of how much a new seed would differ; it is `None` for one seed.

    Args:
        runs: `{variant: {seed: run}}`, each run a dict `train_variant`
            returns (`results["runs"]` of `run_experiment`).

    Returns:
        `{variant: {"seeds": [...], "final_test_accuracy": {"mean", "std",
        "min", "max"}, "final_validation_accuracy": {...},
        "accuracy_on_100_samples": {...}, "train_seconds": {...}}}`.

    Example:

    >>> runs = {"keras": {"0": {"final_test_accuracy": 0.9},
    ...                   "1": {"final_test_accuracy": 0.8}}}
    >>> stats = seed_statistics(runs)["keras"]
    >>> stats["seeds"], round(stats["final_test_accuracy"]["mean"], 6)
    ([0, 1], 0.85)
    """
    statistics = {}
    for name, by_seed in runs.items():
        entry = {"seeds": [int(seed) for seed in by_seed]}
        for key in _STATISTICS:
            entry[key] = _spread(run.get(key) for run in by_seed.values())
        statistics[name] = entry
    return statistics


def _format_accuracy(value):
    """Formats an accuracy for the summary table, or a dash when it was not measured."""
    return "-" if value is None else f"{value:.4f}"


def _table(rows):
    """Lays out `rows` (the first one the header) in columns, the first left-aligned."""
    widths = [max(len(row[k]) for row in rows) for k in range(len(rows[0]))]
    lines = [
        "  ".join(
            cell.ljust(width) if k == 0 else cell.rjust(width)
            for k, (cell, width) in enumerate(zip(row, widths))
        )
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_summary(results):
    """Returns the summary table of `run_experiment`'s results as a string.

    With one seed: a row per variant with its final validation and test
    accuracies, the one-at-a-time score and the training time. With several:
    a row per variant with the mean, standard deviation, min and max of the
    final test accuracy over the seeds, the mean final validation accuracy
    and the mean training time per run.
    """
    fmt = _format_accuracy
    runs = _runs(results)
    if all(len(by_seed) == 1 for by_seed in runs.values()):
        rows = [("variant", "final val acc", "final test acc", "acc on 100", "train s")]
        for name, by_seed in runs.items():
            (result,) = by_seed.values()
            rows.append(
                (
                    name,
                    fmt(result["final_validation_accuracy"]),
                    fmt(result["final_test_accuracy"]),
                    fmt(result["accuracy_on_100_samples"]),
                    f"{result['train_seconds']:.1f}",
                )
            )
        return _table(rows)
    statistics = results.get("statistics") or seed_statistics(runs)
    rows = [
        ("variant", "seeds", "test mean", "test std", "test min", "test max", "val mean",
         "train s/run")
    ]
    for name, entry in statistics.items():
        test = entry["final_test_accuracy"]
        rows.append(
            (
                name,
                str(len(entry["seeds"])),
                fmt(test["mean"]),
                fmt(test["std"]),
                fmt(test["min"]),
                fmt(test["max"]),
                fmt(entry["final_validation_accuracy"]["mean"]),
                f"{entry['train_seconds']['mean']:.1f}",
            )
        )
    return _table(rows)


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


def _seed_curves(by_seed):
    """Returns one variant's `(batches, losses, accuracies)`, the last two `(seeds, batches)` arrays."""
    curves = [_validation_curve(run["history"]) for run in by_seed.values()]
    xs = sorted(set.intersection(*(set(c[0]) for c in curves)))

    def stack(column):
        """One row per seed of the values at the common batches."""
        return np.array(
            [[dict(zip(c[0], c[column]))[x] for x in xs] for c in curves], dtype=np.float64
        )

    return xs, stack(1), stack(2)


def plot_curves(results, path):
    """Draws validation accuracy and loss against batch, one line per variant, to `path` (PNG).

    With several seeds each line is the mean over the seeds, and a shaded
    band spans the minimum to the maximum over the seeds at each batch (the
    legend's title says so). Uses Matplotlib's Agg canvas directly, so it needs no
    display and leaves `pyplot`'s global state alone. The file is written
    atomically.

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
    seeds, counts = set(), set()
    for name, by_seed in _runs(results).items():
        seeds.update(by_seed)
        counts.add(len(by_seed))
        xs, losses, accs = _seed_curves(by_seed)
        label = f"{name} ({_DESCRIPTIONS.get(name, name)})"
        for ax, values in ((ax_acc, accs), (ax_loss, losses)):
            (line,) = ax.plot(xs, values.mean(axis=0), marker="o", markersize=3, label=label)
            if len(by_seed) > 1:
                ax.fill_between(
                    xs, values.min(axis=0), values.max(axis=0), color=line.get_color(),
                    alpha=0.2, linewidth=0,
                )
    ax_acc.set(
        xlabel="batch", ylabel="validation accuracy", title="Validation accuracy", ylim=(0, 1)
    )
    ax_loss.set(
        xlabel="batch",
        ylabel="validation loss (mean sigmoid cross-entropy)",
        title="Validation loss",
    )
    spread = None
    if max(counts) > 1:
        n = "/".join(str(c) for c in sorted(counts))
        spread = f"lines: mean of {n} seeds; bands: min–max"
    for ax in (ax_acc, ax_loss):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small", title=spread, title_fontsize="small")
    seeds = sorted(int(s) for s in seeds)
    seed_text = f"seed {seeds[0]}" if len(seeds) == 1 else "seeds " + ",".join(map(str, seeds))
    fig.suptitle(
        "Deep MNIST CNN (19 conv layers): batch normalization vs none — "
        f"batch size {config['batch_size']}, lr {config['learning_rate']}, {seed_text}"
    )
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120))
    return path


# --- The experiment -----------------------------------------------------------


def _check_out_dir(out_dir):
    """Raises `ExperimentError` unless `out_dir` is, or can be made, a writable folder.

    Nothing is created: the nearest existing folder on the path is checked.
    """
    path = os.path.abspath(out_dir)
    existing = path
    while not os.path.exists(existing):
        parent = os.path.dirname(existing)
        if parent == existing:
            break
        existing = parent
    if not os.path.isdir(existing):
        reason = f"{existing} is not a folder"
    elif not os.access(existing, os.W_OK | os.X_OK):
        reason = f"no permission to write in {existing}"
    else:
        return
    raise ExperimentError(
        f"`out_dir` must be a folder that can be written to. Received: out_dir={out_dir!r} "
        f"({reason})"
    )


def _make_out_dir(out_dir):
    """Creates `out_dir/checkpoints`, raising `ExperimentError` when it cannot."""
    try:
        os.makedirs(os.path.join(out_dir, CHECKPOINT_FOLDER), exist_ok=True)
    except OSError as error:
        raise ExperimentError(
            f"`out_dir` must be a folder that can be written to. Received: out_dir={out_dir!r} "
            f"({error.strerror or error})"
        ) from error


def _check_learning_rate(learning_rate):
    """Returns `float(learning_rate)` or raises a `ValueError` unless positive and finite."""
    try:
        rate = float(learning_rate)
    except (TypeError, ValueError):
        rate = float("nan")
    if isinstance(learning_rate, bool) or not 0 < rate < float("inf"):
        raise ValueError(
            "`learning_rate` must be a positive number. "
            f"Received: learning_rate={learning_rate!r}"
        )
    return rate


def _silent(*args, **kwargs):
    """A `print_fn` that prints nothing."""


def run_experiment(
    variants=VARIANTS,
    *,
    batches=800,
    batch_size=32,
    learning_rate=0.002,
    seed=None,
    seeds=None,
    data=None,
    data_dir=None,
    out_dir=None,
    checkpoint_every=100,
    kernel_initializer="glorot_uniform",
    validate_every=100,
    check_every=25,
    num_samples=100,
    distribute=None,
    progress=True,
    quiet=False,
    print_fn=print,
):
    """Runs the seed notebook's experiment: the same deep CNN with and without batch norm.

    For each seed, and for each variant in order, `train_variant` sets the
    seed, builds `deep_mnist_model(bn=variant)`, compiles it like the notebook
    and trains it with `model.fit` on a `BatchFeeder` with that seed's batch
    order, while `NotebookLogger` prints the notebook's log. Then a summary
    table is printed (with several seeds: the mean, standard deviation, min
    and max of each variant's final test accuracy) and, with `out_dir`,
    `results.json` and `curves.png` are written there.

    With `out_dir`, every run (variant and seed) keeps a checkpoint in
    `out_dir/checkpoints/<variant>-seed<seed>.npz`, written atomically every
    `checkpoint_every` batches and when the run ends: the weights, Adam's
    state, the batch position, the global RNG state and the log so far.
    Calling again with the same arguments resumes an unfinished run where it
    stopped (with the same numbers as an uninterrupted run) and does not
    train a finished one again. A checkpoint written with another
    configuration is refused before anything trains.

    SIGINT (Ctrl-C) and SIGTERM stop training after the current batch: a
    checkpoint is written and `TrainingInterrupted` raised. The signal
    handlers are installed only while training, and the previous ones put
    back.

    !!! warning "`results.json` keys"
        `runs` (`{variant: {seed: run}}`) and `statistics` are always there.
        `variants` (`{variant: run}`, the 0.1.0 layout) and `config["seed"]`
        are kept for a single seed; with several seeds `variants` is absent
        and `config["seed"]` is `None` (see `config["seeds"]`).

    Args:
        variants: Names from `VARIANTS`, as a sequence or a comma-separated
            string. Defaults to all three.
        batches: Training batches per run. Defaults to `800`.
        batch_size: Examples per batch. Defaults to `32`.
        learning_rate: Adam's learning rate. Defaults to `0.002`.
        seed: The one seed of every variant (weights and batch order);
            cannot be combined with `seeds`. Defaults to `None`: seed `0`
            unless `seeds` is given.
        seeds: Several seeds, as a sequence of ints or a comma-separated
            string: every variant is trained once per seed. Defaults to
            `None`.
        data: MNIST-like `(train, validation, test)` splits to use instead of
            loading MNIST. Defaults to `None`: `keras_bn.load_mnist(data_dir)`.
        data_dir: Folder of the MNIST files for `load_mnist`. Defaults to
            `None` (`KERAS_BN_MNIST_DIR`, then the Keras download).
        out_dir: Folder for `results.json`, `curves.png` and the
            checkpoints, created when missing. Defaults to `None`: write
            nothing and keep no checkpoints.
        checkpoint_every: Batches between two checkpoints. Defaults to `100`.
        kernel_initializer: Passed to `deep_mnist_model`; `"notebook"` is the
            low-level notebook's truncated normal. Defaults to
            `"glorot_uniform"`.
        validate_every: Validation cadence in batches. Defaults to `100`.
        check_every: Training-batch cadence in batches. Defaults to `25`.
        num_samples: Test images scored one at a time. Defaults to `100`.
        distribute: `None`, or `"mirrored"` to train each run under
            `tf.distribute.MirroredStrategy` over every GPU (else every
            logical CPU) with synchronized batch normalization; TensorFlow
            backend only. Defaults to `None`.
        progress: `True` for a progress bar per run on standard error
            (redrawn in place on a terminal, a few plain lines elsewhere), a
            text stream to write it to, or `False`. Defaults to `True`.
        quiet: Print only the summary: no log, no progress. Defaults to
            `False`.
        print_fn: Receives every line printed. Defaults to `print`.

    Returns:
        A dict with `config` (the arguments, the Keras version and backend),
        `runs` (`{variant: {str(seed): run}}`, each run the dict
        `train_variant` returns), `statistics` (`seed_statistics(runs)`) and,
        with one seed, `variants` (`{variant: run}`); this is also what
        `results.json` holds.

    Raises:
        ValueError: if an argument is invalid.
        ExperimentError: if `out_dir` cannot be written, or
            `distribute="mirrored"` off TensorFlow.
        keras_bn.checkpoint.CheckpointMismatchError: if `out_dir` holds a
            checkpoint of one of these runs written with another
            configuration.
        keras_bn.checkpoint.CheckpointError: if such a checkpoint is corrupt.
        keras_bn.interrupt.TrainingInterrupted: after SIGINT or SIGTERM.
        keras_bn.datasets.MNISTError: if MNIST cannot be loaded.
    """
    variants = parse_variants(variants)
    batches = _positive_int("batches", batches)
    batch_size = _positive_int("batch_size", batch_size)
    checkpoint_every = _positive_int("checkpoint_every", checkpoint_every)
    if seed is not None and seeds is not None:
        raise ValueError(
            f"Pass `seed` or `seeds`, not both. Received: seed={seed!r}, seeds={seeds!r}"
        )
    if seed is not None and not _is_seed(seed):
        raise ValueError(f"`seed` must be an int >= 0. Received: seed={seed!r}")
    seeds = parse_seeds(seeds) if seeds is not None else (0 if seed is None else int(seed),)
    rate = _check_learning_rate(learning_rate)
    _progress_stream(progress)
    if out_dir is not None:
        out_dir = os.fspath(out_dir)
        _check_out_dir(out_dir)
    strategy = _strategy(distribute)
    log = _silent if quiet else print_fn
    if quiet:
        progress = False
    if data is None:
        from keras_bn.datasets import load_mnist

        data = load_mnist(data_dir)
    configs = {}
    if out_dir is not None:
        _make_out_dir(out_dir)
        settings = _settings(
            batches=batches, batch_size=batch_size, learning_rate=rate,
            kernel_initializer=kernel_initializer, validate_every=validate_every,
            check_every=check_every, num_samples=num_samples, strategy=strategy, data=data,
        )
        # Refuse a checkpoint of another configuration before anything trains.
        for s in seeds:
            for variant in variants:
                configs[variant, s] = _run_config(variant, s, settings=settings)
                path = checkpoint_path(out_dir, variant, s)
                if os.path.exists(path):
                    check_config(load_checkpoint(path, arrays=False), configs[variant, s])
    distribute_name, replicas = _describe_strategy(strategy)
    config = {
        "variants": list(variants),
        "batches": batches,
        "batch_size": batch_size,
        "learning_rate": rate,
        "seed": seeds[0] if len(seeds) == 1 else None,
        "seeds": list(seeds),
        "kernel_initializer": str(kernel_initializer),
        "validate_every": validate_every,
        "check_every": check_every,
        "num_samples": num_samples,
        "checkpoint_every": checkpoint_every,
        "distribute": distribute_name,
        "replicas": replicas,
        "backend": keras.backend.backend(),
        "keras_version": keras.__version__,
    }
    runs = {variant: {} for variant in variants}
    with StopOnSignal() as stop:
        for s in seeds:
            for variant in variants:
                header = f"=== {variant}: {_DESCRIPTIONS[variant]}"
                log(header + (" ===" if len(seeds) == 1 else f", seed {s} ==="))
                path = None if out_dir is None else checkpoint_path(out_dir, variant, s)
                runs[variant][str(s)] = _train(
                    variant, data, seed=s, batches=batches, batch_size=batch_size,
                    learning_rate=rate, kernel_initializer=kernel_initializer,
                    validate_every=validate_every, check_every=check_every,
                    num_samples=num_samples, checkpoint=path,
                    checkpoint_every=checkpoint_every, config=configs.get((variant, s)),
                    strategy=strategy, progress=progress, label=f"{variant}, seed {s}",
                    print_fn=log, stop=stop,
                )
                log("")
                if stop.requested:  # Arrived while the run was finishing.
                    raise TrainingInterrupted(
                        stop.signal_number, checkpoint=path, run=f"{variant}, seed {s}"
                    )
    results = {"config": config}
    if len(seeds) == 1:
        results["variants"] = {variant: runs[variant][str(seeds[0])] for variant in variants}
    results["runs"] = runs
    results["statistics"] = seed_statistics(runs)
    print_fn(format_summary(results))
    if out_dir is not None:
        results_path = os.path.join(out_dir, "results.json")
        atomic_write(results_path, lambda f: json.dump(results, f, indent=2), binary=False)
        curves_path = plot_curves(results, os.path.join(out_dir, "curves.png"))
        print_fn(f"Wrote {results_path} and {curves_path}")
    return results
