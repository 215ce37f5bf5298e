"""The tools on real models: what fold_batch_norm, convert_batch_norm and recalibrate_batch_norm do to each.

Usage, from the repository root (no download: random weights):

    python benchmarks/real_models.py                      # every backend, the table for the docs
    python benchmarks/real_models.py --backends tensorflow --models ResNet50,MobileNetBackbone

Each backend runs in its own process (Keras picks its backend once per process),
over the test bed of tests/zoo.py: every keras.applications family with batch
normalization and every keras-hub vision backbone with it, plus a keras-hub
image classifier, built at 32 to 75 pixels. For each model it prints:

- found: the batch norms in the model at any depth (counted by tests/zoo.py,
  not by keras-bn);
- folded / kept: what `fold_batch_norm` did, with the reasons of the kept
  ones grouped;
- fold error: the largest difference of the folded model's inference outputs
  from the model's, relative to the outputs' scale, on 2 samples;
- converted: the batch norms `convert_batch_norm` turned into `ManualBatchNorm`
  (with `custom_layers="keep"` where some sit inside custom blocks), and its
  error in inference;
- recalibrated: the batch norms whose statistics `recalibrate_batch_norm`
  replaced;
- errors: any exception, by tool.

A script, not a test: it asserts nothing. The docs page "On real models" shows
its output.
"""

import argparse
import collections
import json
import os
import re
import subprocess
import sys
import tempfile
import time

BACKENDS = ("tensorflow", "jax", "torch")
HERE = os.path.dirname(os.path.abspath(__file__))


def _reason_kind(why):
    """Returns a short label for a FoldReport reason (paths and numbers removed)."""
    why = re.sub(r"'[^']*'", "X", why)
    if "cannot see" in why:
        return "inside a custom block"
    if "cannot absorb" in why:
        kind = re.search(r"\((\w+)\)", why)
        return f"after {kind.group(1) if kind else 'a layer'}"
    if "also goes to" in why:
        return "producer has other consumers"
    if "activation" in why:
        return "after an activation"
    if "input of the model" in why or "outside the model" in why:
        return "input of a (nested) model"
    return why


def _relative(a, b):
    """Returns the largest |a - b| over the flattened outputs, relative to b's scale."""
    import keras
    import numpy as np

    worst = 0.0
    for x, y in zip(keras.tree.flatten(a), keras.tree.flatten(b)):
        x, y = np.asarray(keras.ops.convert_to_numpy(x), "float64"), np.asarray(keras.ops.convert_to_numpy(y), "float64")
        worst = max(worst, float(np.abs(x - y).max() / max(np.abs(y).max(), 1.0)))
    return worst


def _one_model(name):
    """Runs every tool on the zoo model `name`; returns a dict of what happened."""
    import keras
    import zoo
    from keras_bn import ManualBatchNorm, convert_batch_norm, fold_batch_norm, recalibrate_batch_norm

    row = {"model": name, "errors": {}}
    start = time.perf_counter()
    model = zoo.build(name)
    x = zoo.sample_input(model, batch=2)
    expected = model(x, training=False)
    row["found"] = len(zoo.batch_norm_layers(model))
    row["custom"] = len(zoo.custom_batch_norm_layers(model))
    try:
        folded, report = fold_batch_norm(model, return_report=True)
        row["folded"], row["kept"] = len(report.folded), len(report.kept)
        row["kept_why"] = dict(collections.Counter(_reason_kind(why) for why in report.kept.values()))
        row["fold_error"] = _relative(folded(x, training=False), expected)
    except (ValueError, TypeError) as error:
        row["errors"]["fold"] = str(error).split(". ")[0]
    try:
        converted = convert_batch_norm(model, custom_layers="keep")
        row["converted"] = len(zoo.batch_norm_layers(converted, ManualBatchNorm))
        row["convert_error"] = _relative(converted(x, training=False), expected)
    except (ValueError, TypeError) as error:
        row["errors"]["convert"] = str(error).split(". ")[0]
    before = [keras.ops.convert_to_numpy(layer.moving_mean).copy() for layer in zoo.batch_norm_layers(model)]
    try:
        recalibrate_batch_norm(model, x, batch_size=2)
        after = [keras.ops.convert_to_numpy(layer.moving_mean) for layer in zoo.batch_norm_layers(model)]
        row["recalibrated"] = sum(not (a == b).all() for a, b in zip(after, before))
    except (ValueError, TypeError) as error:
        row["errors"]["recalibrate"] = str(error).split(". ")[0]
    row["seconds"] = round(time.perf_counter() - start, 1)
    return row


