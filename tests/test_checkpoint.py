"""Tests for keras_bn.checkpoint: atomic files, exact restores, refusals, and the callback."""

import json
import os
import random
import signal

import keras
import numpy as np
import pytest

import keras_bn.checkpoint as checkpoint_module
from keras_bn import ManualBatchNorm
from keras_bn.checkpoint import (
    CheckpointCallback,
    CheckpointError,
    CheckpointMismatchError,
    atomic_write,
    check_config,
    load_checkpoint,
    restore_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from keras_bn.interrupt import TrainingInterrupted


def _model(seed):
    """A small compiled model with batch norm and Adam: every kind of state a checkpoint keeps."""
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [keras.Input((6,)), keras.layers.Dense(5, use_bias=False), ManualBatchNorm(),
         keras.layers.ReLU(), keras.layers.Dense(3)]
    )
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    return model


def _batches(n):
    """`n` fixed random `(x, y)` training batches."""
    rng = np.random.default_rng(0)
    return [(rng.normal(size=(8, 6)).astype("float32"), rng.normal(size=(8, 3)).astype("float32"))
            for _ in range(n)]


def _arrays(variables):
    """The values of Keras variables (or arrays) as NumPy arrays."""
    return [np.asarray(keras.ops.convert_to_numpy(v)) for v in variables]


def _folder_listing(folder):
    """The names in `folder`, sorted."""
    return sorted(os.listdir(folder))


# --- atomic_write ------------------------------------------------------------------


def test_atomic_write_replaces_the_whole_file(tmp_path):
    path = tmp_path / "data.txt"
    path.write_text("old")
    assert atomic_write(path, lambda f: f.write("new content"), binary=False) == str(path)
    assert path.read_text() == "new content"
    assert _folder_listing(tmp_path) == ["data.txt"]


def test_atomic_write_keeps_the_old_file_when_the_writer_fails(tmp_path):
    path = tmp_path / "data.bin"
    path.write_bytes(b"complete old file")

    def crash(f):
        """Writes half a file, then fails."""
        f.write(b"half of a new")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, crash)
    assert path.read_bytes() == b"complete old file"
    assert _folder_listing(tmp_path) == ["data.bin"]  # No temporary file is left behind.


