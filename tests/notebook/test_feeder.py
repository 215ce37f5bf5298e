"""Tests for keras_bn.notebook.feeder.BatchFeeder against TensorFlow 1's `DataSet.next_batch`."""

import json

import numpy as np
import pytest

import keras
from keras_bn.notebook.feeder import BatchFeeder


class ReferenceDataSet:
    """TensorFlow 1's `mnist.DataSet.next_batch`, transcribed, with the shuffles made pluggable.

    `shuffle_order(epoch)` returns the order of the original examples in that
    epoch. TF1 permuted its already permuted arrays; drawing each epoch's order
    of the original arrays directly is the same distribution.
    """

    def __init__(self, images, labels, shuffle_order):
        self._orig_images, self._orig_labels = images, labels
        self._images, self._labels = images, labels
        self._num_examples = len(images)
        self._epochs_completed = 0
        self._index_in_epoch = 0
        self._order = shuffle_order

    def _shuffle(self, epoch):
        perm = self._order(epoch)
        self._images = self._orig_images[perm]
        self._labels = self._orig_labels[perm]

    def next_batch(self, batch_size):
        start = self._index_in_epoch
        if self._epochs_completed == 0 and start == 0:
            self._shuffle(0)
        if start + batch_size > self._num_examples:
            self._epochs_completed += 1
            rest_num_examples = self._num_examples - start
            images_rest_part = self._images[start : self._num_examples]
            labels_rest_part = self._labels[start : self._num_examples]
            self._shuffle(self._epochs_completed)
            start = 0
            self._index_in_epoch = batch_size - rest_num_examples
            end = self._index_in_epoch
            return (
                np.concatenate((images_rest_part, self._images[start:end]), axis=0),
                np.concatenate((labels_rest_part, self._labels[start:end]), axis=0),
            )
        self._index_in_epoch += batch_size
        end = self._index_in_epoch
        return self._images[start:end], self._labels[start:end]


def _data(n, seed=0):
    """Returns `n` distinct images (their value is their id) and one-hot labels."""
    images = np.arange(n, dtype="float32").reshape(n, 1, 1, 1) * np.ones((1, 2, 2, 1), "float32")
    labels = np.eye(10, dtype="float32")[np.random.default_rng(seed).integers(0, 10, n)]
    return images, labels


@pytest.mark.parametrize(
    "n, batch_size", [(10, 3), (12, 4), (7, 7), (5, 1), (11, 10), (100, 32)]
)
def test_matches_tf1_next_batch(n, batch_size):
    images, labels = _data(n)
    feeder = BatchFeeder(images, labels, batch_size, seed=5)
    reference = ReferenceDataSet(
        images, labels, lambda epoch: np.random.default_rng([5, epoch]).permutation(n)
    )
    num = 4 * n // batch_size + 3  # several epochs, across every kind of wrap
    for i in range(num):
        ref_x, ref_y = reference.next_batch(batch_size)
        x, y = feeder.next_batch()
        np.testing.assert_array_equal(x, ref_x)
        np.testing.assert_array_equal(y, ref_y)
        assert x.shape == (batch_size, 2, 2, 1) and y.shape == (batch_size, 10)
        assert feeder.position == i + 1
        # TF1 counts an epoch as completed only once the next batch needs a new one.
        assert feeder.index_in_epoch == reference._index_in_epoch % n
        ref_epochs = reference._epochs_completed + (reference._index_in_epoch == n)
        assert feeder.epochs_completed == ref_epochs


def test_each_epoch_is_a_fresh_permutation():
    n, batch_size = 20, 6
    feeder = BatchFeeder(*_data(n), batch_size, seed=1)
    stream = np.concatenate([feeder.indices(i) for i in range(10)])  # 60 positions, 3 epochs
    epochs = stream.reshape(3, n)
    for epoch in epochs:
        assert sorted(epoch.tolist()) == list(range(n))
    assert not np.array_equal(epochs[0], epochs[1])
    np.testing.assert_array_equal(epochs[2], feeder.permutation(2))


def test_unshuffled_feeder_is_in_order():
    feeder = BatchFeeder(*_data(10), 4, shuffle=False)
    batches = [feeder.indices(i).tolist() for i in range(3)]
    assert batches == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 0, 1]]


def test_deterministic_given_seed():
    images, labels = _data(50)
    a = BatchFeeder(images, labels, 8, seed=3)
    b = BatchFeeder(images, labels, 8, seed=3)
    c = BatchFeeder(images, labels, 8, seed=4)
    for i in range(20):
        np.testing.assert_array_equal(a.batch(i)[0], b.batch(i)[0])
        np.testing.assert_array_equal(a.batch(i)[1], b.batch(i)[1])
    assert any(not np.array_equal(a.indices(i), c.indices(i)) for i in range(20))


def test_seed_none_draws_and_exposes_a_seed():
    images, labels = _data(30)
    a = BatchFeeder(images, labels, 4, seed=None)
    b = BatchFeeder(images, labels, 4, seed=a.seed)
    assert isinstance(a.seed, int) and a.seed >= 0
    np.testing.assert_array_equal(a.indices(9), b.indices(9))


