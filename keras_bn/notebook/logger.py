"""`NotebookLogger`: the seed notebook's validation/training log as a Keras callback."""

import json
import os
import time

import keras
import numpy as np

__all__ = ["NotebookLogger", "sigmoid_cross_entropy", "argmax_accuracy"]


def _as_one_hot(labels, num_classes):
    """Returns `labels` as float one-hot rows; integer class ids are expanded."""
    labels = np.asarray(labels)
    if labels.ndim == 1:
        return np.eye(num_classes, dtype=np.float64)[labels.astype(np.int64)]
    return labels.astype(np.float64, copy=False)


def sigmoid_cross_entropy(logits, labels):
    """Returns the notebook's loss, the mean sigmoid cross-entropy, as a Python float.

    `mean(max(z, 0) - z * y + log(1 + exp(-|z|)))` over all rows and outputs,
    the numerically stable form `tf.nn.sigmoid_cross_entropy_with_logits`
    uses (it never exponentiates a positive number), computed in float64.

    Args:
        logits: Array `(n, classes)` of logits `z`.
        labels: One-hot array `(n, classes)` or integer class ids `(n,)`.

    Returns:
        The mean loss, a Python float.
    """
    z = np.asarray(logits, dtype=np.float64)
    y = _as_one_hot(labels, z.shape[-1])
    return float(np.mean(np.maximum(z, 0.0) - z * y + np.log1p(np.exp(-np.abs(z)))))


def argmax_accuracy(logits, labels):
    """Returns the fraction of rows whose arg-max logit is the label's class, a Python float.

    Args:
        logits: Array `(n, classes)`.
        labels: One-hot array `(n, classes)` or integer class ids `(n,)`.

    Returns:
        The accuracy in [0, 1], a Python float.
    """
    logits = np.asarray(logits)
    labels = np.asarray(labels)
    classes = labels if labels.ndim == 1 else np.argmax(labels, axis=-1)
    return float(np.mean(np.argmax(logits, axis=-1) == classes))


