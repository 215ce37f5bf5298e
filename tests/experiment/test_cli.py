"""Tests for keras_bn.experiment.cli: arguments, errors, and the README's sequence of commands."""

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import pytest

from helpers import write_fake_mnist_npz
from keras_bn.experiment import RunConfig, RunLock
from keras_bn.experiment.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_are_the_run_configs():
    args = build_parser().parse_args([])
    defaults = RunConfig()
    assert args.variants == defaults.variants == ("none", "keras", "manual")
    assert (args.batches, args.batch_size, args.learning_rate) == (800, 32, 0.002)
    assert (args.seed, args.seeds) == (None, (0,))
    assert args.data_dir is None and args.out == "runs/deep_mnist"
    assert (args.checkpoint_every, args.validate_every, args.check_every) == (100, 100, 25)
    assert (args.distribute, args.quiet, args.wait) == (None, False, False)


def test_parses_every_option():
    args = build_parser().parse_args(
        ["--variants", "manual, none", "--batches", "5", "--batch-size", "8",
         "--learning-rate", "1e-3", "--seeds", "0, 1,2", "--data-dir", "d", "--out", "o",
         "--checkpoint-every", "50", "--validate-every", "10", "--check-every", "5",
         "--distribute", "mirrored", "--quiet", "--wait"]
    )
    assert args.variants == ("manual", "none") and args.seeds == (0, 1, 2)
    assert (args.batches, args.batch_size, args.learning_rate) == (5, 8, 0.001)
    assert (args.data_dir, args.out) == ("d", "o")
    assert (args.checkpoint_every, args.validate_every, args.check_every) == (50, 10, 5)
    assert (args.distribute, args.quiet, args.wait) == ("mirrored", True, True)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--variants", "none,bn"], "argument --variants: `variants` may only hold none, keras, "
                                    "manual. Received: 'bn' in variants='none,bn'"),
        (["--variants", ""], "argument --variants: `variants` must hold at least one of"),
        (["--variants", "keras,keras"], "argument --variants: `variants` must not repeat"),
        (["--batches", "0"], "argument --batches: `batches` must be a positive int. "
                             "Received: batches=0"),
        (["--batches", "-3"], "argument --batches: `batches` must be a positive int"),
        (["--batches", "many"], "argument --batches: `batches` must be a positive int. "
                                "Received: batches='many'"),
        (["--batch-size", "0"], "argument --batch-size: `batch_size` must be a positive int"),
        (["--learning-rate", "0"], "argument --learning-rate: `learning_rate` must be a "
                                   "positive finite number"),
        (["--learning-rate=-1e-3"], "`learning_rate` must be a positive finite number"),
        (["--learning-rate", "nan"], "`learning_rate` must be a positive finite number"),
        (["--learning-rate", "inf"], "`learning_rate` must be a positive finite number"),
        (["--seed", "-1"], "argument --seed: `seed` must be an int >= 0. Received: seed=-1"),
        (["--seeds", ""], "argument --seeds: `seeds` must hold at least one seed"),
        (["--seeds", "0,x"], "argument --seeds: `seeds` must be ints >= 0. Received: 'x'"),
        (["--seeds=-1,2"], "argument --seeds: `seeds` must be ints >= 0. Received: -1"),
        (["--seeds", "1,2,1"], "argument --seeds: `seeds` must not repeat a value"),
        (["--seed", "1", "--seeds", "2,3"], "argument --seeds: not allowed with argument --seed"),
        (["--checkpoint-every", "0"], "argument --checkpoint-every: `checkpoint_every` must be"),
        (["--validate-every", "-5"], "argument --validate-every: `validate_every` must be"),
        (["--check-every", "x"], "argument --check-every: `check_every` must be a positive int"),
        (["--distribute", "ring"], "argument --distribute: invalid choice: 'ring'"),
        (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    ],
)
def test_bad_arguments_exit_2_with_a_clear_message(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: keras-bn")
    assert message in err


def _exit(argv, capsys):
    """Runs `main(argv)`, which must exit; returns `(status, stderr)`."""
    with pytest.raises(SystemExit) as exit_info:
        main([str(arg) for arg in argv])
    return exit_info.value.code, capsys.readouterr().err


def test_missing_data_dir_exits_1_naming_the_folder(tmp_path, capsys):
    missing = tmp_path / "no_mnist_here"
    status, err = _exit(["--variants", "none", "--batches", "1", "--data-dir", missing,
                         "--out", tmp_path / "out"], capsys)
    assert status == 1
    assert err.startswith("keras-bn: error: ") and str(missing) in err
    assert not (tmp_path / "out").exists()


def test_an_out_folder_that_cannot_be_written_exits_2(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    status, err = _exit(["--variants", "none", "--batches", "1", "--out", blocker / "run"], capsys)
    assert status == 2 and err.startswith("usage: keras-bn")
    assert (f"keras-bn: error: `out_dir` must be a folder that can be written to. Received: "
            f"out_dir='{blocker / 'run'}' ({blocker} is not a folder)") in err


def test_mirrored_off_tensorflow_exits_2(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(keras.backend, "backend", lambda: "torch")
    status, err = _exit(["--batches", "1", "--distribute", "mirrored", "--out", tmp_path], capsys)
    assert status == 2
    assert "keras-bn: error: `distribute='mirrored'` trains with tf.distribute.MirroredStrategy, " \
           "which needs the TensorFlow backend. Received: backend 'torch'" in err


def test_a_corrupt_checkpoint_exits_1(tmp_path, capsys):
    name = RunConfig(variants="none", batches=5).name
    path = tmp_path / "out" / name / "checkpoints" / "none-seed0.zip"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"half a file")
    argv = ["--variants", "none", "--batches", "5", "--data-dir", write_fake_mnist_npz(tmp_path),
            "--out", tmp_path / "out"]
    status, err = _exit(argv, capsys)
    assert status == 1
    assert err.startswith(f"keras-bn: error: Cannot read the checkpoint {path}: ")


def test_a_run_folder_another_process_holds_exits_2_naming_it(tmp_path, capsys):
    folder = tmp_path / "out" / RunConfig(variants="none", batches=2).name
    argv = ["--variants", "none", "--batches", "2", "--data-dir", write_fake_mnist_npz(tmp_path),
            "--out", tmp_path / "out"]
    with RunLock(folder):  # As another process would: a lock of its own on run.lock.
        status, err = _exit(argv, capsys)
    assert status == 2
    assert err.startswith(f"keras-bn: error: The run folder {folder} is in use by process "
                          f"{os.getpid()} on host ")  # Not a usage error: no usage line.
    assert "start this one with --wait" in err
    assert os.listdir(folder) == ["run.lock"]


def test_the_readmes_commands_work_one_after_the_other(tmp_path, monkeypatch, capsys):
    """`keras-bn`, then `keras-bn --variants manual --batches N`, then `keras-bn` again.

    As in a fresh clone: no runs/ folder yet, the default --out. Short settings and a
    small fake MNIST keep it quick; the flags that differ are the README's.
    """
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KERAS_BN_MNIST_DIR", str(write_fake_mnist_npz(tmp_path)))
    short = ["--batches", "2", "--batch-size", "4", "--quiet"]
    assert main(short) == 0
    assert main([*short, "--variants", "manual", "--batches", "3"]) == 0  # Exited 2 before.
    configs = sorted((json.loads((folder / "results.json").read_text())["config"]
                      for folder in Path("runs/deep_mnist").iterdir()), key=lambda c: c["batches"])
    assert [(c["variants"], c["batches"]) for c in configs] == [
        (["none", "keras", "manual"], 2), (["manual"], 3)]
    capsys.readouterr()
    assert main([arg for arg in short if arg != "--quiet"]) == 0  # The first command again.
    out = capsys.readouterr().out
    assert out.count("not trained again.") == 3 and "Batch: " not in out


def test_the_example_script_is_the_cli():
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "deep_mnist.py"),
                           "--batches", "0"], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=600)
    assert proc.returncode == 2
    assert "usage: keras-bn [-h] [--version] [--variants LIST]" in proc.stderr
    assert "--batches: `batches` must be a positive int. Received: batches=0" in proc.stderr


