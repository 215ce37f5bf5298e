"""keras-bn's speed figures: medians of alternating runs, with the machine they ran on.

Usage, from the repository root, once per backend:

    python benchmarks/bench.py --backend torch              # train, bn, predict
    python benchmarks/bench.py --backend tensorflow --only experiment,train,bn,predict
    python benchmarks/bench.py --only eval,fold              # TensorFlow, MNIST needed
    python benchmarks/bench.py --backend torch --device gpu  # the same tables on a GPU
    python benchmarks/bench.py --backend jax --only bn --json bn.json

Figures:

- train: one training step (`train_on_batch`, batch 32) of `deep_mnist_model` without
  batch norm, with Keras's layer, and with `ManualBatchNorm` as users get it
  (`fused=None` and the backend's default backward) and hand-written (`fused=False`,
  closed-form backward and autodiff), in blocks run alternately; on the PyTorch
  backend also the same network in plain PyTorch (`benchmarks/plain_torch.py`) without and with `nn.BatchNorm2d`. The
  "BN overhead" is a step with batch norm minus a step without.
- mobilenet: one training step (`train_on_batch`, batch 16) of
  `keras.applications.MobileNetV2` at 96x96, 10 classes, random weights, with Keras's
  batch norm and converted to `ManualBatchNorm` (`fused=None`, `fused=False`) by
  `convert_batch_norm`, alternately, each with the backend's default backward;
  channels-first on PyTorch. Not in the default list.
- bn: forward and backward (input, gamma and beta gradients) of batch norm alone on the
  network's 20 shapes at batch 32, the same four layers, compiled as a training step is (a `tf.function`, a
  jitted JAX function, eager PyTorch), against the backend's own kernel
  (`FusedBatchNormV3`, `torch.nn.functional.batch_norm`; on JAX, which has none, the
  formula in plain `jax.numpy`, jitted).
- shapes: each of the 20 shapes alone, `fused=True` (the kernel) against `fused=False`
  with the backend's default backward and with the closed form, and which path
  `fused=None` takes (on TensorFlow without a GPU it trains small inputs on the
  hand-written path). Not in the default list.
- ghost: the bn figure with `virtual_batch_size=8` (4 ghost batches of the 32),
  `fused=None` (the kernel on TensorFlow and PyTorch; JAX has none) against `fused=False`.
- predict: images per second of `model.predict_on_batch` on 5 batches of 1,000 images.
- experiment (TensorFlow): the whole `keras-bn --variants manual` command (start-up
  included) and the seed notebook's own TF1 code (`benchmarks/notebook_tf1.py`), run
  alternately as subprocesses, seconds. Needs MNIST and `tf_keras`.
- eval: images per second when `NotebookLogger` evaluates the 5,000 validation images,
  and when the notebook's TF1 code does (`notebook_tf1.py --time-eval 3` each round, in
  a process of its own; needs `tf_keras`).
- fold: inference on the 5,000 validation images with `deep_mnist_model(bn="manual")`
  and with `fold_batch_norm` of it, alternately; the speed-up.

train, bn and predict use random images (timings do not depend on the values); the
others need MNIST in KERAS_BN_MNIST_DIR. This is a script, not a test: it asserts
nothing.

Steadiness: each figure runs its configurations in turn, a block of calls each, round
after round (`REPEATS`, after one untimed round; round r starts with the r-th, so none
always follows the same one), and prints per row the median with its spread (half the
interquartile range over the median, "±"), the quartiles and the range. A ratio is the
median of the per-round ratios: both sides of a round ran seconds apart, so a machine
that slows down for a while slows both alike.

Idleness: before the figures (one second with nothing of ours running) and during each
one, `_machine.Watch` reads from /proc how much CPU other processes used, the load
average and the threads per op; a figure taken while the machine was busy gets a
`WARNING` line naming why, the run ends with one, and `--json` records it
(`"busy": true`). Such figures are not to be reported.

`--json PATH` writes every figure (samples, medians, quartiles, ratios, notes), the
machine and the checks; `benchmarks/make_page.py` renders docs/benchmarks.md from it.
The figures live in `_layer_figures.py` (bn, shapes, ghost) and `_run_figures.py`
(experiment, predict, eval, fold), what they share in `_common.py`, the machine and
the idleness check in `_machine.py`; train and mobilenet are here.

Device: the frameworks use a visible GPU by themselves. `--device gpu` says which one
ran the tables, or that none was found and the tables ran on the CPU; `--device cpu`
hides every GPU. The machine line names the device either way.
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
from pathlib import Path

from _common import (
    AUTODIFF,
    CLOSED_FORM,
    IDENTITY,
    KERAS,
    NATIVE,
    PLAIN_BN,
    PLAIN_NO_BN,
    Figure,
    _hand_written,
    _random_batches,
    alternate,
    torch_device,
)
from _machine import (
    Watch,
    choose_device,
    cores,
    cpu_name,
    device_name,
    idle_before,
    limit_threads,
    thread_counts,
    verdict,
)
from _layer_figures import bench_bn, bench_ghost, bench_shapes
from _run_figures import bench_eval, bench_experiment, bench_fold, bench_predict

FIGURES = ("experiment", "train", "mobilenet", "bn", "shapes", "ghost", "predict", "eval", "fold")

DEFAULT_FIGURES = ("train", "bn", "predict")

#: Alternating rounds per figure, after one untimed round: enough that the median of
#: the per-round ratios moves by less than 3% from one run to the next on an idle machine.
REPEATS = {"train": 15, "mobilenet": 9, "bn": 21, "shapes": 7, "ghost": 15, "predict": 9, "eval": 7, "fold": 9}


def _keras_step(bn, hand_written, batches):
    """Returns a function running one `train_on_batch` of `deep_mnist_model(bn)`, built and warmed up.

    `bn` is what `deep_mnist_model` takes, `"identity"`, or `"manual-hand-written"`
    (`ManualBatchNorm(fused=False)`).
    """
    import keras

    from keras_bn import ManualBatchNorm, compile_like_notebook, deep_mnist_model

    custom = {
        # Keras's cost of 20 more layers, with nothing computed in them: the
        # floor under any batch-norm layer's overhead in a Keras model.
        "identity": lambda name, axis=None: keras.layers.Identity(name=name),
        "manual-hand-written": lambda name, axis=-1: ManualBatchNorm(name=name, axis=axis, fused=False),
    }
    with _hand_written(hand_written):
        keras.utils.set_random_seed(0)
        if bn in custom:
            model = deep_mnist_model(
                bn=custom[bn], data_format=deep_mnist_model(bn="manual").get_layer("conv1").data_format
            )
        else:
            model = deep_mnist_model(bn=bn)
        model = compile_like_notebook(model)
    return _warm_step(model, hand_written, batches)


def _warm_step(model, hand_written, batches):
    """Returns a function running one `train_on_batch` of the compiled `model`, after 3 to trace and warm up."""
    with _hand_written(hand_written):
        for x, y in batches[:3]:
            model.train_on_batch(x, y)
    cycle = iter(range(10**9))

    def step():
        x, y = batches[next(cycle) % len(batches)]
        with _hand_written(hand_written):
            model.train_on_batch(x, y)

    return step


def _plain_torch_step(bn, batches):
    """Returns a function running one step of the plain-PyTorch network."""
    import torch

    from benchmarks.plain_torch import plain_torch_model, plain_torch_step

    torch.manual_seed(0)
    device = torch_device()
    model, optimizer, loss_fn = plain_torch_model(bn, device=device)
    tensors = [
        (torch.tensor(x, device=device).permute(0, 3, 1, 2).contiguous(), torch.tensor(y, device=device))
        for x, y in batches
    ]
    cycle = iter(range(10**9))

    def step():
        plain_torch_step(model, optimizer, loss_fn, *tensors[next(cycle) % len(tensors)])

    for _ in range(3):
        step()
    return step

TRAIN_VARIANTS = {
    "no BN": (None, True),
    IDENTITY: ("identity", True),
    KERAS: ("keras", True),
    NATIVE: ("manual", None),  # as users get it: the backend's default backward
    CLOSED_FORM: ("manual-hand-written", True),
    AUTODIFF: ("manual-hand-written", False),
}


def bench_train(repeats, block=10):
    """Times training steps of the network without BN, with Keras's and with keras-bn's, alternately."""
    import keras

    batches = _random_batches(8)
    runners = {name: _keras_step(bn, hand, batches) for name, (bn, hand) in TRAIN_VARIANTS.items()}
    if keras.backend.backend() == "torch":
        runners[PLAIN_NO_BN] = _plain_torch_step(False, batches)
        runners[PLAIN_BN] = _plain_torch_step(True, batches)
    figure = Figure("train", "ms")
    for name, samples in alternate(runners, repeats, block).items():
        figure.add(name, samples)
    for name in (NATIVE, CLOSED_FORM, AUTODIFF):
        figure.ratio(f"{name} / Keras", name, KERAS)
    for name in (CLOSED_FORM, AUTODIFF):
        figure.ratio(f"{NATIVE} / {name}", NATIVE, name)
    medians = {name: statistics.median(samples) for name, samples in figure.rows.items()}
    for base, names in (("no BN", [IDENTITY, KERAS, NATIVE, CLOSED_FORM, AUTODIFF]), (PLAIN_NO_BN, [PLAIN_BN])):
        for name in names:
            if name in medians:
                figure.note(f"BN overhead, {name:26s}: {medians[name] - medians[base]:.1f} ms")
    return figure.report()


def bench_mobilenet(repeats, block=5):
    """Times training steps of MobileNetV2 (96x96, batch 16) with Keras's batch norm and ManualBatchNorm, alternately.

    The three models share one set of initial weights: Keras's model as built, and
    `convert_batch_norm` of it to `ManualBatchNorm` (`fused=None`, `fused=False`).
    On PyTorch it runs channels-first, as `deep_mnist_model` does there.
    """
    import keras
    import numpy as np

    from keras_bn import compile_like_notebook, convert_batch_norm

    layout = "channels_first" if keras.backend.backend() == "torch" else "channels_last"
    shape = (3, 96, 96) if layout == "channels_first" else (96, 96, 3)
    rng = np.random.default_rng(0)
    batches = [(rng.random((16, *shape), dtype="float32"), np.eye(10, dtype="float32")[rng.integers(0, 10, 16)])
               for _ in range(4)]
    before = keras.config.image_data_format()
    keras.config.set_image_data_format(layout)
    try:
        keras.utils.set_random_seed(0)
        # No softmax: the notebook's loss, as in the train figure, takes logits.
        keras_model = keras.applications.MobileNetV2(
            input_shape=shape, weights=None, classes=10, classifier_activation=None)
        models = {
            KERAS: keras_model,
            NATIVE: convert_batch_norm(keras_model, to="manual"),
            "ManualBatchNorm, fused=False": convert_batch_norm(keras_model, to="manual", fused=False),
        }
        runners = {name: _warm_step(compile_like_notebook(model), None, batches) for name, model in models.items()}
    finally:
        keras.config.set_image_data_format(before)
    figure = Figure("mobilenet", "ms")
    figure.note(f"MobileNetV2 96x96x3, batch 16, {layout}, train_on_batch, "
                f"{sum(type(l).__name__ == 'BatchNormalization' for l in keras_model.layers)} batch norms")
    for name, samples in alternate(runners, repeats, block).items():
        figure.add(name, samples)
    for name in (NATIVE, "ManualBatchNorm, fused=False"):
        figure.ratio(f"{name} / Keras", name, KERAS)
    return figure.report()


def _parse_args():
    """Returns the command line's arguments, with `chosen`, the figures it names, checked."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("tensorflow", "jax", "torch"), default=None,
                        help="Keras backend (default: KERAS_BACKEND, else tensorflow)")
    parser.add_argument("--only", default=",".join(DEFAULT_FIGURES), help=f"comma-separated subset of {FIGURES}")
    parser.add_argument("--repeats", type=_positive, default=None,
                        help=f"alternating rounds per figure (default: {REPEATS})")
    parser.add_argument("--block", type=_positive, default=None,
                        help="calls per runner and round (default: each figure's, 1 to 10)")
    parser.add_argument("--experiment-repeats", type=_positive, default=5,
                        help="alternated pairs of the whole-command figure")
    parser.add_argument("--experiment-batches", type=_positive, default=800,
                        help="training batches of the whole-command figure (the notebook's 800)")
    parser.add_argument("--device", choices=("auto", "gpu", "cpu"), default="auto",
                        help="gpu: say which GPU ran the tables, or that none was found; cpu: hide the GPUs")
    parser.add_argument("--threads", type=_positive, default=None,
                        help="threads per op (default: the framework's, all cores); 1 on a busy machine")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH",
                        help="also write the figures, the machine and the idleness checks to PATH")
    args = parser.parse_args()
    args.chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(args.chosen) - set(FIGURES))
    if unknown:
        parser.error(f"--only takes names from {', '.join(FIGURES)}. Received: {unknown}")
    return args


