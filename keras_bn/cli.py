"""The `keras-bn` command: runs the seed notebook's deep-MNIST experiment."""

import argparse
import shlex
import sys

__all__ = ["build_parser", "main"]

_VARIANTS = ("none", "keras", "manual")  # keras_bn.experiment.VARIANTS, without importing Keras.


def _int_at_least(minimum, rule):
    """Returns an argparse type parsing an int >= `minimum`; `rule` words the message."""

    def parse(text):
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"must be {rule}, got {text!r}")
        return value

    return parse


_positive_int = _int_at_least(1, "a positive integer")
_non_negative_int = _int_at_least(0, "an integer >= 0")


def _positive_float(text):
    """Parses a positive finite float for argparse, or raises `ArgumentTypeError`."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def _variants(text):
    """Parses a comma-separated list of variant names, or raises `ArgumentTypeError`."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    allowed = ",".join(_VARIANTS)
    if not names:
        raise argparse.ArgumentTypeError(f"must name at least one of {allowed}, got {text!r}")
    unknown = [name for name in names if name not in _VARIANTS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown variant {unknown[0]!r} in {text!r}; choose from {allowed}"
        )
    if len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"a variant is repeated in {text!r}")
    return tuple(names)


def _seeds(text):
    """Parses comma-separated distinct seeds (ints >= 0), or raises `ArgumentTypeError`."""
    parts = [part.strip() for part in text.split(",") if part.strip()]
    if not parts:
        raise argparse.ArgumentTypeError(f"must list at least one seed, got {text!r}")
    seeds = []
    for part in parts:
        try:
            seeds.append(_non_negative_int(part))
        except argparse.ArgumentTypeError:
            raise argparse.ArgumentTypeError(
                f"seeds must be integers >= 0, got {part!r} in {text!r}"
            ) from None
    if len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"a seed is repeated in {text!r}")
    return tuple(seeds)


def build_parser():
    """Returns the `argparse.ArgumentParser` of the `keras-bn` command."""
    parser = argparse.ArgumentParser(
        prog="keras-bn",
        description=(
            "Reproduce the seed notebook: train a 19-conv-layer CNN on MNIST without batch "
            "normalization, with keras.layers.BatchNormalization and with "
            "keras_bn.ManualBatchNorm (same seed, same batches), print the notebook's log "
            "and a summary, and write OUT/results.json and OUT/curves.png."
        ),
    )
    parser.add_argument(
        "--variants", type=_variants, default=_VARIANTS, metavar="LIST",
        help="comma-separated variants from none,keras,manual (default: all three)",
    )
    parser.add_argument(
        "--batches", type=_positive_int, default=800,
        help="training batches per variant (default: 800)",
    )
    parser.add_argument(
        "--batch-size", type=_positive_int, default=32,
        help="examples per batch (default: 32)",
    )
    parser.add_argument(
        "--learning-rate", type=_positive_float, default=0.002,
        help="Adam learning rate (default: 0.002)",
    )
    seeds = parser.add_mutually_exclusive_group()
    seeds.add_argument(
        "--seed", type=_non_negative_int, default=0,
        help="seed of the weights and the batch order, the same for every variant (default: 0)",
    )
    seeds.add_argument(
        "--seeds", type=_seeds, default=None, metavar="LIST",
        help="comma-separated seeds, e.g. 0,1,2,3,4: every variant is trained once per seed and "
        "the summary gives the mean, std, min and max of the final test accuracy",
    )
    parser.add_argument(
        "--data-dir", default=None, metavar="DIR",
        help="folder with the MNIST IDX files or mnist.npz (default: $KERAS_BN_MNIST_DIR, "
        "then the Keras download)",
    )
    parser.add_argument(
        "--out", default="runs/deep_mnist", metavar="DIR",
        help="folder for results.json, curves.png and the checkpoints; rerunning the same "
        "command with the same folder resumes where it stopped (default: runs/deep_mnist)",
    )
    parser.add_argument(
        "--checkpoint-every", type=_positive_int, default=100, metavar="N",
        help="save a checkpoint every N batches (default: 100)",
    )
    parser.add_argument(
        "--validate-every", type=_positive_int, default=100, metavar="N",
        help="log the validation loss and accuracy every N batches (default: 100)",
    )
    parser.add_argument(
        "--check-every", type=_positive_int, default=25, metavar="N",
        help="log the loss and accuracy of the batch just trained every N batches (default: 25)",
    )
    parser.add_argument(
        "--distribute", choices=("mirrored",), default=None,
        help="mirrored: train with tf.distribute.MirroredStrategy over every GPU (else every "
        "CPU device) and synchronized batch normalization; TensorFlow backend only",
    )
    parser.add_argument(
        "--quiet", action="store_true",
        help="print only the summary: no log, no progress bar",
    )
    return parser


def main(argv=None):
    """Runs the `keras-bn` command with `argv` (default: `sys.argv[1:]`) and returns 0.

    Bad arguments make argparse print the usage and the reason to stderr and
    exit with status 2; so do an `--out` folder that cannot be written, a
    checkpoint there of another configuration, and `--distribute mirrored`
    off TensorFlow. A missing or corrupt MNIST folder or checkpoint exits
    with status 1 and the loader's message. SIGINT (Ctrl-C) and SIGTERM stop
    after the current batch, save a checkpoint, print how to resume, and exit
    with status 130 and 143.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    # Imported only now, so that argument errors come before any model or data work.
    from keras_bn.checkpoint import CheckpointError, CheckpointMismatchError
    from keras_bn.datasets import MNISTError
    from keras_bn.experiment import ExperimentError, run_experiment
    from keras_bn.interrupt import TrainingInterrupted, signal_name

    try:
        run_experiment(
            args.variants,
            batches=args.batches,
            batch_size=args.batch_size,
            learning_rate=args.learning_rate,
            seed=None if args.seeds else args.seed,
            seeds=args.seeds,
            data_dir=args.data_dir,
            out_dir=args.out,
            checkpoint_every=args.checkpoint_every,
            validate_every=args.validate_every,
            check_every=args.check_every,
            distribute=args.distribute,
            quiet=args.quiet,
        )
    except (ExperimentError, CheckpointMismatchError) as error:
        parser.error(str(error))
    except (MNISTError, CheckpointError) as error:
        parser.exit(1, f"keras-bn: error: {error}\n")
    except TrainingInterrupted as stop:
        command = shlex.join(["keras-bn", *argv])
        parser.exit(
            stop.exit_code,
            f"keras-bn: stopped by {signal_name(stop.signal_number)} {stop.where}; "
            f"checkpoint saved to {stop.checkpoint}.\n"
            f"To resume, run the same command again: {command}\n",
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