def test_version_prints_the_packages_version(capsys):
    import keras_bn

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == f"keras-bn {keras_bn.__version__}\n"


#: Runs the installed `keras-bn` console script's target in a fresh process on the
#: arguments given, then prints, as JSON on the last line of stderr, its exit status, Keras
#: and the backends among the modules it imported, and whether keras_bn was imported whole.
_RUN_ENTRY_POINT = """
import importlib.metadata, json, sys
(entry,) = importlib.metadata.entry_points(group="console_scripts", name="keras-bn")
try:
    status = entry.load()(sys.argv[1:])
except SystemExit as stop:
    status = stop.code
imported = {name.partition(".")[0] for name in sys.modules}
print(json.dumps([status, sorted(imported & {"keras", "tensorflow", "jax", "torch"}),
                  hasattr(sys.modules.get("keras_bn"), "ManualBatchNorm")]), file=sys.stderr)
"""


def _run_entry_point(argv, tmp_path, **environ):
    """Runs the `keras-bn` console script's target on `argv` in a fresh process.

    Returns `(status, heavy, whole, stdout, stderr)`: the exit status, Keras and the
    backends among the modules imported, and whether `keras_bn` was imported whole.
    `environ` is added to the process's environment.
    """
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "3", **environ}
    proc = subprocess.run([sys.executable, "-c", _RUN_ENTRY_POINT, *map(str, argv)],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    err, _, last = proc.stderr.rstrip("\n").rpartition("\n")
    status, heavy, whole = json.loads(last)
    return status, heavy, whole, proc.stdout, err


@pytest.mark.parametrize("argv, status, text", [
    (["--help"], 0, "usage: keras-bn [-h] [--version]"),
    (["--version"], 0, "keras-bn "),
    (["--no-such-flag"], 2, "unrecognized arguments: --no-such-flag"),
    (["--batches", "0"], 2, "`batches` must be a positive int. Received: batches=0"),
])
def test_help_version_and_bad_arguments_do_not_import_keras(argv, status, text, tmp_path):
    """The console script answers these before Keras and the backend are imported (seconds)."""
    got_status, heavy, whole, out, err = _run_entry_point(argv, tmp_path)
    assert got_status == status
    assert text in (out if status == 0 else err)
    assert heavy == [] and not whole, f"{argv} imported {heavy}"


def test_the_entry_point_runs_the_command_with_the_whole_package(tmp_path):
    """After parsing, the console script imports keras_bn for real and runs the command."""
    missing = tmp_path / "no_mnist_here"
    status, heavy, whole, _, err = _run_entry_point(
        ["--variants", "none", "--batches", "1", "--data-dir", missing, "--out", tmp_path / "out"],
        tmp_path)
    assert status == 1 and "keras-bn: error: " in err and str(missing) in err
    assert "keras" in heavy and whole


def test_the_commands_keras_import_leaves_pyplot_out_and_importable(tmp_path):
    """Keras imports pyplot for `keras.visualization` alone (0.4 s); the command does without it."""
    pytest.importorskip("matplotlib")
    code = ("import sys, _keras_bn_cli; _keras_bn_cli._import_command(); "
            "print('matplotlib.pyplot' in sys.modules); import matplotlib.pyplot; print('importable')")
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["False", "importable"]


#: The first run of a newcomer, made tiny: one variant with batch norm, far fewer batches
#: than the network needs, the default validation cadence (every 100 batches).
_SHORT_RUN = ["--variants", "manual", "--batches", "3", "--batch-size", "4", "--out", "out"]

#: A `sitecustomize` that makes Matplotlib look uninstalled: importing it raises the
#: `ModuleNotFoundError` Python raises for a package that is not there.
_NO_MATPLOTLIB = '''
import sys


class NoMatplotlib:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == "matplotlib":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, NoMatplotlib())
'''


def _short_run(tmp_path, **environ):
    """Runs `keras-bn` on `_SHORT_RUN` in a fresh process, on a fake MNIST.

    Returns `(status, stdout, stderr, run folder)`.
    """
    data = write_fake_mnist_npz(tmp_path)
    status, _, _, out, err = _run_entry_point([*_SHORT_RUN, "--data-dir", data], tmp_path,
                                              **environ)
    (folder,) = (tmp_path / "out").iterdir()
    return status, out, err, folder


def test_a_short_first_run_ends_on_its_final_numbers_and_says_it_is_short(tmp_path):
    from PIL import Image

    from keras_bn.experiment.figures import validation_curves

    status, out, err, folder = _short_run(tmp_path)
    assert status == 0
    lines = out.splitlines()
    (final,) = [line for line in lines if line.startswith("Final validation accuracy: ")]
    final = float(final.split(": ")[1])
    # The progress bar (plain lines off a terminal) ends on that same number.
    bar = [line for line in err.splitlines() if line.startswith("manual, seed 0 ")]
    assert bar[-1].startswith("manual, seed 0 3/3  ")
    assert bar[-1].endswith(f"val acc {final:.4f}")
    # One line says that 3 batches are too few, with the tutorial's account.
    notes = [line for line in lines if line.startswith("Note: ")]
    assert notes == [
        "Note: 3 batches are too few to see this network learn: with batch norm it stays near "
        "chance for about 200 batches, then climbs (validation accuracy 0.42-0.74 after 300, "
        "0.75-0.96 after 800, the default); see "
        "https://keras-bn.github.io/keras-bn/tutorial/#the-run"]
    # The figure: the validation at batch 0 and the final one at the last batch, 2,
    # drawn from these results; its title names the one variant that ran.
    results = json.loads((folder / "results.json").read_text())
    run = results["runs"]["manual"]["0"]
    assert [e["batch"] for e in run["history"] if e["event"] == "final_validation"] == [2]
    assert run["final_validation_accuracy"] == final
    ((key, (batches, scores)),) = validation_curves(results).items()
    assert key == ("manual", False) and batches == [0, 2]
    assert scores[0, -1, 1] == final
    assert Image.open(folder / "curves.png").text["Title"] == (
        "Deep MNIST CNN (19 conv layers): manual — 3 batches of 4, lr 0.002, seed 0")


def test_without_matplotlib_a_run_says_so_before_training_and_writes_its_results(tmp_path):
    blocker = tmp_path / "no_matplotlib"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(_NO_MATPLOTLIB)
    status, out, err, folder = _short_run(tmp_path, PYTHONPATH=str(blocker))
    assert status == 0, err[-3000:]
    lines = out.splitlines()
    assert lines[0] == (
        "Note: Matplotlib cannot be imported (No module named 'matplotlib'), so this run "
        "writes results.json but no figures; pip install 'keras-bn[plot]' to have them.")
    assert lines[1] == "=== manual: keras_bn.ManualBatchNorm ==="  # Then it trains.
    assert lines[-1] == f"Wrote {Path('out') / folder.name / 'results.json'}"
    assert sorted(os.listdir(folder)) == ["checkpoints", "results.json", "run.lock"]
    assert "Traceback" not in err
    results = json.loads((folder / "results.json").read_text())
    assert results["runs"]["manual"]["0"]["final_test_accuracy"] is not None


@pytest.mark.parametrize("variants, batches, noted", [
    (["manual"], 299, True), (["manual"], 300, False), (["none", "keras"], 50, True),
    (["none"], 50, False),  # Without batch norm more batches would not help.
])
def test_the_short_run_note_is_for_runs_with_batch_norm_below_300_batches(variants, batches,
                                                                          noted):
    from keras_bn.experiment.results import short_run_note

    note = short_run_note({"variants": variants, "batches": batches})
    assert (note is not None) == noted
    if noted:
        assert note.startswith(f"Note: {batches} batches are too few")
        assert ("stays at chance however long it trains" in note) == ("none" in variants)