def test_random_access_in_any_order():
    images, labels = _data(23)
    sequential = BatchFeeder(images, labels, 5, seed=2)
    batches = [sequential.next_batch() for _ in range(30)]
    feeder = BatchFeeder(images, labels, 5, seed=2)
    order = np.random.default_rng(0).permutation(30)
    for i in order:
        x, y = feeder.batch(int(i))
        np.testing.assert_array_equal(x, batches[i][0])
        np.testing.assert_array_equal(y, batches[i][1])
    # Asking again gives the same arrays: batch i is a function of i.
    np.testing.assert_array_equal(feeder.batch(7)[0], batches[7][0])


def test_epoch_wrap_is_rest_then_start_of_next_epoch():
    n, batch_size = 10, 4
    feeder = BatchFeeder(*_data(n), batch_size, seed=9)
    wrap = feeder.indices(2)  # positions 8..11: 2 from epoch 0, 2 from epoch 1
    np.testing.assert_array_equal(wrap[:2], feeder.permutation(0)[8:])
    np.testing.assert_array_equal(wrap[2:], feeder.permutation(1)[:2])
    x, _ = feeder.batch(2)
    np.testing.assert_array_equal(x[:, 0, 0, 0], wrap.astype("float32"))


def test_slices_within_an_epoch_are_views_of_the_permutation():
    feeder = BatchFeeder(*_data(40), 8, seed=0)
    assert np.shares_memory(feeder.indices(1), feeder.permutation(0))


def test_pydataset_protocol_and_start():
    images, labels = _data(30)
    feeder = BatchFeeder(images, labels, 4, seed=1, num_batches=6, start=10)
    assert isinstance(feeder, keras.utils.PyDataset)
    assert len(feeder) == 6 and feeder.num_batches == 6
    for j in range(6):
        np.testing.assert_array_equal(feeder[j][0], feeder.batch(10 + j)[0])
    with pytest.raises(IndexError, match="out of range"):
        feeder[6]
    assert len(BatchFeeder(images, labels, 4)) == 30 // 4  # default: one pass


def test_fit_trains_on_batch_j_at_step_j():
    """Replays SGD on a 1-weight linear model in NumPy, in the feeder's batch order."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 1)).astype("float32")
    y = (3.0 * x + rng.normal(size=(20, 1))).astype("float32")
    feeder = BatchFeeder(x, y, 6, seed=4, num_batches=9)
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((1,)), keras.layers.Dense(1, use_bias=False, kernel_initializer="zeros")]
    )
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    seen = []

    class Record(keras.callbacks.Callback):
        """Keeps the weight after each batch (`self.model` syncs the JAX state)."""

        def on_train_batch_end(self, batch, logs=None):
            kernel = self.model.layers[0].kernel
            seen.append((batch, float(keras.ops.convert_to_numpy(kernel)[0, 0])))

    model.fit(feeder, epochs=1, shuffle=False, callbacks=[Record()], verbose=0)
    w, expected = 0.0, []
    for j in range(9):
        xb, yb = feeder.batch(j)
        w -= 0.1 * float(np.mean(2.0 * (w * xb - yb) * xb))
        expected.append((j, w))
    assert [b for b, _ in seen] == list(range(9))
    np.testing.assert_allclose([v for _, v in seen], [v for _, v in expected], rtol=1e-5)


def test_state_round_trip_and_resume():
    images, labels = _data(25)
    feeder = BatchFeeder(images, labels, 7, seed=11, num_batches=12)
    for _ in range(5):
        feeder.next_batch()
    state = feeder.get_state()
    assert json.loads(json.dumps(state)) == state
    assert state["position"] == 5 and state["seed"] == 11
    clone = BatchFeeder.from_state(images, labels, state)
    assert clone.get_state() == state
    resumed = BatchFeeder.from_state(images, labels, state, start=state["position"], num_batches=7)
    for j in range(7):
        np.testing.assert_array_equal(resumed[j][0], feeder.batch(5 + j)[0])
    np.testing.assert_array_equal(clone.next_batch()[0], feeder.next_batch()[0])
    with pytest.raises(ValueError, match="number of examples the state was taken with"):
        BatchFeeder.from_state(images[:5], labels[:5], state)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"batch_size": 0}, r"`batch_size` must be a positive int. Received: batch_size=0"),
        ({"batch_size": 2.0}, r"`batch_size` must be a positive int"),
        ({"batch_size": 11}, r"`batch_size` must be at most the number of examples \(10\)"),
        ({"seed": -1}, r"`seed` must be an int >= 0. Received: seed=-1"),
        ({"num_batches": 0}, r"`num_batches` must be a positive int"),
        ({"start": -2}, r"`start` must be an int >= 0"),
        ({"shuffle": "yes"}, r"`shuffle` must be a bool"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    images, labels = _data(10)
    args = {"batch_size": 3, **kwargs}
    with pytest.raises(ValueError, match=match):
        BatchFeeder(images, labels, **args)


def test_mismatched_or_empty_arrays_raise():
    images, labels = _data(10)
    with pytest.raises(ValueError, match="same first dimension"):
        BatchFeeder(images, labels[:9], 2)
    with pytest.raises(ValueError, match="at least one example"):
        BatchFeeder(images[:0], labels[:0], 1)
