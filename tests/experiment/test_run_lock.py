"""Tests for keras_bn.experiment.lock: a run folder belongs to one process (issue 28).

The lock itself in this process first, then the command as users run it,
`python examples/deep_mnist.py`, started twice on one folder: the second is
refused, then waits with `--wait` and finds the run finished; and a holder
killed with SIGKILL leaves no lock, so the same command resumes it to the
numbers of an uninterrupted run. The processes synchronize on what the command
prints (read with a time limit), never on sleeps, and are killed at the end.
"""

import errno
import json
import os
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest
from helpers import write_fake_mnist_npz

from keras_bn.experiment import (
    ExperimentError,
    RunConfig,
    RunFolderBusy,
    RunLock,
    run_experiment,
)
from keras_bn.experiment import lock as lock_module
from keras_bn.experiment.checkpoint import read_state
from keras_bn.experiment.lock import LOCK_FILE, read_holder

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 300  # seconds any one process may take before the test gives up on it

# --- the lock in this process -------------------------------------------------------


def test_a_second_holder_is_refused_naming_the_first(tmp_path):
    folder = tmp_path / "run"
    with RunLock(folder):  # A second open file takes the lock as another process would.
        holder = read_holder(folder / LOCK_FILE)
        assert holder["pid"] == os.getpid() and holder["host"] and holder["started"]
        with pytest.raises(RunFolderBusy, match=(
            rf"^The run folder {re.escape(str(folder))} is in use by process {os.getpid()} on "
            rf"host .*: one process at a time may train in a run folder.* start this one with "
            r"--wait \(`wait=True` in Python\)"
        )) as error:
            with RunLock(folder):
                raise AssertionError("not reached: the folder is held")
        assert error.value.holder == holder and isinstance(error.value, ExperimentError)
    assert read_holder(folder / LOCK_FILE) is None  # Emptied on the way out: no stale holder.
    with RunLock(folder):  # Free again.
        pass


def test_a_file_system_without_locks_is_named(tmp_path, monkeypatch):
    def refuse(fd, operation):
        """flock on a mount without locks."""
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(lock_module.fcntl, "flock", refuse)
    with pytest.raises(ExperimentError, match=(
        r"Cannot lock the run folder .*run: flock on .*run\.lock failed with ENOLCK \(No locks "
        r"available\)\. .* put `out_dir` \(--out\) on a local disk, or mount the network file "
        r"system with locking"
    )):
        with RunLock(tmp_path / "run"):
            pass


def _synthetic_mnist():
    """Random MNIST-shaped `(train, validation, test)` pairs, labels one-hot."""
    rng = np.random.default_rng(0)

    def split(n):
        """One random split of `n` images."""
        return (rng.random((n, 28, 28, 1), dtype="float32"),
                np.eye(10, dtype="float32")[rng.integers(0, 10, n)])

    return split(32), split(8), split(8)


def test_run_experiment_refuses_a_held_folder_before_reading_it(tmp_path):
    settings = dict(variants="none", batches=2, batch_size=8, num_samples=2)
    folder = tmp_path / RunConfig(**settings).name
    lines = []
    with RunLock(folder):
        with pytest.raises(RunFolderBusy, match=f"in use by process {os.getpid()} on host"):
            run_experiment(data=_synthetic_mnist(), out_dir=tmp_path, progress=False,
                           print_fn=lines.append, **settings)
    assert lines == [] and os.listdir(folder) == [LOCK_FILE]  # Nothing read, nothing written.
    results = run_experiment(data=_synthetic_mnist(), out_dir=tmp_path, progress=False,
                             print_fn=lines.append, **settings)
    assert json.loads((folder / "results.json").read_text()) == json.loads(json.dumps(results))


# --- the command started twice --------------------------------------------------------

SETTINGS = dict(variants="manual", batches=20, batch_size=8, seeds=(1,), checkpoint_every=5,
                check_every=1, validate_every=100, backend="tensorflow")


def _command(data_dir, out, *extra):
    """The example script's command line for `SETTINGS`, writing to `out`."""
    return [sys.executable, str(ROOT / "examples" / "deep_mnist.py"), "--variants", "manual",
            "--batches", "20", "--batch-size", "8", "--seed", "1", "--checkpoint-every", "5",
            "--check-every", "1", "--validate-every", "100", "--data-dir", str(data_dir),
            "--out", str(out), *extra]


ENV = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3",
       "KERAS_BACKEND": "tensorflow", "PYTHONUNBUFFERED": "1"}


