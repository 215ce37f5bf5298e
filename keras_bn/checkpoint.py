"""Checkpoints of a training run: one atomic file with the weights, optimizer, RNG and run state."""

import json
import os
import random
import tempfile
import zipfile
from dataclasses import dataclass, field

import keras
import numpy as np

from keras_bn.interrupt import TrainingInterrupted

__all__ = [
    "Checkpoint",
    "CheckpointCallback",
    "CheckpointError",
    "CheckpointMismatchError",
    "atomic_write",
    "check_config",
    "load_checkpoint",
    "restore_checkpoint",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
]

#: Version of the checkpoint layout; a file of another version is refused.
FORMAT_VERSION = 1

_STATE_KEY = "state"
_WEIGHT_PREFIX = "weight_"
_OPTIMIZER_PREFIX = "optimizer_"


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read or used; the message names the file."""


class CheckpointMismatchError(CheckpointError):
    """A checkpoint written by a run with a different configuration; it is never resumed."""


def atomic_write(path, write, *, binary=True):
    """Writes a file so that `path` holds either its old content or the complete new one.

    `write(f)` writes to a temporary file in the same folder; after it
    returns, the file is flushed, synced to disk and renamed over `path` with
    `os.replace`, which is atomic on POSIX and Windows. If `write` raises (or
    the process dies) the temporary file is removed (or left under a
    `.<name>.*.tmp` name) and `path` is untouched.

    Args:
        path: The file to write.
        write: Called with the open temporary file.
        binary: Whether the file is opened in binary mode; text mode uses
            UTF-8. Defaults to `True`.

    Returns:
        `path`.
    """
    path = os.fspath(path)
    folder, name = os.path.split(os.path.abspath(path))
    fd, temporary = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
    try:
        mode = "wb" if binary else "w"
        encoding = None if binary else "utf-8"
        with os.fdopen(fd, mode, encoding=encoding) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        raise
    return path


# --- Random number generators ------------------------------------------------


def _keras_global_seed_generator(create=False):
    """Returns Keras's global `SeedGenerator` (used by unseeded `keras.random` calls), or `None`."""
    try:
        from keras.src.random import seed_generator
    except ImportError:  # A Keras without it: nothing to save.
        return None
    if create:
        return seed_generator.global_seed_generator()
    from keras.src.backend.common import global_state

    return global_state.get_global_attribute(seed_generator.GLOBAL_SEED_GENERATOR)


def rng_state():
    """Returns the global random state as a JSON-serializable dict.

    It holds Python's `random` state, NumPy's global `np.random` state, and the
    state of Keras's global `SeedGenerator` when one exists. These are what
    `keras.utils.set_random_seed` seeds; `set_rng_state` puts them back.
    """
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
    }
    generator = _keras_global_seed_generator()
    if generator is not None:
        state["keras"] = np.asarray(keras.ops.convert_to_numpy(generator.state)).tolist()
    return state


