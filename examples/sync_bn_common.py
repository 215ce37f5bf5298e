"""What the three `sync_bn_*.py` examples share: the launcher, the data, the model and the checks.

Each example script is both the launcher and the worker. Run without `--rank`, it
picks free ports on 127.0.0.1, starts itself twice (`--rank 0` and `--rank 1`)
with the engine's own environment, waits for both under a time limit, kills both
if either fails or the limit passes, and prints what the workers found. Run with
`--rank`, it is one worker: it joins the engine's process group and does the
work. Nothing here imports an engine at module level, so the test suite can
import this file under any Keras backend.

What every worker checks, against independent references:

- *fit*: two workers train the same small conv net with
  `ManualBatchNorm(synchronized=True)` for a few steps, each on its half of
  every global batch of 32; afterwards the weights and moving statistics must
  equal those of one process (the same worker, once the distributed run is over)
  training from the same initial weights on the concatenated batches.
- *uneven*: a synchronized `ManualBatchNorm` alone sees 12 examples on worker 0
  and 20 on worker 1; its outputs, its moving statistics and the gradients with
  respect to each worker's inputs must be those of the 32 examples together,
  computed here in NumPy (sums and counts, not a mean of the two means).
"""

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from contextlib import ExitStack, contextmanager
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
WORLD_SIZE = 2
GLOBAL_BATCH = 32
EVEN_SPLIT = (16, 16)
UNEVEN_SPLIT = (12, 20)
STEPS = 4
IMAGE_SHAPE = (6, 6, 3)
OUTPUTS = 2
LEARNING_RATE = 0.1
MOMENTUM = 0.5
EPSILON = 1e-3  # ManualBatchNorm's default, as Keras's.
# Worker 1's examples are shifted: statistics of one worker alone, or a mean of
# the two workers' means (with uneven batches), are far from the global ones.
SHIFT = 4.0


def free_ports(count):
    """Returns `count` distinct TCP ports on 127.0.0.1 that were free a moment ago."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def worker_env(backend, extra=None):
    """Returns the environment of a worker: this one, the Keras backend, quiet TensorFlow, CPU only."""
    env = dict(os.environ)
    env.update(
        KERAS_BACKEND=backend,
        TF_CPP_MIN_LOG_LEVEL="2",
        CUDA_VISIBLE_DEVICES="",
        JAX_PLATFORMS="cpu",
        # Two workers share the cores: one thread each keeps them from fighting.
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
    )
    env.update(extra or {})
    return env


def launch(
    script, backend, args=(), per_rank_env=None, timeout=240, world_size=WORLD_SIZE
):
    """Starts `script --rank r` for every rank, waits for all, and returns their JSON results.

    Args:
        script: Path of the example script (the worker).
        backend: The Keras backend of the workers (`KERAS_BACKEND`).
        args: Extra command-line arguments for every worker.
        per_rank_env: A function of the rank returning extra environment
            variables for that worker (e.g. its `TF_CONFIG`). Defaults to none.
        timeout: Seconds for the whole run, after which every worker still
            alive is killed. Defaults to 240.
        world_size: The number of workers. Defaults to 2.

    Returns:
        The list of the workers' results, in rank order (what each wrote as JSON).

    Raises:
        RuntimeError: if a worker exits with an error or the time runs out; the
            message holds the end of every worker's log.
    """
    with tempfile.TemporaryDirectory(prefix="sync_bn_") as folder, ExitStack() as logs:
        folder = Path(folder)
        processes = []
        try:
            for rank in range(world_size):
                log = logs.enter_context(open(folder / f"rank{rank}.log", "w"))
                command = [
                    sys.executable,
                    str(script),
                    "--rank",
                    str(rank),
                    "--world-size",
                    str(world_size),
                    "--result",
                    str(folder / f"rank{rank}.json"),
                    *args,
                ]
                extra = per_rank_env(rank) if per_rank_env else None
                processes.append(
                    subprocess.Popen(
                        command,
                        env=worker_env(backend, extra),
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        cwd=ROOT,
                    )
                )
            failed = _wait(processes, timeout)
            if failed:
                raise RuntimeError(
                    f"{Path(script).name} on {backend}: {failed}\n" + _tails(folder)
                )
            return [
                json.loads((folder / f"rank{rank}.json").read_text())
                for rank in range(world_size)
            ]
        finally:
            # Only the processes started here, each by its own handle.
            for p in processes:
                if p.poll() is None:
                    p.kill()
                    p.wait(timeout=30)


def _wait(processes, timeout):
    """Waits for every process; returns why the run failed, or None when all exited with 0.

    Stops waiting as soon as one process fails (the others would wait for it
    forever in their next collective) or when `timeout` seconds have passed.
    """
    deadline = time.monotonic() + timeout
    while True:
        codes = [p.poll() for p in processes]
        if any(c not in (None, 0) for c in codes):
            return f"a worker failed (exit codes {codes})"
        if all(c == 0 for c in codes):
            return None
        if time.monotonic() > deadline:
            return f"timed out after {timeout} s (exit codes {codes})"
        time.sleep(0.2)


def _tails(folder, chars=3000):
    """Returns the end of every worker log in `folder`, for an error message."""
    return "\n".join(
        f"--- {log.name}:\n{log.read_text(errors='replace')[-chars:]}"
        for log in sorted(Path(folder).glob("rank*.log"))
    )


def parse_worker_args(description, argv=None):
    """Parses the options every example shares; without `--rank` the script is the launcher."""
    import argparse

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--rank",
        type=int,
        default=None,
        help="this worker's rank (set by the launcher)",
    )
    parser.add_argument("--world-size", type=int, default=WORLD_SIZE)
    parser.add_argument(
        "--result", default=None, help="where the worker writes its JSON result"
    )
    parser.add_argument(
        "--port", type=int, default=None, help="the coordinator's port on --host"
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="the coordinator's (rank 0's) address"
    )
    parser.add_argument(
        "--benchmark",
        action="store_true",
        help="time training steps of deep_mnist_model with and without synchronization",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=240,
        help="launcher: seconds before the workers are killed",
    )
    return parser.parse_args(argv)


def run_launcher(script, backend, args, per_rank_env=None, extra_args=()):
    """The launcher's side of an example: runs the workers, prints and returns their summary."""
    forwarded = ["--benchmark"] if args.benchmark else []
    results = launch(
        script,
        backend,
        args=[*forwarded, *extra_args],
        per_rank_env=per_rank_env,
        timeout=args.timeout,
        world_size=args.world_size,
    )
    summary = {"backend": backend, **summarize(results)}
    print(json.dumps(summary, indent=2))
    return summary


