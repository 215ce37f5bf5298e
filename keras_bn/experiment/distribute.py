"""Training a run under a `tf.distribute` strategy: the strategy, the layers, the scoring.

`"mirrored"` is `MirroredStrategy` over the devices of this process;
`"multiworker"` is `MultiWorkerMirroredStrategy` over the processes that
`TF_CONFIG` lists, one per worker.
"""

import contextlib
import functools
import json
import os

import keras

from keras_bn.batch_norm import ManualBatchNorm
from keras_bn.experiment.config import ExperimentError
from keras_bn.experiment.logger import RunLogger

__all__ = ["check_batch_size", "is_chief", "logger_class", "norm_layer", "strategy",
           "strategy_scope"]

_TF_CONFIG_HELP = (
    'e.g. TF_CONFIG=\'{"cluster": {"worker": ["HOST0:12345", "HOST1:12345"]}, '
    '"task": {"type": "worker", "index": 0}}\' on HOST0 and "index": 1 on HOST1; '
    "see docs/guide/distributed.md"
)


def read_tf_config(environ=None):
    """Returns the `TF_CONFIG` of this worker as a dict, checked, or raises `ExperimentError`.

    It must be JSON with a `cluster` mapping `"chief"` and/or `"worker"` to
    lists of `"host:port"` addresses, and a `task` whose `type` is one of them
    and whose `index` is a position in its list.
    """
    text = (os.environ if environ is None else environ).get("TF_CONFIG")
    if not text:
        raise ExperimentError(
            "`distribute='multiworker'` needs the environment variable TF_CONFIG: the cluster's "
            f"workers and this worker's place among them. Received: no TF_CONFIG; {_TF_CONFIG_HELP}"
        )
    try:
        tf_config = json.loads(text)
        cluster, task = tf_config["cluster"], tf_config["task"]
        jobs = {job: list(cluster[job]) for job in ("chief", "worker") if job in cluster}
        if not jobs or set(cluster) - {"chief", "worker"} or not all(
            isinstance(a, str) and ":" in a for addresses in jobs.values() for a in addresses
        ):
            raise ValueError("cluster")
        if task["type"] not in jobs or not 0 <= int(task["index"]) < len(jobs[task["type"]]):
            raise ValueError("task")
    except (ValueError, KeyError, TypeError) as error:
        raise ExperimentError(
            "TF_CONFIG must be JSON with a `cluster` of \"chief\" and/or \"worker\" lists of "
            '"host:port" addresses and a `task` {"type": ..., "index": ...} naming this worker '
            f"in it ({type(error).__name__}: {error}). Received: TF_CONFIG={text!r}; "
            f"{_TF_CONFIG_HELP}"
        ) from None
    return tf_config


@functools.cache
def _multi_worker_strategy():
    """Returns this process's one `MultiWorkerMirroredStrategy` (made before any other op)."""
    read_tf_config()
    import tensorflow as tf

    return tf.distribute.MultiWorkerMirroredStrategy()


def is_chief(distribute):
    """Returns whether this process writes the run's files: `False` only on a non-chief worker.

    Under `"multiworker"` the chief is the `"chief"` task, else worker 0 (as
    in TensorFlow's own convention); every worker trains, only the chief
    writes. Makes the strategy, so call it before anything runs on TensorFlow.
    """
    if distribute != "multiworker":
        return True
    resolver = _multi_worker_strategy().cluster_resolver
    if resolver.task_type == "chief":
        return True
    return resolver.task_type == "worker" and resolver.task_id == 0 and (
        "chief" not in resolver.cluster_spec().jobs
    )


def check_batch_size(strategy, batch_size):
    """Raises `ExperimentError` unless `strategy`'s replicas can share `batch_size` equally."""
    replicas = 1 if strategy is None else strategy.num_replicas_in_sync
    if batch_size % replicas:
        raise ExperimentError(
            f"`batch_size` must be a multiple of the {replicas} replicas that share each global "
            f"batch. Received: batch_size={batch_size}"
        )


def strategy(distribute):
    """Returns the strategy `RunConfig.distribute` names: `None`, or a `tf.distribute` strategy.

    The mirrored strategy spans every GPU, else every logical CPU device
    (`MirroredStrategy()`'s own default ignores CPU devices beyond the first).
    The multi-worker strategy is made once per process, from `TF_CONFIG`.

    Raises:
        ExperimentError: for `"multiworker"` without a valid `TF_CONFIG`.
    """
    if distribute is None:
        return None
    if distribute == "multiworker":
        return _multi_worker_strategy()
    import tensorflow as tf

    devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
    return tf.distribute.MirroredStrategy([device.name for device in devices])


def strategy_scope(strategy):
    """Returns `strategy.scope()`, or a context that does nothing for no strategy."""
    return contextlib.nullcontext() if strategy is None else strategy.scope()


def norm_layer(variant, strategy):
    """Returns the `bn` argument of `deep_mnist_model`: synchronized layers under a strategy."""
    if strategy is None or variant == "none":
        return variant
    layer = keras.layers.BatchNormalization if variant == "keras" else ManualBatchNorm
    return functools.partial(layer, synchronized=True)


class _ReplicaSafeModel:
    """Stands in for a model trained under a strategy while `RunLogger` scores it.

    Keras's `predict_on_batch` under a strategy runs the whole batch on every
    replica and concatenates the copies; this calls the model once instead.
    """

    def __init__(self, model):
        self._model = model

    def predict_on_batch(self, x):
        """Returns the model's inference-mode outputs for `x` as a NumPy array."""
        return keras.ops.convert_to_numpy(self._model(x, training=False))

    def __getattr__(self, name):
        return getattr(self._model, name)


class _DistributedLogger(RunLogger):
    """`RunLogger` for a model under a strategy (see `_ReplicaSafeModel`)."""

    def set_model(self, model):
        """Scores `model` through `_ReplicaSafeModel`."""
        super().set_model(_ReplicaSafeModel(model))


def logger_class(strategy):
    """Returns the `RunLogger` class that scores a model trained under `strategy`."""
    return RunLogger if strategy is None else _DistributedLogger
