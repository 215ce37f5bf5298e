"""Regenerates every table of docs/benchmarks.md: runs the figures, then rewrites the tables between their markers.

Usage, from the repository root, on an idle machine (about 12 minutes on 2 cores):

    export KERAS_BN_MNIST_DIR=/path/to/mnist   # the whole-command figure trains on it
    pip install tf_keras                        # the notebook's TF1 code, its baseline
    python benchmarks/make_page.py

    python benchmarks/make_page.py --quick      # to try it out, in some 4 minutes: two
                                                # rounds of one call, a 20-batch experiment,
                                                # to /tmp/benchmarks-quick.md
    python benchmarks/make_page.py --from DIR   # render again from the results a run kept

Each run of `RUNS` is a process of its own (Keras picks its backend once per
process), one after the other, and writes its figures as JSON into a folder
(`--keep`, or a temporary one whose name is printed). On the page, each table sits
between two markers that name it,

    <!-- table: train -->
    ...
    <!-- /table -->

and everything between them is rewritten from `TABLES`; the prose around them is
kept as written. A marker without a renderer, a renderer without a marker, or a
marker left open stops the script before it writes anything.

If any figure was taken on a busy machine (`bench.py` says why), the page is not
written: the results are kept, and `--from DIR --busy-ok` renders them anyway, each
such table saying that it is not to be trusted. `--quick` implies `--busy-ok`, and
never writes docs/benchmarks.md unless `--out` names it.
"""

import argparse
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _page_tables  # noqa: E402

ROOT = HERE.parent
PAGE = ROOT / "docs" / "benchmarks.md"

#: Each run: its name and the script with its arguments, under benchmarks/.
RUNS = {
    "tensorflow": ["bench.py", "--backend", "tensorflow", "--only", "train,bn,predict"],
    "jax": ["bench.py", "--backend", "jax", "--only", "train,bn,predict"],
    "torch": ["bench.py", "--backend", "torch", "--only", "train,bn,predict"],
    "experiment": ["bench.py", "--backend", "tensorflow", "--only", "experiment"],
    "large-offset": ["large_offset.py"],
}

#: What `--quick` adds to each bench.py run (two rounds of one call), and to the experiment's
#: (one pair of 20 batches).
QUICK = ["--repeats", "2", "--block", "1"]
QUICK_EXPERIMENT = ["--experiment-repeats", "1", "--experiment-batches", "20"]

#: Each marked table of the page and the function that renders it from the runs' results.
TABLES = {
    "train": _page_tables.train,
    "bn": _page_tables.bn,
    "predict": _page_tables.predict,
    "experiment": _page_tables.experiment,
    "large-offset": _page_tables.large_offset,
}

_MARKER = re.compile(r"^<!-- table: (?P<name>[\w-]+) -->$|^<!-- /table -->$", re.MULTILINE)


def marked_tables(text):
    """Returns the names of the marked tables of `text`, in order; raises ValueError for a marker out of place."""
    names, open_name = [], None
    for match in _MARKER.finditer(text):
        name = match["name"]
        if name and open_name:
            raise ValueError(f"Table markers must close before the next opens: "
                             f"'{name}' opens inside '{open_name}'")
        if not name and not open_name:
            raise ValueError(f"A '<!-- /table -->' closes no table (offset {match.start()})")
        if name in names:
            raise ValueError(f"Each table is marked once. Received a second '{name}'")
        if name:
            names.append(name)
        open_name = name
    if open_name:
        raise ValueError(f"The table '{open_name}' is never closed with '<!-- /table -->'")
    return names


def replace_tables(text, rendered):
    """Returns `text` with what lies between each pair of markers replaced by `rendered[name]`.

    Raises ValueError, before replacing anything, unless `rendered` has exactly
    the page's marked tables.
    """
    names = marked_tables(text)
    if set(names) != set(rendered):
        raise ValueError(f"The page's marked tables and the rendered ones differ: only on the page "
                         f"{sorted(set(names) - set(rendered))}, only rendered {sorted(set(rendered) - set(names))}")
    pattern = re.compile(r"^(<!-- table: (?P<name>[\w-]+) -->\n).*?^(<!-- /table -->)$", re.MULTILINE | re.DOTALL)
    return pattern.sub(lambda m: f"{m[1]}{rendered[m['name']].strip()}\n{m[3]}", text)


