"""The `keras-bn` command: runs the seed notebook's deep-MNIST experiment."""

import argparse
import functools
import gc
import importlib.metadata
import shlex
import sys

from keras_bn import _checks
from keras_bn.experiment.config import CHECKS, DISTRIBUTE, VARIANTS, RunConfig

__all__ = ["build_parser", "main", "run_command"]


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


def _option(parser, name, help, convert=int, **kwargs):
    """Adds `--name`, checked and defaulted as the `RunConfig` field `name` is."""
    default = RunConfig.__dataclass_fields__[name].default
    shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
    parser.add_argument("--" + name.replace("_", "-"), default=default,
                        type=_argument(functools.partial(CHECKS[name], name), convert),
                        help=f"{help} (default: {shown})", **kwargs)


def _version():
    """Returns keras-bn's version, read from the installed metadata when there is some.

    setuptools writes the metadata's version from `keras_bn.__version__`; reading the
    metadata does not import the package, so `keras-bn --version` answers before Keras is
    imported. A checkout run without being installed has no metadata, and has imported
    the package already.
    """
    try:
        return importlib.metadata.version("keras-bn")
    except importlib.metadata.PackageNotFoundError:
        from keras_bn import __version__

        return __version__


def build_parser():
    """Returns the `argparse.ArgumentParser` of the `keras-bn` command."""
    parser = argparse.ArgumentParser(prog="keras-bn", description=(
        "Reproduce the seed notebook: train a 19-conv-layer CNN on MNIST without batch "
        "normalization, with keras.layers.BatchNormalization and with keras_bn.ManualBatchNorm "
        "(same seed, same batches), print the notebook's log and a summary, and write "
        "results.json and curves.png to a run folder under OUT named by the settings."))
    parser.add_argument("--version", action="version", version=f"keras-bn {_version()}")
    _option(parser, "variants", f"comma-separated variants from {','.join(VARIANTS)}", str,
            metavar="LIST")
    _option(parser, "batches", "training batches per variant")
    _option(parser, "batch_size", "examples per batch")
    _option(parser, "learning_rate", "Adam learning rate", float)
    seeds = parser.add_mutually_exclusive_group()
    seeds.add_argument("--seed", type=_argument(functools.partial(_checks.non_negative_int,
                                                                  "seed")),
                       help="seed of the weights and the batch order (default: 0)")
    _option(seeds, "seeds", "comma-separated seeds, e.g. 0,1,2,3,4: every variant is trained "
            "once per seed and the summary gives the spread of the test accuracy", str,
            metavar="LIST")
    parser.add_argument("--data-dir", metavar="DIR", help="folder with the MNIST IDX files or "
                        "mnist.npz (default: $KERAS_BN_MNIST_DIR, then the Keras download)")
    parser.add_argument("--out", default="runs/deep_mnist", metavar="DIR", help=(
        "folder under which each configuration gets its own run folder (results.json, "
        "curves.png, checkpoints); the same command again resumes it (default: %(default)s)"))
    _option(parser, "checkpoint_every", "save a checkpoint every N batches", metavar="N")
    _option(parser, "validate_every", "log the validation loss and accuracy every N batches",
            metavar="N")
    _option(parser, "check_every", "log the loss and accuracy of the batch just trained every "
            "N batches", metavar="N")
    parser.add_argument("--distribute", choices=tuple(DISTRIBUTE), help=(
        "mirrored: train with tf.distribute.MirroredStrategy over every GPU (else every CPU "
        "device) and synchronized batch normalization; multiworker: the same with "
        "tf.distribute.MultiWorkerMirroredStrategy over the worker processes listed in "
        "TF_CONFIG, each on its share of every batch, only the chief writing to OUT, no "
        "checkpoints; TensorFlow backend only"))
    _option(parser, "recalibrate", "also score every validation, and the final validation and "
            "test, with batch-norm statistics recomputed from the run's first N training "
            "batches (training is unchanged; variants without batch norm get no second "
            "score)", metavar="N")
    _option(parser, "recalibrate_dropout", "with --recalibrate, the mode of the dropout layers "
            "while the statistics are recomputed: inference, so that each batch norm sees "
            "what it sees at inference, or training, as PreciseBN", str, metavar="MODE")
    parser.add_argument("--plot-activations", action="store_true", help=(
        "record a middle layer's pre-activation percentiles and every kernel's gradient norm "
        "during training (training is unchanged) and draw them to activations.png and "
        "gradients.png"))
    parser.add_argument("--wait", action="store_true", help=(
        "if another process is training in the run folder, wait for it to finish, then resume "
        "or reuse what it leaves (without --wait: exit with status 2, naming that process)"))
    parser.add_argument("--quiet", action="store_true",
                        help="print only the summary: no log, no progress bar")
    return parser


def main(argv=None):
    """Runs the `keras-bn` command with `argv` (default: `sys.argv[1:]`) and returns 0.

    Bad arguments make argparse print the usage and the reason to stderr and
    exit with status 2; so do an `--out` folder that cannot be written or
    locked, a checkpoint there of other data, `--distribute` off TensorFlow,
    and `--distribute multiworker` without a valid `TF_CONFIG`. A run folder
    that another process holds exits with status 2 too, naming that process
    (with `--wait`, the command waits for it instead). A missing or corrupt
    MNIST folder or checkpoint exits with status 1. SIGINT (Ctrl-C) and SIGTERM stop after the current batch, save a
    checkpoint, print how to resume, and exit with status 130 and 143.
    Without Matplotlib the run says so before it trains, then writes its
    results without figures and returns 0.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    settings = vars(parser.parse_args(argv))
    from keras_bn.notebook import MNISTError
    from keras_bn.experiment import (CheckpointError, CheckpointMismatchError, ExperimentError,
                                     RunFolderBusy, TrainingInterrupted, run_experiment)
    from keras_bn.experiment.interrupt import signal_name

    options = {key: settings.pop(key) for key in ("data_dir", "out", "quiet", "wait")}
    if settings["seed"] is not None:
        settings["seeds"] = None  # `--seed N` is `seeds=(N,)`.
    try:
        run_experiment(data_dir=options["data_dir"], out_dir=options["out"],
                       quiet=options["quiet"], wait=options["wait"], **settings)
    except RunFolderBusy as error:  # Not a usage error: the same command works later.
        parser.exit(2, f"keras-bn: error: {error}\n")
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


def run_command(argv=None):
    """Runs `main` as this process's command, the last thing it does, and returns the status.

    Then it freezes the heap (`gc.freeze`): the interpreter's exit runs full
    garbage collections over every object left, and TensorFlow and Keras leave
    millions (about 1 s of a run's exit on TensorFlow); frozen ones are not
    scanned. Nothing else changes: `atexit` handlers run and streams are
    flushed as usual.
    """
    try:
        return main(argv)
    finally:
        gc.freeze()


if __name__ == "__main__":
    raise SystemExit(run_command())
