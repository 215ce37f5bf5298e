"""Tests for keras_bn.experiment and the `keras-bn` command, end to end."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from keras_bn.experiment import VARIANTS, parse_variants, run_experiment, train_variant

ROOT = Path(__file__).resolve().parent.parent
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
RESULT_KEYS = {
    "final_validation_accuracy",
    "final_test_accuracy",
    "accuracy_on_100_samples",
    "train_seconds",
    "eval_seconds",
    "fit_seconds",
    "history",
}


def _synthetic_mnist(n_train=96, n_val=24, n_test=110, seed=0):
    """Returns MNIST-shaped random `(train, validation, test)` pairs, labels one-hot."""
    rng = np.random.default_rng(seed)

    def split(n):
        """One random split of `n` images."""
        x = rng.random((n, 28, 28, 1), dtype="float32")
        return x, np.eye(10, dtype="float32")[rng.integers(0, 10, n)]

    return split(n_train), split(n_val), split(n_test)


def test_run_experiment_writes_results_and_curves(tmp_path):
    lines = []
    results = run_experiment(
        batches=5, batch_size=8, seed=3, data=_synthetic_mnist(), out_dir=tmp_path / "out",
        validate_every=2, check_every=1, print_fn=lines.append,
    )
    assert list(results["variants"]) == list(VARIANTS)
    assert results["config"]["batches"] == 5 and results["config"]["seed"] == 3
    with open(tmp_path / "out" / "results.json", encoding="utf-8") as f:
        saved = json.load(f)
    assert saved == json.loads(json.dumps(results))
    for name, result in saved["variants"].items():
        assert set(result) == RESULT_KEYS
        for key in ("final_validation_accuracy", "final_test_accuracy", "accuracy_on_100_samples"):
            assert 0.0 <= result[key] <= 1.0
        assert result["train_seconds"] > 0 and result["fit_seconds"] >= result["train_seconds"]
        events = [(e["event"], e["batch"]) for e in result["history"]]
        assert events == [("validation", 0), ("training", 1), ("validation", 2),
                          ("training", 3), ("validation", 4), ("final_validation", 4),
                          ("final_test", 4), ("samples", 4)]
    assert (tmp_path / "out" / "curves.png").read_bytes()[:8] == PNG_MAGIC
    # Each variant's log, then the summary table naming every variant.
    assert lines[0] == "=== none: no batch normalization ==="
    assert "Batch: 0, Validation loss: " in lines[1]
    printed = "\n".join(lines).splitlines()
    starts = ("variant", "none ", "keras ", "manual ")
    table = [line for line in printed if line.startswith(starts)]
    assert table[0].split()[:2] == ["variant", "final"] and len(table) == 4


def test_same_seed_same_run():
    data = _synthetic_mnist()
    kwargs = dict(batches=4, batch_size=8, seed=1, validate_every=2, check_every=1,
                  num_samples=3, print_fn=lambda _: None)
    a = train_variant("keras", data, **kwargs)
    b = train_variant("keras", data, **kwargs)
    assert [(e["batch"], e["loss"]) for e in a["history"]] == [
        (e["batch"], e["loss"]) for e in b["history"]
    ]


def test_parse_variants():
    assert parse_variants("none, manual") == ("none", "manual")
    assert parse_variants(["keras"]) == ("keras",)
    message = r"`variants` may only hold none, keras, manual. Received: 'bn'"
    with pytest.raises(ValueError, match=message):
        parse_variants("none,bn")
    with pytest.raises(ValueError, match="must not repeat"):
        parse_variants("keras,keras")
    with pytest.raises(ValueError, match="at least one"):
        parse_variants("")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"batches": 0}, r"`batches` must be a positive int. Received: batches=0"),
        ({"batch_size": -4}, r"`batch_size` must be a positive int"),
        ({"seed": -1}, r"`seed` must be an int >= 0"),
        ({"learning_rate": 0}, r"`learning_rate` must be a positive number"),
        ({"variants": "all"}, r"`variants` may only hold"),
    ],
)
def test_run_experiment_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        run_experiment(data=_synthetic_mnist(), **kwargs)


def _write_fake_mnist_npz(folder):
    """Writes a small random `mnist.npz` (5,010 train images, 40 test) that load_mnist accepts."""
    rng = np.random.default_rng(0)
    np.savez(
        folder / "mnist.npz",
        x_train=rng.integers(0, 256, (5010, 28, 28), dtype=np.uint8),
        y_train=rng.integers(0, 10, 5010).astype(np.uint8),
        x_test=rng.integers(0, 256, (40, 28, 28), dtype=np.uint8),
        y_test=rng.integers(0, 10, 40).astype(np.uint8),
    )
    return folder


def _run_cli(script, *args):
    """Runs a Python `script` (a path or `-m module`) with `args`; returns the CompletedProcess."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    command = [sys.executable, *script, *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)


def test_cli_subprocess_writes_results_and_curves(tmp_path):
    data_dir = _write_fake_mnist_npz(tmp_path)
    out = tmp_path / "run"
    proc = _run_cli(
        ["-m", "keras_bn.cli"], "--variants", "none,manual", "--batches", "2", "--batch-size", "4",
        "--seed", "1", "--data-dir", data_dir, "--out", out,
    )
    assert proc.returncode == 0, proc.stderr
    assert "=== none: no batch normalization ===" in proc.stdout
    assert "Batch: 0, Validation loss: " in proc.stdout
    assert "Accuracy on 40 samples: " in proc.stdout
    with open(out / "results.json", encoding="utf-8") as f:
        results = json.load(f)
    assert list(results["variants"]) == ["none", "manual"]
    assert results["config"]["batch_size"] == 4
    assert set(results["variants"]["manual"]) == RESULT_KEYS
    assert (out / "curves.png").read_bytes()[:8] == PNG_MAGIC


def test_example_script_is_the_cli():
    proc = _run_cli([str(ROOT / "examples" / "deep_mnist.py")], "--batches", "0")
    assert proc.returncode == 2
    assert "usage: keras-bn [-h] [--variants LIST]" in proc.stderr
    assert "--batches: must be a positive integer, got '0'" in proc.stderr


@pytest.mark.mnist
@pytest.mark.slow
def test_real_mnist_batch_norm_learns_and_plain_does_not(mnist_dir, tmp_path):
    """The notebook's claim at batch 300: BN networks learn, the plain one does not."""
    results = run_experiment(
        batches=301, seed=0, data_dir=mnist_dir, out_dir=tmp_path, check_every=None,
        num_samples=0, print_fn=lambda _: None,
    )

    def accuracy_at_300(variant):
        """The validation accuracy logged after batch 300."""
        (entry,) = [e for e in results["variants"][variant]["history"]
                    if e["event"] == "validation" and e["batch"] == 300]
        return entry["accuracy"]

    accuracies = {variant: accuracy_at_300(variant) for variant in VARIANTS}
    assert accuracies["keras"] > 0.5, accuracies
    assert accuracies["manual"] > 0.5, accuracies
    assert accuracies["none"] < 0.2, accuracies
