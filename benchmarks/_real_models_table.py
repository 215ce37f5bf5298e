"""The tables of `real_models.py`: what the tools decided on each model, their refusals, the output errors.

`render` turns the rows that `real_models.py` collects per backend (one dict a
model: counts, the fold report's reasons, the errors a tool raised) into the
markdown of the docs page "On real models".
"""

import collections
import re

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
    if row.get("unused"):
        kept.append(("unused", len(row["unused"])))  # neither folded nor kept: never called
    return (
        str(row["found"]),
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