def test_a_crash_while_saving_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "run.npz"
    model = _model(0)
    save_checkpoint(path, model, {"batches_done": 100})

    def savez_that_dies(f, **arrays):
        """Writes the start of an archive, then dies as a killed process would."""
        f.write(b"PK\x03\x04 partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint_module.np, "savez", savez_that_dies)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, model, {"batches_done": 200})
    monkeypatch.undo()
    assert load_checkpoint(path).state["batches_done"] == 100
    assert _folder_listing(tmp_path) == ["run.npz"]


# --- save, load, restore -------------------------------------------------------------


def test_restore_gives_the_weights_adam_state_and_next_step_of_the_saved_model(tmp_path):
    batches = _batches(4)
    model = _model(0)
    for x, y in batches[:3]:
        model.train_on_batch(x, y)
    path = save_checkpoint(tmp_path / "run.npz", model, {"batches_done": 3})

    restored = _model(1)  # Other initial weights, an unbuilt optimizer.
    restore_checkpoint(restored, load_checkpoint(path))
    for a, b in zip(_arrays(model.weights), _arrays(restored.weights)):
        np.testing.assert_array_equal(a, b)  # Moving mean and variance included.
    saved_optimizer = _arrays(model.optimizer.variables)
    assert len(saved_optimizer) == 2 + 2 * len(model.trainable_variables)  # iterations, lr, m, v
    for a, b in zip(saved_optimizer, _arrays(restored.optimizer.variables)):
        np.testing.assert_array_equal(a, b)
    assert int(keras.ops.convert_to_numpy(restored.optimizer.iterations)) == 3

    # The next Adam step (bias correction uses the iteration count) is the same.
    x, y = batches[3]
    model.train_on_batch(x, y)
    restored.train_on_batch(x, y)
    for a, b in zip(_arrays(model.weights), _arrays(restored.weights)):
        np.testing.assert_array_equal(a, b)


def test_rng_state_round_trip():
    keras.utils.set_random_seed(7)
    keras.random.uniform((2,))  # Creates Keras's global SeedGenerator, so its state is kept too.
    state = json.loads(json.dumps(rng_state()))  # It survives JSON.
    first = (random.random(), np.random.random(3).tolist(),
             keras.ops.convert_to_numpy(keras.random.uniform((3,))).tolist())
    set_rng_state(state)
    again = (random.random(), np.random.random(3).tolist(),
             keras.ops.convert_to_numpy(keras.random.uniform((3,))).tolist())
    assert first == again


def test_restore_sets_the_saved_rng_state(tmp_path):
    model = _model(0)
    random.seed(3)
    np.random.seed(3)
    path = save_checkpoint(tmp_path / "run.npz", model, {"rng": rng_state()})
    expected = (random.random(), np.random.random())
    random.seed(99)
    np.random.seed(99)
    restore_checkpoint(_model(0), load_checkpoint(path))
    assert (random.random(), np.random.random()) == expected


@pytest.mark.parametrize(
    "content, match",
    [
        (b"", r"Cannot read the checkpoint .*bad\.npz: .*Delete it to start that run over"),
        (b"this is not a zip archive", r"Cannot read the checkpoint .*bad\.npz"),
    ],
)
def test_unreadable_checkpoints_name_the_file(tmp_path, content, match):
    path = tmp_path / "bad.npz"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(path)


def test_an_archive_without_state_or_of_another_format_is_refused(tmp_path):
    no_state = tmp_path / "no_state.npz"
    np.savez(no_state, weight_0000=np.zeros(3))
    match = r"Cannot read the checkpoint .*no_state\.npz: KeyError"
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(no_state)
    future = tmp_path / "future.npz"
    np.savez(future, state=np.frombuffer(json.dumps({"format": 99}).encode(), dtype=np.uint8))
    with pytest.raises(CheckpointError, match=r"has format 99; this keras-bn reads format 1"):
        load_checkpoint(future)


def test_weights_that_do_not_fit_are_refused(tmp_path):
    path = save_checkpoint(tmp_path / "run.npz", _model(0), {})
    other = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    with pytest.raises(CheckpointError, match=r"The weights in .*run\.npz do not fit the model"):
        restore_checkpoint(other, load_checkpoint(path))


def test_check_config_names_every_difference(tmp_path):
    path = save_checkpoint(
        tmp_path / "run.npz", _model(0), {"config": {"batches": 800, "seed": 0, "lr": 0.002}}
    )
    saved = load_checkpoint(path, arrays=False)
    assert saved.weights == [] and saved.optimizer_variables == []
    check_config(saved, {"batches": 800, "seed": 0, "lr": 0.002})  # The same: no error.
    message = (
        r"The checkpoint .*run\.npz was written by a run with another configuration "
        r"\(batches: 800 there, 100 now; lr: 0\.002 there, '<missing>' now\)\. Resuming it "
        r"would mix two experiments\. Use another output folder, or delete the checkpoint"
    )
    with pytest.raises(CheckpointMismatchError, match=message):
        check_config(saved, {"batches": 100, "seed": 0})


# --- CheckpointCallback ------------------------------------------------------------


class _Stop:
    """Stands in for StopOnSignal."""

    def __init__(self, signal_number=None):
        self.signal_number = signal_number

    @property
    def requested(self):
        return self.signal_number is not None


def _callback(path, every, **kwargs):
    """A CheckpointCallback on a small model that records the batch counts it saved at."""
    saved_at = []

    def state_fn(done):
        """Records `done` and returns it as the state."""
        saved_at.append(done)
        return {"batches_done": done}

    callback = CheckpointCallback(path, state_fn, every=every, **kwargs)
    callback.set_model(_model(0))
    return callback, saved_at


@pytest.mark.parametrize(
    "calls, offset, expected",
    [
        (range(250), 0, [100, 200]),  # Called after every batch.
        ([*range(0, 250, 25), 249], 0, [101, 201]),  # Only at every 25th batch.
        (range(0, 100, 10), 150, [201]),  # Resumed after 150 batches; every 10th batch.
    ],
)
def test_saves_once_per_interval_however_often_it_is_called(tmp_path, calls, offset, expected):
    callback, saved_at = _callback(tmp_path / "run.npz", 100, batch_offset=offset, total=1000)
    callback.on_train_begin()
    for j in calls:
        callback.on_train_batch_end(j)
    assert saved_at == expected and callback.saves == len(expected)
    assert load_checkpoint(tmp_path / "run.npz").state["batches_done"] == expected[-1]


def test_nothing_is_saved_at_the_last_batch(tmp_path):
    callback, saved_at = _callback(tmp_path / "run.npz", 5, total=10)
    for j in range(10):
        callback.on_train_batch_end(j)
    assert saved_at == [5]  # Not 10: the run is about to finish and save its results.


def test_a_stop_request_saves_and_raises(tmp_path):
    path = tmp_path / "run.npz"
    stop = _Stop()
    callback, saved_at = _callback(path, 100, total=50, stop=stop, run="none, seed 3")
    callback.on_train_batch_end(0)
    stop.signal_number = signal.SIGTERM
    with pytest.raises(TrainingInterrupted) as info:
        callback.on_train_batch_end(6)
    error = info.value
    assert (error.signal_number, error.batches_done, error.total) == (signal.SIGTERM, 7, 50)
    assert (error.checkpoint, error.run, error.exit_code) == (str(path), "none, seed 3", 143)
    assert saved_at == [7] and load_checkpoint(path).state["batches_done"] == 7


def test_a_stop_request_at_the_last_batch_lets_the_run_finish(tmp_path):
    callback, saved_at = _callback(tmp_path / "run.npz", 100, total=8, stop=_Stop(signal.SIGINT))
    callback.on_train_batch_end(7)  # No error: the caller stops after the run is saved.
    assert saved_at == []


def test_without_a_path_a_stop_request_raises_without_saving(tmp_path):
    callback, saved_at = _callback(None, 1, stop=_Stop(signal.SIGINT))
    with pytest.raises(TrainingInterrupted, match="Nothing was saved"):
        callback.on_train_batch_end(0)
    assert saved_at == [] and os.listdir(tmp_path) == []


def test_every_must_be_a_positive_int():
    with pytest.raises(ValueError, match=r"`every` must be a positive int. Received: every=0"):
        CheckpointCallback("x.npz", every=0)
