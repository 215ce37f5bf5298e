"""What `test_time_adaptation.py` prints and writes: the machine, the tables, the JSON, the figure.

The raw results are nested dicts whose leaves are lists with one accuracy
per seed (`None` where the library refused the setting); `summarize` turns
each list into its mean, standard deviation and range over the seeds.
"""

import datetime
import json
import os
import platform
import statistics
import sys
import textwrap
from pathlib import Path

#: How the methods are named in the tables and the figure.
LABELS = {"source": "source", "statistics": "statistics", "tent": "TENT"}


def _cpu_name():
    """Returns the CPU model from /proc/cpuinfo, or what `platform` knows (as the benchmarks do)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _device(backend):
    """Returns the device Keras computes on: the first GPU the backend sees, else the CPU."""
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            return "GPU " + tf.config.experimental.get_device_details(gpus[0]).get(
                "device_name", gpus[0].name)
    elif backend == "jax":
        import jax

        gpus = [device for device in jax.devices() if device.platform == "gpu"]
        if gpus:
            return f"GPU {gpus[0].device_kind}"
    elif backend == "torch":
        import torch

        if torch.cuda.is_available():
            return f"GPU {torch.cuda.get_device_name(0)}"
    return f"CPU {_cpu_name()} (no GPU found)"


def machine():
    """Returns the command, the date, the machine and the software versions, as a dict."""
    import keras
    import numpy

    backend = keras.backend.backend()
    framework = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}[backend]
    return {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": datetime.date.today().isoformat(),
        "cpu": _cpu_name(), "cores": len(os.sched_getaffinity(0)),
        "load_average": round(os.getloadavg()[0], 1), "device": _device(backend), "python": platform.python_version(),
        "keras": keras.__version__, "backend": backend,
        "backend_version": __import__(framework).__version__, "numpy": numpy.__version__,
    }


def print_machine(info):
    """Prints `machine()`'s dict as four lines."""
    print(f"command     {info['command']}")
    print(f"date        {info['date']}")
    print(f"machine     {info['cpu']}, {info['cores']} cores, Python {info['python']}, "
          f"load average {info['load_average']}")
    print(f"software    Keras {info['keras']}, backend {info['backend']} "
          f"{info['backend_version']}, NumPy {info['numpy']}")
    print(f"device      {info['device']}", flush=True)


def add(tree, keys, value):
    """Appends `value` to the list at `tree[keys[0]][keys[1]]...`, making the levels on the way."""
    for key in keys[:-1]:
        tree = tree.setdefault(key, {})
    tree.setdefault(keys[-1], []).append(value)


def summarize(values):
    """Returns the mean, standard deviation (0 for one seed), range and count of `values`.

    `None` (the setting was refused) wherever one of the values is `None`.
    """
    if not values or any(value is None for value in values):
        return None
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.mean(values), "std": spread, "min": min(values),
            "max": max(values), "seeds": len(values)}


def per_seed_mean(by_name):
    """Returns the mean over the names of `{name: [value per seed]}`, seed by seed (`None` if any is)."""
    columns = zip(*by_name.values())
    return [None if None in column else statistics.mean(column) for column in columns]


def summaries(results):
    """Returns `results`' summaries: each list of seeds, and the means over corruptions."""
    main = {}
    for variant, by_set in results["main"].items():
        main[variant] = {name: {method: summarize(values) for method, values in row.items()}
                         for name, row in by_set.items()}
        corrupted = {name: row for name, row in by_set.items() if name != "clean"}
        methods = next(iter(by_set.values()))
        main[variant]["mean"] = {method: summarize(per_seed_mean(
            {name: row[method] for name, row in corrupted.items()})) for method in methods}
    sweeps = {
        "source": {variant: summarize(per_seed_mean(by_name))
                   for variant, by_name in results["sweep_source"].items()},
        "batch_sizes": _sweep_summary(results["batch_sizes"]),
        "priors": _sweep_summary(results["priors"]),
    }
    return {"main": main, **sweeps}


def _sweep_summary(tree):
    """Replaces each innermost `{corruption: [value per seed]}` of `tree` by its summary."""
    return {key: summarize(per_seed_mean(value)) if _is_leaf(value) else _sweep_summary(value)
            for key, value in tree.items()}


def _is_leaf(value):
    """Whether `value` is `{corruption: [value per seed]}`."""
    return all(isinstance(item, list) for item in value.values())


def _cell(summary, width=12):
    """Formats a summary as `mean ± std` in percent, or `refused`."""
    if summary is None:
        return f"{'refused':>{width}}"
    return f"{100 * summary['mean']:.1f} ± {100 * summary['std']:.1f}".rjust(width)


def _seeds(count):
    """Returns `"1 seed"` or `"5 seeds"`."""
    return f"{count} seed{'s' * (count != 1)}"


def progress_line(main, name, seconds):
    """Returns the line printed after each test set: each variant's mean accuracies on it."""
    parts = []
    for variant, by_set in main.items():
        means = " ".join(f"{100 * statistics.mean(values):.1f}"
                         for values in by_set[name].values())
        parts.append(f"{variant} {means}")
    return f"{name:13s} {'; '.join(parts)}  ({sum(seconds.values()):.0f} s)"


