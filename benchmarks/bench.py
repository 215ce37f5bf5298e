"""keras-bn's speed figures: medians of alternating runs, with the machine they ran on.

Usage, from the repository root, once per backend:

    python benchmarks/bench.py --backend torch              # train, bn, predict
    python benchmarks/bench.py --backend tensorflow --only experiment,train,bn,predict
    python benchmarks/bench.py --only eval,fold              # TensorFlow, MNIST needed
    python benchmarks/bench.py --backend torch --device gpu  # the same tables on a GPU

Figures:

- train: one training step (`train_on_batch`, batch 32) of `deep_mnist_model` without
  batch norm, with Keras's layer, and with `ManualBatchNorm` as users get it
  (`fused=None` and the backend's default backward) and hand-written (`fused=False`,
  closed-form backward and autodiff), in blocks run alternately; on the PyTorch backend also the same network in
  plain PyTorch (`benchmarks/plain_torch.py`) without and with `nn.BatchNorm2d`. The
  "BN overhead" is a step with batch norm minus a step without.
- mobilenet: one training step (`train_on_batch`, batch 16) of
  `keras.applications.MobileNetV2` at 96x96, 10 classes, random weights, with Keras's
  batch norm and converted to `ManualBatchNorm` (`fused=None`, `fused=False`) by
  `convert_batch_norm`, alternately, each with the backend's default backward;
  channels-first on PyTorch. Not in the default list.
- bn: forward and backward (input, gamma and beta gradients) of batch norm alone on the
  network's 20 shapes at batch 32, the same four layers, compiled as a training step is (a `tf.function`, a
  jitted JAX function, eager PyTorch), against the backend's own kernel
  (`FusedBatchNormV3`, `torch.nn.functional.batch_norm`; Keras's layer on JAX).
- shapes: each of the 20 shapes alone, `fused=True` (the kernel) against `fused=False`
  with the backend's default backward and with the closed form, and which path
  `fused=None` takes (on TensorFlow without a GPU it trains small inputs on the
  hand-written path). Not in the default list.
- ghost: the bn figure with `virtual_batch_size=8` (4 ghost batches of the 32),
  `fused=None` (the kernel on TensorFlow and PyTorch; JAX has none) against `fused=False`.
- predict: images per second of `model.predict` on 5,000 images, batches of 1,000.
- experiment (TensorFlow): the whole `keras-bn --variants manual` command (start-up
  included) and the seed notebook's own TF1 code (`benchmarks/notebook_tf1.py`), run
  alternately as subprocesses; the ratio of the medians. Needs MNIST and `tf_keras`.
- eval: images per second when `NotebookLogger` evaluates the 5,000 validation images,
  and when the notebook's TF1 code does (`notebook_tf1.py --time-eval`; needs `tf_keras`).
- fold: inference on the 5,000 validation images with `deep_mnist_model(bn="manual")`
  and with `fold_batch_norm` of it, alternately; the speed-up.

train, bn and predict use random images (timings do not depend on the values); the
others need MNIST in KERAS_BN_MNIST_DIR. This is a script, not a test: timings on a
shared machine are noisy, so it reports medians and spreads and asserts nothing. The
figures live in `_layer_figures.py` (bn, shapes, ghost) and `_run_figures.py` (experiment,
predict, eval, fold), what they share in `_common.py`; train and mobilenet are here.

Device: the frameworks use a visible GPU by themselves. `--device gpu` says which one
ran the tables, or that none was found and the tables ran on the CPU; `--device cpu`
hides every GPU. The machine line names the device either way.
"""

import argparse
import os
import platform
import statistics
import sys
from pathlib import Path

from _common import (
    AUTODIFF,
    CLOSED_FORM,
    NATIVE,
    _hand_written,
    _random_batches,
    alternate,
    choose_device,
    cores,
    cpu_name,
    describe,
    device_name,
    limit_threads,
    torch_device,
)
from _layer_figures import bench_bn, bench_ghost, bench_shapes
from _run_figures import bench_eval, bench_experiment, bench_fold, bench_predict

FIGURES = ("experiment", "train", "mobilenet", "bn", "shapes", "ghost", "predict", "eval", "fold")