@contextmanager
def warnings_of_interest(found):
    """Records into `found` every warning raised by keras-bn or about a collective.

    The test suite treats warnings as errors, but a worker runs outside pytest:
    this is how a deprecated all-reduce (torch 2.13 warns on
    `torch.distributed.nn.functional.all_reduce`) still fails the test.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        finally:
            for w in caught:
                text = f"{w.category.__name__}: {w.message} ({w.filename}:{w.lineno})"
                if "keras_bn" in str(w.filename) or "all_reduce" in str(w.message):
                    found.append(text)


def write_result(path, result):
    """Writes the worker's result as JSON (to `path`, or stdout when `path` is None)."""
    text = json.dumps(result)
    if path:
        Path(path).write_text(text)
    print(text, flush=True)


# ----------------------------------------------------------------------------- data


def global_data():
    """Returns the training data: images `(STEPS, 32, 6, 6, 3)` and targets `(STEPS, 32, 2)`."""
    rng = np.random.default_rng(0)
    x = rng.normal(1.0, 2.0, size=(STEPS, GLOBAL_BATCH, *IMAGE_SHAPE)).astype("float32")
    x[:, EVEN_SPLIT[0] :] += SHIFT
    y = rng.normal(size=(STEPS, GLOBAL_BATCH, OUTPUTS)).astype("float32")
    return x, y


def uneven_data():
    """Returns `(x, w)`: 32 inputs `(32, 4, 4, 3)`, worker 1's shifted, and the loss weights."""
    rng = np.random.default_rng(1)
    x = rng.normal(1.0, 2.0, size=(GLOBAL_BATCH, 4, 4, 3)).astype("float32")
    x[UNEVEN_SPLIT[0] :] += SHIFT
    w = rng.normal(size=x.shape).astype("float32")
    return x, w


def local_slice(rank, split):
    """Returns the slice of the global batch that worker `rank` holds."""
    start = sum(split[:rank])
    return slice(start, start + split[rank])