def set_rng_state(state):
    """Restores the global random state that `rng_state` returned."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    if "keras" in state:
        generator = _keras_global_seed_generator(create=True)
        if generator is not None:
            generator.state.assign(
                np.asarray(state["keras"], dtype=keras.backend.standardize_dtype(
                    generator.state.dtype
                ))
            )


# --- Files ------------------------------------------------------------------


@dataclass
class Checkpoint:
    """A checkpoint read back by `load_checkpoint`.

    Attributes:
        path: The file it was read from.
        state: The JSON state saved with it (a dict with at least `format`).
        weights: `model.get_weights()` at save time, a list of arrays.
        optimizer_variables: The values of `model.optimizer.variables`
            (iteration count, learning rate, Adam's moments), a list of arrays.
    """

    path: str
    state: dict
    weights: list = field(default_factory=list)
    optimizer_variables: list = field(default_factory=list)


def _numbered(prefix, arrays):
    """Returns `{prefix0000: arrays[0], ...}`, zero-padded so that sorting keeps the order."""
    return {f"{prefix}{k:04d}": np.asarray(a) for k, a in enumerate(arrays)}


def save_checkpoint(path, model, state):
    """Saves `model`'s weights and optimizer variables with `state` to `path`, atomically.

    The file is a NumPy `.npz` archive: every weight of the model (trainable
    or not, so the moving statistics of batch normalization too), every
    variable of its optimizer (for Adam: the iteration count, the learning
    rate and both moments of every weight, so the next update is the one an
    uninterrupted run would make), and `state` as UTF-8 JSON. It is written
    by `atomic_write`: a crash while saving leaves the previous checkpoint.

    Args:
        path: The file to write (by convention ending in `.npz`).
        model: A Keras model; its optimizer is saved when it has been built.
        state: A JSON-serializable dict (run position, history, ...).

    Returns:
        `path`.
    """
    state = {"format": FORMAT_VERSION, **state}
    payload = json.dumps(state).encode("utf-8")
    arrays = {_STATE_KEY: np.frombuffer(payload, dtype=np.uint8)}
    arrays.update(_numbered(_WEIGHT_PREFIX, model.get_weights()))
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None and optimizer.built:
        arrays.update(_numbered(_OPTIMIZER_PREFIX, [v.numpy() for v in optimizer.variables]))
    return atomic_write(path, lambda f: np.savez(f, **arrays))


def load_checkpoint(path, *, arrays=True):
    """Reads a checkpoint that `save_checkpoint` wrote.

    Args:
        path: The file.
        arrays: Whether to read the weights and optimizer variables too; with
            `False` only `state` is read (quick, for checking a configuration).
            Defaults to `True`.

    Returns:
        A `Checkpoint`.

    Raises:
        CheckpointError: if the file cannot be read, is not such a checkpoint,
            or is of another format version.
    """
    path = os.fspath(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            state = json.loads(archive[_STATE_KEY].tobytes().decode("utf-8"))
            weights, variables = [], []
            if arrays:
                names = sorted(archive.files)
                weights = [archive[n] for n in names if n.startswith(_WEIGHT_PREFIX)]
                variables = [archive[n] for n in names if n.startswith(_OPTIMIZER_PREFIX)]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
        raise CheckpointError(
            f"Cannot read the checkpoint {path}: {type(error).__name__}: {error}. "
            "Delete it to start that run over."
        ) from error
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
        found = state.get("format") if isinstance(state, dict) else None
        raise CheckpointError(
            f"The checkpoint {path} has format {found!r}; this keras-bn reads format "
            f"{FORMAT_VERSION}. Delete it to start that run over."
        )
    return Checkpoint(path, state, weights, variables)


def restore_checkpoint(model, checkpoint, *, rng=True):
    """Loads a `Checkpoint`'s weights and optimizer state into `model` (and the RNG state).

    `model` must be built and compiled like the saved one. Its optimizer is
    built first when it is not, then every variable is assigned the saved
    value. Under a `tf.distribute` strategy call this inside its `scope()`.

    Args:
        model: The model to restore into.
        checkpoint: A `Checkpoint` from `load_checkpoint`.
        rng: Whether to restore the global random state saved in
            `checkpoint.state["rng"]`, when there is one. Defaults to `True`.

    Raises:
        CheckpointError: if the saved weights or optimizer variables do not fit
            the model.
    """
    try:
        model.set_weights(checkpoint.weights)
    except ValueError as error:
        raise CheckpointError(
            f"The weights in {checkpoint.path} do not fit the model: {error}"
        ) from error
    saved = checkpoint.optimizer_variables
    if saved:
        optimizer = model.optimizer
        if not optimizer.built:
            optimizer.build(model.trainable_variables)
        variables = optimizer.variables
        shapes = [tuple(v.shape) for v in variables]
        if shapes != [tuple(a.shape) for a in saved]:
            raise CheckpointError(
                f"The optimizer state in {checkpoint.path} does not fit the model's "
                f"optimizer: {len(saved)} saved variables, {len(variables)} expected"
            )
        for variable, value in zip(variables, saved):
            variable.assign(value)
    if rng and "rng" in checkpoint.state:
        set_rng_state(checkpoint.state["rng"])


def check_config(checkpoint, config):
    """Raises `CheckpointMismatchError` unless `checkpoint.state["config"]` equals `config`.

    The configuration is compared after a JSON round trip, so tuples and lists
    are alike. The message names every differing key with both values.
    """
    saved = checkpoint.state.get("config")
    config = json.loads(json.dumps(config))
    if saved == config:
        return
    saved = saved if isinstance(saved, dict) else {}
    keys = [k for k in list(config) + [k for k in saved if k not in config]
            if saved.get(k, "<missing>") != config.get(k, "<missing>")]
    differences = "; ".join(
        f"{k}: {saved.get(k, '<missing>')!r} there, {config.get(k, '<missing>')!r} now"
        for k in keys
    )
    raise CheckpointMismatchError(
        f"The checkpoint {checkpoint.path} was written by a run with another "
        f"configuration ({differences}). Resuming it would mix two experiments. "
        "Use another output folder, or delete the checkpoint to start that run over."
    )


# --- The callback -------------------------------------------------------------


class CheckpointCallback(keras.callbacks.Callback):
    """Saves a checkpoint every `every` batches, and on a stop request, then stops.

    After training batch `i` (`batch_offset` plus the index `fit` reports),
    `i + 1` batches are done. A checkpoint is written when that count reaches
    a new multiple of `every` since the last save, so the callback may be
    called after every batch or only at some (a loop that reports every 25th
    batch still saves once per `every`). If `stop.requested` is true it writes
    a checkpoint and raises `TrainingInterrupted`, which ends `fit` without its
    `on_train_end`. Nothing is written once all `total` batches are done: the
    run is about to finish, and a stop requested then is left to the caller.

    Args:
        path: The checkpoint file, or `None` to save nothing (the callback then
            only stops on request).
        state_fn: Called as `state_fn(batches_done)`; returns the JSON state to
            save with the weights. Defaults to `None`: `{"batches_done": n}`.
        every: Save every this many batches. Defaults to `100`.
        total: The run's number of batches, or `None` if unknown. Defaults to
            `None`.
        batch_offset: Added to the batch index `fit` reports (the feeder's
            `start` when resuming). Defaults to `0`.
        stop: Anything with `requested` and `signal_number`, typically a
            `keras_bn.interrupt.StopOnSignal`, or `None`. Defaults to `None`.
        run: Names the run in the `TrainingInterrupted` message. Defaults to
            `None`.

    Raises:
        ValueError: if `every` is not a positive int.
    """

    def __init__(
        self, path, state_fn=None, *, every=100, total=None, batch_offset=0, stop=None, run=None
    ):
        super().__init__()
        if isinstance(every, bool) or not isinstance(every, (int, np.integer)) or every < 1:
            raise ValueError(f"`every` must be a positive int. Received: every={every!r}")
        self.path = None if path is None else os.fspath(path)
        self.state_fn = state_fn or (lambda done: {"batches_done": done})
        self.every = int(every)
        self.total = None if total is None else int(total)
        self.batch_offset = int(batch_offset)
        self.stop = stop
        self.run = run
        self.saves = 0
        self._last_done = self.batch_offset

    def save(self, batches_done):
        """Writes the checkpoint for `batches_done` batches and returns its path."""
        save_checkpoint(self.path, self.model, self.state_fn(batches_done))
        self._last_done = batches_done
        self.saves += 1
        return self.path

    def on_train_begin(self, logs=None):
        """Counts from the batches done before this `fit`."""
        self._last_done = max(self._last_done, self.batch_offset)

    def on_train_batch_end(self, batch, logs=None):
        """Saves at a new multiple of `every`; on a stop request saves and raises."""
        done = self.batch_offset + int(batch) + 1
        if self.total is not None and done >= self.total:
            return
        if self.stop is not None and self.stop.requested:
            path = self.save(done) if self.path is not None else None
            raise TrainingInterrupted(
                self.stop.signal_number,
                batches_done=done,
                total=self.total,
                checkpoint=path,
                run=self.run,
            )
        if self.path is not None and done // self.every > self._last_done // self.every:
            self.save(done)
