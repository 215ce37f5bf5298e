"""fit_batches against model.fit: the same step, the same callback calls."""

import numpy as np

import keras
from helpers import to_numpy
from keras_bn import BatchFeeder, ManualBatchNorm
from keras_bn.training import fit_batches


def _model():
    """A small compiled model with batch norm, seeded."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6,))
    h = keras.layers.Dense(8, use_bias=False)(inputs)
    h = keras.layers.ReLU()(ManualBatchNorm(momentum=0.9)(h))
    model = keras.Model(inputs, keras.layers.Dense(3)(h))
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss=keras.losses.BinaryCrossentropy(from_logits=True))
    return model


def _feeder(num_batches):
    """A feeder over 40 random examples with one-hot labels."""
    rng = np.random.default_rng(1)
    images = rng.normal(1.0, 2.0, size=(40, 6)).astype("float32")
    labels = np.eye(3, dtype="float32")[rng.integers(0, 3, 40)]
    return BatchFeeder(images, labels, 8, seed=0, num_batches=num_batches)


class _Recorder(keras.callbacks.Callback):
    """Records the hooks it sees, and can stop training after some batch."""

    def __init__(self, stop_after=None):
        super().__init__()
        self.events = []
        self.stop_after = stop_after

    def on_train_begin(self, logs=None):
        self.events.append("begin")

    def on_train_batch_end(self, batch, logs=None):
        self.events.append(batch)
        assert np.isfinite(float(keras.ops.convert_to_numpy(logs["loss"])))
        if batch == self.stop_after:
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        self.events.append("end")


def test_one_step_equals_fit_to_round_off():
    ours, theirs = _model(), _model()
    fit_batches(ours, _feeder(1))
    theirs.fit(_feeder(1), epochs=1, shuffle=False, verbose=0)
    for a, b in zip(ours.weights, theirs.weights):
        np.testing.assert_allclose(to_numpy(a), to_numpy(b), rtol=1e-5, atol=1e-6, err_msg=a.path)
    # The step really moved the weights and the moving statistics.
    assert not np.allclose(to_numpy(ours.layers[2].moving_mean), 0.0)


def test_callbacks_see_every_batch_in_order():
    recorder = _Recorder()
    fit_batches(_model(), _feeder(7), [recorder])
    assert recorder.events == ["begin", 0, 1, 2, 3, 4, 5, 6, "end"]


def test_stop_training_ends_the_loop():
    model = _model()
    recorder = _Recorder(stop_after=2)
    fit_batches(model, _feeder(7), [recorder])
    assert recorder.events == ["begin", 0, 1, 2, "end"]
    assert int(to_numpy(model.optimizer.iterations)) == 3
