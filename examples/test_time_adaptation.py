"""Test-time adaptation of batch norm on corrupted MNIST: no adaptation, statistics, TENT.

Usage (from the repository root, with the real MNIST):

    KERAS_BN_MNIST_DIR=/path/to/mnist python examples/test_time_adaptation.py
    python examples/test_time_adaptation.py --seeds 1 --batches 100 \\
        --test-images 1000 --sweep-seeds 1 --sweep-images 500

The notebook's network (`keras_bn.deep_mnist_model`) is trained with Keras's
batch norm (`bn="keras"`) and with `ManualBatchNorm` (`bn="manual"`), once per
seed, as the `keras-bn` command trains it (`--batches` batches of 32, sigmoid
cross-entropy, Adam at 0.002). Each network is then scored on the clean test
images and on each of the 15 corruptions of `keras_bn.corruptions` (at
`--severity`, the first `--test-images` test images):

- source: the network as trained, batch norm in inference mode;
- statistics: each test batch of `--batch-size` normalized with its own
  statistics (`BatchNormAdapter(method="statistics")`, prior 0);
- TENT: continual TENT over the test batches of one corruption, reset to
  the source before the next (`BatchNormAdapter(method="tent")`, Adam at
  1e-3, one step per batch, entropy of the normalized sigmoids).

Then, on the first `--sweep-images` images of a few corruptions
(`--sweep-corruptions`), for the first `--sweep-seeds` seeds of
`--sweep-variants`, the accuracy against the test batch size (statistics and
TENT, prior 0) and against the prior strength N (statistics, at batch sizes 1
and 16). A batch of one image with prior 0 is refused by the library (a
batch norm after the 1x1 maps would see one value per channel): the tables
say `refused` there.

It prints the machine, one line per test set, and the tables (mean and
standard deviation over the seeds), and writes `results.json` and
`tta_sweeps.png` to `--out`.
"""

import argparse
import importlib.util
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if importlib.util.find_spec("keras_bn") is None:  # Run from a checkout that is not installed.
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the _tta_* helpers beside this file
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import logging

import _tta_report as report
import _tta_study as study
import numpy as np

from keras_bn import load_mnist
from keras_bn.corruptions import CORRUPTIONS, corrupt

# Keras traces its predict and train steps once per batch shape, and every adapter has its
# own: TensorFlow's warnings that it retraced say only that.
logging.getLogger("tensorflow").setLevel(logging.ERROR)

#: One corruption of each kind MNIST-C has (noise, blur, geometry, background,
#: stroke style), chosen before any was measured: the sweeps' default subset.
SWEEP_CORRUPTIONS = ("shot_noise", "motion_blur", "rotate", "fog", "canny_edges")
VARIANTS = ("keras", "manual")


def _ints(text):
    """Parses `"1,4,16"` into a tuple of ints."""
    return tuple(int(part) for part in text.split(","))


def _names(text):
    """Parses `"a,b"` into a tuple of names."""
    return tuple(part.strip() for part in text.split(",") if part.strip())


