"""Checkpoints of a run: one atomic zip of `model.weights.h5` (with the optimizer) and the state."""

import contextlib
import json
import os
import tempfile
import zipfile

import keras

from keras_bn.experiment.interrupt import TrainingInterrupted

try:  # Keras's global state, where `saving_lib.get_attr_skipset` keeps what it computed.
    from keras.src.backend.common import global_state
except ImportError:  # pragma: no cover - a Keras that moved it: saves stay as fast as Keras's.
    global_state = None

__all__ = ["CheckpointError", "CheckpointMismatchError", "RunCheckpoint", "atomic_write"]

#: Version of the checkpoint layout; a file of another version is refused.
FORMAT_VERSION = 2


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
    fd, temporary = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
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


def _build_optimizer(model):
    """Builds `model`'s optimizer if needed: `save_weights`/`load_weights` skip an unbuilt one."""
    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)


def _reuse_keras_skipsets():
    """Lets Keras's `save_weights` reuse the attribute sets it computed at an earlier save.

    Keras 3.15's `saving_lib.get_attr_skipset` stores each set under
    `saving_attr_skipset_<kind>` but looks it up under `saving_attr_skiplist_<kind>`,
    so every save builds the sets again from throwaway layers and optimizers: 35 of
    a checkpoint's 86 ms on the notebook's network. This files each stored set
    under the name Keras reads. The sets are Keras's own, the same at every save.
    """
    if global_state is None:
        return
    for kind in ("Operation", "Layer", "Functional", "Sequential", "Metric", "Optimizer", "Loss"):
        stored = global_state.get_global_attribute(f"saving_attr_skipset_{kind}")
        if stored is not None and global_state.get_global_attribute(f"saving_attr_skiplist_{kind}") is None:
            global_state.set_global_attribute(f"saving_attr_skiplist_{kind}", stored)


def _save(path, model, state):
    """Writes `model.save_weights` (weights and optimizer variables) and `state` to `path`."""
    _build_optimizer(model)
    _reuse_keras_skipsets()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        weights = os.path.join(scratch, "model.weights.h5")
        model.save_weights(weights)

        def write(f):
            """Writes the zip archive."""
            with zipfile.ZipFile(f, "w") as archive:
                archive.writestr("state.json", json.dumps({"format": FORMAT_VERSION, **state}))
                archive.write(weights, "model.weights.h5")

        return atomic_write(path, write)


def _read(path, member):
    """Returns the bytes of `member` of the checkpoint `path`, or raises `CheckpointError`."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.read(member)
    except (OSError, KeyError, zipfile.BadZipFile) as error:
        raise CheckpointError(
            f"Cannot read the checkpoint {path}: {type(error).__name__}: {error}. "
            "Delete it to start that run over."
        ) from error


def read_state(path):
    """Returns the JSON state of the checkpoint `path`; raises `CheckpointError` if unusable."""
    try:
        state = json.loads(_read(path, "state.json"))
    except ValueError as error:
        if isinstance(error, CheckpointError):
            raise
        raise CheckpointError(f"Cannot read the checkpoint {path}: {error}") from error
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
        found = state.get("format") if isinstance(state, dict) else None
        raise CheckpointError(
            f"The checkpoint {path} has format {found!r}; this keras-bn reads format "
            f"{FORMAT_VERSION}. Delete it to start that run over."
        )
    return state


def _restore(path, model):
    """Loads the weights and optimizer variables of the checkpoint `path` into `model`."""
    _build_optimizer(model)
    with tempfile.TemporaryDirectory() as scratch:
        weights = os.path.join(scratch, "model.weights.h5")
        with open(weights, "wb") as f:
            f.write(_read(path, "model.weights.h5"))
        try:
            model.load_weights(weights)
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

    Made before training, it reads the state of an existing checkpoint at
    `path` (refusing one whose `identity` differs from the run's) so the run
    knows where to resume; `on_train_begin` then loads the weights and the
    optimizer's variables into the model. After each batch it saves when a new
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
        self.saved = None
        if path is not None and os.path.exists(path):
            self.saved = read_state(path)
            check_config(path, self.saved.get("identity"), json.loads(json.dumps(identity)))
        self.start = self.saved["batches_done"] if self.saved else 0
        self._last, self._restored = self.start, self.saved is None

    def on_train_begin(self, logs=None):
        """Restores the saved weights and optimizer state, once."""
        if not self._restored:
            strategy = getattr(self.model, "distribute_strategy", None)  # TensorFlow only.
            with contextlib.nullcontext() if strategy is None else strategy.scope():
                _restore(self.path, self.model)
            self._restored = True

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
