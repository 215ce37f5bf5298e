"""`bench.py`'s figures of whole runs and inference: `experiment`, `predict`, `eval`, `fold`."""

import os
import statistics
import subprocess
import sys
import tempfile
import time

from _common import (
    ROOT,
    _mnist,
    alternate,
    describe,
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
        ("ManualBatchNorm, fused=None (default)", "manual"),
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
    for name, fused in (("fused=None (default)", None), ("fused=False", False)):
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
        ratio = statistics.median(samples["fused=None (default)"]) / statistics.median(theirs)
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