def _check_inputs():
    """Stops early, naming what to do, when the whole-command figure could not run."""
    folder = os.environ.get("KERAS_BN_MNIST_DIR")
    if not folder or not Path(folder).is_dir():
        raise SystemExit("The whole-command figure trains on the real MNIST: set KERAS_BN_MNIST_DIR to the "
                         f"folder of its four IDX files. Received: KERAS_BN_MNIST_DIR={folder!r}")
    if importlib.util.find_spec("tf_keras") is None:
        raise SystemExit("The notebook's TF1 code, the whole command's baseline, needs tf_keras: "
                         "pip install tf_keras (the version of your TensorFlow)")


def _commands(folder, quick):
    """Returns each run's command line, by run name, writing its JSON into `folder`."""
    commands = {}
    for name, (script, *arguments) in RUNS.items():
        command = [sys.executable, f"benchmarks/{script}", *arguments, "--json", str(folder / f"{name}.json")]
        if quick and script == "bench.py":
            command += QUICK + (QUICK_EXPERIMENT if "experiment" in arguments[-1] else [])
        commands[name] = command
    return commands


def run_all(folder, quick):
    """Runs every run of `RUNS`, one process after the other (none disturbs another's timings), output shown."""
    for name, command in _commands(folder, quick).items():
        print(f"make_page   {name}: {' '.join(command[1:])}", flush=True)
        started = time.perf_counter()
        if subprocess.run(command, cwd=ROOT).returncode != 0:
            raise SystemExit(f"make_page   {name} failed: {' '.join(command)}")
        print(f"make_page   {name}: {time.perf_counter() - started:.0f} s", flush=True)


def load(folder):
    """Returns each run's results from `folder`, by run name."""
    missing = [name for name in RUNS if not (folder / f"{name}.json").is_file()]
    if missing:
        raise SystemExit(f"{folder} lacks the results of {missing}: run without --from first")
    return {name: json.loads((folder / f"{name}.json").read_text()) for name in RUNS}


def busy_runs(results):
    """Returns the names of the runs whose machine was busy before or during a figure."""
    return [name for name, run in results.items() if run.get("busy")]


def _parse_args():
    """Returns the command line's arguments."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="two rounds a figure and a 20-batch experiment, to try the script out")
    parser.add_argument("--out", type=Path, default=None,
                        help="the page to write (default: docs/benchmarks.md; with --quick, /tmp/benchmarks-quick.md)")
    parser.add_argument("--keep", type=Path, default=None, help="the folder to keep the runs' results in")
    parser.add_argument("--from", dest="source", type=Path, default=None,
                        help="render from the results kept in this folder instead of running")
    parser.add_argument("--busy-ok", action="store_true",
                        help="write the page even where the machine was busy (those tables say so)")
    args = parser.parse_args()
    args.out = args.out or (Path(tempfile.gettempdir()) / "benchmarks-quick.md" if args.quick else PAGE)
    return args


def main():
    """Runs the figures (or reads them), renders every marked table and writes the page."""
    args = _parse_args()
    page = PAGE.read_text(encoding="utf-8")
    marked_tables(page)  # fail before an hour of running, not after
    if args.source:
        folder = args.source
    else:
        _check_inputs()
        folder = args.keep or Path(tempfile.mkdtemp(prefix="keras_bn_page_"))
        folder.mkdir(parents=True, exist_ok=True)
        print(f"make_page   results in {folder}", flush=True)
        started = time.perf_counter()
        run_all(folder, args.quick)
        print(f"make_page   every run: {time.perf_counter() - started:.0f} s", flush=True)
    results = load(folder)
    busy = busy_runs(results)
    if busy and not (args.busy_ok or args.quick):
        raise SystemExit(f"make_page   the machine was busy during {busy} (their output says why), so "
                         f"{args.out} is left as it was. Run again on an idle machine, or render these "
                         f"anyway: python benchmarks/make_page.py --from {folder} --busy-ok")
    rendered = {name: render(results) for name, render in TABLES.items()}
    args.out.write_text(replace_tables(page, rendered), encoding="utf-8")
    print(f"make_page   wrote {args.out}" + (f" (busy during {busy}: those tables say so)" if busy else ""))


if __name__ == "__main__":
    main()
