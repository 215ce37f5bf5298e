"""`BatchFeeder`: the notebook's `mnist.train.next_batch`, seeded and with random access."""

import keras
import numpy as np

__all__ = ["BatchFeeder"]


def _check_int(name, value, minimum):
    """Returns `int(value)`, raising a `ValueError` naming `name` unless an int >= `minimum`."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        rule = "a positive int" if minimum == 1 else f"an int >= {minimum}"
        raise ValueError(f"`{name}` must be {rule}. Received: {name}={value!r}")
    return int(value)


class BatchFeeder(keras.utils.PyDataset):
    """The notebook's `mnist.train.next_batch(batch_size)`, deterministic and random access.

    TensorFlow 1's `DataSet.next_batch` shuffles the training set at the start
    of every epoch (pass over the data) and hands out consecutive slices of
    `batch_size` examples. When an epoch runs out mid-batch, the batch is the
    rest of that epoch followed by the start of the next, freshly shuffled,
    epoch. `BatchFeeder` yields exactly that stream, with each epoch's
    permutation drawn from `numpy.random.default_rng([seed, epoch])`, so that:

    - batch `i` covers positions `[i * batch_size, (i + 1) * batch_size)` of
      the endless stream `perm_0 ++ perm_1 ++ ...`, where position `p` is
      example `perm_{p // n}[p % n]` of the `n` training examples;
    - `feeder.batch(i)` returns batch `i` at any time, in any order, always
      the same arrays, which lets a callback look at the batch that was just
      trained on without a second pass over the data;
    - two feeders with the same seed and batch size feed the same batches,
      so every model variant of an experiment sees the same order.

    Each batch is one gather (`numpy.take`) through a slice of a cached
    permutation; the dataset itself is never copied or reshuffled.

    It is a `keras.utils.PyDataset` of `num_batches` batches
    `(images, labels)`, so it can be passed straight to `model.fit`;
    `feeder[j]` is `feeder.batch(start + j)`. For `next_batch`-style
    sequential use, `feeder.next_batch()` returns batch `position` and
    advances `position`.

    !!! warning
        Pass `shuffle=False` (and `epochs=1`) to `model.fit`: Keras's default
        `shuffle=True` would reorder the batches of a `PyDataset`, so batch
        `j` of the fit would no longer be `feeder[j]`. The shuffling the
        notebook does happens inside the feeder.

    Args:
        images: Array of training inputs, first axis the examples.
        labels: Array of training targets with the same first dimension.
        batch_size: Examples per batch; at most the number of examples.
        seed: Non-negative int seeding the epoch permutations. `None` draws
            one from the operating system; read it back from `feeder.seed`.
            Defaults to `0`.
        num_batches: Number of batches `len(feeder)` that `model.fit` sees.
            Defaults to `None`, one pass: `len(images) // batch_size`.
        start: Index of the batch that `feeder[0]` returns, to resume a run
            that already trained on batches `0 .. start - 1`. Also the
            initial `position`. Defaults to `0`.
        shuffle: Whether to shuffle at each epoch start; with `False` every
            epoch is the data in order. Defaults to `True`.
        **kwargs: `keras.utils.PyDataset` arguments (`workers`,
            `use_multiprocessing`, `max_queue_size`). Batches are pure
            functions of their index, so any of them is safe.

    Raises:
        ValueError: if the arrays are empty or disagree in length, or an int
            argument is out of range.

    Example:

    >>> import numpy as np
    >>> x = np.arange(10, dtype="float32")
    >>> feeder = BatchFeeder(x, x, batch_size=4, seed=0, num_batches=5)
    >>> len(feeder), feeder.batch(2)[0].shape
    (5, (4,))
    >>> first_pass = [feeder.batch(0)[0], feeder.batch(1)[0], feeder.batch(2)[0][:2]]
    >>> sorted(np.concatenate(first_pass).tolist())
    [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]
    """

    def __init__(
        self,
        images,
        labels,
        batch_size,
        *,
        seed=0,
        num_batches=None,
        start=0,
        shuffle=True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        images = np.asarray(images)
        labels = np.asarray(labels)
        if images.ndim == 0 or labels.ndim == 0 or len(images) != len(labels):
            raise ValueError(
                "`images` and `labels` must be arrays with the same first "
                f"dimension. Received: images.shape={images.shape}, "
                f"labels.shape={labels.shape}"
            )
        if len(images) == 0:
            raise ValueError("`images` must hold at least one example. Received: 0")
        self._images = images
        self._labels = labels
        self._num_examples = len(images)
        self._batch_size = _check_int("batch_size", batch_size, 1)
        if self._batch_size > self._num_examples:
            raise ValueError(
                "`batch_size` must be at most the number of examples "
                f"({self._num_examples}). Received: batch_size={batch_size!r}"
            )
        if seed is None:
            seed = int(np.random.SeedSequence().entropy % 2**63)
        self._seed = _check_int("seed", seed, 0)
        if num_batches is None:
            num_batches = self._num_examples // self._batch_size
        self._num_batches = _check_int("num_batches", num_batches, 1)
        self._start = _check_int("start", start, 0)
        if not isinstance(shuffle, bool):
            raise ValueError(f"`shuffle` must be a bool. Received: shuffle={shuffle!r}")
        self._shuffle = shuffle
        self.position = self._start
        self._perm_cache = {}

    # --- The stream --------------------------------------------------------

    @property
    def images(self):
        """The training inputs the batches are taken from (not copied)."""
        return self._images

    @property
    def labels(self):
        """The training targets the batches are taken from (not copied)."""
        return self._labels

    @property
    def seed(self):
        """The seed of the epoch permutations."""
        return self._seed

    @property
    def batch_size(self):
        """Examples per batch."""
        return self._batch_size

    @property
    def num_examples(self):
        """Number of training examples, the length of one epoch."""
        return self._num_examples

    @property
    def start(self):
        """Index of the batch that `feeder[0]` returns."""
        return self._start

    @property
    def epochs_completed(self):
        """Epochs fully consumed before batch `position`.

        TF1's `DataSet.epochs_completed` lags by one when a batch ends exactly
        at the end of an epoch: it counts the epoch only when the next batch
        starts a new one.
        """
        return (self.position * self._batch_size) // self._num_examples

    @property
    def index_in_epoch(self):
        """Where in its epoch batch `position` starts (TF1's `_index_in_epoch`, mod the epoch)."""
        return (self.position * self._batch_size) % self._num_examples

    def epoch_seed(self, epoch):
        """Returns the seed sequence entropy `[seed, epoch]` that draws epoch `epoch`'s order."""
        return [self._seed, int(epoch)]

    def permutation(self, epoch):
        """Returns the (read-only) order of the examples in epoch `epoch`."""
        epoch = _check_int("epoch", epoch, 0)
        perm = self._perm_cache.get(epoch)
        if perm is None:
            if self._shuffle:
                rng = np.random.default_rng(self.epoch_seed(epoch))
                perm = rng.permutation(self._num_examples)
            else:
                perm = np.arange(self._num_examples)
            perm.flags.writeable = False
            if len(self._perm_cache) >= 4:
                self._perm_cache.clear()  # A batch spans at most 2 epochs.
            self._perm_cache[epoch] = perm
        return perm

    def indices(self, i):
        """Returns the example indices of batch `i` (an array of `batch_size` ints)."""
        i = _check_int("i", i, 0)
        begin = i * self._batch_size
        end = begin + self._batch_size
        first_epoch, offset = divmod(begin, self._num_examples)
        last_epoch = (end - 1) // self._num_examples
        if first_epoch == last_epoch:
            # The common case: a slice (a view) of one permutation.
            return self.permutation(first_epoch)[offset : offset + self._batch_size]
        # The rest of this epoch, then the start of the next one, as TF1 did.
        # batch_size <= num_examples, so a batch spans at most two epochs.
        rest = self.permutation(first_epoch)[offset:]
        head = self.permutation(last_epoch)[: self._batch_size - len(rest)]
        return np.concatenate([rest, head])

    def batch(self, i):
        """Returns batch `i` of the stream as `(images, labels)` (0-based, unbounded)."""
        idx = self.indices(i)
        return np.take(self._images, idx, axis=0), np.take(self._labels, idx, axis=0)

    def next_batch(self):
        """Returns batch `position` and advances `position`, like TF1's `next_batch`."""
        batch = self.batch(self.position)
        self.position += 1
        return batch

    # --- keras.utils.PyDataset --------------------------------------------

    def __len__(self):
        """Number of batches `model.fit` runs: `num_batches`."""
        return self._num_batches

    def __getitem__(self, index):
        """Returns `batch(start + index)` for `0 <= index < len(self)`."""
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"Batch index must be an int. Received: {index!r}")
        if not 0 <= index < self._num_batches:
            raise IndexError(
                f"Batch index out of range [0, {self._num_batches}). Received: {index}"
            )
        return self.batch(self._start + int(index))

    # --- State, for checkpoints --------------------------------------------

    def get_state(self):
        """Returns a JSON-serializable dict from which `from_state` rebuilds this stream.

        The arrays are not included; pass the same ones to `from_state`.
        """
        return {
            "seed": self._seed,
            "batch_size": self._batch_size,
            "num_examples": self._num_examples,
            "num_batches": self._num_batches,
            "start": self._start,
            "position": self.position,
            "shuffle": self._shuffle,
        }

    @classmethod
    def from_state(cls, images, labels, state, *, start=None, num_batches=None, **kwargs):
        """Rebuilds a feeder from `get_state()` over the same arrays.

        Args:
            images: The same training inputs the state was taken from.
            labels: The same training targets.
            state: A dict from `get_state`.
            start: Overrides the state's `start`, e.g. the saved `position`
                to resume feeding where a run stopped. Defaults to `None`
                (keep it).
            num_batches: Overrides the state's `num_batches`. Defaults to
                `None` (keep it).
            **kwargs: Passed on to the constructor.

        Returns:
            A `BatchFeeder` yielding the same batches as the saved one.

        Raises:
            ValueError: if the arrays do not have the saved number of examples.
        """
        if len(images) != state["num_examples"]:
            raise ValueError(
                "The arrays must have the number of examples the state was "
                f"taken with ({state['num_examples']}). Received: {len(images)}"
            )
        feeder = cls(
            images,
            labels,
            state["batch_size"],
            seed=state["seed"],
            num_batches=state["num_batches"] if num_batches is None else num_batches,
            start=state["start"] if start is None else start,
            shuffle=state["shuffle"],
            **kwargs,
        )
        feeder.position = state["position"]
        return feeder
