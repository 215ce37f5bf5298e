"""Tests for keras_bn.experiment.checkpoint: atomic files, exact restores, refusals, the callback."""

import json
import os
import signal
import zipfile

import keras
import numpy as np
import pytest

from helpers import to_numpy
from keras_bn import ManualBatchNorm
from keras_bn.experiment.checkpoint import (
    CheckpointError,
    CheckpointMismatchError,
    RunCheckpoint,
    atomic_write,
    read_state,
)
from keras_bn.experiment.interrupt import TrainingInterrupted

IDENTITY = {"batches": 800, "seed": 0, "learning_rate": 0.002}


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


class _Stop:
    """Stands in for StopOnSignal."""

    def __init__(self, signal_number=None):
        self.signal_number = signal_number

    @property
    def requested(self):
        return self.signal_number is not None


def _callback(path, *, every=100, total=1000, stop=None, identity=IDENTITY, model=None):
    """A RunCheckpoint on a small model that records the batch counts it saved at."""
    saved_at = []

    def state_fn(done, result):
        """Records `done` and returns the state."""
        saved_at.append(done)
        return {"batches_done": done, "finished": result is not None, "result": result}

    callback = RunCheckpoint(path, identity, state_fn, every=every, total=total,
                             stop=stop or _Stop(), run="none, seed 3")
    callback.set_model(model or _model(0))
    return callback, saved_at


# --- atomic_write ------------------------------------------------------------------


def test_atomic_write_replaces_the_whole_file(tmp_path):
    path = tmp_path / "data.txt"
    path.write_text("old")
    assert atomic_write(path, lambda f: f.write("new content"), binary=False) == str(path)
    assert path.read_text() == "new content"
    assert os.listdir(tmp_path) == ["data.txt"]


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
    assert os.listdir(tmp_path) == ["data.bin"]  # No temporary file is left behind.


def test_a_crash_while_saving_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "run.zip"
    callback, _ = _callback(path)
    callback.save(100)

    def write_that_dies(self, *args, **kwargs):
        """Starts writing a member into the archive, then dies as a killed process would."""
        self.fp.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(zipfile.ZipFile, "writestr", write_that_dies)
    with pytest.raises(KeyboardInterrupt):
        callback.save(200)
    monkeypatch.undo()
    assert read_state(path)["batches_done"] == 100
    assert os.listdir(tmp_path) == ["run.zip"]


# --- save and restore -------------------------------------------------------------


def test_restore_gives_the_weights_adam_state_and_next_step_of_the_saved_model(tmp_path):
    batches = _batches(4)
    model = _model(0)
    for x, y in batches[:3]:
        model.train_on_batch(x, y)
    path = tmp_path / "run.zip"
    _callback(path, model=model)[0].save(3)
    with zipfile.ZipFile(path) as archive:  # Keras's own weights file, as `.keras` holds it.
        assert sorted(archive.namelist()) == ["model.weights.h5", "state.json"]

    restored = _model(1)  # Other initial weights, an unbuilt optimizer.
    callback, _ = _callback(path, model=restored)
    assert callback.start == 3
    callback.on_train_begin()
    for a, b in zip(model.weights, restored.weights):  # Moving mean and variance included.
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b))
    saved_optimizer = [to_numpy(v) for v in model.optimizer.variables]
    assert len(saved_optimizer) == 2 + 2 * len(model.trainable_variables)  # iterations, lr, m, v
    for a, b in zip(saved_optimizer, restored.optimizer.variables):
        np.testing.assert_array_equal(a, to_numpy(b))
    assert int(to_numpy(restored.optimizer.iterations)) == 3

    # The next Adam step (bias correction uses the iteration count) is the same.
    x, y = batches[3]
    model.train_on_batch(x, y)
    restored.train_on_batch(x, y)
    for a, b in zip(model.weights, restored.weights):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b))


def test_a_second_save_reuses_what_keras_worked_out_at_the_first(tmp_path, monkeypatch):
    # Keras 3.15 rebuilds its attribute sets from throwaway layers at every save
    # (a cache stored under one name and read under another); from the second
    # checkpoint on, `_save` has it read the stored sets.
    model = _model(0)
    model.train_on_batch(*_batches(1)[0])
    callback, _ = _callback(tmp_path / "run.zip", model=model)
    callback.save(1)
    made = []
    original = keras.layers.Layer.__init__

    def counting_init(self, *args, **kwargs):
        made.append(type(self).__name__)
        original(self, *args, **kwargs)

    monkeypatch.setattr(keras.layers.Layer, "__init__", counting_init)
    callback.save(2)
    assert made == []
    assert read_state(tmp_path / "run.zip")["batches_done"] == 2


