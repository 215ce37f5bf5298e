"""keras-bn's speed figures: medians of alternating runs, with the machine they ran on.

Usage, from the repository root, once per backend:

    python benchmarks/bench.py --backend torch              # train, bn, predict
    python benchmarks/bench.py --backend tensorflow --only experiment,train,bn,predict
    python benchmarks/bench.py --only eval,fold              # TensorFlow, MNIST needed

Figures:

- train: one training step (`train_on_batch`, batch 32) of `deep_mnist_model` without
  batch norm, with Keras's layer, and with `ManualBatchNorm` (closed-form backward and
  autodiff), in blocks run alternately; on the PyTorch backend also the same network in
  plain PyTorch (`benchmarks/plain_torch.py`) without and with `nn.BatchNorm2d`. The
  "BN overhead" is a step with batch norm minus a step without.
- bn: forward and backward (input, gamma and beta gradients) of batch norm alone on the
  network's 20 shapes at batch 32, compiled as a training step is (a `tf.function`, a
  jitted JAX function, eager PyTorch), against the backend's own kernel
  (`FusedBatchNormV3`, `torch.nn.functional.batch_norm`; Keras's layer on JAX).
- predict: images per second of `model.predict` on 5,000 images, batches of 1,000.
- experiment (TensorFlow): the whole `keras-bn --variants manual` command (start-up
  included) and the seed notebook's own TF1 code (`benchmarks/notebook_tf1.py`), run
  alternately as subprocesses; the ratio of the medians. Needs MNIST and `tf_keras`.
- eval: images per second when `NotebookLogger` evaluates the 5,000 validation images.
- fold: inference on the 5,000 validation images with `deep_mnist_model(bn="manual")`
  and with `fold_batch_norm` of it, alternately; the speed-up.

train, bn and predict use random images (timings do not depend on the values); the
others need MNIST in KERAS_BN_MNIST_DIR. This is a script, not a test: timings on a
shared machine are noisy, so it reports medians and spreads and asserts nothing.
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

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
FIGURES = ("experiment", "train", "bn", "predict", "eval", "fold")
DEFAULT_FIGURES = ("train", "bn", "predict")
BATCH = 32


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


def limit_threads(backend, threads):
    """Makes the backend (and PyTorch, for the plain reference) run ops on `threads` threads."""
    import torch

    torch.set_num_threads(threads)
    if backend == "tensorflow":
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)


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


def alternate(runners, repeats, block):
    """Runs each `runners[name]()` `block` times per round, alternating, and returns ms per call."""
    times = {name: [] for name in runners}
    for _ in range(repeats):
        for name, run in runners.items():
            started = time.perf_counter()
            for _ in range(block):
                run()
            times[name].append((time.perf_counter() - started) / block * 1000)
    return times


def _random_batches(count, seed=0):
    """Returns `count` random MNIST-shaped batches `(images, one-hot labels)` of 32."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return [
        (
            rng.random((BATCH, 28, 28, 1), dtype="float32"),
            np.eye(10, dtype="float32")[rng.integers(0, 10, BATCH)],
        )
        for _ in range(count)
    ]


def _hand_written(enabled):
    """The context in which `ManualBatchNorm` uses the closed-form backward (`enabled`) or autodiff."""
    from keras_bn import _gradient

    return _gradient.use_hand_written(enabled)


def _keras_step(bn, hand_written, batches):
    """Returns a function running one `train_on_batch` of `deep_mnist_model(bn)`, built and warmed up."""
    import keras

    from keras_bn import compile_like_notebook, deep_mnist_model

    with _hand_written(hand_written):
        keras.utils.set_random_seed(0)
        if bn == "identity":
            # Keras's cost of 20 more layers, with nothing computed in them: the
            # floor under any batch-norm layer's overhead in a Keras model.
            model = deep_mnist_model(
                bn=lambda name, axis=None: keras.layers.Identity(name=name),
                data_format=deep_mnist_model(bn="manual").get_layer("conv1").data_format,
            )
        else:
            model = deep_mnist_model(bn=bn)
        model = compile_like_notebook(model)
        for x, y in batches[:3]:  # trace and warm up
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
    model, optimizer, loss_fn = plain_torch_model(bn)
    tensors = [(torch.tensor(x).permute(0, 3, 1, 2).contiguous(), torch.tensor(y)) for x, y in batches]
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
    "ManualBatchNorm, closed-form backward": ("manual", True),
    "ManualBatchNorm, autodiff backward": ("manual", False),
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
        ("no BN", ["keras.layers.Identity in place of BN", "Keras BatchNormalization", "ManualBatchNorm, closed-form backward",
                   "ManualBatchNorm, autodiff backward"]),
        ("plain PyTorch, no BN", ["plain PyTorch, nn.BatchNorm2d"]),
    ):
        for name in names:
            if name in medians:
                print(f"train       BN overhead, {name:26s}: {medians[name] - medians[base]:.1f} ms")
    for name in ("ManualBatchNorm, closed-form backward", "ManualBatchNorm, autodiff backward"):
        ratio = medians[name] / medians["Keras BatchNormalization"]
        print(f"train       ratio {name} / Keras   : {ratio:.3f}")


