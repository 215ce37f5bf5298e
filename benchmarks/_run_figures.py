"""`bench.py`'s figures of whole runs and inference: `experiment`, `predict`, `eval`, `fold`."""

import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time

from _common import (
    KERAS,
    NATIVE,
    ROOT,
    Figure,
    _mnist,
    alternate,
)

NOTEBOOK = "the notebook's own TF1 code"

COMMAND = "keras-bn --variants manual"


def timed_command(command):
    """Runs `command`, failing loudly, and returns its wall time in seconds."""
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return seconds


def _needs_tf_keras():
    """Stops with what to install when the notebook's TF1 code cannot run (it needs `tf_keras`)."""
    if importlib.util.find_spec("tf_keras") is None:
        raise SystemExit("The experiment and eval figures run the notebook's TF1 code, which needs "
                         "tf_keras: pip install tf_keras (the version of your TensorFlow)")


def bench_experiment(repeats, batches=800):
    """Times the whole keras-bn command against the notebook's TF1 code, alternately; seconds.

    `batches`: training batches of each (the notebook's 800; fewer only to try the figure out).
    """
    _needs_tf_keras()
    # The console script users run (`_keras_bn_cli.main`), not `python -m`, which imports
    # the package before the command can set up its import.
    keras_bn_cli = [sys.executable, "-c", "import sys, _keras_bn_cli; sys.exit(_keras_bn_cli.main())",
                    "--variants", "manual", "--quiet", "--batches", str(batches)]
    notebook = [sys.executable, str(ROOT / "benchmarks" / "notebook_tf1.py"), "--batches", str(batches)]
    runs = iter(range(10**6))
    with tempfile.TemporaryDirectory() as out:
        # A fresh --out each time: the same folder would resume the finished run.
        runners = {COMMAND: lambda: timed_command([*keras_bn_cli, "--out", os.path.join(out, str(next(runs)))]),
                   NOTEBOOK: lambda: timed_command(notebook)}
        # No warm-up round: each run is a fresh process, and a round takes a minute.
        times = alternate(runners, repeats, 1, warmup=0)
    figure = Figure("experiment", "s")
    for name, samples in times.items():
        figure.add(name, [ms / 1000 for ms in samples])
    figure.ratio("keras-bn / notebook", COMMAND, NOTEBOOK)
    figure.note(f"{batches} batches of 32 with the notebook's logging and final evaluations, start-up included")
    return figure.report()


def bench_predict(repeats):
    """Times inference on 5,000 random images without BN, with Keras's and with keras-bn's, alternately.

    Each call is `model.predict_on_batch` on 5 batches of 1,000: the compiled
    forward pass as `model.predict` runs it, without its input pipeline, which on
    TensorFlow on 2 cores swings from call to call by more than the layers differ
    (docs/benchmarks.md has the figures).
    """
    import keras
    import numpy as np

    from keras_bn import ManualBatchNorm, deep_mnist_model

    images = np.random.default_rng(0).random((5000, 28, 28, 1), dtype="float32")
    models = {}
    data_format = deep_mnist_model(bn="manual").get_layer("conv1").data_format
    for name, bn in (
        ("no BN", None),
        (KERAS, "keras"),
        (NATIVE, "manual"),
        ("ManualBatchNorm, fused=False", lambda name, axis=-1: ManualBatchNorm(name=name, axis=axis, fused=False)),
    ):
        keras.utils.set_random_seed(0)
        models[name] = deep_mnist_model(bn=bn, data_format=data_format)
        models[name].predict_on_batch(images[:1000])
    batches = [images[i:i + 1000] for i in range(0, len(images), 1000)]
    times = alternate(
        {name: (lambda m=m: [m.predict_on_batch(batch) for batch in batches]) for name, m in models.items()},
        repeats,
        1,
    )
    figure = Figure("predict", "images/s")
    for name, samples in times.items():
        figure.add(name, [len(images) / (ms / 1000) for ms in samples])
    for name in (NATIVE, "ManualBatchNorm, fused=False"):
        figure.ratio(f"{name} / Keras", name, KERAS)
    return figure.report()


def _notebook_eval(count):
    """Returns the median of `count` timed evaluations of the notebook's TF1 graph, in a process of its own."""
    # Warmed up by its final evaluations, then timed (tf_keras needed, as for `experiment`).
    command = [sys.executable, str(ROOT / "benchmarks" / "notebook_tf1.py"), "--batches", "0",
               "--time-eval", str(count)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    rates = [float(line.split(":")[1]) for line in done.stdout.splitlines() if line.startswith("eval images/s")]
    if not rates:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return statistics.median(rates)


def bench_eval(repeats):
    """Times NotebookLogger's evaluation of the 5,000 validation images against the notebook's, alternately.

    Each round evaluates once with `fused=None` and with `fused=False`, then runs the
    notebook's graph in a process of its own for the median of 3 of its evaluations.
    """
    import keras

    from keras_bn import ManualBatchNorm, NotebookLogger, compile_like_notebook, deep_mnist_model

    _needs_tf_keras()
    data = _mnist()
    data_format = deep_mnist_model(bn="manual").get_layer("conv1").data_format
    loggers = {}
    for name, fused in (("fused=None (default)", None), ("fused=False", False)):
        keras.utils.set_random_seed(0)
        bn = lambda name, axis=-1, fused=fused: ManualBatchNorm(name=name, axis=axis, fused=fused)  # noqa: E731
        model = compile_like_notebook(deep_mnist_model(bn=bn, data_format=data_format))
        loggers[name] = NotebookLogger(None, data.validation, data.test)
        loggers[name].set_model(model)
        loggers[name].evaluate(*data.validation)  # trace
    rates = {name: [] for name in [*loggers, NOTEBOOK]}
    for _ in range(repeats):
        for name, logger in loggers.items():
            started = time.perf_counter()
            logger.evaluate(*data.validation)
            rates[name].append(len(data.validation.images) / (time.perf_counter() - started))
        rates[NOTEBOOK].append(_notebook_eval(3))
    figure = Figure("eval", "images/s")
    for name, samples in rates.items():
        figure.add(name, samples)
    figure.ratio("fused=None / notebook", "fused=None (default)", NOTEBOOK)
    figure.ratio("fused=None / fused=False", "fused=None (default)", "fused=False")
    figure.note("images per second evaluating the 5,000 validation images")
    return figure.report()


def bench_fold(repeats):
    """Times inference of the manual BN model against its folded copy, alternately."""
    import keras

    from keras_bn import deep_mnist_model, fold_batch_norm

    data = _mnist()
    keras.utils.set_random_seed(0)
    model = deep_mnist_model(bn="manual")
    model(data.train.images[:256], training=True)
    models = {"unfolded": model, "folded": fold_batch_norm(model)}
    images = data.validation.images
    for m in models.values():
        m.predict(images[:1000], batch_size=1000, verbose=0)
    times = alternate({name: (lambda m=m: m.predict(images, batch_size=1000, verbose=0))
                       for name, m in models.items()}, repeats, 1)
    figure = Figure("fold", "images/s")
    for name, samples in times.items():
        figure.add(f"{name} inference", [len(images) / (ms / 1000) for ms in samples])
    figure.ratio("folded / unfolded", "folded inference", "unfolded inference")
    return figure.report()
