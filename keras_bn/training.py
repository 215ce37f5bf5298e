"""`fit_batches`: train a compiled model once over a `BatchFeeder`, as `model.fit` would, faster."""

import keras

__all__ = ["fit_batches"]


def _use_fast_loop(model):
    """Returns whether the TensorFlow loop can stand in for `model.fit` here."""
    if keras.backend.backend() != "tensorflow":
        return False
    import tensorflow as tf

    # A model built under a tf.distribute strategy keeps it (even when called
    # outside its scope); fit knows how to split the batch over its replicas.
    strategy = getattr(model, "distribute_strategy", None)
    default = tf.distribute.get_strategy()
    distributed = tf.distribute.has_strategy() or (strategy is not None and strategy is not default)
    return not distributed and getattr(model, "optimizer", None) is not None


def fit_batches(model, feeder, callbacks=()):
    """Trains `model` on every batch of `feeder` once, in order, calling `callbacks` like `fit`.

    It does what `model.fit(feeder, epochs=1, shuffle=False, callbacks=callbacks)`
    does, the same maths step for step, and calls the callbacks' `on_train_begin`,
    `on_epoch_begin`, `on_train_batch_begin`/`on_train_batch_end` with each batch
    index (and `logs={"loss": ...}`), `on_epoch_end` and `on_train_end`; it stops
    early when a callback sets `model.stop_training`.

    On TensorFlow (outside a `tf.distribute` strategy) it runs its own loop:
    the training images and labels go to TensorFlow once, each step gathers
    its batch by index inside one compiled function (no per-step copy of the
    batch from NumPy, no data-adapter or `fit` bookkeeping per step), and the
    step is `model.compute_loss` of `model(x, training=True)`, its gradient and
    `model.optimizer.apply`, as Keras's own `train_step`. Elsewhere it calls
    `model.fit`.

    Args:
        model: A compiled Keras model.
        feeder: A `BatchFeeder`; batch `j` of the run is `feeder[j]`.
        callbacks: Keras callbacks. Defaults to none.

    Returns:
        `None`.
    """
    callbacks = list(callbacks)
    if not _use_fast_loop(model):
        model.fit(feeder, epochs=1, shuffle=False, callbacks=callbacks, verbose=0)
        return
    import numpy as np
    import tensorflow as tf

    # The whole training set, once; batch j is a gather by index.
    images = tf.constant(feeder.images)
    labels = tf.constant(feeder.labels)
    optimizer = model.optimizer
    if not optimizer.built:
        optimizer.build(model.trainable_variables)

    @tf.function(reduce_retracing=True)
    def train_step(indices):
        x = tf.gather(images, indices)
        y = tf.gather(labels, indices)
        with tf.GradientTape() as tape:
            y_pred = model(x, training=True)
            loss = model.compute_loss(x=x, y=y, y_pred=y_pred, training=True)
        gradients = tape.gradient(loss, model.trainable_variables)
        optimizer.apply(gradients, model.trainable_variables)
        return loss

    callback_list = keras.callbacks.CallbackList(
        callbacks, add_history=False, add_progbar=False, model=model, epochs=1, steps=len(feeder), verbose=0
    )
    model.stop_training = False
    callback_list.on_train_begin()
    callback_list.on_epoch_begin(0)
    logs = {}
    for j in range(len(feeder)):
        callback_list.on_train_batch_begin(j)
        indices = np.asarray(feeder.indices(feeder.start + j), dtype="int32")
        loss = train_step(tf.constant(indices))
        logs = {"loss": loss}
        callback_list.on_train_batch_end(j, logs)
        if model.stop_training:
            break
    callback_list.on_epoch_end(0, logs)
    callback_list.on_train_end(logs)