def _child(args):
    """Runs in one backend's process: every model, one JSON line each, to `args.json`."""
    sys.path.insert(0, os.path.join(HERE, "..", "tests"))
    import keras
    import zoo

    names = [n for n in zoo.MODELS if not args.models or any(n.endswith(m) for m in args.models.split(","))]
    with open(args.json, "w") as out:
        for name in names:
            row = _one_model(name)
            out.write(json.dumps(row) + "\n")
            out.flush()
            print(f"  {keras.backend.backend()}: {name} ({row['seconds']} s)", file=sys.stderr)
        for name, error in zoo.BACKEND_FAILURES.items():
            out.write(json.dumps({"model": name, "errors": {"build": error}}) + "\n")


def _short(error):
    """Returns the gist of a refusal: which layer cannot be rebuilt, or the error's first sentence."""
    rebuilt = re.search(r"of type (\w+) cannot be rebuilt", error)
    return f"refused: {rebuilt.group(1)} cannot be rebuilt from its config" if rebuilt else error


def _cell(row):
    """Returns `folded / kept`, the conversions and errors of one row, as table text."""
    if "build" in row["errors"]:
        return "does not build", "", "", ""
    errors = {tool: _short(error) for tool, error in row["errors"].items()}
    fold = errors.get("fold") or f"{row['folded']} / {row['kept']}"
    convert = errors.get("convert") or f"{row['converted']} ({row['convert_error']:.0e})"
    recal = errors.get("recalibrate") or f"{row.get('recalibrated', 0)}"
    why = ", ".join(f"{n} {k}" for k, n in sorted(row.get("kept_why", {}).items(), key=lambda kv: -kv[1]))
    return fold, convert, recal, why


def render(results):
    """Returns one markdown table of `{backend: [row, ...]}`: a row a model, the errors per backend.

    What a tool decides (found, folded, kept, converted, recalibrated) is the
    same on every backend, or the cell says how it differs; the numbers are the
    largest output differences, fold and conversion, per backend.
    """
    backends = list(results)
    by_model = collections.defaultdict(dict)
    for backend, rows in results.items():
        for row in rows:
            by_model[row["model"]][backend] = row
    head = ["model", "found", "folded / kept", "converted", "recalibrated", "kept because"]
    head += [f"{b}: fold / convert error" for b in backends]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for model, rows in by_model.items():
        cells = {}
        for backend, row in rows.items():
            fold, convert, recal, why = _cell(row)
            cells.setdefault("found", set()).add(str(row.get("found", "")))
            cells.setdefault("fold", set()).add(fold)
            cells.setdefault("convert", set()).add(convert.split(" (")[0])
            cells.setdefault("recal", set()).add(recal)
            cells.setdefault("why", set()).add(why)
        errors = []
        for backend in backends:
            row = rows.get(backend)
            if row is None or "build" in row["errors"]:
                errors.append("does not build" if row else "not run")
            elif "fold_error" in row:
                errors.append(f"{row['fold_error']:.0e} / {row.get('convert_error', float('nan')):.0e}")
            else:
                errors.append("refused")
        joined = [" or ".join(sorted(cells[key] - {"", "does not build"})) for key in ("found", "fold", "convert", "recal", "why")]
        lines.append("| " + " | ".join([model.replace("keras.applications.", "")] + joined + errors) + " |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--models", default="", help="comma-separated name endings, e.g. ResNet50,MobileNetBackbone")
    parser.add_argument("--json", help=argparse.SUPPRESS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return _child(args)
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        for backend in args.backends.split(","):
            path = os.path.join(folder, f"{backend}.jsonl")
            env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2"}
            command = [sys.executable, __file__, "--child", "--json", path, "--models", args.models]
            subprocess.run(command, env=env, check=True)
            with open(path) as lines:
                results[backend] = [json.loads(line) for line in lines]
    print(render(results))


if __name__ == "__main__":
    main()