def _positive(text):
    """Returns `text` as a positive int, or raises argparse's error naming the rule."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer. Received: {text!r}")
    return value


def _start_backend(args):
    """Sets the backend, the device and the threads before the framework starts; returns the backend's name."""
    os.environ["KERAS_BACKEND"] = args.backend or os.environ.get("KERAS_BACKEND", "tensorflow")
    choose_device(args.device)
    if args.threads == 1:
        # Before any framework starts: XLA reads its flags once.
        os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false"

    import keras

    if args.threads:
        limit_threads(keras.backend.backend(), args.threads)
    return keras.backend.backend()


def _machine(backend, args):
    """Prints the command, the machine, the software versions and the device; returns them as a dict."""
    import keras

    framework = __import__(backend)
    record = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]), "date": datetime.date.today().isoformat(),
        "cpu": cpu_name(), "cores": cores(), "python": platform.python_version(), "keras": keras.__version__,
        "backend": backend, "framework": framework.__version__, "device": device_name(backend),
        "threads": thread_counts(backend), "threads_per_op": args.threads or "default",
    }
    print(f"command     {record['command']}")
    print(f"machine     {record['cpu']}, {record['cores']} cores, Python {record['python']}, "
          f"load average {os.getloadavg()[0]:.1f}, threads per op {record['threads_per_op']}")
    print(f"threads     " + ", ".join(f"{name} {count}" for name, count in record["threads"].items()))
    print(f"software    Keras {record['keras']}, backend {backend} {record['framework']}")
    print(f"device      {record['device']}")
    if args.device == "gpu" and not record["device"].startswith("GPU"):
        print("device      --device gpu: no GPU found, so these tables ran on the CPU")
    return record


