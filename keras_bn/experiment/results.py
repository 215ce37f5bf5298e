"""The experiment's results: statistics over seeds, the summary table, the curves, the files."""

import json
import os

import numpy as np

from keras_bn.experiment.checkpoint import atomic_write
from keras_bn.experiment.config import DESCRIPTIONS

__all__ = ["format_summary", "plot_curves", "seed_statistics", "write_results"]

#: The per-run numbers `seed_statistics` summarizes.
STATISTICS = ("final_test_accuracy", "final_validation_accuracy", "accuracy_on_100_samples",
              "train_seconds")
#: The final accuracies with recalibrated statistics, in a run of `RunConfig.recalibrate`.
RECALIBRATED = ("final_recalibrated_test_accuracy", "final_recalibrated_validation_accuracy")


def _spread(values):
    """Returns mean, sample std (`None` for one value), min and max of the non-`None` values."""
    values = np.asarray([float(v) for v in values if v is not None], dtype=np.float64)
    if values.size == 0:
        return {"mean": None, "std": None, "min": None, "max": None}
    return {"mean": float(values.mean()), "std": float(values.std(ddof=1)) if values.size > 1
            else None, "min": float(values.min()), "max": float(values.max())}


def seed_statistics(runs):
    """Summarizes each variant's runs over seeds.

    The standard deviation is the sample one (divided by `n - 1`), the usual
    estimate of how much a new seed would differ; it is `None` for one seed.

    Args:
        runs: `{variant: {seed: run}}` (`results["runs"]`).

    Returns:
        `{variant: {"seeds": [...], "final_test_accuracy": {"mean", "std",
        "min", "max"}, "final_validation_accuracy": {...},
        "accuracy_on_100_samples": {...}, "train_seconds": {...}}}`, and the
        spreads of the `RECALIBRATED` accuracies when the runs have them.

    Example:

    >>> runs = {"keras": {"0": {"final_test_accuracy": 0.9},
    ...                   "1": {"final_test_accuracy": 0.8}}}
    >>> stats = seed_statistics(runs)["keras"]
    >>> stats["seeds"], round(stats["final_test_accuracy"]["mean"], 6)
    ([0, 1], 0.85)
    """
    def keys(by_seed):
        """The statistics of these runs: `STATISTICS`, then the recalibrated ones they have."""
        return STATISTICS + tuple(key for key in RECALIBRATED
                                  if any(key in run for run in by_seed.values()))

    return {
        name: {"seeds": [int(seed) for seed in by_seed],
               **{key: _spread(run.get(key) for run in by_seed.values()) for key in keys(by_seed)}}
        for name, by_seed in runs.items()
    }


def _table(rows):
    """Lays out `rows` (the first one the header) in columns, the first left-aligned."""
    widths = [max(len(row[k]) for row in rows) for k in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) if k == 0 else cell.rjust(w)
                       for k, (cell, w) in enumerate(zip(row, widths))) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_summary(results):
    """Returns the summary table of `run_experiment`'s results as a string.

    With one seed: a row per variant with its final validation and test
    accuracies, the one-at-a-time score and the training time. With several:
    the mean, standard deviation, min and max of the final test accuracy over
    the seeds, the mean final validation accuracy and the mean training time.
    """

    def fmt(value):
        """An accuracy, or a dash when it was not measured."""
        return "-" if value is None else f"{value:.4f}"

    recalibrated = results["config"].get("recalibrate") is not None
    if len(results["config"]["seeds"]) == 1:
        rows = [("variant", "final val acc", "final test acc", "acc on 100", "train s")]
        if recalibrated:
            rows[0] += ("recal val acc", "recal test acc")
        for name, by_seed in results["runs"].items():
            (run,) = by_seed.values()
            rows.append((name, fmt(run["final_validation_accuracy"]),
                         fmt(run["final_test_accuracy"]), fmt(run["accuracy_on_100_samples"]),
                         f"{run['train_seconds']:.1f}"))
            if recalibrated:
                rows[-1] += tuple(fmt(run.get(key)) for key in RECALIBRATED[::-1])
        return _table(rows)
    rows = [("variant", "seeds", "test mean", "test std", "test min", "test max", "val mean",
             "train s/run")]
    if recalibrated:
        rows[0] += ("recal test mean", "recal test min", "recal test max")
    for name, entry in results["statistics"].items():
        test = entry["final_test_accuracy"]
        rows.append((name, str(len(entry["seeds"])),
                     *(fmt(test[k]) for k in ("mean", "std", "min", "max")),
                     fmt(entry["final_validation_accuracy"]["mean"]),
                     f"{entry['train_seconds']['mean']:.1f}"))
        if recalibrated:
            spread = entry.get(RECALIBRATED[0], {})
            rows[-1] += tuple(fmt(spread.get(k)) for k in ("mean", "min", "max"))
    return _table(rows)


