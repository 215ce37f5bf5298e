"""`fit_batches`: `model.fit` over a `BatchFeeder`, with a faster loop on TensorFlow."""

import keras
import numpy as np

__all__ = ["fit_batches"]


def _use_fast_loop(model):
    """Returns whether the TensorFlow loop can stand in for `model.fit` here."""
    if keras.backend.backend() != "tensorflow" or getattr(model, "optimizer", None) is None:
        return False
    import tensorflow as tf

    # A model built under a tf.distribute strategy keeps it; fit splits the batch over replicas.
    strategy = getattr(model, "distribute_strategy", None)
    return not tf.distribute.has_strategy() and strategy in (None, tf.distribute.get_strategy())


def _multi_worker_strategy(model):
    """Returns `model`'s `MultiWorkerMirroredStrategy`, or `None` when it has none."""
    if keras.backend.backend() != "tensorflow":
        return None
    import tensorflow as tf

    strategy = getattr(model, "distribute_strategy", None)
    return strategy if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) else None


def _replica_steps(model, feeder, strategy):
    """Returns `step(j)`: Keras's `train_step` on each replica's share of global batch `j`.

    Every worker reads the same global batch; replica `r` of `n` takes its
    `r`-th `1/n` (`model.fit` cannot run under `MultiWorkerMirroredStrategy`
    in Keras 3, keras-team/keras#20585). Inside `strategy.run` the loss is
    divided by `n` and the optimizer sums the gradients over the replicas.
    """
    import tensorflow as tf

    images, labels = tf.constant(feeder.images), tf.constant(feeder.labels)
    share = feeder.batch_size // strategy.num_replicas_in_sync

    @tf.function(reduce_retracing=True)
    def train_step(indices):
        """Keras's own training step of every replica on its indices of the training set."""

        def replica_step(indices):
            return model.train_step((tf.gather(images, indices), tf.gather(labels, indices)))

        logs = strategy.run(replica_step, args=(indices,))
        return strategy.experimental_local_results(logs)[0]

    def step(j):
        """Trains on global batch `j`, each replica on its share."""
        indices = np.asarray(feeder.indices(feeder.start + j), "int32")
        shares = strategy.experimental_distribute_values_from_function(
            lambda context: tf.constant(indices[share * context.replica_id_in_sync_group:][:share])
        )
        return train_step(shares)

    return step


def fit_batches(model, feeder, callbacks=()):
    """Trains `model` once over every batch of `feeder`, in order: `model.fit`, step for step.

    It does what `model.fit(feeder, epochs=1, shuffle=False, callbacks=callbacks)`
    does: each step is the model's own `train_step` (so Keras's loss scaling
    under `mixed_float16`, the optimizer's update and the compiled metrics),
    the metrics are reset first, and the callbacks get `on_train_begin`,
    `on_epoch_begin`, `on_train_batch_begin`/`on_train_batch_end` with each
    batch index and the step's logs, `on_epoch_end` and `on_train_end`; a
    callback that sets `model.stop_training` ends the loop.

    On TensorFlow (outside a `tf.distribute` strategy) each step hands the
    batch, gathered by NumPy, to one compiled function (compiled with the
    model's `jit_compile`, as `fit` does), without `fit`'s per-step data
    adapter. Under
    `MultiWorkerMirroredStrategy` every worker reads the same global batches
    and each replica trains on its equal share, in `strategy.run`. Elsewhere
    it calls `model.fit`.

    Args:
        model: A compiled Keras model.
        feeder: A `keras_bn.BatchFeeder`; batch `j` of the run is `feeder[j]`.
        callbacks: Keras callbacks. Defaults to none.

    Returns:
        The logs of the last step (the compiled loss and metrics), as floats.
    """
    callbacks = list(callbacks)
    strategy = _multi_worker_strategy(model)
    if strategy is not None:
        step = _replica_steps(model, feeder, strategy)
    elif not _use_fast_loop(model):
        history = model.fit(feeder, epochs=1, shuffle=False, callbacks=callbacks, verbose=0)
        return {key: values[-1] for key, values in history.history.items()}
    else:
        import tensorflow as tf

        if not model.optimizer.built:
            # As `fit` does: a first trace that creates the optimizer's slots
            # makes TensorFlow trace the whole step a second time (~7 s here).
            model.optimizer.build(model.trainable_variables)

        @tf.function(reduce_retracing=True, jit_compile=model.jit_compile)
        def train_step(images, labels):
            """Keras's own training step on one batch."""
            return model.train_step((images, labels))

        def step(j):
            """Trains on batch `j`, gathered by NumPy (a copy of the whole training set into
            TensorFlow, to gather from there, costs 0.4 s of fresh memory for MNIST)."""
            images, labels = feeder[j]
            return train_step(tf.convert_to_tensor(images), tf.convert_to_tensor(labels))

    callback_list = keras.callbacks.CallbackList(
        callbacks, model=model, epochs=1, steps=len(feeder), verbose=0
    )
    model.stop_training = False
    callback_list.on_train_begin()
    model.reset_metrics()
    callback_list.on_epoch_begin(0)
    for j in range(len(feeder)):
        callback_list.on_train_batch_begin(j)
        logs = step(j)
        callback_list.on_train_batch_end(j, logs)
        if model.stop_training:
            break
    logs = {key: float(value) for key, value in model.get_metrics_result().items()}
    callback_list.on_epoch_end(0, logs)
    callback_list.on_train_end(logs)
    return logs