DEFAULT_FIGURES = ("train", "bn", "predict")


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
    "keras.layers.Identity in place of BN": ("identity", True),
    "Keras BatchNormalization": ("keras", True),
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
        runners["plain PyTorch, no BN"] = _plain_torch_step(False, batches)
        runners["plain PyTorch, nn.BatchNorm2d"] = _plain_torch_step(True, batches)
    times = alternate(runners, repeats, block)
    medians = {name: statistics.median(samples) for name, samples in times.items()}
    for name, samples in times.items():
        print(f"train       {name:38s}: {describe(samples, 'ms')}")
    for base, names in (
        ("no BN", ["keras.layers.Identity in place of BN", "Keras BatchNormalization", NATIVE, CLOSED_FORM, AUTODIFF]),
        ("plain PyTorch, no BN", ["plain PyTorch, nn.BatchNorm2d"]),
    ):
        for name in names:
            if name in medians:
                print(f"train       BN overhead, {name:26s}: {medians[name] - medians[base]:.1f} ms")
    for name in (NATIVE, CLOSED_FORM, AUTODIFF):
        ratio = medians[name] / medians["Keras BatchNormalization"]
        print(f"train       ratio {name} / Keras   : {ratio:.3f}")
    for name in (CLOSED_FORM, AUTODIFF):
        print(f"train       ratio {NATIVE} / {name}: {medians[NATIVE] / medians[name]:.3f}")


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
            "Keras BatchNormalization": keras_model,
            NATIVE: convert_batch_norm(keras_model, to="manual"),
            "ManualBatchNorm, fused=False": convert_batch_norm(keras_model, to="manual", fused=False),
        }
        runners = {name: _warm_step(compile_like_notebook(model), None, batches) for name, model in models.items()}
    finally:
        keras.config.set_image_data_format(before)
    times = alternate(runners, repeats, block)
    print(f"mobilenet   MobileNetV2 96x96x3, batch 16, {layout}, train_on_batch, "
          f"{sum(type(l).__name__ == 'BatchNormalization' for l in keras_model.layers)} batch norms")
    for name, samples in times.items():
        print(f"mobilenet   {name:38s}: {describe(samples, 'ms')}")
    keras_median = statistics.median(times["Keras BatchNormalization"])
    for name in (NATIVE, "ManualBatchNorm, fused=False"):
        print(f"mobilenet   ratio {name} / Keras: {statistics.median(times[name]) / keras_median:.3f}")


def _parse_args():
    """Returns the command line's arguments, with `chosen`, the figures it names, checked."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("tensorflow", "jax", "torch"), default=None,
                        help="Keras backend (default: KERAS_BACKEND, else tensorflow)")
    parser.add_argument("--only", default=",".join(DEFAULT_FIGURES), help=f"comma-separated subset of {FIGURES}")
    parser.add_argument("--repeats", type=int, default=7, help="alternating rounds per figure")
    parser.add_argument(
        "--experiment-repeats", type=int, default=3, help="rounds of the whole-command figure"
    )
    parser.add_argument("--device", choices=("auto", "gpu", "cpu"), default="auto",
                        help="gpu: say which GPU ran the tables, or that none was found; cpu: hide the GPUs")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads per op (default: the framework's, all cores); 1 on a busy machine")
    args = parser.parse_args()
    args.chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(args.chosen) - set(FIGURES))
    if unknown:
        parser.error(f"--only takes names from {', '.join(FIGURES)}. Received: {unknown}")
    return args


def _start_backend(args):
    """Sets the backend, the device and the threads before the framework starts; returns the backend's name."""
    os.environ["KERAS_BACKEND"] = args.backend or os.environ.get("KERAS_BACKEND", "tensorflow")
    choose_device(args.device)
    if args.threads:
        # Before any framework starts: XLA reads its flags once.
        os.environ["XLA_FLAGS"] = (
            os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false"
            if args.threads == 1 else os.environ.get("XLA_FLAGS", "")
        )

    import keras

    if args.threads:
        limit_threads(keras.backend.backend(), args.threads)
    return keras.backend.backend()


def _print_machine(backend, args):
    """Prints the command, the machine, the software versions and the device."""
    import keras

    versions = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}
    framework = __import__(versions[backend])
    print(f"command     {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"machine     {cpu_name()}, {cores()} cores, Python {platform.python_version()}, "
          f"load average {os.getloadavg()[0]:.1f}, threads per op {args.threads or 'default'}")
    print(f"software    Keras {keras.__version__}, backend {backend} {framework.__version__}")
    device = device_name(backend)
    print(f"device      {device}")
    if args.device == "gpu" and not device.startswith("GPU"):
        print("device      --device gpu: no GPU found, so these tables ran on the CPU")


def main():
    """Parses the arguments, prints the machine and runs the chosen figures."""
    args = _parse_args()
    backend = _start_backend(args)
    _print_machine(backend, args)
    figures = {
        "experiment": lambda: bench_experiment(args.experiment_repeats),
        "train": lambda: bench_train(args.repeats),
        "mobilenet": lambda: bench_mobilenet(args.repeats),
        "bn": lambda: bench_bn(args.repeats),
        "shapes": lambda: bench_shapes(args.repeats),
        "ghost": lambda: bench_ghost(args.repeats),
        "predict": lambda: bench_predict(args.repeats),
        "eval": lambda: bench_eval(args.repeats),
        "fold": lambda: bench_fold(args.repeats),
    }
    for name in FIGURES:  # in this order, whatever the order of --only
        if name in args.chosen:
            figures[name]()
    print(f"load        average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