def main():
    """Checks the machine is idle, runs the chosen figures, each watched, and says whether to trust them."""
    args = _parse_args()
    before = idle_before()  # before any framework starts: what the others do without us
    backend = _start_backend(args)
    machine = _machine(backend, args)
    print(verdict("before", before))

    def rounds(name):
        return args.repeats or REPEATS[name]

    def block(name, default):
        return args.block or default

    figures = {
        "experiment": lambda: bench_experiment(args.experiment_repeats, args.experiment_batches),
        "train": lambda: bench_train(rounds("train"), block("train", 10)),
        "mobilenet": lambda: bench_mobilenet(rounds("mobilenet"), block("mobilenet", 5)),
        "bn": lambda: bench_bn(rounds("bn"), block("bn", 10)),
        "shapes": lambda: bench_shapes(rounds("shapes"), block("shapes", 5)),
        "ghost": lambda: bench_ghost(rounds("ghost"), block("ghost", 10)),
        "predict": lambda: bench_predict(rounds("predict")),
        "eval": lambda: bench_eval(rounds("eval")),
        "fold": lambda: bench_fold(rounds("fold")),
    }
    records = []
    for name in FIGURES:  # in this order, whatever the order of --only
        if name in args.chosen:
            watch = Watch()
            figure = figures[name]()
            records.append({**figure.record(), "idle": watch.check(thread_counts(backend))})
            print(verdict(f"during {name}", records[-1]["idle"]))
    busy = before["busy"] or any(record["idle"]["busy"] for record in records)
    print(f"load        average at the end {os.getloadavg()[0]:.1f}")
    print("WARNING     the machine was busy (above): do not report these figures" if busy
          else "idle        the machine was idle before and during every figure")
    if args.json:
        args.json.write_text(json.dumps(
            {"machine": machine, "before": before, "figures": records, "busy": busy}, indent=1))


if __name__ == "__main__":
    main()
