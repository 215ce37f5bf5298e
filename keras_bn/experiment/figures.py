"""The run folder's figures, drawn from `run_experiment`'s results with Matplotlib.

`curves.png` draws every variant's validation accuracy and loss against the
batch. `activations.png` and `gradients.png` show what batch norm changes
inside the network: both read the `layer_statistics` that
`RunConfig.plot_activations` records (`keras_bn.LayerStatistics` history) and
draw the first seed of each variant, as the paper's Figure 1(b, c) is one
training run. Each uses Matplotlib's Agg canvas, so it needs no display and
leaves `pyplot` alone, and is written atomically.
"""

import numpy as np

from keras_bn.experiment.checkpoint import atomic_write
from keras_bn.experiment.config import DESCRIPTIONS
from keras_bn.experiment.probes import MIDDLE_DEPTH

__all__ = ["curves_title", "matplotlib_missing", "plot_activations", "plot_curves",
           "plot_gradients", "validation_curves"]

#: Training steps drawn in `gradients.png`, evenly spread over the run.
GRADIENT_LINES = 8


#: What to install for the figures.
INSTALL = "pip install 'keras-bn[plot]'"


def matplotlib_missing():
    """Returns why Matplotlib cannot draw the figures (the import error's text), or `None`.

    It imports what the figures use (Matplotlib's colour maps, `Figure` and
    the Agg canvas), so that a run can find out before it trains.
    """
    try:
        _new_figure()
    except ImportError as error:
        return str(error.__cause__ or error)
    return None


def _new_figure(**kwargs):
    """Returns an empty Matplotlib `Figure` on an Agg canvas."""
    try:
        import matplotlib  # noqa: F401  (`gradients.png` takes its colour maps)
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError(f"keras-bn's figures need Matplotlib: {INSTALL}") from error
    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def _figure(results, title, width=4.6, sharey=False):
    """Returns a Matplotlib figure with one panel per variant, and the first seed's runs."""
    runs = {}
    for name, by_seed in results["runs"].items():
        seed, run = next(iter(by_seed.items()))
        if run.get("layer_statistics") is None:
            raise ValueError(f"The runs hold no layer statistics (run with plot_activations="
                             f"True). Received: run {name}, seed {seed} without them")
        runs[name] = (seed, run["layer_statistics"])
    fig = _new_figure(figsize=(width * len(runs), 3.8), layout="constrained")
    axes = fig.subplots(1, len(runs), squeeze=False, sharey=sharey)[0]
    config, seed = results["config"], next(iter(runs.values()))[0]
    fig.suptitle(f"{title}\nseed {seed}, batch size {config['batch_size']}, "
                 f"learning rate {config['learning_rate']}")
    return fig, axes, runs


def _save(fig, path):
    """Writes the figure as a PNG, atomically; returns `path`."""
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    return path


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


def validation_curves(results):
    """Returns the points `curves.png` draws: `{(variant, recalibrated): (batches, scores)}`.

    `batches` are the batches validated in every seed's run (every
    `validate_every`-th, and the last: the final validation); `scores` is an
    array `(seeds, len(batches), 2)` of the loss and the accuracy there. With
    `recalibrate`, a `(variant, True)` entry holds the recalibrated scores of
    the variants with batch norm.
    """
    curves = {}
    for name, by_seed in results["runs"].items():
        for recalibrated in (False, True):
            events = (("recalibrated_validation", "final_recalibrated_validation")
                      if recalibrated else ("validation", "final_validation"))
            points = [_validation_curve(run["history"], events) for run in by_seed.values()]
            xs = sorted(set.intersection(*(set(curve) for curve in points)))
            if xs:  # No recalibrated scores: no batch norm, or none asked for.
                curves[name, recalibrated] = (xs, np.array(
                    [[curve[x] for x in xs] for curve in points], dtype=np.float64))
    return curves


def curves_title(config):
    """Returns the title of `curves.png`: the variants that ran and the settings."""
    seeds = config["seeds"]
    seed_text = ("seed " if len(seeds) == 1 else "seeds ") + ",".join(map(str, seeds))
    return (f"Deep MNIST CNN (19 conv layers): {' vs '.join(config['variants'])} — "
            f"{config['batches']} batches of {config['batch_size']}, "
            f"lr {config['learning_rate']}, {seed_text}")