def _check_every(name, value):
    """Returns `value` if it is a positive int or `None`, else raises a `ValueError` naming it."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(
            f"`{name}` must be a positive int, or None to turn it off. "
            f"Received: {name}={value!r}"
        )
    return int(value)


def _check_split(name, data, required):
    """Returns `(images, labels)` from a split (a pair or an object with those attributes)."""
    if data is None:
        if required:
            raise ValueError(f"`{name}` is required. Received: {name}=None")
        return None
    if hasattr(data, "images") and hasattr(data, "labels"):
        images, labels = data.images, data.labels
    else:
        try:
            images, labels = data
        except (TypeError, ValueError):
            raise ValueError(
                f"`{name}` must be an `(images, labels)` pair or have `images` "
                f"and `labels` attributes. Received: {type(data).__name__}"
            ) from None
    images, labels = np.asarray(images), np.asarray(labels)
    if len(images) == 0 or len(images) != len(labels):
        raise ValueError(
            f"`{name}` must hold as many labels as images, at least one. "
            f"Received: {len(images)} images, {len(labels)} labels"
        )
    return images, labels


class NotebookLogger(keras.callbacks.Callback):
    """Logs training the way the seed notebook does, and keeps what it logs.

    After training batch `i` (0-based, counted from the feeder's `start`):

    - if `i % validate_every == 0`: the loss and accuracy on the whole
      validation set, `Batch: {i}, Validation loss: {loss}, Validation
      accuracy: {acc}`;
    - elif `i % check_every == 0`: the loss and accuracy on the batch just
      trained on, `Batch: {i}, Training loss: {loss}, Training accuracy:
      {acc}`.

    At the end of training it prints `Final validation accuracy: {acc}`,
    `Final test accuracy: {acc}` and `Accuracy on 100 samples: {acc}`, the
    last scoring the first 100 test images one at a time (batch size 1).

    Every evaluation runs the model in inference mode (moving statistics for
    batch normalization) through `model.predict_on_batch` in chunks of
    `eval_batch_size`, so the model's compiled metrics and the `fit` logs are
    left alone. The loss is the notebook's mean sigmoid cross-entropy
    (`sigmoid_cross_entropy`) and the accuracy is by arg-max
    (`argmax_accuracy`). The batch just trained on comes from
    `feeder.batch(i)`, which recomputes it from its index; no second pass
    over the data is made.

    Everything printed is also appended to `history`, a list of dicts with
    the keys `event` (`"validation"`, `"training"`, `"final_validation"`,
    `"final_test"` or `"samples"`), `batch` (the batch index; for the final
    lines the last batch trained, `None` when none was),
    `loss` (kept for the final lines too, though they print only the
    accuracy; `None` for the one-at-a-time score), `accuracy`, `seconds` (since
    training began) and `message` (the printed line). `to_json(path)` writes
    it.

    !!! warning
        The batch index is the one `fit` reports, plus `batch_offset`. Train
        on a `BatchFeeder` with `model.fit(feeder, epochs=1, shuffle=False)`;
        with `steps_per_execution > 1` Keras reports only every
        `steps_per_execution`-th batch, so only those can be logged.

    Args:
        feeder: Where the training batches come from: anything with a
            `batch(i)` method returning `(images, labels)`, typically a
            `keras_bn.BatchFeeder`. `None` turns the training checks off.
        validation_data: The validation split: an `(images, labels)` pair or
            an object with `images` and `labels` (such as
            `load_mnist().validation`). Labels one-hot or class ids.
        test_data: The test split, same forms, or `None` to skip the two
            test lines at the end. Defaults to `None`.
        validate_every: Validation cadence in batches, or `None` for never
            (the final lines are still printed). Defaults to `100`.
        check_every: Training-batch cadence in batches, or `None` for never.
            Defaults to `25`.
        num_samples: How many test images to score one at a time at the end.
            Defaults to `100`.
        eval_batch_size: Chunk size of the inference passes. Defaults to
            `1000`.
        batch_offset: Added to the batch index `fit` reports. Defaults to
            `None`, the feeder's `start` (0 when it has none).
        print_fn: Called with each line. Defaults to `print`.

    Raises:
        ValueError: if a cadence or size is not a positive int, or a split is
            malformed.

    Example:

    >>> import numpy as np
    >>> from keras_bn.notebook.feeder import BatchFeeder
    >>> from keras_bn.notebook.model import compile_like_notebook, deep_mnist_model
    >>> rng = np.random.default_rng(0)
    >>> x = rng.random((64, 28, 28, 1), dtype="float32")
    >>> y = np.eye(10, dtype="float32")[rng.integers(0, 10, 64)]
    >>> feeder = BatchFeeder(x, y, batch_size=8, num_batches=3, seed=0)
    >>> logger = NotebookLogger(feeder, (x[:16], y[:16]), (x, y),
    ...                         validate_every=2, check_every=1, num_samples=4,
    ...                         print_fn=lambda line: None)
    >>> model = compile_like_notebook(deep_mnist_model(bn="keras", seed=0))
    >>> _ = model.fit(feeder, epochs=1, shuffle=False, callbacks=[logger], verbose=0)
    >>> [(e["event"], e["batch"]) for e in logger.history]  # doctest: +NORMALIZE_WHITESPACE
    [('validation', 0), ('training', 1), ('validation', 2),
     ('final_validation', 2), ('final_test', 2), ('samples', 2)]
    """

    def __init__(
        self,
        feeder,
        validation_data,
        test_data=None,
        *,
        validate_every=100,
        check_every=25,
        num_samples=100,
        eval_batch_size=1000,
        batch_offset=None,
        print_fn=print,
    ):
        super().__init__()
        if feeder is not None and not callable(getattr(feeder, "batch", None)):
            raise ValueError(
                "`feeder` must have a `batch(i)` method returning "
                f"`(images, labels)`, or be None. Received: {feeder!r}"
            )
        self.feeder = feeder
        self.validation_data = _check_split("validation_data", validation_data, True)
        self.test_data = _check_split("test_data", test_data, False)
        self.validate_every = _check_every("validate_every", validate_every)
        self.check_every = _check_every("check_every", check_every)
        if (
            isinstance(num_samples, bool)
            or not isinstance(num_samples, (int, np.integer))
            or num_samples < 0
        ):
            raise ValueError(
                f"`num_samples` must be an int >= 0. Received: num_samples={num_samples!r}"
            )
        self.num_samples = int(num_samples)
        if (
            isinstance(eval_batch_size, bool)
            or not isinstance(eval_batch_size, (int, np.integer))
            or eval_batch_size < 1
        ):
            raise ValueError(
                "`eval_batch_size` must be a positive int. "
                f"Received: eval_batch_size={eval_batch_size!r}"
            )
        self.eval_batch_size = int(eval_batch_size)
        if batch_offset is None:
            batch_offset = getattr(feeder, "start", 0) if feeder is not None else 0
        self.batch_offset = int(batch_offset)
        if not callable(print_fn):
            raise ValueError(f"`print_fn` must be callable. Received: {print_fn!r}")
        self.print_fn = print_fn
        self.history = []
        self.eval_seconds = 0.0
        self._t0 = None
        self._last_batch = None

    # --- Evaluation ---------------------------------------------------------

    def _logits(self, images):
        """Returns the model's inference-mode logits for `images`, in chunks, as a NumPy array."""
        chunks = [
            np.asarray(self.model.predict_on_batch(images[k : k + self.eval_batch_size]))
            for k in range(0, len(images), self.eval_batch_size)
        ]
        return np.concatenate(chunks, axis=0)

    def evaluate(self, images, labels):
        """Returns `(loss, accuracy)` of the model on `images` in inference mode."""
        logits = self._logits(np.asarray(images))
        return sigmoid_cross_entropy(logits, labels), argmax_accuracy(logits, labels)

    def _record(self, event, batch, loss, accuracy, message):
        """Prints `message` and appends the entry to `history`."""
        self.history.append(
            {
                "event": event,
                "batch": batch,
                "loss": loss,
                "accuracy": accuracy,
                "seconds": time.perf_counter() - self._t0,
                "message": message,
            }
        )
        self.print_fn(message)

    # --- Callback hooks -----------------------------------------------------

    def on_train_begin(self, logs=None):
        """Starts the clock; the history of an earlier `fit` is kept."""
        self._t0 = time.perf_counter()
        self._last_batch = None

    def on_train_batch_end(self, batch, logs=None):
        """Logs validation or the batch just trained on, by the notebook's cadence."""
        i = self.batch_offset + int(batch)
        self._last_batch = i
        started = time.perf_counter()
        if self.validate_every is not None and i % self.validate_every == 0:
            loss, acc = self.evaluate(*self.validation_data)
            self._record(
                "validation", i, loss, acc,
                f"Batch: {i}, Validation loss: {loss}, Validation accuracy: {acc}",
            )
        elif (
            self.feeder is not None
            and self.check_every is not None
            and i % self.check_every == 0
        ):
            loss, acc = self.evaluate(*self.feeder.batch(i))
            self._record(
                "training", i, loss, acc,
                f"Batch: {i}, Training loss: {loss}, Training accuracy: {acc}",
            )
        self.eval_seconds += time.perf_counter() - started

    def on_train_end(self, logs=None):
        """Logs the final validation and test accuracies and the one-at-a-time score."""
        started = time.perf_counter()
        if self._t0 is None:
            self._t0 = started
        loss, acc = self.evaluate(*self.validation_data)
        self._record("final_validation", self._last_batch, loss, acc, f"Final validation accuracy: {acc}")
        if self.test_data is not None:
            images, labels = self.test_data
            loss, acc = self.evaluate(images, labels)
            self._record("final_test", self._last_batch, loss, acc, f"Final test accuracy: {acc}")
            n = min(self.num_samples, len(images))
            if n:
                correct = 0.0
                for k in range(n):  # One image per call, batch size 1, as the notebook.
                    logits = np.asarray(self.model.predict_on_batch(images[k : k + 1]))
                    correct += argmax_accuracy(logits, labels[k : k + 1])
                acc = correct / n
                self._record("samples", self._last_batch, None, acc, f"Accuracy on {n} samples: {acc}")
        self.eval_seconds += time.perf_counter() - started

    # --- Results ------------------------------------------------------------

    def last(self, event):
        """Returns the last history entry of kind `event`, or `None`."""
        for entry in reversed(self.history):
            if entry["event"] == event:
                return entry
        return None

    def summary(self):
        """Returns the final accuracies as a dict (values `None` when not logged)."""

        def accuracy(event):
            entry = self.last(event)
            return None if entry is None else entry["accuracy"]

        return {
            "final_validation_accuracy": accuracy("final_validation"),
            "final_test_accuracy": accuracy("final_test"),
            "accuracy_on_100_samples": accuracy("samples"),
        }

    def to_json(self, path):
        """Writes `history` to `path` as JSON, creating parent folders, and returns `path`."""
        path = os.fspath(path)
        parent = os.path.dirname(path)
        if parent:
            os.makedirs(parent, exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.history, f, indent=2)
        return path
