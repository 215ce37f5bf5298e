"""The tables of docs/benchmarks.md, rendered from the JSON that `bench.py` and `large_offset.py` write.

Each renderer takes `results` (a run's name, as in `make_page.RUNS`, to what that
run wrote) and returns the Markdown between the table's markers: a caption with
the command, the machine and the date, then the table in a compact div, so that
no table scrolls at 1280 px (tests/docs/test_docs_width.py).
"""

from pathlib import Path

from _common import AUTODIFF, CLOSED_FORM, IDENTITY, KERAS, NATIVE, PLAIN_BN, PLAIN_NO_BN
from _layer_figures import KERNEL, PLAIN_JAX
from _run_figures import COMMAND, NOTEBOOK

BACKENDS = {"tensorflow": "TensorFlow", "jax": "JAX", "torch": "PyTorch"}
FRAMEWORKS = {"tensorflow": "TensorFlow", "jax": "JAX", "torch": "PyTorch"}
DEFAULT = "`ManualBatchNorm`, the default"


def _number(value, unit):
    """Formats a median for a cell: ms to 3 significant digits, rates as whole numbers."""
    if unit in ("images/s",):
        return f"{value:,.0f}"
    return f"{value:.3g}" if value < 100 else f"{value:.0f}"


def _cell(summary, unit):
    """Formats a row's or a ratio's summary: the median and its spread, `13.8 ±2%`."""
    if summary is None:
        return ""
    spread = summary["spread"]
    spread = f"±{spread:.1%}" if spread < 0.01 else f"±{spread:.0%}"
    value = f"{summary['median']:.2f}" if unit == "ratio" else _number(summary["median"], unit)
    return f"{value} {spread}"


def _figure(run, name):
    """Returns the figure `name` of one run's results, or None."""
    return next((f for f in run.get("figures", []) if f["name"] == name), None) if run else None


def _machine_line(runs):
    """Returns the machine, the versions, the load and the date of `runs`, in one sentence."""
    machines = [run["machine"] for run in runs if run]
    first = machines[0]
    frameworks = ", ".join(f"{FRAMEWORKS[m['backend']]} {m['framework']}" for m in machines)
    loads = [run["before"]["load"][0] for run in runs if run]
    dates = sorted({m["date"] for m in machines})
    threads = {str(m["threads_per_op"]) for m in machines}
    device = "no GPU" if first["device"].startswith("CPU") else first["device"]
    load = f"{min(loads):.1f}" + (f" to {max(loads):.1f}" if max(loads) - min(loads) >= 0.05 else "")
    return (f"{first['cpu']}, {first['cores']} cores, {device}; Python {first['python']}, Keras "
            f"{first['keras']}, {frameworks}; threads per op {', '.join(sorted(threads))}; load "
            f"average {load} at the start; {' to '.join(dates)}")


def _command(runs):
    """Returns the command of `runs` as the page shows it, in code: `--json` left out, `B` for the backend."""
    commands = []
    for run in runs:
        words = run["machine"]["command"].split()
        words[:2] = ["python", f"benchmarks/{Path(words[1]).name}"]
        if "--json" in words:
            del words[words.index("--json"):words.index("--json") + 2]
        if "--backend" in words and len(runs) > 1:
            words[words.index("--backend") + 1] = "B"
        commands.append(" ".join(words))
    return " and ".join(f"`{command}`" for command in dict.fromkeys(commands))


def _busy_line(runs, names):
    """Returns a warning naming the figures of `runs` taken on a busy machine, or ''."""
    busy = []
    for run in runs:
        if run and run["before"]["busy"]:
            busy.append(f"{run['machine']['backend']} before the figures: {'; '.join(run['before']['reasons'])}")
        for name in names:
            figure = _figure(run, name)
            if figure and figure["idle"]["busy"]:
                busy.append(f"{run['machine']['backend']} {name}: {'; '.join(figure['idle']['reasons'])}")
    return f"**Measured on a busy machine, not to be trusted**: {'. '.join(busy)}.\n\n" if busy else ""


def _rounds(runs, name):
    """Returns how many rounds the figure `name` ran, as text: `15` or `3 to 15`."""
    counts = sorted({next(iter(_figure(run, name)["rows"].values()))["n"] for run in runs if _figure(run, name)})
    return " to ".join(str(c) for c in (counts[0], counts[-1])) if counts[0] != counts[-1] else str(counts[0])


