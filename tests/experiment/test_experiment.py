"""Tests for keras_bn.experiment: run_experiment, Run and RunConfig, end to end."""

import dataclasses
import io
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import jsonschema
import keras
import numpy as np
import pytest

from helpers import write_fake_mnist_npz
from keras_bn.experiment import (
    VARIANTS,
    CheckpointMismatchError,
    ExperimentError,
    Run,
    RunConfig,
    StopOnSignal,
    TrainingInterrupted,
    format_summary,
    run_experiment,
)
from keras_bn.experiment import results as results_module
from keras_bn.experiment.checkpoint import RunCheckpoint, read_state

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((ROOT / "docs" / "results.schema.json").read_text(encoding="utf-8"))
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
RESULT_KEYS = {"final_validation_accuracy", "final_test_accuracy", "accuracy_on_100_samples",
               "train_seconds", "eval_seconds", "fit_seconds", "history"}


def _synthetic_mnist(n_train=96, n_val=24, n_test=110, seed=0):
    """Returns MNIST-shaped random `(train, validation, test)` pairs, labels one-hot."""
    rng = np.random.default_rng(seed)

    def split(n):
        """One random split of `n` images."""
        x = rng.random((n, 28, 28, 1), dtype="float32")
        return x, np.eye(10, dtype="float32")[rng.integers(0, 10, n)]

    return split(n_train), split(n_val), split(n_test)


def _load(folder):
    """The results.json of a run folder."""
    with open(folder / "results.json", encoding="utf-8") as f:
        return json.load(f)


def test_run_experiment_writes_results_that_follow_the_schema(tmp_path):
    lines = []
    results = run_experiment(
        batches=5, batch_size=8, seed=3, data=_synthetic_mnist(), out_dir=tmp_path / "out",
        validate_every=2, check_every=1, print_fn=lines.append,
    )
    config = RunConfig(batches=5, batch_size=8, seeds=3, validate_every=2, check_every=1)
    folder = tmp_path / "out" / config.name
    assert os.listdir(tmp_path / "out") == [config.name]
    saved = _load(folder)
    jsonschema.validate(saved, SCHEMA, cls=jsonschema.Draft202012Validator)
    assert saved == json.loads(json.dumps(results))
    assert saved["config"] == config.to_dict() and saved["keras_version"] == keras.__version__
    assert list(saved["runs"]) == list(VARIANTS)
    for by_seed in saved["runs"].values():
        (run,) = by_seed.values()
        assert list(by_seed) == ["3"] and set(run) == RESULT_KEYS
        assert run["train_seconds"] > 0 and run["fit_seconds"] >= run["train_seconds"]
        events = [(e["event"], e["batch"]) for e in run["history"]]
        assert events == [("validation", 0), ("training", 1), ("validation", 2),
                          ("training", 3), ("validation", 4), ("final_validation", 4),
                          ("final_test", 4), ("samples", 4)]
    assert (folder / "curves.png").read_bytes()[:8] == PNG_MAGIC
    assert sorted(os.listdir(folder / "checkpoints")) == [
        "keras-seed3.zip", "manual-seed3.zip", "none-seed3.zip"]
    # Each variant's log, then the summary table naming every variant.
    assert lines[0] == "=== none: no batch normalization ==="
    assert "Batch: 0, Validation loss: " in lines[1]
    table = [line for line in "\n".join(lines).splitlines()
             if line.startswith(("variant", "none ", "keras ", "manual "))]
    assert table[0].split()[:2] == ["variant", "final"] and len(table) == 4
    assert lines[-1] == f"Wrote {folder / 'results.json'} and {folder / 'curves.png'}"


def test_the_same_seed_gives_the_same_run():
    config = RunConfig(variants="keras", seeds=1, batches=4, batch_size=8, validate_every=2,
                       check_every=1, num_samples=3)
    a, b = (Run(config, "keras", 1, _synthetic_mnist(), print_fn=lambda _: None).train()
            for _ in range(2))
    assert [(e["batch"], e["loss"]) for e in a["history"]] == [
        (e["batch"], e["loss"]) for e in b["history"]]


