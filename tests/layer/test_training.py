"""fit_batches against model.fit: the same steps, weights, optimizer state, metrics and callbacks."""

import keras
import numpy as np
import pytest

from helpers import to_numpy
from keras_bn import BatchFeeder, ManualBatchNorm
from keras_bn.experiment.training import fit_batches


def _model():
    """A small compiled model with batch norm and a compiled metric, seeded."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6,))
    h = keras.layers.Dense(8, use_bias=False)(inputs)
    h = keras.layers.ReLU()(ManualBatchNorm(momentum=0.9)(h))
    model = keras.Model(inputs, keras.layers.Dense(3)(h))
    model.compile(optimizer=keras.optimizers.Adam(0.01),
                  loss=keras.losses.BinaryCrossentropy(from_logits=True),
                  metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")])
    return model


def _feeder(num_batches):
    """A feeder over 40 random examples with one-hot labels (5 batches of 8 per epoch)."""
    rng = np.random.default_rng(1)
    images = rng.normal(1.0, 2.0, size=(40, 6)).astype("float32")
    labels = np.eye(3, dtype="float32")[rng.integers(0, 3, 40)]
    return BatchFeeder(images, labels, 8, seed=0, num_batches=num_batches)


@pytest.fixture(params=["float32", "mixed_float16"])
def policy(request):
    """Runs the test under a global dtype policy, and puts float32 back."""
    keras.mixed_precision.set_global_policy(request.param)
    yield request.param
    keras.mixed_precision.set_global_policy("float32")


def test_twenty_steps_equal_fit_exactly(policy):
    """Weights, Adam's state (with the loss scale under mixed_float16), metrics: bit for bit."""
    ours, theirs = _model(), _model()
    logs = fit_batches(ours, _feeder(20))  # Four epochs of the feeder, reshuffled each time.
    history = theirs.fit(_feeder(20), epochs=1, shuffle=False, verbose=0).history
    assert logs == {key: values[-1] for key, values in history.items()}
    assert set(logs) == {"loss", "accuracy"}
    for a, b in zip(ours.weights, theirs.weights):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b), err_msg=a.path)
    assert len(ours.optimizer.variables) == len(theirs.optimizer.variables)
    for a, b in zip(ours.optimizer.variables, theirs.optimizer.variables):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b), err_msg=a.path)
    assert int(to_numpy(ours.optimizer.iterations)) == 20
    if policy == "mixed_float16":
        # Loss scaling ran: without it, float16 gradients of this loss underflow and
        # the updates were about 30,000 times too small.
        assert isinstance(ours.optimizer, keras.optimizers.LossScaleOptimizer)
    # The weights moved far from the start: the comparison is not of two idle models.
    start = _model()
    moved = max(float(np.max(np.abs(to_numpy(a) - to_numpy(b))))
                for a, b in zip(ours.trainable_weights, start.trainable_weights))
    assert moved > 0.05


def test_training_draws_nothing_from_the_global_rng():
    """Reseeding the global RNG between steps changes nothing: no RNG state to checkpoint."""
    ours, theirs = _model(), _model()
    fit_batches(ours, _feeder(6))
    fit_batches(theirs, _feeder(3))
    keras.utils.set_random_seed(12345)  # Python, NumPy and Keras's global SeedGenerator.
    keras.random.uniform((3,))
    rest = _feeder(1)
    fit_batches(theirs, BatchFeeder(rest.images, rest.labels, 8, seed=0, start=3, num_batches=3))
    for a, b in zip(ours.weights, theirs.weights):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b), err_msg=a.path)


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


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="the compiled loop is TensorFlow's")
def test_the_compiled_step_is_traced_once(policy):
    # A first trace that creates Adam's slots makes TensorFlow trace the step a
    # second time (about 7 s for the notebook's network); fit builds the
    # optimizer before tracing, and so does fit_batches.
    model = _model()
    traces = []
    train_step = model.train_step

    def counting(data):
        traces.append(1)  # Python runs only while TensorFlow traces
        return train_step(data)

    model.train_step = counting
    fit_batches(model, _feeder(3))
    assert len(traces) == 1
    assert int(to_numpy(model.optimizer.iterations)) == 3
