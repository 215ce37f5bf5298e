"""The tools on real models: what fold, convert, freeze and recalibrate do to each, and their errors per backend.

Usage, from the repository root (no download: random weights):

    python benchmarks/real_models.py                      # every backend, the table for the docs
    python benchmarks/real_models.py --backends tensorflow --models ResNet50,MobileNetBackbone

Each backend runs in its own process (Keras picks its backend once per process),
over the test bed of tests/zoo.py: every keras.applications family with batch
normalization, every keras-hub model with it that builds from arguments
(backbones, an image classifier, a segmenter, a detector) and hand-written
blocks, built at 16 to 75 pixels. It prints two tables. The first, what the
tools decided, a row a model:

- found: the batch norms in the model at any depth (counted by tests/zoo.py,
  not by keras-bn); under "kept because", as "unused", how many of those that
  conversion did not reach change no output when their moving mean moves: the
  model keeps them but never calls them;
- folded / kept: what `fold_batch_norm` did, and under "kept because" the
  reasons of the kept ones, grouped and shortened to the layer before
  ("Concatenate") or the kind ("custom block");
- converted: the batch norms `convert_batch_norm` turned into `ManualBatchNorm`,
  with `custom_layers="keep"` where some sit inside custom blocks;
- frozen: the `FrozenBatchNorm` layers after
  `freeze_batch_norm(model, custom_layers="keep")`;
- recalibrated: the batch norms whose statistics `recalibrate_batch_norm`
  replaced.

A tool that raises shows "refused" there, and a list under the table gives
the gist of each error. The second table gives, per backend, the largest
differences of the folded and the converted model's inference outputs from
the model's, relative to the outputs' scale, on 2 samples.

A script, not a test: it asserts nothing. The docs page "On real models" shows
its output; `_real_models_table.py` renders the tables.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from _real_models_table import render

BACKENDS = ("tensorflow", "jax", "torch")
HERE = os.path.dirname(os.path.abspath(__file__))


def _relative(a, b):
    """Returns the largest |a - b| over the flattened outputs, relative to b's scale."""
    import keras
    import numpy as np

    worst = 0.0
    for x, y in zip(keras.tree.flatten(a), keras.tree.flatten(b)):
        x, y = np.asarray(keras.ops.convert_to_numpy(x), "float64"), np.asarray(keras.ops.convert_to_numpy(y), "float64")
        worst = max(worst, float(np.abs(x - y).max() / max(np.abs(y).max(), 1.0)))
    return worst


def _first_sentence(error):
    """Returns the first sentence of an exception's message, with its type."""
    return f"{type(error).__name__}: {str(error).split('. ')[0]}"


def _never_called(model, x, expected, reached):
    """Returns the names of the batch norms outside `reached` whose statistics change no output.

    Each is tried alone: its moving mean moved by 1, the inference outputs
    compared, the mean put back.
    """
    import keras
    import numpy as np
    import zoo

    unused = []
    for layer in zoo.batch_norm_layers(model):
        if layer.name in reached:
            continue
        mean = keras.ops.convert_to_numpy(layer.moving_mean).copy()
        layer.moving_mean.assign(mean + 1.0)
        changed = _relative(model(x, training=False), expected) > 0
        layer.moving_mean.assign(mean)
        if not changed:
            unused.append(layer.name)
    return unused


def _one_model(name):
    """Runs every tool on the zoo model `name`; returns a dict of what happened."""
    import keras
    import zoo

    from keras_bn import (
        FrozenBatchNorm,
        ManualBatchNorm,
        convert_batch_norm,
        fold_batch_norm,
        freeze_batch_norm,
        recalibrate_batch_norm,
    )

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
        row["kept_why"] = list(report.kept.values())
        row["fold_error"] = _relative(folded(x, training=False), expected)
    except (ValueError, TypeError) as error:
        row["errors"]["fold"] = _first_sentence(error)
    try:
        converted = convert_batch_norm(model, custom_layers="keep")
        row["converted"] = len(zoo.batch_norm_layers(converted, ManualBatchNorm))
        row["convert_error"] = _relative(converted(x, training=False), expected)
    except (ValueError, TypeError) as error:
        row["errors"]["convert"] = _first_sentence(error)
    try:
        frozen = freeze_batch_norm(model, custom_layers="keep")
        row["frozen"] = len(zoo.batch_norm_layers(frozen, FrozenBatchNorm))
    except (ValueError, TypeError) as error:
        row["errors"]["freeze"] = _first_sentence(error)
    if "converted" in row and row["converted"] < row["found"]:
        reached = {layer.name for layer in zoo.batch_norm_layers(converted, ManualBatchNorm)}
        row["unused"] = _never_called(model, x, expected, reached)
    before = [keras.ops.convert_to_numpy(layer.moving_mean).copy() for layer in zoo.batch_norm_layers(model)]
    try:
        recalibrate_batch_norm(model, x, batch_size=2)
        after = [keras.ops.convert_to_numpy(layer.moving_mean) for layer in zoo.batch_norm_layers(model)]
        row["recalibrated"] = sum(not (a == b).all() for a, b in zip(after, before))
    except (ValueError, TypeError) as error:
        row["errors"]["recalibrate"] = _first_sentence(error)
    row["seconds"] = round(time.perf_counter() - start, 1)
    return row


def _child(args):
    """Runs in one backend's process: every model, one JSON line each, to `args.json`."""
    sys.path.insert(0, os.path.join(HERE, "..", "tests"))
    import keras
    import zoo

    every = {**zoo.APPLICATIONS, **zoo.KERAS_HUB, **zoo.HANDWRITTEN}
    names = [n for n in every if not args.models or any(n.endswith(m) for m in args.models.split(","))]
    with open(args.json, "w") as out:
        # In the zoo's order, the models that do not build on this backend included.
        for name in names:
            if name in zoo.BACKEND_FAILURES:
                row = {"model": name, "errors": {"build": zoo.BACKEND_FAILURES[name]}, "seconds": 0.0}
            else:
                row = _one_model(name)
            out.write(json.dumps(row) + "\n")
            out.flush()
            print(f"  {keras.backend.backend()}: {name} ({row['seconds']} s)", file=sys.stderr)


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
