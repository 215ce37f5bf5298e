"""keras-bn's speed figures: medians of alternating runs, with the machine they ran on.

Usage, from the repository root, once per backend:

    python benchmarks/bench.py --backend torch              # train, bn, predict
    python benchmarks/bench.py --backend tensorflow --only experiment,train,bn,predict
    python benchmarks/bench.py --only eval,fold              # TensorFlow, MNIST needed
    python benchmarks/bench.py --backend torch --device gpu  # the same tables on a GPU

Figures:

- train: one training step (`train_on_batch`, batch 32) of `deep_mnist_model` without
  batch norm, with Keras's layer, and with `ManualBatchNorm` on the framework's kernel
  (`fused=None`, the default) and hand-written (`fused=False`, closed-form backward and
  autodiff), in blocks run alternately; on the PyTorch backend also the same network in
  plain PyTorch (`benchmarks/plain_torch.py`) without and with `nn.BatchNorm2d`. The
  "BN overhead" is a step with batch norm minus a step without.
- mobilenet: one training step (`train_on_batch`, batch 16) of
  `keras.applications.MobileNetV2` at 96x96, 10 classes, random weights, with Keras's
  batch norm and converted to `ManualBatchNorm` (`fused=None`, `fused=False`) by
  `convert_batch_norm`, alternately; channels-first on PyTorch. Not in the default list.
- bn: forward and backward (input, gamma and beta gradients) of batch norm alone on the
  network's 20 shapes at batch 32, the same four layers, compiled as a training step is (a `tf.function`, a
  jitted JAX function, eager PyTorch), against the backend's own kernel
  (`FusedBatchNormV3`, `torch.nn.functional.batch_norm`; Keras's layer on JAX).
- ghost: the bn figure with `virtual_batch_size=8` (4 ghost batches of the 32),
  `fused=None` (PyTorch's kernel; the hand-written path elsewhere) against `fused=False`.
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

Device: the frameworks use a visible GPU by themselves. `--device gpu` says which one
ran the tables, or that none was found and the tables ran on the CPU; `--device cpu`
hides every GPU. The machine line names the device either way.
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
FIGURES = ("experiment", "train", "mobilenet", "bn", "ghost", "predict", "eval", "fold")
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


def choose_device(device):
    """Hides the GPUs for `--device cpu`; call before any framework is imported."""
    if device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""


def device_name(backend):
    """Returns the device the tables run on, in words: the GPU's name, or the CPU's."""
    name = None
    if backend == "torch":
        import torch

        if torch.cuda.is_available():
            name = f"GPU {torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})"
    elif backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            details = tf.config.experimental.get_device_details(gpus[0])
            name = f"GPU {details.get('device_name', gpus[0].name)}"
    else:
        import jax

        gpus = [d for d in jax.devices() if d.platform == "gpu"]
        if gpus:
            name = f"GPU {gpus[0].device_kind}"
    return name or f"CPU {cpu_name()} (no GPU found)"


def synchronize():
    """Waits for the GPU's queued work, so that a timing covers it (PyTorch runs it asynchronously)."""
    import keras

    if keras.backend.backend() == "torch":
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()


