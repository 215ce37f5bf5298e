"""The `keras-bn` command: runs the seed notebook's deep-MNIST experiment."""

import argparse

__all__ = ["build_parser", "main"]

_VARIANTS = ("none", "keras", "manual")  # keras_bn.experiment.VARIANTS, without importing Keras.


def _positive_int(text):
    """Parses a positive int for argparse, or raises `ArgumentTypeError` saying why not."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _non_negative_int(text):
    """Parses an int >= 0 for argparse, or raises `ArgumentTypeError` saying why not."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return value


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
    parser.add_argument(
        "--seed", type=_non_negative_int, default=0,
        help="seed of the weights and the batch order, the same for every variant (default: 0)",
    )
    parser.add_argument(
        "--data-dir", default=None, metavar="DIR",
        help="folder with the MNIST IDX files or mnist.npz (default: $KERAS_BN_MNIST_DIR, "
        "then the Keras download)",
    )
    parser.add_argument(
        "--out", default="runs/deep_mnist", metavar="DIR",
        help="folder for results.json and curves.png (default: runs/deep_mnist)",
    )
    return parser


def main(argv=None):
    """Runs the `keras-bn` command with `argv` (default: `sys.argv[1:]`) and returns 0.

    Bad arguments make argparse print the usage and the reason to stderr and
    exit with status 2; a missing or corrupt MNIST folder exits with status 1
    and the loader's message.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    # Imported only now, so that argument errors come before any model or data work.
    from keras_bn.datasets import MNISTError
    from keras_bn.experiment import run_experiment

    try:
        run_experiment(
            args.variants,
            batches=args.batches,
            batch_size=args.batch_size,
            learning_rate=args.learning_rate,
            seed=args.seed,
            data_dir=args.data_dir,
            out_dir=args.out,
        )
    except MNISTError as error:
        parser.exit(1, f"keras-bn: error: {error}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
