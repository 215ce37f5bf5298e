"""keras-bn's speed figures: medians of alternating runs, with the machine they ran on.

Usage (TensorFlow backend, from the repository root, MNIST in KERAS_BN_MNIST_DIR):

    python benchmarks/bench.py                  # every figure
    python benchmarks/bench.py --only step,eval # some of them

Figures:

- experiment: the whole `keras-bn --variants manual` command (start-up included) and the
  seed notebook's own TF1 code (`benchmarks/notebook_tf1.py`), run alternately as
  subprocesses; the ratio of the medians. The notebook side needs `tf_keras`.
- step: one training step (`train_on_batch`, batch 32) of `deep_mnist_model(bn="manual")`
  and of `bn="keras"`, in blocks run alternately; the ratio manual / keras.
- eval: images per second when `NotebookLogger` evaluates the 5,000 validation images.
- fold: inference on the 5,000 validation images with `deep_mnist_model(bn="manual")`
  and with `fold_batch_norm` of it, alternately; the speed-up.

This is a script, not a test: timings on a shared machine are noisy, so it reports
medians and spreads and asserts nothing.
"""

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parent.parent
FIGURES = ("experiment", "step", "eval", "fold")


def cpu_name():
    """Returns the CPU model from /proc/cpuinfo, or what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cores():
    """Returns the number of cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count()


def describe(samples, unit):
    """Formats the median and the range of `samples`."""
    return (
        f"median {statistics.median(samples):.3f} {unit} "
        f"(min {min(samples):.3f}, max {max(samples):.3f}, n={len(samples)})"
    )


def timed_command(command):
    """Runs `command`, failing loudly, and returns its wall time in seconds."""
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return seconds


def bench_experiment(repeats):
    """Times the whole keras-bn command against the notebook's TF1 code, alternately."""
    keras_bn_cli = [sys.executable, "-m", "keras_bn.experiment.cli", "--variants", "manual", "--quiet"]
    notebook = [sys.executable, str(ROOT / "benchmarks" / "notebook_tf1.py")]
    ours, theirs = [], []
    with tempfile.TemporaryDirectory() as out:
        for _ in range(repeats):
            ours.append(timed_command([*keras_bn_cli, "--out", os.path.join(out, str(len(ours)))]))
            theirs.append(timed_command(notebook))
    print(f"experiment  keras-bn --variants manual : {describe(ours, 's')}")
    print(f"experiment  notebook's own TF1 code    : {describe(theirs, 's')}")
    print(f"experiment  ratio keras-bn / notebook  : {statistics.median(ours) / statistics.median(theirs):.2f}")


def _mnist():
    """Loads MNIST once for the in-process figures."""
    from keras_bn import load_mnist

    return load_mnist()


def bench_step(repeats, block=50):
    """Times training steps of the manual and the Keras BN model in alternating blocks."""
    import keras

    from keras_bn import BatchFeeder, compile_like_notebook, deep_mnist_model

    data = _mnist()
    feeder = BatchFeeder(data.train.images, data.train.labels, 32, seed=0)
    models = {}
    for variant in ("keras", "manual"):
        keras.utils.set_random_seed(0)
        models[variant] = compile_like_notebook(deep_mnist_model(bn=variant))
        for i in range(5):  # trace and warm up
            models[variant].train_on_batch(*feeder.batch(i))
    times = {variant: [] for variant in models}
    for r in range(repeats):
        for variant, model in models.items():
            batches = [feeder.batch(r * block + i) for i in range(block)]
            started = time.perf_counter()
            for x, y in batches:
                model.train_on_batch(x, y)
            times[variant].append((time.perf_counter() - started) / block * 1000)
    for variant, samples in times.items():
        print(f"step        bn={variant:6s} train step    : {describe(samples, 'ms')}")
    ratio = statistics.median(times["manual"]) / statistics.median(times["keras"])
    print(f"step        ratio manual / keras       : {ratio:.3f}")


def bench_eval(repeats):
    """Times NotebookLogger's evaluation of the 5,000 validation images."""
    import keras

    from keras_bn import NotebookLogger, compile_like_notebook, deep_mnist_model

    data = _mnist()
    keras.utils.set_random_seed(0)
    model = compile_like_notebook(deep_mnist_model(bn="manual"))
    logger = NotebookLogger(None, data.validation, data.test)
    logger.set_model(model)
    logger.evaluate(*data.validation)  # trace
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        logger.evaluate(*data.validation)
        samples.append(len(data.validation.images) / (time.perf_counter() - started))
    print(f"eval        5,000 validation images    : {describe(samples, 'images/s')}")


def bench_fold(repeats):
    """Times inference of the manual BN model against its folded copy, alternately."""
    import keras

    from keras_bn import deep_mnist_model, fold_batch_norm

    data = _mnist()
    keras.utils.set_random_seed(0)
    model = deep_mnist_model(bn="manual")
    model(data.train.images[:256], training=True)
    folded = fold_batch_norm(model)
    images = data.validation.images
    times = {"unfolded": [], "folded": []}
    for m in (model, folded):
        m.predict(images[:1000], batch_size=1000, verbose=0)
    for _ in range(repeats):
        for name, m in (("unfolded", model), ("folded", folded)):
            started = time.perf_counter()
            m.predict(images, batch_size=1000, verbose=0)
            times[name].append(len(images) / (time.perf_counter() - started))
    for name, samples in times.items():
        print(f"fold        {name:8s} inference         : {describe(samples, 'images/s')}")
    speedup = statistics.median(times["folded"]) / statistics.median(times["unfolded"])
    print(f"fold        speed-up folded / unfolded : {speedup:.2f}x")


def main():
    """Parses the arguments, prints the machine and runs the chosen figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(FIGURES), help=f"comma-separated subset of {FIGURES}")
    parser.add_argument("--repeats", type=int, default=5, help="alternating rounds per figure")
    parser.add_argument(
        "--experiment-repeats", type=int, default=3, help="rounds of the whole-command figure"
    )
    args = parser.parse_args()
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(FIGURES))
    if unknown:
        parser.error(f"--only takes names from {', '.join(FIGURES)}. Received: {unknown}")

    import keras
    import tensorflow as tf

    print(f"machine     {cpu_name()}, {cores()} cores, Python {platform.python_version()}")
    print(f"software    TensorFlow {tf.__version__}, Keras {keras.__version__}, backend {keras.backend.backend()}")
    if "experiment" in chosen:
        bench_experiment(args.experiment_repeats)
    if "step" in chosen:
        bench_step(args.repeats)
    if "eval" in chosen:
        bench_eval(args.repeats)
    if "fold" in chosen:
        bench_fold(args.repeats)


if __name__ == "__main__":
    main()
