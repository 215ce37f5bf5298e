"""`keras-bn --distribute multiworker`: two real worker processes on 127.0.0.1, one TF_CONFIG each.

The two workers train the deep MNIST network with synchronized batch norm,
each on its half of every global batch, and only the chief writes
`results.json`. It must match a single-process run on the same global batches
(the same command without `--distribute`): the same accuracies, and every
logged loss to float32 round-off.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import keras
import numpy as np
import pytest
from helpers import write_fake_mnist_npz

from keras_bn.experiment import ExperimentError, RunConfig, RunLock, run_experiment
from keras_bn.experiment.distribute import read_tf_config

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
if str(EXAMPLES) not in sys.path:
    sys.path.insert(0, str(EXAMPLES))
import sync_bn_launch as common  # the launcher's free ports and worker environment

TIMEOUT = 420  # seconds for both workers; then they are killed
RELATIVE = 1e-3  # the losses' largest relative difference (see below)
# 8 examples per global batch (4 per worker: the fake MNIST has 10 training images).
SETTINGS = ["--variants", "manual", "--batches", "4", "--batch-size", "8",
            "--validate-every", "100", "--check-every", "1", "--quiet"]

pytestmark = pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                                reason="MultiWorkerMirroredStrategy needs the TensorFlow backend")


def _launch(argv, folder, world_size=2, expected=0):
    """Runs `keras-bn argv` as `world_size` workers on 127.0.0.1; returns their logs.

    Every worker must exit with status `expected`, or, for a dict
    `{rank: status}`, each of those workers: the others are killed once those
    have exited.

    Every worker gets its own `TF_CONFIG`; both are killed if either fails or
    the time runs out.
    """
    wanted = expected if isinstance(expected, dict) else dict.fromkeys(range(world_size), expected)
    ports = common.free_ports(world_size)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    processes, logs = [], []
    try:
        for rank in range(world_size):
            tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": rank}})
            logs.append(open(folder / f"worker{rank}.log", "w+"))
            processes.append(subprocess.Popen(
                [sys.executable, "-m", "keras_bn.experiment.cli", *argv],
                env=common.worker_env("tensorflow", {"TF_CONFIG": tf_config}),
                stdout=logs[-1], stderr=subprocess.STDOUT, cwd=folder))
        deadline = time.monotonic() + TIMEOUT
        while any(processes[rank].poll() is None for rank in wanted) and (
                time.monotonic() < deadline):
            if expected == 0 and any(p.poll() not in (None, 0) for p in processes):
                break  # The other worker would wait for it forever.
            time.sleep(0.2)
        codes = {rank: processes[rank].poll() for rank in wanted}
        texts = []
        for log in logs:
            log.seek(0)
            texts.append(log.read())
        assert codes == wanted, f"exit codes {codes}:\n" + "\n".join(
            f"--- worker {rank}:\n{text[-3000:]}" for rank, text in enumerate(texts))
        return texts
    finally:
        for p in processes:  # Only the processes started here, each by its own handle.
            if p.poll() is None:
                p.kill()
                p.wait(timeout=30)
        for log in logs:
            log.close()


def test_two_workers_match_one_process_on_the_global_batches(tmp_path):
    data_dir = write_fake_mnist_npz(tmp_path)
    _launch([*SETTINGS, "--distribute", "multiworker", "--data-dir", str(data_dir),
             "--out", str(tmp_path / "out")], tmp_path)
    (chief,) = (tmp_path / "out").glob("*/results.json")  # The other worker wrote nothing.
    assert not list((tmp_path / "out").glob("*/checkpoints"))
    distributed = json.loads(chief.read_text())
    assert distributed["config"]["distribute"] == "multiworker"
    schema = json.loads((EXAMPLES.parent / "docs" / "results.schema.json").read_text())
    jsonschema.validate(distributed, schema, cls=jsonschema.Draft202012Validator)

    # One process, no strategy, the same global batches of 8 (TensorFlow's fast loop).
    config = dict(distributed["config"], distribute=None)
    single = run_experiment(data_dir=data_dir, progress=False, print_fn=lambda *a: None,
                            **{k: v for k, v in config.items() if k != "backend"})
    for variant in ("manual",):
        run, reference = distributed["runs"][variant]["0"], single["runs"][variant]["0"]
        assert [(e["event"], e["batch"]) for e in run["history"]] == [
            (e["event"], e["batch"]) for e in reference["history"]]
        losses = np.array([e["loss"] for e in run["history"] if e["loss"] is not None])
        expected = np.array([e["loss"] for e in reference["history"] if e["loss"] is not None])
        gap = float(np.max(np.abs(losses - expected) / np.abs(expected)))
        print(f"{variant}: largest relative difference of {len(losses)} losses: {gap:.2e}")
        # Round-off: the sums over 4 + 4 examples are added in another order than
        # over the 8 together (1e-7 relative), and Adam divides each gradient by its
        # own root mean square (its first step is the learning rate times the
        # gradient's sign), so where a gradient is near 0 a round-off difference
        # changes the step by up to the learning rate: measured 1.2e-4 after 4
        # steps. Training moved the losses 100 times as far.
        np.testing.assert_allclose(losses, expected, rtol=RELATIVE)
        assert np.abs(expected - expected[0]).max() > 10 * RELATIVE * expected[0]
        for key, examples in (("final_validation_accuracy", 5000),
                              ("final_test_accuracy", 40), ("accuracy_on_100_samples", 40)):
            # At most one image scored the other way (a near tie of two logits).
            assert abs(run[key] - reference[key]) <= 1.001 / examples, (variant, key)


def test_a_batch_the_workers_cannot_share_equally_exits_2(tmp_path):
    logs = _launch(["--distribute", "multiworker", "--batch-size", "7", "--batches", "1",
                    "--data-dir", str(write_fake_mnist_npz(tmp_path)), "--quiet"],
                   tmp_path, expected=2)
    for log in logs:  # Both refuse before training: neither waits for the other.
        assert "keras-bn: error: `batch_size` must be a multiple of the 2 replicas that " \
               "share each global batch. Received: batch_size=7" in log


def test_the_chief_refuses_a_run_folder_another_process_holds(tmp_path):
    """The chief, the one worker that writes to --out, takes the run folder's lock."""
    argv = [*SETTINGS, "--distribute", "multiworker", "--data-dir",
            str(write_fake_mnist_npz(tmp_path)), "--out", str(tmp_path / "out")]
    config = RunConfig(variants="manual", batches=4, batch_size=8, validate_every=100,
                       check_every=1, distribute="multiworker", backend="tensorflow")
    folder = tmp_path / "out" / config.name
    with RunLock(folder):  # Held by this process, as by a first launch still running.
        # Worker 1 then fails in its first collective, its chief gone (or is killed).
        (chief, _) = _launch(argv, tmp_path, expected={0: 2})
    assert (f"keras-bn: error: The run folder {folder} is in use by process {os.getpid()} "
            "on host ") in chief
    assert os.listdir(folder) == ["run.lock"]


