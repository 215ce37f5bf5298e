"""`synchronized=True` across real processes, on each backend's own distributed engine.

Each test runs one of the example scripts `examples/sync_bn_*.py`, which starts
two worker processes on 127.0.0.1 (free ports picked at run time), each with its
own `KERAS_BACKEND`, whatever the backend of this test process. The launcher
kills both workers if either fails or the time limit passes. Every worker:

- trains a small conv net with `ManualBatchNorm(synchronized=True)` for 4
  steps on its 16 of every global batch of 32, worker 1's examples shifted so
  that local statistics are far from global ones; then, alone, trains the same
  net from the same initial weights on the concatenated batches. Weights and
  moving statistics must agree to float32 round-off, and so must each worker's
  gradients with respect to its inputs where the engine exposes them;
- normalizes 12 examples (worker 0) and 20 (worker 1) with a synchronized
  layer: outputs, moving statistics and input gradients must be those of the
  32 examples together, computed in NumPy (sums and counts, not a mean of the
  two means, which is checked to be far off).
"""

import importlib.util
import os
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
# float32 round-off, relative to the scale of what is compared: a few hundred
# times the float32 epsilon over 4 training steps, far below what local
# (unsynchronized) statistics would change.
RELATIVE = 1e-5
TIMEOUT = 200  # seconds per engine: the launcher kills the workers after that


def _example(name):
    """Imports `examples/<name>.py` (it imports no engine at module level)."""
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))
    return __import__(name)


def _need(*modules):
    """Skips the test, naming what is missing, unless every module can be imported."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"engine not installed: {', '.join(missing)}")


def _check(summary, input_grads):
    """The assertions every engine shares, on the launcher's summary of both workers."""
    # No warning from keras-bn or about a collective (e.g. a deprecated all-reduce).
    assert summary["warnings"] == []
    scale = summary["fit.weights_scale"]
    assert summary["fit.weights_moved"] > 0.1, "training did not change the weights"
    assert summary["fit.weights_error"] <= RELATIVE * scale, summary
    assert summary["fit.moving_statistics_error"] <= RELATIVE * scale, summary
    assert summary["fit.workers_gap"] <= RELATIVE * scale, summary
    if input_grads:
        assert (
            summary["fit.input_grad_error"]
            <= RELATIVE * summary["fit.input_grad_scale"]
        ), summary

    assert sorted(summary["uneven.local_batches"]) == [12, 20]
    assert summary["uneven.outputs_error"] <= RELATIVE, summary
    assert summary["uneven.grad_error"] <= RELATIVE * summary["uneven.grad_scale"], (
        summary
    )
    assert summary["uneven.moving_mean_error"] <= RELATIVE, summary
    variance_scale = summary["uneven.moving_variance_scale"]
    assert summary["uneven.moving_variance_error"] <= RELATIVE * variance_scale, summary
    # The check can fail: a mean of the two workers' means is far from the global mean.
    assert summary["uneven.mean_of_means_gap"] > 0.1


def test_tensorflow_multi_worker_mirrored_strategy():
    _need("tensorflow")
    summary = _example("sync_bn_tf_multiworker").main(["--timeout", str(TIMEOUT)])
    _check(summary, input_grads=True)
    # The custom step is Keras's own: one process's model.fit gives the same weights.
    assert (
        summary["fit.weights_error_vs_model_fit"]
        <= RELATIVE * summary["fit.weights_scale"]
    )


def test_jax_distributed_data_parallel():
    _need("jax")
    summary = _example("sync_bn_jax").main(["--timeout", str(TIMEOUT)])
    _check(summary, input_grads=False)


def test_torch_distributed_gloo_with_ddp():
    _need("torch")
    summary = _example("sync_bn_torch").main(["--timeout", str(TIMEOUT)])
    _check(summary, input_grads=True)


HANGING_WORKER = """
import os, sys, threading
rank = int(sys.argv[sys.argv.index("--rank") + 1])
with open(os.path.join(os.environ["PID_DIR"], f"{rank}.pid"), "w") as f:
    f.write(str(os.getpid()))
if rank == int(os.environ["FAILING_RANK"]):
    peer = os.path.join(os.environ["PID_DIR"], f"{1 - rank}.pid")
    while not os.path.exists(peer):  # fail once the peer is up and waiting
        threading.Event().wait(0.05)
    sys.exit("worker failed on purpose")
threading.Event().wait()  # as a worker waiting for a peer that is gone
"""


def _gone(pid):
    """Whether no process has id `pid` any more."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.parametrize(
    ("failing_rank", "timeout", "reason"),
    [(1, 120, "a worker failed"), (-1, 5, "timed out")],
    ids=["one-worker-fails", "both-hang"],
)
def test_launcher_kills_the_workers_when_one_fails_or_time_runs_out(
    tmp_path, failing_rank, timeout, reason
):
    common = _example("sync_bn_launch")
    script = tmp_path / "worker.py"
    script.write_text(HANGING_WORKER)
    env = {"PID_DIR": str(tmp_path), "FAILING_RANK": str(failing_rank)}
    with pytest.raises(RuntimeError, match=reason) as error:
        common.launch(script, "numpy", per_rank_env=lambda rank: env, timeout=timeout)
    if failing_rank == 1:
        assert "worker failed on purpose" in str(error.value)  # the log's tail is shown
    pids = [int((tmp_path / f"{rank}.pid").read_text()) for rank in range(2)]
    assert all(_gone(pid) for pid in pids)
