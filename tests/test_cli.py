"""Tests for keras_bn.cli: argument parsing and errors of the `keras-bn` command."""

import keras
import numpy as np
import pytest

from helpers import write_fake_mnist_npz
from keras_bn.checkpoint import save_checkpoint
from keras_bn.cli import build_parser, main


def test_defaults_are_the_notebooks():
    args = build_parser().parse_args([])
    assert args.variants == ("none", "keras", "manual")
    assert (args.batches, args.batch_size, args.learning_rate, args.seed) == (800, 32, 0.002, 0)
    assert args.data_dir is None and args.out == "runs/deep_mnist"
    assert (args.seeds, args.checkpoint_every, args.validate_every, args.check_every) == (
        None, 100, 100, 25)
    assert (args.distribute, args.quiet) == (None, False)


def test_parses_the_long_run_options():
    args = build_parser().parse_args(
        ["--seeds", "0, 1,2,3,4", "--checkpoint-every", "50", "--validate-every", "10",
         "--check-every", "5", "--distribute", "mirrored", "--quiet"]
    )
    assert args.seeds == (0, 1, 2, 3, 4)
    assert (args.checkpoint_every, args.validate_every, args.check_every) == (50, 10, 5)
    assert (args.distribute, args.quiet) == ("mirrored", True)


def test_parses_every_option():
    args = build_parser().parse_args(
        ["--variants", "manual, none", "--batches", "5", "--batch-size", "8",
         "--learning-rate", "1e-3", "--seed", "2", "--data-dir", "d", "--out", "o"]
    )
    assert args.variants == ("manual", "none")
    assert (args.batches, args.batch_size, args.learning_rate, args.seed) == (5, 8, 0.001, 2)
    assert (args.data_dir, args.out) == ("d", "o")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--variants", "none,bn"], "argument --variants: unknown variant 'bn' in 'none,bn'; "
                                    "choose from none,keras,manual"),
        (["--variants", ""], "argument --variants: must name at least one of none,keras,manual"),
        (["--variants", "keras,keras"], "argument --variants: a variant is repeated"),
        (["--batches", "0"], "argument --batches: must be a positive integer, got '0'"),
        (["--batches", "-3"], "argument --batches: must be a positive integer, got '-3'"),
        (["--batches", "many"], "argument --batches: must be a positive integer, got 'many'"),
        (["--batch-size", "0"], "argument --batch-size: must be a positive integer, got '0'"),
        (["--learning-rate", "0"], "argument --learning-rate: must be a positive number, got '0'"),
        (["--learning-rate=-1e-3"], "argument --learning-rate: must be a positive number"),
        (["--learning-rate", "nan"], "argument --learning-rate: must be a positive number"),
        (["--seed", "-1"], "argument --seed: must be an integer >= 0, got '-1'"),
        (["--seeds", ""], "argument --seeds: must list at least one seed, got ''"),
        (["--seeds", "0,x"], "argument --seeds: seeds must be integers >= 0, got 'x' in '0,x'"),
        (["--seeds=-1,2"], "argument --seeds: seeds must be integers >= 0, got '-1' in '-1,2'"),
        (["--seeds", "1,2,1"], "argument --seeds: a seed is repeated in '1,2,1'"),
        (["--seed", "1", "--seeds", "2,3"], "argument --seeds: not allowed with argument --seed"),
        (["--checkpoint-every", "0"], "argument --checkpoint-every: must be a positive integer"),
        (["--validate-every", "-5"], "argument --validate-every: must be a positive integer"),
        (["--check-every", "x"], "argument --check-every: must be a positive integer, got 'x'"),
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


def test_missing_data_dir_exits_1_naming_the_folder(tmp_path, capsys):
    missing = tmp_path / "no_mnist_here"
    with pytest.raises(SystemExit) as exit_info:
        main(["--variants", "none", "--batches", "1", "--data-dir", str(missing),
              "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("keras-bn: error: ") and str(missing) in err
    assert not (tmp_path / "out").exists()


def _exit(argv, capsys):
    """Runs `main(argv)`, which must exit; returns `(status, stderr)`."""
    with pytest.raises(SystemExit) as exit_info:
        main([str(arg) for arg in argv])
    return exit_info.value.code, capsys.readouterr().err


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


def _checkpoint(out, config):
    """Writes a checkpoint of `none`, seed 0, with `config`, where the command looks for it."""
    (out / "checkpoints").mkdir(parents=True)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    return save_checkpoint(out / "checkpoints" / "none-seed0.npz", model, {"config": config})


def test_a_checkpoint_of_another_configuration_exits_2(tmp_path, capsys):
    path = _checkpoint(tmp_path / "out", {"variant": "none", "seed": 0, "batches": 800})
    argv = ["--variants", "none", "--batches", "5", "--data-dir", write_fake_mnist_npz(tmp_path),
            "--out", tmp_path / "out"]
    status, err = _exit(argv, capsys)
    assert status == 2
    assert (f"keras-bn: error: The checkpoint {path} was written by a run with another "
            "configuration (batches: 800 there, 5 now; ") in err
    assert "Use another output folder, or delete the checkpoint to start that run over." in err


def test_a_corrupt_checkpoint_exits_1(tmp_path, capsys):
    path = tmp_path / "out" / "checkpoints" / "none-seed0.npz"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"half a file")
    argv = ["--variants", "none", "--batches", "5", "--data-dir", write_fake_mnist_npz(tmp_path),
            "--out", tmp_path / "out"]
    status, err = _exit(argv, capsys)
    assert status == 1
    assert err.startswith(f"keras-bn: error: Cannot read the checkpoint {path}: ")