class _Process:
    """A started command whose standard output a thread reads, line by line, into a queue."""

    def __init__(self, command, started):
        self.stderr = tempfile.TemporaryFile("w+", encoding="utf-8")  # Read once it exits.
        self.popen = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=self.stderr,
                                      text=True, env=ENV, cwd=ROOT)
        started.append(self)
        self.pid, self.lines, self._queue = self.popen.pid, [], queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        """Queues each line of standard output, then `None` at its end."""
        for line in self.popen.stdout:
            self._queue.put(line)
        self._queue.put(None)

    def wait_for(self, prefix):
        """Reads lines until one starts with `prefix`; fails at the output's end or time limit."""
        while True:
            try:
                line = self._queue.get(timeout=TIMEOUT)
            except queue.Empty:
                pytest.fail(f"no line {prefix!r} in {TIMEOUT} s: {''.join(self.lines)[-3000:]}")
            if line is None:
                pytest.fail(f"exited without a line {prefix!r}: {''.join(self.lines)[-3000:]}")
            self.lines.append(line)
            if line.startswith(prefix):
                return line

    def finish(self):
        """Waits for the exit; returns `(status, all of stdout, stderr)`."""
        status = self.popen.wait(timeout=TIMEOUT)
        self._reader.join(timeout=TIMEOUT)
        while not self._queue.empty():
            self.lines.append(self._queue.get() or "")
        self.stderr.seek(0)
        return status, "".join(self.lines), self.stderr.read()


@pytest.fixture
def started():
    """The processes a test starts; any still running at its end is killed."""
    processes = []
    yield processes
    for process in processes:  # Only these, each by its own handle.
        if process.popen.poll() is None:
            process.popen.kill()  # Also ends a stopped one.
            process.popen.wait(timeout=60)
        process.popen.stdout.close()
        process.stderr.close()


def _numbers(folder):
    """The run's logged entries but their times, and its final accuracies, from results.json."""
    run = json.loads((folder / "results.json").read_text())["runs"]["manual"]["1"]
    return ([(e["event"], e["batch"], e["loss"], e["accuracy"]) for e in run["history"]],
            [run[key] for key in ("final_validation_accuracy", "final_test_accuracy")])


def test_a_second_process_is_refused_then_waits_and_finds_the_run_finished(tmp_path, started):
    data_dir = write_fake_mnist_npz(tmp_path)
    folder = tmp_path / "out" / RunConfig(**SETTINGS).name
    first = _Process(_command(data_dir, tmp_path / "out"), started)
    first.wait_for("=== manual")  # Printed once the run folder is held.
    first.popen.send_signal(signal.SIGSTOP)  # It keeps the folder while the others start.
    try:
        with pytest.raises(RunFolderBusy, match=f"in use by process {first.pid} "):
            with RunLock(folder):
                pass
        refused = subprocess.run(_command(data_dir, tmp_path / "out"), capture_output=True,
                                 text=True, env=ENV, cwd=ROOT, timeout=TIMEOUT)
        assert refused.returncode == 2, refused.stderr[-3000:]
        assert (f"keras-bn: error: The run folder {folder} is in use by process {first.pid} on "
                "host ") in refused.stderr
        assert "usage:" not in refused.stderr and "Batch: " not in refused.stdout
        waiting = _Process(_command(data_dir, tmp_path / "out", "--wait"), started)
        waiting.wait_for(f"Waiting for process {first.pid} on host ")
    finally:
        first.popen.send_signal(signal.SIGCONT)
    status, out, err = first.finish()
    assert status == 0, err[-3000:]
    assert "Batch: 19," in out
    finished = _numbers(folder)
    status, out, err = waiting.finish()
    assert status == 0, err[-3000:]
    path = folder / "checkpoints" / "manual-seed1.zip"
    assert f"Already finished ({path}); not trained again." in out and "Batch: " not in out
    assert _numbers(folder) == finished
    assert read_holder(folder / LOCK_FILE) is None


def test_a_holder_killed_by_sigkill_leaves_no_lock_and_the_run_resumes(tmp_path, started):
    data_dir = write_fake_mnist_npz(tmp_path)
    name = RunConfig(**SETTINGS).name
    whole = _Process(_command(data_dir, tmp_path / "whole"), started)  # Uninterrupted, alongside.
    killed = _Process(_command(data_dir, tmp_path / "killed"), started)
    killed.wait_for("Batch: 7,")  # The checkpoint after batch 4 is written by now.
    killed.popen.kill()
    assert killed.finish()[0] == -signal.SIGKILL
    folder = tmp_path / "killed" / name
    assert read_holder(folder / LOCK_FILE)["pid"] == killed.pid  # What it left: no lock.
    path = folder / "checkpoints" / "manual-seed1.zip"
    done = read_state(path)["batches_done"]
    leftover = path.parent / ".manual-seed1.zip.k1ll3d.tmp"  # As a kill mid-save leaves.
    leftover.write_bytes(b"half a checkpoint")

    resumed = subprocess.run(_command(data_dir, tmp_path / "killed"), capture_output=True,
                             text=True, env=ENV, cwd=ROOT, timeout=TIMEOUT)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Resuming from {path}: {done} of 20 batches done." in resumed.stdout
    assert done >= 5 and not leftover.exists()
    status, _, err = whole.finish()
    assert status == 0, err[-3000:]
    # TensorFlow on the CPU is deterministic here: the very same numbers.
    assert _numbers(folder) == _numbers(tmp_path / "whole" / name)
