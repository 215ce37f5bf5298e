"""Tests for keras_bn.cli: argument parsing and errors of the `keras-bn` command."""

import pytest

from keras_bn.cli import build_parser, main


def test_defaults_are_the_notebooks():
    args = build_parser().parse_args([])
    assert args.variants == ("none", "keras", "manual")
    assert (args.batches, args.batch_size, args.learning_rate, args.seed) == (800, 32, 0.002, 0)
    assert args.data_dir is None and args.out == "runs/deep_mnist"


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
