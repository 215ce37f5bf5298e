"""Checkpoints of a run: one atomic zip of `model.weights.h5` (with the optimizer) and the state."""

import contextlib
import hashlib
import io
import json
import os
import tempfile
import zipfile

import keras

from keras_bn import _keras_compat
from keras_bn.experiment.interrupt import TrainingInterrupted

__all__ = ["CheckpointError", "CheckpointMismatchError", "RunCheckpoint", "atomic_write",
           "read_checkpoint", "remove_partial_writes"]

#: Version of the checkpoint layout written: 3 adds the weights' digest to the state.
FORMAT_VERSION = 3
#: The versions read; a file of another version is refused.
READABLE_FORMATS = (2, 3)
#: How the temporary file of an `atomic_write` ends (it starts with `.` and the file's name).
_TEMPORARY_SUFFIX = ".tmp"


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read or used; the message names the file."""


class CheckpointMismatchError(CheckpointError):
    """A checkpoint written by a run with a different configuration; it is never resumed."""


def _sync_folder(folder):
    """Flushes a folder's entries (a rename in it) to disk, where the system allows it."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # Windows cannot open a folder.
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path, write, *, binary=True):
    """Writes a file so that `path` holds either its old content or the complete new one.

    `write(f)` writes to a temporary file in the same folder, which is then
    flushed, synced, renamed over `path` (`os.replace`, atomic) and the folder
    synced. If `write` raises, the temporary file is removed and `path` is
    untouched. Returns `path`.
    """
    path = os.fspath(path)
    folder, name = os.path.split(os.path.abspath(path))
    fd, temporary = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=_TEMPORARY_SUFFIX)
    try:
        with os.fdopen(fd, "wb" if binary else "w", encoding=None if binary else "utf-8") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    _sync_folder(folder)
    return path


def remove_partial_writes(folder):
    """Removes the temporary files of `atomic_write`s in `folder` that a killed process left.

    A process killed while writing (`kill -9`, a power cut) leaves its
    temporary file, never a half-written target. Call it only while holding
    the folder (`keras_bn.experiment.lock.RunLock`): another process's
    temporary file may still be in use. Looks in `folder` and its
    `checkpoints/`; returns the paths removed.
    """
    removed = []
    for where in (folder, os.path.join(folder, "checkpoints")):
        names = os.listdir(where) if os.path.isdir(where) else []
        for name in sorted(names):
            if name.startswith(".") and name.endswith(_TEMPORARY_SUFFIX):
                os.unlink(os.path.join(where, name))
                removed.append(os.path.join(where, name))
    return removed


def _build_optimizer(model):
    """Builds `model`'s optimizer if needed: `save_weights`/`load_weights` skip an unbuilt one."""
    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)