def _validation_curve(history, events=("validation", "final_validation")):
    """Returns `{batch: (loss, accuracy)}` of the validation entries, the final one included.

    `events` names the entries: the notebook's, or `("recalibrated_validation",
    "final_recalibrated_validation")` for the recalibrated scores.
    """
    points = {}
    for entry in history:
        if entry["event"] == events[0]:
            points[entry["batch"]] = (entry["loss"], entry["accuracy"])
        elif entry["event"] == events[1] and entry["batch"] is not None:
            points.setdefault(entry["batch"], (entry["loss"], entry["accuracy"]))
    return points


def plot_curves(results, path):
    """Draws validation accuracy and loss against batch, one line per variant, to `path` (PNG).

    With several seeds each line is the mean over the seeds and a shaded band
    spans their minimum to maximum. Runs with recalibrated scores
    (`RunConfig.recalibrate`) get a second, dashed line of the same colour. Uses Matplotlib's Agg canvas, so it needs
    no display and leaves `pyplot` alone; the file is written atomically.

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
        raise ImportError("plot_curves needs Matplotlib: pip install 'keras-bn[plot]'") from error
    config = results["config"]
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    recalibrate = config.get("recalibrate")
    for name, by_seed in results["runs"].items():
        colors = [None, None]
        for events in (("validation", "final_validation"),
                       ("recalibrated_validation", "final_recalibrated_validation")):
            curves = [_validation_curve(run["history"], events) for run in by_seed.values()]
            xs = sorted(set.intersection(*(set(curve) for curve in curves)))
            if not xs:  # no recalibrated scores: no batch norm, or none asked for
                continue
            values = np.array([[curve[x] for x in xs] for curve in curves], dtype=np.float64)
            recalibrated = events[0] != "validation"
            label = (f"{name}, recalibrated on {recalibrate} batches" if recalibrated
                     else f"{name} ({DESCRIPTIONS[name]})")
            for k, (ax, column) in enumerate(zip(axes, (1, 0))):  # accuracy, then loss
                per_seed = values[:, :, column]
                (line,) = ax.plot(xs, per_seed.mean(axis=0), marker="o", markersize=3,
                                  label=label, color=colors[k],
                                  linestyle="--" if recalibrated else "-")
                colors[k] = line.get_color()
                if len(curves) > 1:
                    ax.fill_between(xs, per_seed.min(axis=0), per_seed.max(axis=0),
                                    color=line.get_color(), alpha=0.2 if not recalibrated
                                    else 0.1, linewidth=0)
    axes[0].set(xlabel="batch", ylabel="validation accuracy", title="Validation accuracy",
                ylim=(0, 1))
    axes[1].set(xlabel="batch", ylabel="validation loss (mean sigmoid cross-entropy)",
                title="Validation loss")
    seeds = config["seeds"]
    spread = f"lines: mean of {len(seeds)} seeds; bands: min–max" if len(seeds) > 1 else None
    for ax in axes:
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small", title=spread, title_fontsize="small")
    seed_text = ("seed " if len(seeds) == 1 else "seeds ") + ",".join(map(str, seeds))
    fig.suptitle("Deep MNIST CNN (19 conv layers): batch normalization vs none — "
                 f"batch size {config['batch_size']}, lr {config['learning_rate']}, {seed_text}")
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120))
    return path


def write_results(results, folder):
    """Writes `results.json` and `curves.png` to `folder`; returns their paths.

    With `plot_activations`, `activations.png` and `gradients.png` too
    (`keras_bn.experiment.figures`), their paths after the first two.
    """
    path = os.path.join(folder, "results.json")
    atomic_write(path, lambda f: json.dump(results, f, indent=2), binary=False)
    paths = (path, plot_curves(results, os.path.join(folder, "curves.png")))
    if results["config"].get("plot_activations"):
        from keras_bn.experiment.figures import plot_activations, plot_gradients

        paths += (plot_activations(results, os.path.join(folder, "activations.png")),
                  plot_gradients(results, os.path.join(folder, "gradients.png")))
    return paths
