"""`activations.png` and `gradients.png`: what batch norm changes inside the network, per variant.

Both read the `layer_statistics` that `RunConfig.plot_activations` records
(`keras_bn.LayerStatistics` history) from `run_experiment`'s results, and draw
the first seed of each variant: the paper's Figure 1(b, c) is one training run.
"""

import numpy as np

from keras_bn.experiment.checkpoint import atomic_write
from keras_bn.experiment.config import DESCRIPTIONS
from keras_bn.experiment.probes import MIDDLE_DEPTH

__all__ = ["plot_activations", "plot_gradients"]

#: Training steps drawn in `gradients.png`, evenly spread over the run.
GRADIENT_LINES = 8


def _figure(results, title, width=4.6, sharey=False):
    """Returns a Matplotlib figure with one panel per variant, and the first seed's runs."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError("keras-bn's figures need Matplotlib: pip install 'keras-bn[plot]'"
                          ) from error
    runs = {}
    for name, by_seed in results["runs"].items():
        seed, run = next(iter(by_seed.items()))
        if run.get("layer_statistics") is None:
            raise ValueError(f"The runs hold no layer statistics (run with plot_activations="
                             f"True). Received: run {name}, seed {seed} without them")
        runs[name] = (seed, run["layer_statistics"])
    fig = Figure(figsize=(width * len(runs), 3.8), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(runs), squeeze=False, sharey=sharey)[0]
    config, seed = results["config"], next(iter(runs.values()))[0]
    fig.suptitle(f"{title}\nseed {seed}, batch size {config['batch_size']}, "
                 f"learning rate {config['learning_rate']}")
    return fig, axes, runs


def _save(fig, path):
    """Writes the figure as a PNG, atomically; returns `path`."""
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
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