def parse_args(argv=None):
    """Returns the parsed arguments, each checked: a bad one exits with a message naming it."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--seeds", type=int, default=5, help="seeds 0..N-1 per variant (default 5)")
    add("--batches", type=int, default=800, help="training batches of 32 (default 800)")
    add("--test-images", type=int, default=10000, help="first N test images (default 10000)")
    add("--severity", type=int, default=3, help="corruption severity, 1-5 (default 3)")
    add("--batch-size", type=int, default=64, help="test batch of the tables (default 64)")
    add("--variants", type=_names, default=VARIANTS, help="default keras,manual")
    add("--corruptions", type=_names, default=CORRUPTIONS, help="default: all 15")
    add("--sweep-variants", type=_names, default=("keras",), help="default keras")
    add("--sweep-seeds", type=int, default=2, help="first N seeds in the sweeps (default 2)")
    add("--sweep-images", type=int, default=2000, help="test images in the sweeps (default 2000)")
    add("--sweep-corruptions", type=_names, default=SWEEP_CORRUPTIONS,
        help="default " + ",".join(SWEEP_CORRUPTIONS))
    add("--batch-sizes", type=_ints, default=(1, 4, 16, 64, 256), help="default 1,4,16,64,256")
    add("--priors", type=_ints, default=(0, 1, 4, 16, 64, 256), help="default 0,1,4,16,64,256")
    add("--prior-batch-sizes", type=_ints, default=(1, 16), help="default 1,16")
    add("--out", default="runs/test_time_adaptation", help="folder for results.json and the figure")
    add("--data-dir", default=None, help="MNIST folder (default: $KERAS_BN_MNIST_DIR)")
    args = parser.parse_args(argv)
    _check(parser, args)
    return args


def _check(parser, args):
    """Exits through `parser.error` naming the first argument that breaks its rule."""
    for name in ("seeds", "batches", "test_images", "batch_size", "sweep_seeds", "sweep_images"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be a positive int. "
                         f"Received: {getattr(args, name)}")
    if not 1 <= args.severity <= 5:
        parser.error(f"--severity must be in 1..5. Received: {args.severity}")
    for name in ("batch_sizes", "prior_batch_sizes"):
        if min(getattr(args, name)) < 1:
            parser.error(f"--{name.replace('_', '-')} must be positive ints. "
                         f"Received: {getattr(args, name)}")
    if min(args.priors) < 0:
        parser.error(f"--priors must be ints >= 0. Received: {args.priors}")
    checks = (("variants", VARIANTS), ("corruptions", CORRUPTIONS),
              ("sweep_variants", args.variants), ("sweep_corruptions", args.corruptions))
    for name, allowed in checks:
        unknown = [value for value in getattr(args, name) if value not in allowed]
        if unknown or not getattr(args, name):
            parser.error(f"--{name.replace('_', '-')} must be a comma-separated list of "
                         f"{', '.join(allowed)}. Received: {','.join(getattr(args, name))}")
    args.sweep_seeds = min(args.sweep_seeds, args.seeds)


def train_all(args, data, clock):
    """Trains every variant and seed; returns the `study.Subject`s, printing one line each."""
    subjects = []
    for variant in args.variants:
        for seed in range(args.seeds):
            with clock("train"):
                model = study.train(variant, seed, data.train, args.batches)
            subjects.append(study.Subject(variant, seed, model))
            print(f"trained {variant}, seed {seed} ({clock.seconds['train']:.0f} s)", flush=True)
    return subjects


def sweep(subject, images, labels, args, results, name):
    """Runs the batch-size and prior sweeps of `subject` on one corruption, into `results`."""
    source = subject.model.predict(images, batch_size=500, verbose=0)
    report.add(results["sweep_source"], (subject.variant, name), study.accuracy(source, labels))
    found, refused = study.batch_size_accuracies(subject, images, labels, args.batch_sizes)
    for method, by_size in found.items():
        for size, value in by_size.items():
            report.add(results["batch_sizes"], (subject.variant, method, str(size), name), value)
    priors, refused_too = study.prior_accuracies(subject, images, labels,
                                                 args.prior_batch_sizes, args.priors)
    for size, by_prior in priors.items():
        for prior, value in by_prior.items():
            report.add(results["priors"], (subject.variant, str(size), str(prior), name), value)
    for entry in refused + refused_too:
        results["refused"].append({"variant": subject.variant, "seed": subject.seed,
                                   "corruption": name, **entry})


def evaluate(args, data, subjects, clock):
    """Scores every subject on every test set (and sweeps the chosen ones); returns the results."""
    images = data.test.images[: args.test_images]
    labels = np.argmax(data.test.labels[: args.test_images], axis=-1)
    results = {key: {} for key in ("main", "batch_sizes", "priors", "sweep_source")}
    results["refused"] = []
    for name in ("clean", *args.corruptions):
        with clock("corrupt"):
            x = images if name == "clean" else corrupt(images, name, args.severity, seed=0)
        for subject in subjects:
            with clock("main"):
                row = study.main_accuracies(subject, x, labels, args.batch_size)
            for method, value in row.items():
                report.add(results["main"], (subject.variant, name, method), value)
            if (name in args.sweep_corruptions and subject.variant in args.sweep_variants
                    and subject.seed < args.sweep_seeds):
                with clock("sweeps"):
                    sweep(subject, x[: args.sweep_images], labels[: args.sweep_images],
                          args, results, name)
        print(report.progress_line(results["main"], name, clock.seconds), flush=True)
    return results


def main(argv=None):
    """Parses the flags, trains, evaluates, prints the tables and writes the results."""
    args = parse_args(argv)
    clock = study.Clock()
    machine = report.machine()
    report.print_machine(machine)
    data = load_mnist(args.data_dir)
    args.test_images = min(args.test_images, len(data.test.images))
    args.sweep_images = min(args.sweep_images, args.test_images)
    subjects = train_all(args, data, clock)
    results = evaluate(args, data, subjects, clock)
    results["config"] = {key: value for key, value in vars(args).items() if key != "data_dir"}
    results["machine"] = {**machine, "load_average_end": round(os.getloadavg()[0], 1)}
    results["seconds"] = {**clock.seconds, "total": sum(clock.seconds.values())}
    print(report.tables(results))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report.write_json(out / "results.json", results)
    report.figure(out / "tta_sweeps.png", results)
    print(f"wrote results.json and tta_sweeps.png to\n{out}")
    print("seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in results["seconds"].items())
          + f"\nload average at the end {results['machine']['load_average_end']}")
    return results


if __name__ == "__main__":
    main()