@pytest.mark.parametrize(
    "content, match",
    [
        (b"", r"Cannot read the checkpoint .*bad\.zip: BadZipFile.*Delete it to start that run"),
        (b"this is not a zip archive", r"Cannot read the checkpoint .*bad\.zip: BadZipFile"),
    ],
)
def test_unreadable_checkpoints_name_the_file(tmp_path, content, match):
    path = tmp_path / "bad.zip"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=match):
        _callback(path)


def test_an_archive_without_state_or_of_another_format_is_refused(tmp_path):
    no_state = tmp_path / "no_state.zip"
    with zipfile.ZipFile(no_state, "w") as archive:
        archive.writestr("model.weights.h5", b"")
    with pytest.raises(CheckpointError, match=r"Cannot read the checkpoint .*no_state\.zip: KeyError"):
        read_state(no_state)
    future = tmp_path / "future.zip"
    with zipfile.ZipFile(future, "w") as archive:
        archive.writestr("state.json", json.dumps({"format": 99}))
    with pytest.raises(CheckpointError, match=r"has format 99; this keras-bn reads formats 2 and 3"):
        read_state(future)


def test_weights_that_do_not_fit_are_refused(tmp_path):
    path = tmp_path / "run.zip"
    _callback(path)[0].save(5)
    other = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    other.compile(optimizer="adam", loss="mse")
    callback, _ = _callback(path, model=other)
    with pytest.raises(CheckpointError, match=r"The weights in .*run\.zip do not fit the model"):
        callback.on_train_begin()


def test_a_checkpoint_of_another_identity_is_refused_naming_every_difference(tmp_path):
    path = tmp_path / "run.zip"
    _callback(path)[0].save(5)
    _callback(path, identity=dict(IDENTITY))  # The same: no error.
    message = (
        r"The checkpoint .*run\.zip was written by a run with another configuration "
        r"\(batches: 800 there, 100 now; learning_rate: 0\.002 there, '<missing>' now\)\. "
        r"Resuming it would mix two experiments\. Delete the checkpoint"
    )
    with pytest.raises(CheckpointMismatchError, match=message):
        _callback(path, identity={"batches": 100, "seed": 0})


# --- when it saves and stops ------------------------------------------------------


@pytest.mark.parametrize(
    "calls, resumed_at, expected",
    [
        (range(250), None, [100, 200]),  # Called after every batch.
        ([*range(0, 250, 25), 249], None, [101, 201]),  # Only at every 25th batch.
        (range(0, 100, 10), 150, [201]),  # Resumed after 150 batches; every 10th batch.
    ],
)
def test_saves_once_per_interval_however_often_it_is_called(tmp_path, calls, resumed_at,
                                                            expected):
    path = tmp_path / "run.zip"
    if resumed_at is not None:
        _callback(path)[0].save(resumed_at)
    callback, saved_at = _callback(path)
    callback.on_train_begin()
    for j in calls:
        callback.on_train_batch_end(j)
    assert saved_at == expected
    assert read_state(path)["batches_done"] == expected[-1]


def test_nothing_is_saved_at_the_last_batch(tmp_path):
    callback, saved_at = _callback(tmp_path / "run.zip", every=5, total=10)
    for j in range(10):
        callback.on_train_batch_end(j)
    assert saved_at == [5]  # Not 10: the run is about to finish and save its results.


def test_a_stop_request_saves_and_raises(tmp_path):
    path = tmp_path / "run.zip"
    stop = _Stop()
    callback, saved_at = _callback(path, total=50, stop=stop)
    callback.on_train_batch_end(0)
    stop.signal_number = signal.SIGTERM
    with pytest.raises(TrainingInterrupted) as info:
        callback.on_train_batch_end(6)
    error = info.value
    assert (error.signal_number, error.batches_done, error.total) == (signal.SIGTERM, 7, 50)
    assert (error.checkpoint, error.run, error.exit_code) == (path, "none, seed 3", 143)
    assert saved_at == [7] and read_state(path)["batches_done"] == 7