def build_model(synchronized=True):
    """Returns the small conv net of the checks: Conv2D, synchronized ManualBatchNorm, ReLU, pooling, Dense."""
    import keras

    from keras_bn import ManualBatchNorm

    inputs = keras.Input(IMAGE_SHAPE)
    h = keras.layers.Conv2D(4, 3, padding="same", use_bias=False, name="conv")(inputs)
    h = ManualBatchNorm(synchronized=synchronized, momentum=MOMENTUM, name="bn")(h)
    h = keras.layers.ReLU()(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    return keras.Model(inputs, keras.layers.Dense(OUTPUTS, name="dense")(h))


def weights_of(model):
    """Returns `{variable path: NumPy array}` for every variable of `model`, moving statistics included."""
    import keras

    return {
        v.path: np.asarray(keras.ops.convert_to_numpy(v.value)) for v in model.variables
    }


def max_gap(a, b):
    """Returns the largest absolute difference between two `{name: array}` dicts with the same keys."""
    if set(a) != set(b):
        raise ValueError(f"different variables: {sorted(a)} vs {sorted(b)}")
    return max(float(np.abs(np.asarray(a[k]) - np.asarray(b[k])).max()) for k in a)


# ----------------------------------------------------------------------------- NumPy reference


def numpy_reference(x, w, momentum=MOMENTUM, epsilon=EPSILON):
    """Returns batch norm of `x` (channels last, gamma 1, beta 0) in NumPy, independent of keras-bn.

    The loss is `sum(y * w) / len(x)`; `grad` is its gradient with respect to
    `x`, from the closed form of batch norm's backward pass:
    `dx = inv / n * (n * dy - sum(dy) - x_hat * sum(dy * x_hat))`.
    The moving statistics start at 0 and 1 and take one step of `momentum`.
    """
    x = x.astype("float64")
    axes = tuple(range(x.ndim - 1))
    n = np.prod([x.shape[a] for a in axes])
    mean = x.mean(axis=axes)
    variance = ((x - mean) ** 2).mean(axis=axes)
    inv = 1.0 / np.sqrt(variance + epsilon)
    x_hat = (x - mean) * inv
    dy = w.astype("float64") / x.shape[0]
    grad = inv / n * (n * dy - dy.sum(axis=axes) - x_hat * (dy * x_hat).sum(axis=axes))
    return {
        "outputs": x_hat,
        "grad": grad,
        "moving_mean": momentum * 0.0 + (1 - momentum) * mean,
        "moving_variance": momentum * 1.0 + (1 - momentum) * variance,
    }


def uneven_report(rank, outputs, grad, moving_mean, moving_variance):
    """Compares one worker's uneven-batch results with the NumPy reference of all 32 examples.

    Returns the largest errors, and (as a control that the check can fail) how
    far the statistics of a mean of the two workers' means would have been.
    """
    x, w = uneven_data()
    ref = numpy_reference(x, w)
    part = local_slice(rank, UNEVEN_SPLIT)
    parts = [
        x[local_slice(r, UNEVEN_SPLIT)].astype("float64") for r in range(WORLD_SIZE)
    ]
    mean_of_means = np.mean([p.mean(axis=(0, 1, 2)) for p in parts], axis=0)
    return {
        "local_batch": int(np.asarray(outputs).shape[0]),
        "grad_scale": float(np.abs(ref["grad"]).max()),
        "moving_variance_scale": float(np.abs(ref["moving_variance"]).max()),
        "outputs_error": float(
            np.abs(np.asarray(outputs) - ref["outputs"][part]).max()
        ),
        "grad_error": float(np.abs(np.asarray(grad) - ref["grad"][part]).max()),
        "moving_mean_error": float(
            np.abs(np.asarray(moving_mean) - ref["moving_mean"]).max()
        ),
        "moving_variance_error": float(
            np.abs(np.asarray(moving_variance) - ref["moving_variance"]).max()
        ),
        "mean_of_means_gap": float(
            np.abs((1 - MOMENTUM) * mean_of_means - ref["moving_mean"]).max()
        ),
    }


def summarize(results):
    """Returns the largest errors over the workers, and how far apart the workers' weights are."""
    keys = [k for k in results[0] if k.endswith("_error")]
    summary = {k: max(r[k] for r in results) for k in keys}
    for section in ("fit", "uneven"):
        if section in results[0]:
            for k in results[0][section]:
                summary[f"{section}.{k}"] = max(r[section][k] for r in results)
    if "uneven" in results[0]:
        summary["uneven.local_batches"] = [r["uneven"]["local_batch"] for r in results]
    summary["warnings"] = sorted({w for r in results for w in r.get("warnings", [])})
    if "benchmark" in results[0]:
        summary["benchmark"] = [r["benchmark"] for r in results]
    if "final_weights" in results[0]:
        summary["fit.workers_gap"] = max_gap(
            {k: np.array(v) for k, v in results[0]["final_weights"].items()},
            {k: np.array(v) for k, v in results[1]["final_weights"].items()},
        )
    return summary
