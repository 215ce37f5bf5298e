"""The experiment's results: statistics over seeds, the summary table, the files."""

import json
import os

import numpy as np

from keras_bn.experiment.checkpoint import atomic_write
from keras_bn.experiment.figures import plot_activations, plot_curves, plot_gradients

__all__ = ["format_summary", "seed_statistics", "short_run_note", "write_results"]

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


#: The batches after which, in the tutorial's runs, the network with batch norm scores well
#: above chance in inference mode: validation accuracy 0.13-0.30 at batch 200, 0.42-0.74 at
#: batch 300, and a final test accuracy of 0.75-0.96 after 800 (docs/tutorial.md). Without
#: batch norm it stays at chance at any length.
LEARNS_BY = 300
#: The tutorial's account of a run: when the network learns, and what 800 batches give.
TUTORIAL = "https://keras-bn.github.io/keras-bn/tutorial/#the-run"


def short_run_note(config):
    """Returns one line saying that `config` trains too few batches to learn, or `None`.

    Only a run with a batch-norm variant and fewer than `LEARNS_BY` batches
    gets it: without batch norm more batches would not help.

    Example:

    >>> short_run_note({"variants": ["none"], "batches": 50}) is None
    True
    >>> short_run_note({"variants": ["manual"], "batches": 50})[:51]
    'Note: 50 batches are too few to see this network le'
    """
    if config["batches"] >= LEARNS_BY or set(config["variants"]) <= {"none"}:
        return None
    without = ("; without it, it stays at chance however long it trains"
               if "none" in config["variants"] else "")
    return (f"Note: {config['batches']} batches are too few to see this network learn: with "
            "batch norm it stays near chance for about 200 batches, then climbs (validation "
            f"accuracy 0.42-0.74 after 300, 0.75-0.96 after 800, the default){without}; "
            f"see {TUTORIAL}")


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


def write_results(results, folder, *, figures=True):
    """Writes `results.json` and `curves.png` to `folder`; returns their paths.

    With `plot_activations`, `activations.png` and `gradients.png` too
    (`keras_bn.experiment.figures`), their paths after the first two. With
    `figures=False` (no Matplotlib), `results.json` alone.
    """
    path = os.path.join(folder, "results.json")
    atomic_write(path, lambda f: json.dump(results, f, indent=2), binary=False)
    if not figures:
        return (path,)
    paths = (path, plot_curves(results, os.path.join(folder, "curves.png")))
    if results["config"].get("plot_activations"):
        paths += (plot_activations(results, os.path.join(folder, "activations.png")),
                  plot_gradients(results, os.path.join(folder, "gradients.png")))
    return paths