def test_a_stop_request_at_the_last_batch_is_left_to_the_finished_run(tmp_path):
    callback, saved_at = _callback(tmp_path / "run.zip", total=8, stop=_Stop(signal.SIGINT))
    callback.on_train_batch_end(7)  # No error: the run saves its result, then stops.
    assert saved_at == []
    callback.save(8, result={"accuracy": 1.0})
    with pytest.raises(TrainingInterrupted, match="after finishing none, seed 3"):
        callback.stop_if_requested()
    assert read_state(tmp_path / "run.zip")["finished"]


def test_without_a_path_a_stop_request_raises_without_saving(tmp_path):
    callback, saved_at = _callback(None, every=1, stop=_Stop(signal.SIGINT))
    with pytest.raises(TrainingInterrupted, match="Nothing was saved"):
        callback.on_train_batch_end(0)
    assert saved_at == [] and os.listdir(tmp_path) == []


# --- one consistent read ----------------------------------------------------------


def test_a_checkpoint_replaced_between_reading_and_restoring_restores_what_was_read(tmp_path):
    """The torn read of issue 28: the state read at set-up, the weights of a later save."""
    path = tmp_path / "run.zip"
    first = _model(0)
    _callback(path, model=first)[0].save(3)
    resumed = _model(2)
    callback, _ = _callback(path, model=resumed)  # Reads the checkpoint of batch 3.
    later = _model(1)
    later.train_on_batch(*_batches(1)[0])
    _callback(path, model=later)[0].save(5)  # Another process saves meanwhile.
    callback.on_train_begin()
    assert callback.start == 3
    for a, b in zip(first.weights, resumed.weights):  # Batch 3's weights, not batch 5's.
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b))
    assert read_state(path)["batches_done"] == 5  # The file itself is the later one.


def test_state_and_weights_of_two_saves_are_refused(tmp_path):
    one, two = tmp_path / "one.zip", tmp_path / "two.zip"
    _callback(one, model=_model(0))[0].save(3)
    _callback(two, model=_model(1))[0].save(5)
    mixed = tmp_path / "mixed.zip"
    with zipfile.ZipFile(one) as a, zipfile.ZipFile(two) as b, zipfile.ZipFile(mixed, "w") as m:
        m.writestr("state.json", a.read("state.json"))
        m.writestr("model.weights.h5", b.read("model.weights.h5"))
    with pytest.raises(CheckpointError, match=(
        r"The checkpoint .*mixed\.zip holds weights of another save than its state: the state "
        r"\(after 3 batches\) was saved with weights of digest '[0-9a-f]{32}', the weights "
        r"beside it have digest '[0-9a-f]{32}'\. Its parts come from two different saves\."
    )):
        _callback(mixed)


def test_a_checkpoint_of_format_2_is_still_resumed(tmp_path):
    """Format 2 (keras-bn 0.1.0) had no digest: it is read, in one piece, without the check."""
    path = tmp_path / "run.zip"
    model = _model(0)
    _callback(path, model=model)[0].save(4)
    old = tmp_path / "old.zip"
    with zipfile.ZipFile(path) as new, zipfile.ZipFile(old, "w") as archive:
        state = json.loads(new.read("state.json"))
        del state["weights_digest"]
        archive.writestr("state.json", json.dumps({**state, "format": 2}))
        archive.writestr("model.weights.h5", new.read("model.weights.h5"))
    restored = _model(1)
    callback, _ = _callback(old, model=restored)
    callback.on_train_begin()
    assert callback.start == 4
    for a, b in zip(model.weights, restored.weights):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b))


def test_partial_writes_of_a_killed_process_are_removed(tmp_path):
    from keras_bn.experiment.checkpoint import remove_partial_writes

    (tmp_path / "checkpoints").mkdir()
    left = [tmp_path / ".results.json.k2j4_x.tmp", tmp_path / "checkpoints" / ".none-seed0.zip.a1.tmp"]
    kept = [tmp_path / "results.json", tmp_path / "checkpoints" / "none-seed0.zip",
            tmp_path / "notes.tmp"]
    for path in left + kept:
        path.write_bytes(b"x")
    assert remove_partial_writes(tmp_path) == [str(path) for path in left]
    assert all(path.exists() for path in kept) and not any(path.exists() for path in left)