def plot_curves(results, path):
    """Draws validation accuracy and loss against batch, one line per variant, to `path` (PNG).

    The points are `validation_curves(results)`: every validation of the
    log and the final one, at the last batch. With several seeds each line is
    the mean over the seeds and a shaded band spans their minimum to maximum.
    Runs with recalibrated scores (`RunConfig.recalibrate`) get a second,
    dashed line of the same colour. The title, `curves_title`, names the
    variants that ran and is also the PNG's `Title` text. Uses Matplotlib's
    Agg canvas, so it needs no display and leaves `pyplot` alone; the file is
    written atomically.

    Args:
        results: The dict `run_experiment` returns.
        path: Where to write the image.

    Returns:
        `path`.

    Raises:
        ImportError: if Matplotlib is not installed (`pip install keras-bn[plot]`).
    """
    config = results["config"]
    fig = _new_figure(figsize=(11, 4.2), layout="constrained")
    axes = fig.subplots(1, 2)
    colors = {}
    for (name, recalibrated), (xs, values) in validation_curves(results).items():
        label = (f"{name}, recalibrated on {config.get('recalibrate')} batches" if recalibrated
                 else f"{name} ({DESCRIPTIONS[name]})")
        for k, (ax, column) in enumerate(zip(axes, (1, 0))):  # accuracy, then loss
            per_seed = values[:, :, column]
            (line,) = ax.plot(xs, per_seed.mean(axis=0), marker="o", markersize=3, label=label,
                              color=colors.get((name, k)),
                              linestyle="--" if recalibrated else "-")
            colors[name, k] = line.get_color()
            if len(per_seed) > 1:
                ax.fill_between(xs, per_seed.min(axis=0), per_seed.max(axis=0),
                                color=line.get_color(), alpha=0.1 if recalibrated else 0.2,
                                linewidth=0)
    every = config.get("validate_every")
    xlabel = f"batch (validated every {every} and after the last)" if every else "batch"
    axes[0].set(xlabel=xlabel, ylabel="validation accuracy", title="Validation accuracy",
                ylim=(0, 1))
    axes[1].set(xlabel=xlabel, ylabel="validation loss (mean sigmoid cross-entropy)",
                title="Validation loss")
    seeds = config["seeds"]
    spread = f"lines: mean of {len(seeds)} seeds; bands: min–max" if len(seeds) > 1 else None
    for ax in axes:
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small", title=spread, title_fontsize="small")
    title = curves_title(config)
    fig.suptitle(title)
    # The title goes into the PNG's text chunks too, where a program can read it.
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120,
                                             metadata={"Title": title}))
    return path


def plot_activations(results, path):
    """Draws the paper's Figure 1(b, c): a middle layer's input percentiles over training.

    One panel per variant (its first seed): the 15th, 50th and 85th
    percentiles of what enters the ReLU of the recorded middle layer, on the
    fixed probe batch, against the training step.

    Args:
        results: The dict `run_experiment` returns, with `plot_activations`.
        path: Where to write the PNG.

    Returns:
        `path`.

    Raises:
        ValueError: if the runs hold no layer statistics.
        ImportError: if Matplotlib is not installed.
    """
    fig, axes, runs = _figure(results, "What enters the ReLU of conv layer "
                              f"{MIDDLE_DEPTH} on a fixed batch, over training "
                              "(Ioffe & Szegedy's Figure 1(b, c))")
    for ax, (name, (_, stats)) in zip(axes, runs.items()):
        ((layer, values),) = stats["inputs"].items()
        values = np.asarray(values, dtype=np.float64).reshape(len(stats["step"]), -1)
        for column, q in enumerate(stats["percentiles"]):
            ax.plot(stats["step"], values[:, column], label=f"{q:g}th percentile",
                    color="black", linewidth=1.5 if q == 50 else 1.0,
                    linestyle="-" if q == 50 else ":" if q < 50 else "--")
        ax.set(title=f"{name} ({DESCRIPTIONS[name]})", xlabel="training batch",
               ylabel=f"input of the ReLU after {layer.replace('relu', 'bn')}" if name != "none"
               else f"pre-activation of {layer}")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    return _save(fig, path)


def plot_gradients(results, path):
    """Draws the norm of each layer's kernel gradient against its depth, over training.

    One panel per variant (its first seed), log scale: a line per recorded
    training step (`GRADIENT_LINES` of them, evenly spread, light to dark as
    training goes on), through the gradient norms of the kernels from the first
    conv layer to the logits.

    Args:
        results: The dict `run_experiment` returns, with `plot_activations`.
        path: Where to write the PNG.

    Returns:
        `path`.

    Raises:
        ValueError: if the runs hold no layer statistics.
        ImportError: if Matplotlib is not installed.
    """
    import matplotlib

    fig, axes, runs = _figure(results, "Gradient norm of each layer's kernel, first layer to "
                              f"logits, at {GRADIENT_LINES} points of training", sharey=True)
    colormap = matplotlib.colormaps["viridis_r"]
    for ax, (name, (_, stats)) in zip(axes, runs.items()):
        names = list(stats["gradient_norms"])
        norms = np.array([stats["gradient_norms"][layer] for layer in names], dtype=np.float64)
        steps = stats["step"]
        chosen = np.unique(np.linspace(0, len(steps) - 1, min(GRADIENT_LINES, len(steps)))
                           .round().astype(int))
        depth = np.arange(1, len(names) + 1)
        for k, index in enumerate(chosen):
            # Zero norms (a dead ReLU layer) cannot be drawn on a log scale.
            ax.plot(depth, np.where(norms[:, index] > 0, norms[:, index], np.nan), marker=".",
                    color=colormap(0.15 + 0.85 * k / max(1, len(chosen) - 1)),
                    label=f"batch {steps[index]}")
        ax.set_yscale("log")
        ax.set(title=f"{name} ({DESCRIPTIONS[name]})",
               xlabel=f"layer depth (1 = {names[0]}, {len(names)} = {names[-1]})",
               ylabel="kernel gradient norm")
        ax.grid(True, alpha=0.3, which="both")
        ax.legend(fontsize="x-small", ncols=2)
        ax.tick_params(labelleft=True)
    return _save(fig, path)