def main_table(summary, variant, config):
    """Returns the table of one variant: a row per test set and the mean over corruptions."""
    lines = [f"bn={variant}: accuracy (%), mean ± std over {_seeds(config['seeds'])}",
             (f"{config['test_images']} test images, severity {config['severity']}, "
              f"test batch {config['batch_size']}"),
             f"{'test set':16s}" + "".join(f"{LABELS[m]:>12s}" for m in LABELS)]
    rows = summary["main"][variant]
    for name in [*config["corruptions"], "clean", "mean"]:
        label = f"mean of {len(config['corruptions'])}" if name == "mean" else name
        lines.append(f"{label:16s}" + "".join(_cell(rows[name][m]) for m in LABELS))
    return "\n".join(lines)


def _columns(summary, key):
    """Returns `[(header, {x: summary})]`, one per variant and method (or batch size) of a sweep."""
    short = {"statistics": "stats", "tent": "TENT"}
    return [(f"{variant} {short[kind]}" if key == "batch_sizes" else f"{variant} n={kind}", by_x)
            for variant, by_kind in summary[key].items() for kind, by_x in by_kind.items()]


def sweep_tables(summary, config):
    """Returns the batch-size and prior tables of the sweeps: a row per batch size or prior."""
    where = [f"mean over {', '.join(config['sweep_corruptions'])}",
             (f"first {config['sweep_images']} test images, severity {config['severity']}, "
              f"mean ± std over {_seeds(config['sweep_seeds'])}")]
    source = ", ".join(f"{variant} {_cell(cell).strip()}"
                       for variant, cell in summary["source"].items())
    lines = ["Accuracy (%) against the test batch size n, prior 0", *where,
             f"no adaptation: {source}"]
    for key, first, xs in (("batch_sizes", "n", config["batch_sizes"]),
                           ("priors", "N", config["priors"])):
        if key == "priors":
            lines += ["", "Statistics adaptation against the prior strength N", *where]
        columns = _columns(summary, key)
        lines.append(f"{first:8s}" + "".join(f"{header:>13s}" for header, _ in columns))
        for x in xs:
            lines.append(f"{x:<8d}" + "".join(_cell(by_x[str(x)], 13) for _, by_x in columns))
    return "\n".join(lines)


def tables(results):
    """Returns every table, after filling in `results["summary"]`."""
    results["summary"] = summaries(results)
    config = results["config"]
    parts = [main_table(results["summary"], variant, config) for variant in config["variants"]]
    parts.append(sweep_tables(results["summary"], config))
    if results["refused"]:
        # Only batch size 1 with prior 0 is caught (_tta_study.adapted_accuracy).
        parts.append(f"refused: {len(results['refused'])} runs at batch size 1 with prior 0:\n"
                     + textwrap.fill(results["refused"][0]["error"], 78))
    return "\n\n".join(parts)


def write_json(path, results):
    """Writes `results` to `path` as indented JSON."""
    Path(path).write_text(json.dumps(results, indent=1) + "\n")


def _curve(axis, xs, cells, **style):
    """Plots the mean ± std of `cells` (summaries, `None` left out) against `xs`, in percent."""
    points = [(x, cell) for x, cell in zip(xs, cells) if cell is not None]
    if points:
        axis.errorbar([x for x, _ in points], [100 * c["mean"] for _, c in points],
                      yerr=[100 * c["std"] for _, c in points], capsize=2, marker="o",
                      markersize=3, **style)


def figure(path, results):
    """Draws accuracy against the test batch size and against the prior strength; saves a PNG.

    Colour: the method (left) or the batch size (right); line: the variant;
    dotted: no adaptation. A refused setting has no point.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary, config = results["summary"], results["config"]
    sizes, priors = config["batch_sizes"], config["priors"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3.2), sharey=True)
    lines = dict(zip(config["sweep_variants"], ("-", "--")))
    colors = ("tab:blue", "tab:orange", "tab:green")
    for variant, by_method in summary["batch_sizes"].items():
        for method, color in zip(("statistics", "tent"), colors):
            _curve(left, sizes, [by_method[method][str(s)] for s in sizes], color=color,
                   linestyle=lines[variant], label=f"{variant}, {LABELS[method]}")
        for axis in (left, right):
            axis.axhline(100 * summary["source"][variant]["mean"], color="grey",
                         linestyle=":", linewidth=1.2, label=f"{variant}, no adaptation")
    for variant, by_size in summary["priors"].items():
        for (size, by_prior), color in zip(by_size.items(), colors):
            _curve(right, priors, [by_prior[str(p)] for p in priors], color=color,
                   linestyle=lines[variant], label=f"{variant}, batch {size}")
    left.set_xscale("log", base=2)
    left.set_xticks(sizes, [str(size) for size in sizes])
    left.set(xlabel="test batch size n (prior N = 0)", ylabel="accuracy (%)")
    right.set_xscale("symlog", linthresh=1)
    right.set_xticks(priors, [str(prior) for prior in priors])
    right.set(xlabel="prior strength N (statistics adaptation)")
    for axis in (left, right):
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7, loc="best")
    fig.suptitle(f"Mean over {', '.join(config['sweep_corruptions'])} (first "
                 f"{config['sweep_images']} test images); n = 1 with N = 0 is refused",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
