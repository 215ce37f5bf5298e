"""The `keras-bn` command: runs the seed notebook's deep-MNIST experiment."""

import argparse
import functools
import shlex
import sys

from keras_bn import _checks
from keras_bn.experiment.config import VARIANTS, RunConfig

__all__ = ["build_parser", "main"]

_DEFAULTS = RunConfig.__dataclass_fields__


def _argument(check, convert=int):
    """Returns an argparse type: `check(convert(text))`, its `ValueError` as the message."""

    def parse(text):
        try:
            value = convert(text)
        except ValueError:
            value = text  # The check names the text it cannot use.
        try:
            return check(value)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return parse


def _option(parser, name, check, help, convert=int, **kwargs):
    """Adds `--name` with the `RunConfig` default of `name`, parsed by `check(name, value)`."""
    default = _DEFAULTS[name].default
    parser.add_argument(
        "--" + name.replace("_", "-"), default=default,
        type=_argument(functools.partial(check, name), convert),
        help=f"{help} (default: {default if not isinstance(default, tuple) else ','.join(map(str, default))})",
        **kwargs,
    )


def build_parser():
    """Returns the `argparse.ArgumentParser` of the `keras-bn` command."""
    parser = argparse.ArgumentParser(prog="keras-bn", description=(
        "Reproduce the seed notebook: train a 19-conv-layer CNN on MNIST without batch "
        "normalization, with keras.layers.BatchNormalization and with keras_bn.ManualBatchNorm "
        "(same seed, same batches), print the notebook's log and a summary, and write "
        "results.json and curves.png to a run folder under OUT named by the settings."
    ))
    positive = _checks.positive_int
    _option(parser, "variants", functools.partial(_checks.names, allowed=VARIANTS),
            f"comma-separated variants from {','.join(VARIANTS)}", str, metavar="LIST")
    _option(parser, "batches", positive, "training batches per variant")
    _option(parser, "batch_size", positive, "examples per batch")
    _option(parser, "learning_rate", lambda name, value: _checks.learning_rate(value, name),
            "Adam learning rate", float)
    seeds = parser.add_mutually_exclusive_group()
    seeds.add_argument("--seed", type=_argument(functools.partial(_checks.non_negative_int,
                                                                  "seed")), default=None,
                       help="seed of the weights and the batch order, the same for every "
                       "variant (default: 0)")
    _option(seeds, "seeds", _checks.seeds, "comma-separated seeds, e.g. 0,1,2,3,4: every "
            "variant is trained once per seed and the summary gives the spread of the final "
            "test accuracy", str, metavar="LIST")
    parser.add_argument("--data-dir", default=None, metavar="DIR", help=(
        "folder with the MNIST IDX files or mnist.npz (default: $KERAS_BN_MNIST_DIR, then the "
        "Keras download)"))
    parser.add_argument("--out", default="runs/deep_mnist", metavar="DIR", help=(
        "folder under which each configuration gets its own run folder (results.json, "
        "curves.png, checkpoints); the same command again resumes where it stopped "
        "(default: runs/deep_mnist)"))
    for name, help in [("checkpoint_every", "save a checkpoint every N batches"),
                       ("validate_every", "log the validation loss and accuracy every N batches"),
                       ("check_every", "log the loss and accuracy of the batch just trained "
                        "every N batches")]:
        _option(parser, name, positive, help, metavar="N")
    parser.add_argument("--distribute", choices=("mirrored",), default=None, help=(
        "mirrored: train with tf.distribute.MirroredStrategy over every GPU (else every CPU "
        "device) and synchronized batch normalization; TensorFlow backend only"))
    parser.add_argument("--quiet", action="store_true",
                        help="print only the summary: no log, no progress bar")
    return parser


def main(argv=None):
    """Runs the `keras-bn` command with `argv` (default: `sys.argv[1:]`) and returns 0.

    Bad arguments make argparse print the usage and the reason to stderr and
    exit with status 2; so do an `--out` folder that cannot be written, a
    checkpoint there of other data, and `--distribute mirrored` off
    TensorFlow. A missing or corrupt MNIST folder or checkpoint exits with
    status 1. SIGINT (Ctrl-C) and SIGTERM stop after the current batch, save a
    checkpoint, print how to resume, and exit with status 130 and 143.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    from keras_bn.datasets import MNISTError
    from keras_bn.experiment import (CheckpointError, CheckpointMismatchError, ExperimentError,
                                     TrainingInterrupted, run_experiment)
    from keras_bn.experiment.interrupt import signal_name

    options = {key: args.pop(key) for key in ("data_dir", "out", "quiet")}
    seed = args.pop("seed")
    if seed is not None:
        args["seeds"] = (seed,)
    try:
        run_experiment(data_dir=options["data_dir"], out_dir=options["out"],
                       quiet=options["quiet"], **args)
    except (ExperimentError, CheckpointMismatchError) as error:
        parser.error(str(error))
    except (MNISTError, CheckpointError) as error:
        parser.exit(1, f"keras-bn: error: {error}\n")
    except TrainingInterrupted as stop:
        parser.exit(stop.exit_code, (
            f"keras-bn: stopped by {signal_name(stop.signal_number)} {stop.where}; checkpoint "
            f"saved to {stop.checkpoint}.\n"
            f"To resume, run the same command again: {shlex.join(['keras-bn', *argv])}\n"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