def test_a_run_config_is_frozen_and_checked_once():
    config = RunConfig(variants="none, manual", seeds="2,0", learning_rate=1e-3)
    assert (config.variants, config.seeds) == (("none", "manual"), (2, 0))
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.batches = 5
    assert RunConfig(**{**config.to_dict(), "variants": ["none", "manual"]}) == config
    # Every setting names the folder: another value, another folder.
    others = [dataclasses.replace(config, **{name: value}) for name, value in [
        ("batches", 801), ("learning_rate", 0.01), ("seeds", (2,)), ("variants", ("none",)),
        ("check_every", None), ("kernel_initializer", "notebook")]]
    assert len({config.name, *(other.name for other in others)}) == 1 + len(others)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"batches": 0}, r"`batches` must be a positive int. Received: batches=0"),
        ({"batch_size": -4}, r"`batch_size` must be a positive int"),
        ({"seed": -1}, r"`seed` must be an int >= 0. Received: seed=-1"),
        ({"learning_rate": 0}, r"`learning_rate` must be a positive finite number"),
        ({"learning_rate": float("inf")}, r"`learning_rate` must be a positive finite number"),
        ({"learning_rate": True}, r"`learning_rate` must be a positive finite number"),
        ({"variants": "all"}, r"`variants` may only hold none, keras, manual. Received: 'all'"),
        ({"variants": "keras,keras"}, r"`variants` must not repeat a value"),
        ({"variants": ""}, r"`variants` must hold at least one of none, keras, manual"),
        ({"seed": 1, "seeds": [2]}, r"Pass `seed` or `seeds`, not both"),
        ({"seeds": [0, 0]}, r"`seeds` must not repeat a value"),
        ({"seeds": "0,x"}, r"`seeds` must be ints >= 0. Received: 'x' in seeds='0,x'"),
        ({"seeds": [True]}, r"`seeds` must be ints >= 0"),
        ({"checkpoint_every": 0}, r"`checkpoint_every` must be a positive int"),
        ({"validate_every": 0}, r"`validate_every` must be a positive int, or None"),
        ({"num_samples": -1}, r"`num_samples` must be an int >= 0"),
        ({"kernel_initializer": "nope"}, r"`kernel_initializer` must be \"notebook\" or"),
        ({"progress": 42}, r"`progress` must be a bool or a writable text stream"),
        ({"distribute": "ring"}, r"`distribute` must be None, 'mirrored' or 'multiworker'"),
        ({"no_such_setting": 1}, r"unexpected keyword argument 'no_such_setting'"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        run_experiment(data=_synthetic_mnist(), **kwargs)


# --- Seeds, progress, checkpoints and resume -------------------------------------

#: A run small enough for the tests: 3 batches of 8, a checkpoint every 2.
TINY = dict(variants="none", batches=3, batch_size=8, validate_every=2, check_every=1,
            num_samples=3, checkpoint_every=2)
CONTROL = [chr(c) for c in range(32) if chr(c) != "\n"] + ["\x7f"]


def _numbers(run):
    """What must not change when a run is resumed: each logged entry but its time."""
    return [(e["event"], e["batch"], e["loss"], e["accuracy"], e["message"])
            for e in run["history"]]


@pytest.fixture(scope="module")
def two_seeds(tmp_path_factory):
    """One uninterrupted two-seed run of the tiny configuration, with checkpoints."""
    out = tmp_path_factory.mktemp("two_seeds")
    lines, progress = [], io.StringIO()
    results = run_experiment(seeds="0,1", data=_synthetic_mnist(), out_dir=out,
                             progress=progress, print_fn=lines.append, **TINY)
    folder = out / RunConfig(seeds=(0, 1), **TINY).name
    return SimpleNamespace(results=results, out=out, folder=folder, lines=lines,
                           progress=progress.getvalue())


def test_seeds_give_statistics_a_table_and_curves(two_seeds):
    results = two_seeds.results
    jsonschema.validate(_load(two_seeds.folder), SCHEMA, cls=jsonschema.Draft202012Validator)
    assert results["config"]["seeds"] == [0, 1]
    runs = results["runs"]["none"]
    assert list(runs) == ["0", "1"] and _numbers(runs["0"]) != _numbers(runs["1"])
    accuracies = [runs[seed]["final_test_accuracy"] for seed in ("0", "1")]
    stats = results["statistics"]["none"]
    assert stats["seeds"] == [0, 1]
    assert stats["final_test_accuracy"] == pytest.approx({
        "mean": np.mean(accuracies), "std": np.std(accuracies, ddof=1),
        "min": min(accuracies), "max": max(accuracies),
    })
    assert (two_seeds.folder / "curves.png").read_bytes()[:8] == PNG_MAGIC
    lines = two_seeds.lines
    assert lines[0] == "=== none: no batch normalization, seed 0 ==="
    assert "=== none: no batch normalization, seed 1 ===" in lines
    table = format_summary(results).splitlines()
    assert table[0].split() == ["variant", "seeds", "test", "mean", "test", "std", "test", "min",
                                "test", "max", "val", "mean", "train", "s/run"]
    test = stats["final_test_accuracy"]
    assert table[2].split()[:6] == ["none", "2"] + [f"{test[k]:.4f}"
                                                     for k in ("mean", "std", "min", "max")]
    assert lines[-2] == format_summary(results)


def test_progress_off_a_terminal_is_a_few_plain_lines(two_seeds):
    progress = two_seeds.progress
    assert not any(c in progress for c in CONTROL)
    assert [line.split("  ")[0] for line in progress.splitlines()] == [
        "none, seed 0 1/3", "none, seed 0 2/3", "none, seed 0 3/3",
        "none, seed 1 1/3", "none, seed 1 2/3", "none, seed 1 3/3",
    ]
    assert not any("batch/s" in line for line in two_seeds.lines)  # The log stays clean.


def test_the_same_call_again_trains_nothing_and_quiet_prints_only_the_summary(two_seeds, capsys):
    lines = []
    again = run_experiment(seeds=[0, 1], data=_synthetic_mnist(), out_dir=two_seeds.out,
                           quiet=True, print_fn=lines.append, **TINY)
    assert again["runs"] == json.loads(json.dumps(two_seeds.results["runs"]))
    assert lines == [format_summary(again), f"Wrote {two_seeds.folder / 'results.json'} and "
                     f"{two_seeds.folder / 'curves.png'}"]
    assert capsys.readouterr().err == ""  # No progress either.
    lines = []
    run_experiment(seeds=[0, 1], data=_synthetic_mnist(), out_dir=two_seeds.out,
                   progress=False, print_fn=lines.append, **TINY)
    path = two_seeds.folder / "checkpoints" / "none-seed1.zip"
    assert f"Already finished ({path}); not trained again." in lines
    assert not any(line.startswith("Batch: ") for line in lines)


def test_other_settings_get_their_own_folder(two_seeds):
    """The demo's trap: the same --out with other flags trains a new run, it does not refuse."""
    results = run_experiment(seeds=[0], data=_synthetic_mnist(), out_dir=two_seeds.out,
                             progress=False, print_fn=lambda _: None, **{**TINY, "batches": 2})
    folder = two_seeds.out / RunConfig(seeds=(0,), **{**TINY, "batches": 2}).name
    assert folder != two_seeds.folder and _load(folder) == json.loads(json.dumps(results))
    assert _load(two_seeds.folder)["config"]["batches"] == 3  # The other run is untouched.


def test_a_checkpoint_of_other_data_is_refused_before_training(two_seeds):
    lines = []
    path = two_seeds.folder / "checkpoints" / "none-seed0.zip"
    with pytest.raises(CheckpointMismatchError, match=(
        rf"{path} was written by a run with another configuration "
        r"\(data: '[0-9a-f]{32}' there, '[0-9a-f]{32}' now\)\. Resuming it would mix"
    )):
        run_experiment(seeds=[0, 1], data=_synthetic_mnist(seed=1), out_dir=two_seeds.out,
                       print_fn=lines.append, **TINY)
    assert lines == []  # Refused before anything trained.


def test_ctrl_c_saves_a_checkpoint_and_the_rerun_resumes_to_the_same_numbers(two_seeds, tmp_path):
    before = signal.getsignal(signal.SIGINT)

    def press_ctrl_c(line):
        """Presses Ctrl-C (a real SIGINT) once seed 1 has logged batch 1."""
        if line.startswith("Batch: 1,") and "seed 1" in started[-1]:
            os.kill(os.getpid(), signal.SIGINT)
        started.append(line) if line.startswith("===") else None

    started = []
    with pytest.raises(TrainingInterrupted) as info:
        run_experiment(seeds=[0, 1], data=_synthetic_mnist(), out_dir=tmp_path, progress=False,
                       print_fn=press_ctrl_c, **TINY)
    assert signal.getsignal(signal.SIGINT) is before  # The library put its handler back.
    stop = info.value
    folder = tmp_path / RunConfig(seeds=(0, 1), **TINY).name
    path = os.path.join(folder, "checkpoints", "none-seed1.zip")
    assert (stop.exit_code, stop.batches_done, stop.checkpoint) == (130, 2, path)
    assert str(stop).startswith("Stopped by SIGINT after batch 1 (2 of 3 done) of none, seed 1.")
    assert not (folder / "results.json").exists()
    state = read_state(path)
    assert state["batches_done"] == 2 and not state["finished"]
    assert [e["batch"] for e in state["history"]] == [0, 1]

    lines = []
    resumed = run_experiment(seeds=[0, 1], data=_synthetic_mnist(), out_dir=tmp_path,
                             progress=False, print_fn=lines.append, **TINY)
    assert f"Resuming from {path}: 2 of 3 batches done." in lines
    # Exactly the numbers of the uninterrupted run.
    assert _numbers(resumed["runs"]["none"]["1"]) == _numbers(two_seeds.results["runs"]["none"]["1"])
    assert _numbers(resumed["runs"]["none"]["0"]) == _numbers(two_seeds.results["runs"]["none"]["0"])


def test_a_resumed_run_validates_its_last_batch_once_and_its_bar_ends_there(tmp_path):
    """Batch 3 of 4 is off the validation cadence (every 5): it is scored once, in the resumed session."""
    from keras_bn.experiment.figures import validation_curves

    tiny = dict(variants="keras", batches=4, batch_size=8, validate_every=5, check_every=1,
                num_samples=2, checkpoint_every=1)
    whole = run_experiment(data=_synthetic_mnist(n_val=100), progress=False, print_fn=lambda _: None,
                           **tiny)["runs"]["keras"]["0"]

    def press_ctrl_c(line):
        """Presses Ctrl-C (a real SIGINT) once batch 1 is logged."""
        if line.startswith("Batch: 1,"):
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(TrainingInterrupted):
        run_experiment(data=_synthetic_mnist(n_val=100), out_dir=tmp_path, progress=False,
                       print_fn=press_ctrl_c, **tiny)
    bar, lines = io.StringIO(), []
    results = run_experiment(data=_synthetic_mnist(n_val=100), out_dir=tmp_path, progress=bar,
                             print_fn=lines.append, **tiny)
    run = results["runs"]["keras"]["0"]
    assert any(line.startswith("Resuming from ") for line in lines)
    assert _numbers(run) == _numbers(whole)
    assert [(e["event"], e["batch"]) for e in run["history"] if "validation" in e["event"]] == [
        ("validation", 0), ("final_validation", 3)]
    assert [line for line in lines if line.startswith("Final validation")] == [
        f"Final validation accuracy: {whole['final_validation_accuracy']}"]
    last = bar.getvalue().splitlines()[-1]
    assert whole["history"][0]["accuracy"] != whole["final_validation_accuracy"]  # Else moot.
    assert last.startswith("keras, seed 0 4/4  ")
    assert last.endswith(f"val acc {whole['final_validation_accuracy']:.4f}")
    assert validation_curves(results)["keras", False][0] == [0, 3]


@pytest.mark.parametrize("phase", ["last batch", "final evaluation", "writing results"])
def test_sigterm_at_the_end_of_a_run_resumes_to_the_same_numbers(two_seeds, tmp_path,
                                                                 monkeypatch, phase):
    """A real SIGTERM in each phase of the last run's end: no half-written file, same numbers."""
    started = []
    line_of_phase = {"last batch": "Batch: 2,", "final evaluation": "Final validation"}.get(phase)

    def log(line):
        """Sends SIGTERM at the phase's line of the last run (seed 1)."""
        started.append(line) if line.startswith("===") else None
        if line_of_phase and len(started) == 2 and line.startswith(line_of_phase):
            os.kill(os.getpid(), signal.SIGTERM)

    if phase == "writing results":
        plot_curves = results_module.plot_curves

        def plot_after_sigterm(results, path):
            """SIGTERM once results.json is written, before curves.png is."""
            os.kill(os.getpid(), signal.SIGTERM)
            return plot_curves(results, path)

        monkeypatch.setattr(results_module, "plot_curves", plot_after_sigterm)
    # The outer block only keeps a SIGTERM the library let through from ending pytest.
    with StopOnSignal() as outside, pytest.raises(TrainingInterrupted) as info:
        run_experiment(seeds=[0, 1], data=_synthetic_mnist(), out_dir=tmp_path, progress=False,
                       print_fn=log, **TINY)
    assert not outside.requested
    assert (info.value.exit_code, info.value.where) == (143, "after finishing none, seed 1")
    monkeypatch.undo()
    folder = tmp_path / two_seeds.folder.name
    path = folder / "checkpoints" / "none-seed1.zip"
    assert read_state(path)["finished"]
    # Written whole, or not at all: the stop waited for the files being written.
    assert (folder / "results.json").exists() == (phase == "writing results")
    uninterrupted = [_numbers(two_seeds.results["runs"]["none"][seed]) for seed in ("0", "1")]
    if phase == "writing results":
        assert [_numbers(_load(folder)["runs"]["none"][seed]) for seed in ("0", "1")] \
            == uninterrupted
        assert (folder / "curves.png").read_bytes()[:8] == PNG_MAGIC
    assert not [name for name in os.listdir(folder) if name.endswith(".tmp")]

    lines = []
    resumed = run_experiment(seeds=[0, 1], data=_synthetic_mnist(), out_dir=tmp_path,
                             progress=False, print_fn=lines.append, **TINY)
    assert f"Already finished ({path}); not trained again." in lines
    assert [_numbers(resumed["runs"]["none"][seed]) for seed in ("0", "1")] == uninterrupted
    assert _load(folder)["runs"] == json.loads(json.dumps(resumed["runs"]))


def test_an_out_dir_that_cannot_be_written_is_refused_before_loading_data(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    out = blocker / "run"
    match = (rf"`out_dir` must be a folder that can be written to. Received: "
             rf"out_dir='{out}' \({blocker} is not a folder\)")
    with pytest.raises(ExperimentError, match=match):
        # No MNIST there: loading it first would raise MNISTError instead.
        run_experiment(out_dir=out, data_dir=tmp_path / "no_mnist")


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root may write to a read-only folder")
def test_a_read_only_out_dir_is_refused(tmp_path):
    folder = tmp_path / "read_only"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(ExperimentError, match=r"no permission to write in"):
            run_experiment(out_dir=folder / "run", data=_synthetic_mnist())
    finally:
        folder.chmod(0o700)


def test_mirrored_needs_the_tensorflow_backend():
    with pytest.raises(ExperimentError, match=(
        r"`distribute='mirrored'` trains with tf.distribute.MirroredStrategy, which needs the "
        r"TensorFlow backend. Received: backend 'jax'; set KERAS_BACKEND=tensorflow"
    )):
        RunConfig(distribute="mirrored", backend="jax")


@pytest.mark.mnist
@pytest.mark.slow
def test_real_mnist_batch_norm_learns_and_plain_does_not(mnist_dir, tmp_path):
    """The notebook's claim at batch 300: BN networks learn, the plain one does not."""
    results = run_experiment(batches=301, seed=0, data_dir=mnist_dir, out_dir=tmp_path,
                             check_every=None, num_samples=0, print_fn=lambda _: None)

    def accuracy_at_300(variant):
        """The validation accuracy logged after batch 300."""
        (entry,) = [e for e in results["runs"][variant]["0"]["history"]
                    if e["event"] == "validation" and e["batch"] == 300]
        return entry["accuracy"]

    accuracies = {variant: accuracy_at_300(variant) for variant in VARIANTS}
    assert accuracies["keras"] > 0.5, accuracies
    assert accuracies["manual"] > 0.5, accuracies
    assert accuracies["none"] < 0.2, accuracies


MIRRORED = """
import json
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import numpy as np
from keras_bn.experiment import distribute, run_experiment

rng = np.random.default_rng(0)
def split(n):
    return (rng.random((n, 28, 28, 1), dtype="float32"),
            np.eye(10, dtype="float32")[rng.integers(0, 10, n)])
kwargs = dict(variants="manual", batches=3, batch_size=8, data=(split(96), split(24), split(40)),
              validate_every=2, check_every=1, num_samples=3, progress=False,
              print_fn=lambda line: None)
mirrored = run_experiment(distribute="mirrored", **kwargs)
single = run_experiment(**kwargs)
losses = lambda results: [e["loss"] for e in results["runs"]["manual"]["0"]["history"]
                          if e["loss"] is not None]
print(json.dumps({"config": mirrored["config"], "mirrored": losses(mirrored),
                  "replicas": distribute.strategy("mirrored").num_replicas_in_sync,
                  "single": losses(single)}))
"""


def test_distribute_mirrored_trains_on_two_cpu_devices():
    """Two replicas of 4 with synchronized ManualBatchNorm track one device with batches of 8."""
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "3",
           "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(MIRRORED)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert (result["config"]["distribute"], result["replicas"]) == ("mirrored", 2)
    assert len(result["mirrored"]) == len(result["single"]) == 5
    # After one step (the validation after batch 0) the statistics of the global batch give
    # the single device's loss to round-off; per-replica statistics were 1e-4 off there.
    assert abs(result["mirrored"][0] - result["single"][0]) < 1e-6
    # Later steps go through Adam's division by tiny second moments: close, not bitwise.
    np.testing.assert_allclose(result["mirrored"], result["single"], atol=2e-3)


def test_cli_killed_by_sigterm_resumes_to_the_uninterrupted_result(tmp_path):
    """A real SIGTERM midway, a rerun of the same command, the same numbers."""
    data_dir = write_fake_mnist_npz(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3",
           "KERAS_BACKEND": "tensorflow", "PYTHONUNBUFFERED": "1"}
    settings = dict(variants="manual", batches=30, batch_size=8, seeds=(1,), checkpoint_every=5,
                    check_every=1, validate_every=10, backend="tensorflow")
    name = RunConfig(**settings).name

    def command(out):
        """The `keras-bn` command line of this test, writing to `out`."""
        return [sys.executable, "-m", "keras_bn.experiment.cli", "--variants", "manual",
                "--batches", "30", "--batch-size", "8", "--seed", "1", "--data-dir",
                str(data_dir), "--out", str(out), "--checkpoint-every", "5", "--check-every",
                "1", "--validate-every", "10"]

    def start(out, label):
        """Starts the command; stdout is a pipe, stderr a file."""
        err = open(tmp_path / f"{label}.err", "w", encoding="utf-8")
        proc = subprocess.Popen(command(out), stdout=subprocess.PIPE, stderr=err, text=True,
                                env=env, cwd=ROOT)
        err.close()
        return proc

    whole = start(tmp_path / "whole", "whole")  # The uninterrupted run, alongside.
    killed = start(tmp_path / "killed", "killed")
    seen = []
    for line in killed.stdout:
        seen.append(line)
        if line.startswith("Batch: 7,"):  # Checkpoint after batch 4 is written by now.
            killed.send_signal(signal.SIGTERM)
            break
    rest, _ = killed.communicate(timeout=600)
    stderr = (tmp_path / "killed.err").read_text(encoding="utf-8")
    assert killed.returncode == 143, "".join(seen) + rest + stderr[-3000:]
    assert "keras-bn: stopped by SIGTERM after batch " in stderr
    assert "To resume, run the same command again: keras-bn --variants manual" in stderr
    folder = tmp_path / "killed" / name
    assert not (folder / "results.json").exists()
    path = folder / "checkpoints" / "manual-seed1.zip"
    stopped_at = read_state(path)
    assert 8 <= stopped_at["batches_done"] < 30 and not stopped_at["finished"]

    resumed = subprocess.run(command(tmp_path / "killed"), capture_output=True, text=True,
                             env=env, cwd=ROOT, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Resuming from {path}: {stopped_at['batches_done']} of 30 batches done." \
        in resumed.stdout
    assert "Batch: 0," not in resumed.stdout
    whole.communicate(timeout=600)
    assert whole.returncode == 0, (tmp_path / "whole.err").read_text(encoding="utf-8")[-3000:]
    a = _load(tmp_path / "whole" / name)["runs"]["manual"]["1"]
    b = _load(folder)["runs"]["manual"]["1"]
    # TensorFlow on the CPU is deterministic here: the very same numbers, not just close ones.
    assert _numbers(b) == _numbers(a)
    for key in ("final_validation_accuracy", "final_test_accuracy", "accuracy_on_100_samples"):
        assert b[key] == a[key]


class _SignalRightAfterARead:
    """A stop request whose SIGTERM lands just after its first read, as a real one can."""

    signal_number = None

    @property
    def requested(self):
        """Whether the signal had arrived; it arrives right after this read."""
        arrived = self.signal_number is not None
        self.signal_number = signal.SIGTERM
        return arrived


def test_a_stop_always_leaves_a_checkpoint_of_the_batches_it_reports(tmp_path):
    """The SIGTERM test's race: a stop read twice per batch could raise without saving."""
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer="adam", loss="mse")
    path = tmp_path / "run.zip"
    callback = RunCheckpoint(path, {"run": 1}, lambda done, result: {"batches_done": done},
                             every=5, total=30, stop=_SignalRightAfterARead(), run="a run")
    callback.set_model(model)
    with pytest.raises(TrainingInterrupted) as info:
        for batch in range(30):
            callback.on_train_batch_end(batch)
    assert info.value.batches_done == 2  # Seen after the next batch, not lost after this one.
    assert read_state(path)["batches_done"] == info.value.batches_done


def test_the_top_level_is_the_library_and_moved_names_warn():
    import keras_bn
    import keras_bn.experiment as experiment

    harness = {"run_experiment", "ExperimentError", "CheckpointError", "CheckpointMismatchError",
               "StopOnSignal", "TrainingInterrupted", "ProgressBar", "CheckpointCallback"}
    assert not harness & set(keras_bn.__all__)
    with pytest.warns(DeprecationWarning, match=r"`keras_bn.run_experiment` moved to "
                                                r"`keras_bn.experiment.run_experiment`"):
        assert keras_bn.run_experiment is experiment.run_experiment
    with pytest.raises(AttributeError, match="no attribute 'ProgressBar'"):
        keras_bn.ProgressBar  # noqa: B018 - replaced by keras_bn.experiment.progress.RunProgress
