"""`examples/test_time_adaptation.py` as users run it: a subprocess, quick options, the real MNIST.

The run trains one seed of each variant for a few batches, so its accuracies
say nothing about adaptation; what is checked is what the study promises: every
test set and method of the tables, a value per seed in [0, 1], the refusal of
batch size 1 without a prior (and only there), the printed tables agreeing with
`results.json`, and the figure.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "examples" / "test_time_adaptation.py"
CORRUPTIONS = ("shot_noise", "rotate")
QUICK = ["--seeds", "1", "--batches", "10", "--test-images", "200", "--batch-size", "64",
         "--corruptions", ",".join(CORRUPTIONS), "--sweep-corruptions", "rotate",
         "--sweep-variants", "keras,manual",
         "--sweep-images", "48", "--batch-sizes", "1,16", "--priors", "0,16",
         "--prior-batch-sizes", "1,16"]


def _run(args, cwd):
    """Runs the example with `args` in a fresh Python, as a user would; returns the process."""
    env = {**os.environ, "KERAS_BACKEND": "tensorflow"}
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300, check=False)


@pytest.fixture(scope="module")
def quick_run(mnist_dir, tmp_path_factory):
    """The quick run's stdout and `results.json`, run once for the tests of this file."""
    out = tmp_path_factory.mktemp("tta")
    done = _run([*QUICK, "--out", str(out), "--data-dir", str(mnist_dir)], cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout, json.loads((out / "results.json").read_text()), out


def _whole(count):
    """Whether `count` (an accuracy times the number of images) is a whole number of images."""
    return abs(count - round(count)) < 1e-6


def _values(tree):
    """Yields every leaf list of a nested dict of results."""
    for value in tree.values():
        if isinstance(value, dict):
            yield from _values(value)
        else:
            yield value


def test_results_hold_every_set_method_and_seed(quick_run):
    _, results, _ = quick_run
    assert set(results["main"]) == {"keras", "manual"}
    for by_set in results["main"].values():
        assert list(by_set) == ["clean", *CORRUPTIONS]
        for row in by_set.values():
            assert set(row) == {"source", "statistics", "tent"}
            assert all(len(values) == 1 and 0.0 <= values[0] <= 1.0 for values in row.values())
    accuracies = [v for values in _values(results["main"]) for v in values]
    # 200 images: an accuracy is a whole number of them.
    assert all(_whole(v * 200) for v in accuracies)
    assert results["config"]["test_images"] == 200 and results["config"]["severity"] == 3
    for key in ("command", "date", "cpu", "cores", "keras", "backend_version"):
        assert results["machine"][key]
    assert results["seconds"]["total"] >= results["seconds"]["train"] > 0


def test_the_sweeps_refuse_batch_size_one_without_a_prior_and_nothing_else(quick_run):
    _, results, _ = quick_run
    for variant in ("keras", "manual"):
        sizes = results["batch_sizes"][variant]
        for method in ("statistics", "tent"):
            assert sizes[method]["1"] == {"rotate": [None]}
            assert 0.0 <= sizes[method]["16"]["rotate"][0] <= 1.0
        priors = results["priors"][variant]
        assert priors["1"]["0"] == {"rotate": [None]}
        for size, prior in (("1", "16"), ("16", "0"), ("16", "16")):
            value = priors[size][prior]["rotate"][0]
            assert 0.0 <= value <= 1.0 and _whole(value * 48)
    refused = {(r["variant"], r["method"], r["batch_size"], r["prior_strength"])
               for r in results["refused"]}
    # The batch sweep and the prior sweep each ask statistics at batch 1 without a prior.
    assert refused == {(v, m, 1, 0.0) for v in ("keras", "manual") for m in ("statistics", "tent")}
    assert len(results["refused"]) == 6  # statistics twice (both sweeps), TENT once, per variant
    assert all("single value per channel" in r["error"] for r in results["refused"])


def test_the_summary_is_the_mean_and_spread_of_the_seeds(quick_run):
    _, results, _ = quick_run
    for variant, by_set in results["main"].items():
        summary = results["summary"]["main"][variant]
        for name, row in by_set.items():
            for method, values in row.items():
                assert summary[name][method]["mean"] == pytest.approx(np.mean(values))
                assert summary[name][method]["std"] == 0.0  # one seed
        for method in ("source", "statistics", "tent"):
            corrupted = [by_set[name][method][0] for name in CORRUPTIONS]
            assert summary["mean"][method]["mean"] == pytest.approx(np.mean(corrupted))


def test_the_printed_tables_show_the_results(quick_run):
    stdout, results, out = quick_run
    assert re.search(r"^machine .+ cores, Python", stdout, re.MULTILINE)
    for variant in ("keras", "manual"):
        header = f"bn={variant}: accuracy (%), mean ± std over 1 seed\n"
        table = stdout.split(header, 1)[1].split("\n\n", 1)[0].splitlines()
        assert table[0] == "200 test images, severity 3, test batch 64"
        rows = {line[:16].strip(): re.findall(r"(\d+\.\d) ± (\d+\.\d)", line)
                for line in table[2:]}
        assert set(rows) == {*CORRUPTIONS, "clean", "mean of 2"}
        summary = results["summary"]["main"][variant]
        for name, cells in rows.items():
            key = "mean" if name == "mean of 2" else name
            printed = [float(mean) for mean, _ in cells]
            expected = [100 * summary[key][m]["mean"] for m in ("source", "statistics", "tent")]
            assert printed == pytest.approx(expected, abs=0.051)
    sweep = stdout.split("Accuracy (%) against the test batch size n, prior 0\n", 1)[1]
    lines = sweep.split("\n\n", 1)[0].splitlines()
    assert lines[3].split() == ["n", "keras", "stats", "keras", "TENT", "manual", "stats",
                                "manual", "TENT"]
    assert lines[4].split() == ["1"] + ["refused"] * 4
    assert "refused: 6 runs at batch size 1 with prior 0:" in stdout
    # What the docs page shows fits its 78 columns: all but the command and the paths.
    shown = [line for line in stdout.splitlines()[1:] if str(out) not in line]
    assert all(len(line) <= 78 for line in shown), max(shown, key=len)
    assert (out / "tta_sweeps.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_help_and_a_bad_argument(tmp_path):
    helped = _run(["--help"], cwd=tmp_path)
    assert helped.returncode == 0 and "--sweep-images" in helped.stdout
    bad = _run(["--corruptions", "shot_noise,snow"], cwd=tmp_path)
    assert bad.returncode == 2
    assert "--corruptions must be a comma-separated list of" in bad.stderr
    assert "Received: shot_noise,snow" in bad.stderr
