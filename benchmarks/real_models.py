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
  not by keras-bn), and, as "unused", how many of those that conversion did not
  reach change no output when their moving mean moves: the model keeps them but
  never calls them;
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


# Short labels of FoldReport reasons: (words in the reason, label). The first
# match wins; "cannot absorb" reasons are labelled by the layer before.
_REASONS = (
    # Inside a custom layer that the walker cannot turn into a graph, by why.
    ("other steps in training than in inference", "training branch"),
    ("training=", "training forced"),
    ("state of its own", "own weights"),
    ("positional arguments", "several inputs"),
    ("tensors by keyword", "tensor keywords"),
    ("called with a mask", "mask"),
    ("never built", "unbuilt"),
    ("does not run on symbolic tensors", "not symbolic"),
    ("does not run where its call() does", "graph fails"),
    ("does not compute what its call() computes", "graph differs"),
    ("cannot turn into a graph", "custom block"),
    ("cannot see", "custom block"),
    ("also goes to", "output shared"),
    ("applies the activation", "activation"),
    ("input of the model", "model input"),
    ("outside the model", "model input"),
    ("places", "shared layer"),
    ("not the channel axis", "other axis"),
    ("subclass whose call()", "subclass"),
    ("LoRA", "LoRA"),
    ("quantized", "quantized"),
)


def _reason_kind(why):
    """Returns a short label for a FoldReport reason: the layer before ("Concatenate", "pooling") or the kind ("custom block")."""
    why = why.split("; nor forward")[0]
    absorb = re.search(r"\((\w+)\), which cannot absorb", why)
    if absorb:
        return "pooling" if "Pool" in absorb.group(1) else absorb.group(1)
    for words, label in _REASONS:
        if words in why:
            return label
    return " ".join(re.sub(r"'[^']*'", "X", why).split()[:4])


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


# The gist of a tool's error: (pattern, text from the match). The first match wins.
_GISTS = (
    (r"of type (\w+) cannot be rebuilt", "keras-hub's {0} cannot be rebuilt from its config"),
    (r"Layer '([^']*)' has (\d+) weights but its rebuilt copy has (\d+)",
     "its layer '{0}' rebuilt from its config has {2} weights, not {1}"),
    (r"task '[^']*' \((\w+)\) cannot be rebuilt around its new backbone",
     "{0} cannot be rebuilt around the new backbone"),
    (r"only supported for Sequential models or Functional models",
     "keras.models.clone_model takes no clone_function for a subclassed model"),
    (r"does not build|not available with the torch backend", "does not build"),
)
# Where the zoo's names start, and the group each prefix heads in the tables.
_GROUPS = (("keras.applications.", "keras.applications"), ("keras_hub.", "keras-hub"), ("handwritten.", "hand-written"))


def _gist(error):
    """Returns the gist of a tool's error in a few words, or its first sentence."""
    for pattern, text in _GISTS:
        match = re.search(pattern, error)
        if match:
            return text.format(*match.groups())
    return error


def _short_name(model):
    """Returns the zoo name without its group's prefix: "DenseNet121", "ResNetBackbone(v1)"."""
    for prefix, _ in _GROUPS:
        if model.startswith(prefix):
            return model[len(prefix):]
    return model


def _decided(row):
    """Returns the cells of one backend's row in the first table: found, folded / kept, converted, frozen, recalibrated, kept because."""
    if "build" in row["errors"]:
        return None
    refused = {tool: "refused" for tool in row["errors"]}
    kinds = collections.Counter(_reason_kind(why) for why in row.get("kept_why", []))
    kept = sorted(kinds.items(), key=lambda kv: (-kv[1], kv[0]))
    return (
        str(row["found"]) + (f" ({len(row['unused'])} unused)" if row.get("unused") else ""),
        refused.get("fold") or f"{row['folded']} / {row['kept']}",
        refused.get("convert") or str(row["converted"]),
        refused.get("freeze") or str(row["frozen"]),
        refused.get("recalibrate") or str(row["recalibrated"]),
        ", ".join(f"{n} {kind}" for kind, n in kept),
    )


def _errors(row):
    """Returns the second table's cell of one backend's row: fold / convert error, "refused" or "does not build"."""
    if row is None:
        return "not run"
    if "build" in row["errors"]:
        return "does not build"
    fold = f"{row['fold_error']:.0e}" if "fold_error" in row else "refused"
    convert = f"{row['convert_error']:.0e}" if "convert_error" in row else "refused"
    return f"{fold} / {convert}"


def _table(head, rows):
    """Returns a markdown table of `head` and `rows` (lists of cells); a row of one cell is a group's bold heading.

    The table sits in the docs' compact style (docs/stylesheets/extra.css),
    which keeps its columns as narrow as their text.
    """
    lines = ['<div class="compact-table" markdown>', "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for cells in rows:
        if len(cells) == 1:
            cells = [f"**{cells[0]}**"] + [""] * (len(head) - 1)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines + ["", "</div>"])


def _grouped(by_model, cells_of):
    """Returns the rows `cells_of(model, rows)` of every model, each group of the zoo under its heading."""
    out, group = [], None
    for model, rows in by_model.items():
        heading = next((g for prefix, g in _GROUPS if model.startswith(prefix)), None)
        if heading != group:
            out.append([heading or "other"])
            group = heading
        out.append([_short_name(model)] + cells_of(model, rows))
    return out


def render(results):
    """Returns the markdown of `{backend: [row, ...]}`: what the tools decided, their refusals, the errors per backend.

    What a tool decides is the same on every backend, or its cell joins the
    answers with "or". Refusals are listed under the first table, one line a
    model, so that no row grows tall; the second table has a column a backend.
    """
    backends = list(results)
    by_model = collections.defaultdict(dict)
    for backend, rows in results.items():
        for row in rows:
            by_model[row["model"]][backend] = row

    def decided(model, rows):
        answers = [cells for cells in map(_decided, rows.values()) if cells is not None]
        if not answers:
            return ["does not build"] + [""] * 5
        return [" or ".join(sorted(set(column))) for column in zip(*answers)]

    def errors(model, rows):
        return [_errors(rows.get(backend)) for backend in backends]

    refusals = []
    for model, rows in by_model.items():
        gists = collections.defaultdict(list)
        for tool in ("fold", "convert", "freeze", "recalibrate"):
            found = {_gist(row["errors"][tool]) for row in rows.values() if tool in row["errors"]}
            for gist in sorted(found):
                gists[gist].append(tool)
        for gist, tools in gists.items():
            refusals.append(f"- {_short_name(model)}: {', '.join(tools)} refused: {gist}.")
        failed = sorted(backend for backend, row in rows.items() if "build" in row["errors"])
        if failed:
            refusals.append(f"- {_short_name(model)} does not build on {', '.join(failed)}.")
    # Soft hyphens let the narrow columns' headers break on the docs page.
    head = ["model", "found", "folded / kept", "con&shy;verted", "frozen", "recal&shy;ibrated", "kept because"]
    parts = [_table(head, _grouped(by_model, decided))]
    if refusals:
        parts.append("\n".join(refusals))
    parts.append(_table(["model"] + backends, _grouped(by_model, errors)))
    return "\n\n".join(parts)


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
