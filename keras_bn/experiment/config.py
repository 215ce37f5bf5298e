"""`RunConfig`: the one frozen description of an experiment, validated once, naming its folder."""

import dataclasses
import functools
import hashlib
import json

from keras_bn import _checks

__all__ = ["DESCRIPTIONS", "VARIANTS", "ExperimentError", "RunConfig"]

#: What each variant normalizes with, in the notebook's order.
DESCRIPTIONS = {
    "none": "no batch normalization",
    "keras": "keras.layers.BatchNormalization",
    "manual": "keras_bn.ManualBatchNorm",
}

#: The model variants: no normalization, Keras's batch norm, the hand-written one.
VARIANTS = tuple(DESCRIPTIONS)


class ExperimentError(ValueError):
    """An experiment that cannot start as asked: an `out_dir` that cannot be written, or
    `distribute="mirrored"` on a backend other than TensorFlow."""


def _initializer(name, value):
    """Returns a JSON-serializable `kernel_initializer`: a name, or an initializer's config."""
    import keras  # Here, not at the top: the `keras-bn` command parses without Keras.

    if isinstance(value, keras.initializers.Initializer):
        return json.loads(json.dumps(keras.initializers.serialize(value)))
    if value != "notebook":
        try:
            keras.initializers.get(value)
        except (ValueError, TypeError):
            raise ValueError(
                f'`{name}` must be "notebook" or what `keras.initializers.get` accepts. '
                f"Received: {name}={value!r}"
            ) from None
    return value


def _backend():
    """Returns the name of Keras's backend (Keras is imported here, not by the module)."""
    import keras

    return keras.backend.backend()


#: The values of `RunConfig.distribute` besides `None`, and the strategy each trains with.
DISTRIBUTE = {"mirrored": "MirroredStrategy", "multiworker": "MultiWorkerMirroredStrategy"}


def _distribute(name, value):
    """Returns `value` if it is `None` or in `DISTRIBUTE`, else raises a `ValueError`."""
    if value is not None and value not in DISTRIBUTE:
        raise ValueError(f"`{name}` must be None, 'mirrored' or 'multiworker'. "
                         f"Received: {name}={value!r}")
    return value


def _flag(name, value):
    """Returns `value` if it is a bool, else raises a `ValueError` naming it."""
    if not isinstance(value, bool):
        raise ValueError(f"`{name}` must be True or False. Received: {name}={value!r}")
    return value


#: The check of each `RunConfig` field: `check(name, value)` returns the value to keep.
CHECKS = {
    "variants": functools.partial(_checks.names, allowed=VARIANTS),
    "seeds": _checks.seeds,
    "batches": _checks.positive_int,
    "batch_size": _checks.positive_int,
    "learning_rate": lambda name, value: _checks.learning_rate(value, name),
    "kernel_initializer": _initializer,
    "validate_every": functools.partial(_checks.positive_int, allow_none=True),
    "check_every": functools.partial(_checks.positive_int, allow_none=True),
    "num_samples": _checks.non_negative_int,
    "checkpoint_every": _checks.positive_int,
    "distribute": _distribute,
    "recalibrate": functools.partial(_checks.positive_int, allow_none=True),
    "recalibrate_dropout": functools.partial(_checks.one_of, allowed=_checks.DROPOUT_MODES),
    "plot_activations": _flag,
    "backend": lambda name, value: str(value),
}


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything that decides an experiment's numbers, checked once when it is made.

    The same object is written as-is into every checkpoint and into
    `results.json`, compared as-is when a run resumes, and names the run's
    folder (`name`), so a changed setting gets a folder of its own and the same
    settings find their checkpoints again.

    Attributes:
        variants: Names from `VARIANTS` (a sequence or a comma-separated
            string). Defaults to all three.
        seeds: Seeds of the weights and the batch order (an int, a sequence
            or a comma-separated string); every variant trains once per seed.
            Defaults to `(0,)`.
        batches: Training batches per run. Defaults to `800`.
        batch_size: Examples per batch. Defaults to `32`.
        learning_rate: Adam's learning rate, positive and finite. Defaults to
            `0.002`.
        kernel_initializer: Passed to `deep_mnist_model`; `"notebook"` is the
            low-level notebook's truncated normal. Defaults to
            `"glorot_uniform"`.
        validate_every: Validation cadence in batches, or `None`. Defaults to
            `100`.
        check_every: Training-batch cadence in batches, or `None`. Defaults to
            `25`.
        num_samples: Test images scored one at a time. Defaults to `100`.
        checkpoint_every: Batches between two checkpoints. Defaults to `100`.
        distribute: `None`, or `"mirrored"` for `tf.distribute.MirroredStrategy`
            over every GPU (else every CPU device) with synchronized batch
            normalization; or `"multiworker"` for
            `tf.distribute.MultiWorkerMirroredStrategy` over the processes that
            `TF_CONFIG` lists (one per host or per worker), each training on
            its share of every global batch, with no checkpoints; TensorFlow
            only. Defaults to `None`.
        recalibrate: Also score every validation (and the final validation
            and test) with batch-norm statistics recomputed from this many
            training batches (`keras_bn.RecalibrateBatchNorm`), or `None` for
            no second score. Training is the same either way. Defaults to
            `None`.
        recalibrate_dropout: The mode of the dropout layers while the
            statistics are recomputed, `"inference"` or `"training"`, as
            `recalibrate_batch_norm`'s `dropout`. The notebook's network has no
            dropout, so it changes nothing there. Defaults to `"inference"`.
        plot_activations: Record `keras_bn.LayerStatistics` during training
            (a middle layer's pre-activation percentiles, every kernel's
            gradient norm) for `activations.png` and `gradients.png`; training
            is the same either way. Defaults to `False`.
        backend: The Keras backend. Defaults to the current one.

    Raises:
        ValueError: naming the first setting that is invalid.
        ExperimentError: for `distribute` off TensorFlow.

    Example:

    >>> config = RunConfig(variants="manual", batches=300)
    >>> config.variants, config.seeds, config.learning_rate
    (('manual',), (0,), 0.002)
    >>> config.name.startswith("manual_b300_s0_")
    True
    """

    variants: tuple = VARIANTS
    seeds: tuple = (0,)
    batches: int = 800
    batch_size: int = 32
    learning_rate: float = 0.002
    kernel_initializer: object = "glorot_uniform"
    validate_every: int = 100
    check_every: int = 25
    num_samples: int = 100
    checkpoint_every: int = 100
    distribute: str = None
    recalibrate: int = None
    recalibrate_dropout: str = "inference"
    plot_activations: bool = False
    backend: str = dataclasses.field(default_factory=_backend)

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = CHECKS[field.name](field.name, getattr(self, field.name))
            object.__setattr__(self, field.name, value)
        if self.distribute is not None and self.backend != "tensorflow":
            raise ExperimentError(
                f"`distribute={self.distribute!r}` trains with "
                f"tf.distribute.{DISTRIBUTE[self.distribute]}, which "
                f"needs the TensorFlow backend. Received: backend {self.backend!r}; set "
                "KERAS_BACKEND=tensorflow"
            )

    def to_dict(self):
        """Returns the settings as a JSON-ready dict (tuples as lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @property
    def name(self):
        """The run folder's name: variants, batches, seeds and a hash of every setting."""
        digest = hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()
        seeds = "-".join(map(str, self.seeds)) if len(self.seeds) <= 5 else f"{len(self.seeds)}x"
        return f"{'-'.join(self.variants)}_b{self.batches}_s{seeds}_{digest[:8]}"
