"""What every figure of `bench.py` shares: the machine, the timing loop, the data, the names."""

import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BATCH = 32

NATIVE = "ManualBatchNorm, fused=None (default)"

CLOSED_FORM = "ManualBatchNorm, fused=False, closed-form"

AUTODIFF = "ManualBatchNorm, fused=False, autodiff"


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


def _mnist():
    """Loads MNIST once for the in-process figures."""
    from keras_bn import load_mnist

    return load_mnist()


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
    """The context in which `ManualBatchNorm` uses the closed-form backward (`enabled`), autodiff
    (`False`), or the backend's default (`None`)."""
    import contextlib

    from keras_bn._layer.paths import use_hand_written

    return contextlib.nullcontext() if enabled is None else use_hand_written(enabled)