def _digest(data):
    """Returns the hex digest that ties a checkpoint's state to the weights saved with it."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def _save(path, model, state):
    """Writes `model.save_weights` (weights and optimizer variables) and `state` to `path`.

    The state records the digest of the weights it was saved with, so that a
    reader can tell that both come from this one save.
    """
    _build_optimizer(model)
    _keras_compat.reuse_saving_skipsets()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        weights = os.path.join(scratch, "model.weights.h5")
        model.save_weights(weights)
        with open(weights, "rb") as f:
            weights = f.read()
    state = {"format": FORMAT_VERSION, **state, "weights_digest": _digest(weights)}

    def write(f):
        """Writes the zip archive."""
        with zipfile.ZipFile(f, "w") as archive:
            archive.writestr("state.json", json.dumps(state))
            archive.writestr("model.weights.h5", weights)

    return atomic_write(path, write)


def _unreadable(path, error):
    """Returns the `CheckpointError` for a checkpoint `path` that `error` kept from being read."""
    return CheckpointError(f"Cannot read the checkpoint {path}: {type(error).__name__}: {error}. "
                           "Delete it to start that run over.")


def read_checkpoint(path):
    """Returns the state (a dict) and the weights file (bytes) of the checkpoint `path`.

    The file is read once, whole: another process that replaces it meanwhile
    cannot give the state of one save and the weights of the next. The state's
    `weights_digest` must be that of the weights beside it.

    Raises:
        CheckpointError: if the file cannot be read, is of another format, or
            holds weights other than those its state was saved with.
    """
    try:
        with open(path, "rb") as f:
            archive = zipfile.ZipFile(io.BytesIO(f.read()))
        state = json.loads(archive.read("state.json"))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as error:
        raise _unreadable(path, error) from error
    found = state.get("format") if isinstance(state, dict) else None
    if found not in READABLE_FORMATS:
        raise CheckpointError(
            f"The checkpoint {path} has format {found!r}; this keras-bn reads formats "
            f"{' and '.join(map(str, READABLE_FORMATS))}. Delete it to start that run over."
        )
    try:
        weights = archive.read("model.weights.h5")
    except (KeyError, zipfile.BadZipFile) as error:
        raise _unreadable(path, error) from error
    saved_with = state.get("weights_digest")
    if found >= 3 and saved_with != _digest(weights):
        raise CheckpointError(
            f"The checkpoint {path} holds weights of another save than its state: the state "
            f"(after {state.get('batches_done')!r} batches) was saved with weights of digest "
            f"{saved_with!r}, the weights beside it have digest {_digest(weights)!r}. Its parts "
            "come from two different saves. Delete it to start that run over."
        )
    return state, weights


def read_state(path):
    """Returns the JSON state of the checkpoint `path`; raises `CheckpointError` if unusable."""
    return read_checkpoint(path)[0]


def _restore(path, model, weights):
    """Loads `weights` (the bytes of the checkpoint `path`'s weights file) into `model`."""
    _build_optimizer(model)
    with tempfile.TemporaryDirectory() as scratch:
        scratch_file = os.path.join(scratch, "model.weights.h5")
        with open(scratch_file, "wb") as f:
            f.write(weights)
        try:
            model.load_weights(scratch_file)
        except ValueError as error:
            raise CheckpointError(f"The weights in {path} do not fit the model: {error}") from error


def check_config(path, saved, current):
    """Raises `CheckpointMismatchError` unless the dicts `saved` and `current` are equal.

    The message names every differing key with both values.
    """
    saved = saved if isinstance(saved, dict) else {}
    keys = list(current) + [key for key in saved if key not in current]
    differences = "; ".join(
        f"{key}: {saved.get(key, '<missing>')!r} there, {current.get(key, '<missing>')!r} now"
        for key in keys if saved.get(key, "<missing>") != current.get(key, "<missing>")
    )
    if differences:
        raise CheckpointMismatchError(
            f"The checkpoint {path} was written by a run with another configuration "
            f"({differences}). Resuming it would mix two experiments. Delete the checkpoint "
            "to start that run over."
        )


class RunCheckpoint(keras.callbacks.Callback):
    """Owns a run's checkpoint, as `keras.callbacks.BackupAndRestore` does: restore, save, stop.

    Made before training, it reads an existing checkpoint at `path` once,
    whole (refusing one whose `identity` differs from the run's, or whose
    state and weights come from different saves), so the run knows where to
    resume; `on_train_begin` then loads the weights and the optimizer's
    variables read with that state into the model, whatever has happened to
    the file since. After each batch it saves when a new
    multiple of `every` batches is done and, if `stop.requested`, saves and
    raises `TrainingInterrupted`: this is the one place a run decides to stop.

    Args:
        path: The checkpoint file, or `None` to save nothing (the callback then
            only stops on request).
        identity: The dict a checkpoint must hold to be resumed (the
            configuration, the variant and seed, the data's fingerprint).
        state_fn: `state_fn(batches_done, result)` returns the JSON state to save.
        every: Save every this many batches.
        total: The run's number of batches.
        stop: A `StopOnSignal` (anything with `requested` and `signal_number`).
        run: Names the run in `TrainingInterrupted`.
    """

    def __init__(self, path, identity, state_fn, *, every, total, stop, run):
        super().__init__()
        self.path, self.identity, self.state_fn = path, identity, state_fn
        self.every, self.total, self.stop, self.run = every, total, stop, run
        self.saved, self._weights = None, None
        if path is not None and os.path.exists(path):
            self.saved, self._weights = read_checkpoint(path)
            check_config(path, self.saved.get("identity"), json.loads(json.dumps(identity)))
            if self.saved.get("finished"):
                self._weights = None  # A finished run is not trained again.
        self.start = self.saved["batches_done"] if self.saved else 0
        self._last = self.start

    def on_train_begin(self, logs=None):
        """Restores the weights and optimizer state read with the state, once."""
        if self._weights is not None:
            strategy = getattr(self.model, "distribute_strategy", None)  # TensorFlow only.
            with contextlib.nullcontext() if strategy is None else strategy.scope():
                _restore(self.path, self.model, self._weights)
            self._weights = None

    def on_train_batch_end(self, batch, logs=None):
        """Saves at a new multiple of `every`; on a stop request saves and raises."""
        done = self.start + int(batch) + 1
        if done >= self.total:  # The run saves its result when it finishes.
            return
        # Read once: a signal that arrived between a read that saves nothing and a
        # second read that stops would stop the run without saving these batches.
        stopping = self.stop.requested
        if stopping or (self.path and done // self.every > self._last // self.every):
            self.save(done)
        if stopping:
            self._interrupt(done)

    def save(self, done, result=None):
        """Writes the checkpoint after `done` batches (with `result` once finished)."""
        if self.path is not None:
            _save(self.path, self.model, {"identity": self.identity, **self.state_fn(done, result)})
            self._last = done

    def stop_if_requested(self, done=None):
        """Raises `TrainingInterrupted` if a stop was requested (`done=None`: run finished)."""
        if self.stop.requested:
            self._interrupt(done)

    def _interrupt(self, done):
        """Raises `TrainingInterrupted` for the requested stop after `done` batches."""
        raise TrainingInterrupted(
            self.stop.signal_number, batches_done=done, total=self.total,
            checkpoint=self.path, run=self.run,
        )
