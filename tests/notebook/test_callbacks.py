"""Tests for keras_bn.notebook.logger.NotebookLogger: cadence, messages, inference mode, history."""

import json
import re

import numpy as np
import pytest

import keras
from keras_bn.notebook.feeder import BatchFeeder
from keras_bn.notebook.logger import NotebookLogger, argmax_accuracy, sigmoid_cross_entropy
from keras_bn.notebook.model import compile_like_notebook


def _naive_sigmoid_ce(logits, labels):
    """The notebook's loss written out naively in float64, for moderate logits."""
    z = np.asarray(logits, np.float64)
    p = 1.0 / (1.0 + np.exp(-z))
    return float(np.mean(-(labels * np.log(p) + (1 - labels) * np.log(1 - p))))


def _data(n, seed):
    """Returns `n` random small images and one-hot labels."""
    rng = np.random.default_rng(seed)
    x = rng.random((n, 6, 6, 1), dtype="float32")
    y = np.eye(10, dtype="float32")[rng.integers(0, 10, n)]
    return x, y


def _small_model():
    """A small model with batch norm, so inference and training mode differ."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((6, 6, 1)),
            keras.layers.Conv2D(4, 3, use_bias=False),
            keras.layers.BatchNormalization(),
            keras.layers.ReLU(),
            keras.layers.Flatten(),
            keras.layers.Dense(10),
        ]
    )
    return compile_like_notebook(model, learning_rate=0.01)


class _Probe(keras.callbacks.Callback):
    """Computes, after each batch, the reference loss/accuracy the logger should report."""

    def __init__(self, feeder, validation):
        super().__init__()
        self.feeder, self.validation, self.seen = feeder, validation, {}

    def on_train_batch_end(self, batch, logs=None):
        out = {}
        splits = (("validation", self.validation), ("training", self.feeder.batch(batch)))
        for kind, (x, y) in splits:
            logits = keras.ops.convert_to_numpy(self.model(x, training=False))
            accuracy = float(np.mean(np.argmax(logits, 1) == np.argmax(y, 1)))
            out[kind] = (_naive_sigmoid_ce(logits, y), accuracy)
        self.seen[batch] = out


def _run(num_batches=11, validate_every=4, check_every=2, **kwargs):
    """Fits the small model with a NotebookLogger (and a probe after it); returns both."""
    train, val, test = _data(48, 0), _data(20, 1), _data(120, 2)
    feeder = BatchFeeder(*train, 8, seed=0, num_batches=num_batches)
    lines = []
    logger = NotebookLogger(
        feeder, val, test, validate_every=validate_every, check_every=check_every,
        eval_batch_size=7, print_fn=lines.append, **kwargs,
    )
    probe = _Probe(feeder, val)
    model = _small_model()
    fit_history = model.fit(feeder, epochs=1, shuffle=False, callbacks=[logger, probe], verbose=0)
    return logger, probe, lines, model, fit_history, test


def test_cadence_and_message_format():
    logger, probe, lines, model, _, test = _run()
    events = [(e["event"], e["batch"]) for e in logger.history]
    assert events == [
        ("validation", 0), ("training", 2), ("validation", 4), ("training", 6),
        ("validation", 8), ("training", 10),
        ("final_validation", 10), ("final_test", 10), ("samples", 10),
    ]
    assert lines == [e["message"] for e in logger.history]
    for entry in logger.history:
        i, loss, acc = entry["batch"], entry["loss"], entry["accuracy"]
        expected = {
            "validation": f"Batch: {i}, Validation loss: {loss}, Validation accuracy: {acc}",
            "training": f"Batch: {i}, Training loss: {loss}, Training accuracy: {acc}",
            "final_validation": f"Final validation accuracy: {acc}",
            "final_test": f"Final test accuracy: {acc}",
            "samples": f"Accuracy on 100 samples: {acc}",
        }[entry["event"]]
        assert entry["message"] == expected
    num = r"\d(\.\d+)?"
    assert re.fullmatch(rf"Batch: 0, Validation loss: {num}, Validation accuracy: {num}", lines[0])
    assert re.fullmatch(rf"Batch: 2, Training loss: {num}, Training accuracy: {num}", lines[1])


def test_values_are_inference_mode_loss_and_accuracy():
    logger, probe, _, model, _, test = _run()
    for entry in logger.history:
        if entry["event"] in ("validation", "training"):
            loss, acc = probe.seen[entry["batch"]][entry["event"]]
            assert entry["loss"] == pytest.approx(loss, rel=1e-5)
            assert entry["accuracy"] == pytest.approx(acc)
    # The end-of-training lines describe the trained model, in inference mode.
    logits = keras.ops.convert_to_numpy(model(test[0], training=False))
    final_test = logger.last("final_test")
    assert final_test["accuracy"] == pytest.approx(argmax_accuracy(logits, test[1]))
    first_100 = np.mean(np.argmax(logits[:100], 1) == np.argmax(test[1][:100], 1))
    assert logger.last("samples")["accuracy"] == pytest.approx(first_100)
    assert logger.summary() == {
        "final_validation_accuracy": logger.last("final_validation")["accuracy"],
        "final_test_accuracy": final_test["accuracy"],
        "accuracy_on_100_samples": logger.last("samples")["accuracy"],
    }


def test_does_not_disturb_fit_logs():
    _, _, _, _, with_logger, _ = _run(validate_every=1, check_every=1)
    train = _data(48, 0)
    feeder = BatchFeeder(*train, 8, seed=0, num_batches=11)
    without = _small_model().fit(feeder, epochs=1, shuffle=False, verbose=0)
    for key in ("loss", "accuracy"):
        np.testing.assert_allclose(with_logger.history[key], without.history[key], rtol=1e-6)


def test_cadences_configurable_and_disabled():
    logger, *_ = _run(num_batches=7, validate_every=None, check_every=3, num_samples=5)
    events = [(e["event"], e["batch"]) for e in logger.history]
    assert events == [
        ("training", 0), ("training", 3), ("training", 6),
        ("final_validation", 6), ("final_test", 6), ("samples", 6),
    ]
    assert logger.history[-1]["message"].startswith("Accuracy on 5 samples: ")
    logger, *_ = _run(num_batches=3, validate_every=2, check_every=None, num_samples=0)
    assert [(e["event"], e["batch"]) for e in logger.history] == [
        ("validation", 0), ("validation", 2), ("final_validation", 2), ("final_test", 2),
    ]


def test_batch_offset_follows_feeder_start():
    train, val = _data(40, 0), _data(10, 1)
    feeder = BatchFeeder(*train, 8, seed=0, num_batches=3, start=99)
    logger = NotebookLogger(
        feeder, val, validate_every=100, check_every=3, print_fn=lambda _: None
    )
    _small_model().fit(feeder, epochs=1, shuffle=False, callbacks=[logger], verbose=0)
    # fit's batches 0, 1, 2 are the stream's batches 99, 100, 101.
    assert [(e["event"], e["batch"]) for e in logger.history] == [
        ("training", 99), ("validation", 100), ("final_validation", 101),
    ]


def test_default_print_fn_prints(capsys):
    train, val = _data(16, 0), _data(10, 1)
    feeder = BatchFeeder(*train, 8, seed=0, num_batches=1)
    logger = NotebookLogger(feeder, val)
    _small_model().fit(feeder, epochs=1, shuffle=False, callbacks=[logger], verbose=0)
    out = capsys.readouterr().out.splitlines()
    assert out == [e["message"] for e in logger.history]
    assert out[0].startswith("Batch: 0, Validation loss: ")


def test_integer_labels_are_accepted():
    x, y = _data(20, 1)
    feeder = BatchFeeder(*_data(16, 0), 8, seed=0, num_batches=1)
    ids = NotebookLogger(feeder, (x, np.argmax(y, 1)), print_fn=lambda _: None)
    hot = NotebookLogger(feeder, (x, y), print_fn=lambda _: None)
    model = _small_model()
    ids.set_model(model)
    hot.set_model(model)
    assert ids.evaluate(x, np.argmax(y, 1)) == pytest.approx(hot.evaluate(x, y))


def test_history_to_json(tmp_path):
    logger, *_ = _run(num_batches=3)
    path = logger.to_json(tmp_path / "sub" / "history.json")
    with open(path, encoding="utf-8") as f:
        assert json.load(f) == logger.history
    assert set(logger.history[0]) == {"event", "batch", "loss", "accuracy", "seconds", "message"}


def test_sigmoid_cross_entropy_is_stable():
    logits = np.array([[1000.0, -1000.0, 0.0]])
    labels = np.array([[1.0, 1.0, 0.0]])
    # Per output: 0, 1000, log 2.
    assert sigmoid_cross_entropy(logits, labels) == pytest.approx((1000 + np.log(2)) / 3)
    rng = np.random.default_rng(0)
    z, y = rng.normal(size=(50, 10)), np.eye(10)[rng.integers(0, 10, 50)]
    assert sigmoid_cross_entropy(z, y) == pytest.approx(_naive_sigmoid_ce(z, y), rel=1e-12)
    assert sigmoid_cross_entropy(z, np.argmax(y, 1)) == pytest.approx(_naive_sigmoid_ce(z, y))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (
            {"validate_every": 0},
            r"`validate_every` must be a positive int, or None.*Received: validate_every=0",
        ),
        ({"validate_every": 2.5}, r"`validate_every` must be a positive int"),
        ({"check_every": -1}, r"`check_every` must be a positive int.*Received: check_every=-1"),
        ({"check_every": True}, r"`check_every` must be a positive int"),
        ({"check_every": "25"}, r"`check_every` must be a positive int"),
        ({"num_samples": -1}, r"`num_samples` must be an int >= 0"),
        ({"eval_batch_size": 0}, r"`eval_batch_size` must be a positive int"),
        ({"eval_batch_size": None}, r"`eval_batch_size` must be a positive int"),
        ({"print_fn": "stdout"}, r"`print_fn` must be callable"),
        ({"feeder": object()}, r"`feeder` must have a `batch\(i\)` method"),
        ({"validation_data": None}, r"`validation_data` is required"),
        (
            {"validation_data": (np.zeros((3, 6, 6, 1)), np.zeros((2, 10)))},
            r"as many labels as images",
        ),
        ({"test_data": 5}, r"`test_data` must be an `\(images, labels\)` pair"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    args = {
        "feeder": BatchFeeder(*_data(16, 0), 8),
        "validation_data": _data(4, 1),
        **kwargs,
    }
    with pytest.raises(ValueError, match=match):
        NotebookLogger(**args)