def _table(header, rows):
    """Returns a compact Markdown table of `header` and `rows`."""
    lines = ['<div class="compact-table" markdown>', "", "| " + " | ".join(header) + " |",
             "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines + ["", "</div>"])


def _per_backend(results, name, rows, ratios, what):
    """Renders figure `name` of every backend: `rows` and `ratios` are `(label, key)` pairs."""
    runs = [results.get(backend) for backend in BACKENDS]
    figures = [_figure(run, name) for run in runs]
    unit = next(f["unit"] for f in figures if f)
    body = []
    for label, key in rows:
        keys = key if isinstance(key, tuple) else (key,)
        cells = [_cell(next((f["rows"][k] for k in keys if f and k in f["rows"]), None), unit) for f in figures]
        if any(cells):
            body.append([label, *cells])
    for label, key in ratios:
        keys = key if isinstance(key, tuple) else (key,)
        cells = [_cell(next((f["ratios"][k] for k in keys if f and k in f["ratios"]), None), "ratio")
                 for f in figures]
        body.append([label, *cells])
    caption = (f"{what} Made by {_command([run for run in runs if run])} for each backend B, on "
               f"{_machine_line(runs)}; "
               f"medians of {_rounds(runs, name)} alternated rounds, ± half their interquartile range.\n\n")
    return _busy_line(runs, [name]) + caption + _table([unit, *BACKENDS.values()], body)


def train(results):
    """The training step of the notebook's network, per backend."""
    rows = [("no batch norm", "no BN"), ("`Identity` in its place", IDENTITY), ("Keras `BatchNormalization`", KERAS),
            (DEFAULT, NATIVE), ("`fused=False`, closed form", CLOSED_FORM), ("`fused=False`, autodiff", AUTODIFF),
            ("plain PyTorch, no batch norm", PLAIN_NO_BN), ("plain PyTorch, `BatchNorm2d`", PLAIN_BN)]
    ratios = [("ratio, the default / Keras", f"{NATIVE} / Keras")]
    return _per_backend(results, "train", rows, ratios,
                        "One `train_on_batch` of `deep_mnist_model`, batch 32, in ms.")


def bn(results):
    """Batch norm alone, forward and backward, on the network's 20 shapes, per backend."""
    kernel = (f"{NATIVE} / {KERNEL}", f"{NATIVE} / {PLAIN_JAX}")
    rows = [("the kernel (JAX: plain `jax.numpy`)", (KERNEL, PLAIN_JAX)), ("Keras `BatchNormalization`", KERAS),
            (DEFAULT, NATIVE), ("`fused=False`, closed form", CLOSED_FORM), ("`fused=False`, autodiff", AUTODIFF)]
    ratios = [("ratio, the default / the kernel", kernel), ("ratio, the default / Keras", f"{NATIVE} / Keras")]
    return _per_backend(results, "bn", rows, ratios,
                        "Forward and backward of the network's 20 batch norms at batch 32, in ms.")


def predict(results):
    """Inference: `model.predict_on_batch` on 5,000 images, per backend."""
    rows = [("no batch norm", "no BN"), ("Keras `BatchNormalization`", KERAS), (DEFAULT, NATIVE),
            ("`fused=False`", "ManualBatchNorm, fused=False")]
    ratios = [("ratio, the default / Keras", f"{NATIVE} / Keras")]
    return _per_backend(results, "predict", rows, ratios,
                        "`model.predict_on_batch` on 5,000 images in batches of 1,000, in images per second.")


def experiment(results):
    """The whole `keras-bn` command against the notebook's own code, TensorFlow."""
    run = results["experiment"]
    figure = _figure(run, "experiment")
    body = [[f"`{COMMAND} --quiet`", _cell(figure["rows"][COMMAND], "s")],
            ["the notebook's TF1 code", _cell(figure["rows"][NOTEBOOK], "s")],
            ["ratio, `keras-bn` / the notebook", _cell(figure["ratios"]["keras-bn / notebook"], "ratio")]]
    caption = (f"The notebook's whole experiment, {figure['notes'][0]}, in seconds. Made by "
               f"{_command([run])} on {_machine_line([run])}; medians of "
               f"{_rounds([run], 'experiment')} alternated pairs, ± half their interquartile range.\n\n")
    return _busy_line([run], ["experiment"]) + caption + _table(["s", "TensorFlow"], body)


def _error(value):
    """Formats a relative error: `2.4e-4`."""
    mantissa, exponent = f"{value:.1e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def large_offset(results):
    """Each layer's batch and moving variance on N(1e4, 1) inputs, per backend and path."""
    run = results["large-offset"]
    body = []
    for result in run["results"]:
        for layer, errors in result["errors"].items():
            label = "Keras `BatchNormalization`" if layer.startswith("Keras") else f"`ManualBatchNorm({layer})`"
            if "refused" in errors:
                cells = ["refused: no kernel", "", ""]
            else:
                nan = f" ({errors['nan_channels']} of {errors['channels']} NaN)" if errors["nan_channels"] else ""
                negative = f" ({errors['negative_moving']} < 0)" if errors["negative_moving"] else ""
                batch = "NaN" if errors["batch"] is None else _error(errors["batch"])
                cells = [batch + nan, _error(errors["moving"]) + negative, _error(errors["output"])]
            body.append([BACKENDS[result["backend"]], label, *cells])
    machine = run["machine"]
    versions = ", ".join(f"{FRAMEWORKS[r['backend']]} {r['version']}" for r in run["results"])
    caption = ("One training call on 32 x 16 x 16 x 16 float32 values from N(1e4, 1), `momentum=0`: "
               "the largest relative error over the 16 channels against `numpy.var` in float64, and "
               "the output's largest error against the normalization in float64. "
               f"Made by {_command([run])} on {machine['cpu']}; Python "
               f"{machine['python']}, Keras {machine['keras']}, {versions}; {machine['date']}.\n\n")
    return caption + _table(["backend", "layer", "batch variance", "moving variance", "output"], body)