def torch_device():
    """Returns the device Keras's PyTorch backend puts its tensors on."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


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
    # The console script users run (`_keras_bn_cli.main`), not `python -m`, which imports
    # the package before the command can set up its import.
    keras_bn_cli = [sys.executable, "-c", "import sys, _keras_bn_cli; sys.exit(_keras_bn_cli.main())",
                    "--variants", "manual", "--quiet"]
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
            synchronize()
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


NATIVE = "ManualBatchNorm, fused=None (kernel)"
CLOSED_FORM = "ManualBatchNorm, fused=False, closed-form"
AUTODIFF = "ManualBatchNorm, fused=False, autodiff"
TRAIN_VARIANTS = {
    "no BN": (None, True),
    "keras.layers.Identity in place of BN": ("identity", True),
    "Keras BatchNormalization": ("keras", True),
    NATIVE: ("manual", True),
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
        runners = {name: _warm_step(compile_like_notebook(model), True, batches) for name, model in models.items()}
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

    device = torch_device()
    data = [(torch.tensor(x, device=device, requires_grad=True), torch.tensor(dy, device=device)) for x, dy in data]

    # As a training step does: the trainable tensors are collected once, not per layer call.
    params = [[v.value for v in layer.trainable_variables] for layer in layers]

    def run():
        with _hand_written(hand_written):
            for layer, (x, dy), p in zip(layers, data, params):
                y = layer(x, training=True)
                torch.autograd.grad(y, [x, *p], dy)

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

        device = torch_device()
        tensors = [(torch.tensor(x, device=device, requires_grad=True), torch.tensor(dy, device=device))
                   for x, dy in data]
        channel = [s[axis] if len(s) == 4 else s[-1] for s in shapes]
        params = [(torch.ones(c, device=device, requires_grad=True), torch.zeros(c, device=device, requires_grad=True),
                   torch.zeros(c, device=device), torch.ones(c, device=device)) for c in channel]
        if axis != 1:
            return None  # F.batch_norm is NCHW only

        def run():
            for (x, dy), (w, b, rm, rv) in zip(tensors, params):
                y = F.batch_norm(x, rm, rv, w, b, training=True, momentum=0.01, eps=1e-3)
                torch.autograd.grad(y, [x, w, b], dy)

        run()
        return run
    return _jax_fwd_bwd(data)


def _jax_fwd_bwd(data):
    """Returns a function: batch norm in plain `jax.numpy` (two passes), jitted, forward and backward.

    JAX has no batch-norm kernel; this is the floor of what XLA makes of the formula
    with no Keras layer around it. Prints how many fusions XLA compiled it into.
    """
    import jax
    import jax.numpy as jnp

    def loss(params, xs):
        total = 0.0
        for (gamma, beta), x, (_, dy) in zip(params, xs, data):
            axes = tuple(range(x.ndim - 1))
            mean = jnp.mean(x, axis=axes)
            centered = x - mean
            var = jnp.mean(centered * centered, axis=axes)
            total += jnp.sum((centered * jax.lax.rsqrt(var + 1e-3) * gamma + beta) * dy)
        return total

    params = [(jnp.ones(x.shape[-1]), jnp.zeros(x.shape[-1])) for x, _ in data]
    xs = [jnp.asarray(x) for x, _ in data]
    grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
    fusions = grad.lower(params, xs).compile().as_text().count("fusion(")
    print(f"bn          plain jax.numpy: {fusions} fusions in the compiled forward and backward")
    jax.block_until_ready(grad(params, xs))
    return lambda: jax.block_until_ready(grad(params, xs))


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
        NATIVE: _layers_fwd_bwd(lambda r: ManualBatchNorm(axis=axis_for(r)), shapes, True),
        CLOSED_FORM: _layers_fwd_bwd(
            lambda r: ManualBatchNorm(axis=axis_for(r), fused=False), shapes, True),
        AUTODIFF: _layers_fwd_bwd(
            lambda r: ManualBatchNorm(axis=axis_for(r), fused=False), shapes, False),
    }
    native = _native_fwd_bwd(shapes, conv_axis % 4)
    if native is not None:
        runners["native kernel" if keras.backend.backend() != "jax" else "plain jax.numpy (no kernel)"] = native
    times = alternate(runners, repeats, block)
    medians = {name: statistics.median(samples) for name, samples in times.items()}
    print(f"bn          20 shapes, {shapes[0]} .. {shapes[-1]}")
    for name, samples in times.items():
        print(f"bn          {name:38s}: {describe(samples, 'ms')}")
    for name in (NATIVE, CLOSED_FORM, AUTODIFF):
        for base in ("native kernel", "plain jax.numpy (no kernel)", "Keras BatchNormalization"):
            if base in medians:
                print(f"bn          ratio {name} / {base}: {medians[name] / medians[base]:.3f}")


def bench_ghost(repeats, block=10):
    """Times ghost batch norm alone, forward and backward, on the network's 20 shapes, alternately."""
    from keras_bn import ManualBatchNorm

    shapes, conv_axis = _bn_shapes()

    def make(fused):
        return lambda r: ManualBatchNorm(axis=conv_axis if r == 4 else -1, virtual_batch_size=8, fused=fused)

    runners = {name: _layers_fwd_bwd(make(fused), shapes, True)
               for name, fused in ((NATIVE, None), (CLOSED_FORM, False))}
    times = alternate(runners, repeats, block)
    for name, samples in times.items():
        print(f"ghost       {name:38s}: {describe(samples, 'ms')}")
    ratio = statistics.median(times[NATIVE]) / statistics.median(times[CLOSED_FORM])
    print(f"ghost       ratio fused=None / fused=False : {ratio:.3f}")