def _bn_shapes():
    """Returns the input shapes of the 20 batch-norm layers of the network at batch 32."""
    from keras_bn import deep_mnist_model

    model = deep_mnist_model(bn="manual")
    return [
        (BATCH, *layer.input.shape[1:]) for layer in model.layers if layer.name.startswith("bn")
    ], model.get_layer("bn1").axis


def _layers_fwd_bwd(make_layer, shapes, hand_written):
    """Returns a function: forward and backward of one fresh layer per shape, as the backend compiles a step."""
    import keras
    import numpy as np

    backend = keras.backend.backend()
    rng = np.random.default_rng(0)
    data = [(rng.normal(size=s).astype("float32"), rng.normal(size=s).astype("float32")) for s in shapes]
    layers = []
    for shape in shapes:
        layer = make_layer(len(shape))
        layer.build(shape)
        layers.append(layer)
    if backend == "tensorflow":
        import tensorflow as tf

        data = [(tf.constant(x), tf.constant(dy)) for x, dy in data]

        @tf.function
        def run():
            total = 0.0
            for layer, (x, dy) in zip(layers, data):
                with tf.GradientTape() as tape:
                    tape.watch(x)
                    y = layer(x, training=True)
                grads = tape.gradient(y, [x, *layer.trainable_variables], output_gradients=dy)
                total += tf.add_n([tf.reduce_sum(g) for g in grads])
            return total

        with _hand_written(hand_written):
            run()
        return lambda: run().numpy()
    if backend == "jax":
        import jax
        import jax.numpy as jnp

        def loss(trainables, frozens, xs):
            total = 0.0
            for layer, t, f, x, (_, dy) in zip(layers, trainables, frozens, xs, data):
                y, _ = layer.stateless_call(t, f, x, training=True)
                total += jnp.sum(y * dy)
            return total

        with _hand_written(hand_written):
            grad = jax.jit(jax.grad(loss, argnums=(0, 2)))
            args = (
                [[v.value for v in l.trainable_variables] for l in layers],
                [[v.value for v in l.non_trainable_variables] for l in layers],
                [jnp.asarray(x) for x, _ in data],
            )
            jax.block_until_ready(grad(*args))
        return lambda: jax.block_until_ready(grad(*args))
    import torch

    data = [(torch.tensor(x, requires_grad=True), torch.tensor(dy)) for x, dy in data]

    def run():
        with _hand_written(hand_written):
            for layer, (x, dy) in zip(layers, data):
                y = layer(x, training=True)
                torch.autograd.grad(y, [x, *(v.value for v in layer.trainable_variables)], dy)

    run()
    return run


def _native_fwd_bwd(shapes, axis):
    """Returns a function: the backend's own batch-norm kernel, forward and backward, on `shapes`."""
    import keras
    import numpy as np

    backend = keras.backend.backend()
    rng = np.random.default_rng(0)
    data = [(rng.normal(size=s).astype("float32"), rng.normal(size=s).astype("float32")) for s in shapes]
    if backend == "tensorflow":
        import tensorflow as tf

        # FusedBatchNormV3 takes 4-D NHWC: the dense layer's (32, 100) becomes (32, 1, 1, 100).
        data = [(tf.constant(x.reshape(s if len(s) == 4 else (s[0], 1, 1, s[1]))),
                 tf.constant(dy.reshape(s if len(s) == 4 else (s[0], 1, 1, s[1])))) for (x, dy), s in zip(data, shapes)]
        params = [(tf.Variable(tf.ones(s[-1])), tf.Variable(tf.zeros(s[-1]))) for s in shapes]
        empty = tf.constant([], tf.float32)

        @tf.function
        def run():
            total = 0.0
            for (x, dy), (scale, offset) in zip(data, params):
                with tf.GradientTape() as tape:
                    tape.watch(x)
                    y = tf.raw_ops.FusedBatchNormV3(
                        x=x, scale=scale, offset=offset, mean=empty, variance=empty,
                        epsilon=1e-3, exponential_avg_factor=1.0, is_training=True,
                    )[0]
                grads = tape.gradient(y, [x, scale, offset], output_gradients=dy)
                total += tf.add_n([tf.reduce_sum(g) for g in grads])
            return total

        run()
        return lambda: run().numpy()
    if backend == "torch":
        import torch
        import torch.nn.functional as F

        tensors = [(torch.tensor(x, requires_grad=True), torch.tensor(dy)) for x, dy in data]
        channel = [s[axis] if len(s) == 4 else s[-1] for s in shapes]
        params = [(torch.ones(c, requires_grad=True), torch.zeros(c, requires_grad=True),
                   torch.zeros(c), torch.ones(c)) for c in channel]
        if axis != 1:
            return None  # F.batch_norm is NCHW only

        def run():
            for (x, dy), (w, b, rm, rv) in zip(tensors, params):
                y = F.batch_norm(x, rm, rv, w, b, training=True, momentum=0.01, eps=1e-3)
                torch.autograd.grad(y, [x, w, b], dy)

        run()
        return run
    return None  # JAX: Keras's layer is the reference