def _tf_config_error(value):
    """Returns the `ExperimentError` of `read_tf_config` for `TF_CONFIG=value`."""
    with pytest.raises(ExperimentError) as error:
        read_tf_config({} if value is None else {"TF_CONFIG": value})
    return str(error.value)


@pytest.mark.parametrize("value", [
    None, "", "not json", '{"cluster": {}}', '{"cluster": {"worker": ["a:1"]}}',
    '{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 1}}',
    '{"cluster": {"worker": ["nohost"]}, "task": {"type": "worker", "index": 0}}',
    '{"cluster": {"ps": ["a:1"]}, "task": {"type": "ps", "index": 0}}',
])
def test_a_missing_or_malformed_tf_config_is_named(value):
    message = _tf_config_error(value)
    assert "TF_CONFIG" in message and "docs/guide/distributed.md" in message
    if value:
        assert f"Received: TF_CONFIG={value!r}" in message


def test_a_valid_tf_config_is_returned():
    text = '{"cluster": {"worker": ["h0:1", "h1:1"]}, "task": {"type": "worker", "index": 1}}'
    assert read_tf_config({"TF_CONFIG": text})["task"]["index"] == 1


def test_the_cli_exits_2_without_tf_config(tmp_path):
    env = common.worker_env("tensorflow")
    env.pop("TF_CONFIG", None)
    done = subprocess.run(
        [sys.executable, "-m", "keras_bn.experiment.cli", "--distribute", "multiworker",
         "--batches", "1", "--data-dir", str(write_fake_mnist_npz(tmp_path))],
        env=env, capture_output=True, text=True, cwd=tmp_path, timeout=120, check=False)
    assert done.returncode == 2, done.stderr
    assert "keras-bn: error: `distribute='multiworker'` needs the environment variable " \
           "TF_CONFIG" in done.stderr