def bench_predict(repeats):
    """Times `model.predict` on 5,000 random images without BN, with Keras's and with keras-bn's, alternately."""
    import keras
    import numpy as np

    from keras_bn import ManualBatchNorm, deep_mnist_model

    images = np.random.default_rng(0).random((5000, 28, 28, 1), dtype="float32")
    models = {}
    data_format = deep_mnist_model(bn="manual").get_layer("conv1").data_format
    for name, bn in (
        ("no BN", None),
        ("Keras BatchNormalization", "keras"),
        ("ManualBatchNorm, fused=None (kernel)", "manual"),
        ("ManualBatchNorm, fused=False", lambda name, axis=-1: ManualBatchNorm(name=name, axis=axis, fused=False)),
    ):
        keras.utils.set_random_seed(0)
        models[name] = deep_mnist_model(bn=bn, data_format=data_format)
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
    """Times NotebookLogger's evaluation of the 5,000 validation images, kernel and hand-written, alternately."""
    import keras

    from keras_bn import ManualBatchNorm, NotebookLogger, compile_like_notebook, deep_mnist_model

    data = _mnist()
    data_format = deep_mnist_model(bn="manual").get_layer("conv1").data_format
    loggers = {}
    for name, fused in (("fused=None (kernel)", None), ("fused=False", False)):
        keras.utils.set_random_seed(0)
        bn = lambda name, axis=-1, fused=fused: ManualBatchNorm(name=name, axis=axis, fused=fused)  # noqa: E731
        model = compile_like_notebook(deep_mnist_model(bn=bn, data_format=data_format))
        loggers[name] = NotebookLogger(None, data.validation, data.test)
        loggers[name].set_model(model)
        loggers[name].evaluate(*data.validation)  # trace
    samples = {name: [] for name in loggers}
    for _ in range(repeats):
        for name, logger in loggers.items():
            started = time.perf_counter()
            logger.evaluate(*data.validation)
            samples[name].append(len(data.validation.images) / (time.perf_counter() - started))
    # The notebook's own evaluation: its TF1 graph in a process of its own, warmed up by
    # its final evaluations, then timed as often (tf_keras needed, as for `experiment`).
    notebook = [sys.executable, str(ROOT / "benchmarks" / "notebook_tf1.py"), "--batches", "0",
                "--time-eval", str(repeats)]
    done = subprocess.run(notebook, cwd=ROOT, capture_output=True, text=True)
    theirs = [float(line.split(":")[1]) for line in done.stdout.splitlines() if line.startswith("eval images/s")]
    if theirs:
        samples["notebook's TF1 code"] = theirs
    for name, rates in samples.items():
        print(f"eval        5,000 validation images, {name:20s}: {describe(rates, 'images/s')}")
    if theirs:
        ratio = statistics.median(samples["fused=None (kernel)"]) / statistics.median(theirs)
        print(f"eval        ratio fused=None / notebook (images/s): {ratio:.2f}")
    else:
        print(f"eval        notebook's TF1 code did not run (tf_keras installed?): {done.stderr[-300:]}")


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
    parser.add_argument("--device", choices=("auto", "gpu", "cpu"), default="auto",
                        help="gpu: say which GPU ran the tables, or that none was found; cpu: hide the GPUs")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads per op (default: the framework's, all cores); 1 on a busy machine")
    args = parser.parse_args()
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(FIGURES))
    if unknown:
        parser.error(f"--only takes names from {', '.join(FIGURES)}. Received: {unknown}")
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

    backend = keras.backend.backend()
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
    if "experiment" in chosen:
        bench_experiment(args.experiment_repeats)
    if "train" in chosen:
        bench_train(args.repeats)
    if "mobilenet" in chosen:
        bench_mobilenet(args.repeats)
    if "bn" in chosen:
        bench_bn(args.repeats)
    if "ghost" in chosen:
        bench_ghost(args.repeats)
    if "predict" in chosen:
        bench_predict(args.repeats)
    if "eval" in chosen:
        bench_eval(args.repeats)
    if "fold" in chosen:
        bench_fold(args.repeats)
    print(f"load        average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