def bench_bn(repeats, block=10):
    """Times batch norm alone, forward and backward, on the network's 20 shapes, alternately."""
    import keras

    from keras_bn import ManualBatchNorm

    shapes, conv_axis = _bn_shapes()

    def axis_for(rank):
        return conv_axis if rank == 4 else -1

    runners = {
        "Keras BatchNormalization": _layers_fwd_bwd(
            lambda r: keras.layers.BatchNormalization(axis=axis_for(r)), shapes, True),
        "ManualBatchNorm, closed-form backward": _layers_fwd_bwd(
            lambda r: ManualBatchNorm(axis=axis_for(r)), shapes, True),
        "ManualBatchNorm, autodiff backward": _layers_fwd_bwd(
            lambda r: ManualBatchNorm(axis=axis_for(r)), shapes, False),
    }
    native = _native_fwd_bwd(shapes, conv_axis % 4)
    if native is not None:
        runners["native kernel"] = native
    times = alternate(runners, repeats, block)
    print(f"bn          20 shapes, {shapes[0]} .. {shapes[-1]}")
    for name, samples in times.items():
        print(f"bn          {name:38s}: {describe(samples, 'ms')}")


def bench_predict(repeats):
    """Times `model.predict` on 5,000 random images without BN, with Keras's and with keras-bn's, alternately."""
    import keras
    import numpy as np

    from keras_bn import deep_mnist_model

    images = np.random.default_rng(0).random((5000, 28, 28, 1), dtype="float32")
    models = {}
    for name, bn in (("no BN", None), ("Keras BatchNormalization", "keras"), ("ManualBatchNorm", "manual")):
        keras.utils.set_random_seed(0)
        models[name] = deep_mnist_model(bn=bn)
        models[name].predict(images[:1000], batch_size=1000, verbose=0)
    times = alternate(
        {name: (lambda m=m: m.predict(images, batch_size=1000, verbose=0)) for name, m in models.items()},
        repeats,
        1,
    )
    for name, samples in times.items():
        rates = [len(images) / (ms / 1000) for ms in samples]
        print(f"predict     {name:38s}: {describe(rates, 'images/s')}")


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
    parser.add_argument("--backend", choices=("tensorflow", "jax", "torch"), default=None,
                        help="Keras backend (default: KERAS_BACKEND, else tensorflow)")
    parser.add_argument("--only", default=",".join(DEFAULT_FIGURES), help=f"comma-separated subset of {FIGURES}")
    parser.add_argument("--repeats", type=int, default=7, help="alternating rounds per figure")
    parser.add_argument(
        "--experiment-repeats", type=int, default=3, help="rounds of the whole-command figure"
    )
    parser.add_argument("--threads", type=int, default=None,
                        help="threads per op (default: the framework's, all cores); 1 on a busy machine")
    args = parser.parse_args()
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(FIGURES))
    if unknown:
        parser.error(f"--only takes names from {', '.join(FIGURES)}. Received: {unknown}")
    os.environ["KERAS_BACKEND"] = args.backend or os.environ.get("KERAS_BACKEND", "tensorflow")
    if args.threads:
        # Before any framework starts: XLA reads its flags once.
        os.environ["XLA_FLAGS"] = (
            os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false"
            if args.threads == 1 else os.environ.get("XLA_FLAGS", "")
        )

    import keras

    if args.threads:
        limit_threads(keras.backend.backend(), args.threads)

    backend = keras.backend.backend()
    versions = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}
    framework = __import__(versions[backend])
    print(f"command     {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"machine     {cpu_name()}, {cores()} cores, Python {platform.python_version()}, "
          f"load average {os.getloadavg()[0]:.1f}, threads per op {args.threads or 'default'}")
    print(f"software    Keras {keras.__version__}, backend {backend} {framework.__version__}")
    if "experiment" in chosen:
        bench_experiment(args.experiment_repeats)
    if "train" in chosen:
        bench_train(args.repeats)
    if "bn" in chosen:
        bench_bn(args.repeats)
    if "predict" in chosen:
        bench_predict(args.repeats)
    if "eval" in chosen:
        bench_eval(args.repeats)
    if "fold" in chosen:
        bench_fold(args.repeats)
    print(f"load        average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
