"""Which path a call of `ManualBatchNorm` takes, decided once: the framework's kernel or the reference.

- `reference` (keras_bn/_layer/reference.py): the formulas in `keras.ops`, on
  every backend and for every option, with autodiff or the closed-form
  backward (`hand_written`, the backend's measured faster by default).
- `tensorflow` (keras_bn/_layer/tensorflow.py): `FusedBatchNormV3`.
- `torch` (keras_bn/_layer/torch.py): `torch.nn.functional.batch_norm`, and
  the plain case (no mask, ghost batches or renorm, a fixed momentum, no
  process group) in direct torch calls with the closed-form backward.
- JAX has no batch-norm kernel to call: XLA compiles the reference's ops.

The kernels compute what the reference computes (two-pass statistics, the
biased variance in the normalization) to float32 round-off. They take any
single channel axis, in training and inference; in training not masks,
renorm, several channel axes, statistics synchronized over more than one
replica, nor TensorFlow under XLA (`jit_compile=True`), which expands the
kernel with the one-pass variance `E[x^2] - E[x]^2` that loses every digit
when |mean| >> std; never float64 on TensorFlow, whose kernel lacks it, nor
`epsilon < MIN_EPSILON`, which cuDNN refuses. `fused=True` raises naming what
rules the kernel out (docs/guide/native.md has the table).
"""

import contextlib
import functools
import math

import keras
from keras import ops

from keras_bn import _keras_compat
from keras_bn._layer import reference

__all__ = ["choose", "kernel_applies", "hand_written", "use_hand_written"]

#: The smallest epsilon cuDNN accepts (CUDNN_BN_MIN_EPSILON is 1e-5; TensorFlow
#: raises anything below 1.001e-5 to that): below it the kernels would not
#: compute the layer's formula.
MIN_EPSILON = 1.001e-5

NATIVE_BACKENDS = ("tensorflow", "torch")

#: On a CPU, TensorFlow's kernel costs a fixed time a training call however small the
#: input, where the reference's cost grows with it, so below this many values per
#: sample the reference is the faster there, and `fused=None` trains on it. Where the
#: two cross is measured by `bench.py --only shapes` (docs/benchmarks.md).
CPU_MIN_SAMPLE_VALUES = 3000

#: Per backend, whether `ManualBatchNorm` uses the closed-form backward by default:
#: the faster on each, measured side by side on the notebook's network (benchmarks/bench.py).
DEFAULT = {"tensorflow": True, "jax": False, "torch": True}

_override = []


def hand_written():
    """Returns whether `ManualBatchNorm` uses the closed-form backward on the current backend."""
    if _override:
        return _override[-1]
    return DEFAULT.get(keras.backend.backend(), False)


@contextlib.contextmanager
def use_hand_written(enabled):
    """Within the block, `ManualBatchNorm` uses the closed-form backward if `enabled`, else autodiff.

    Layers read the switch when they are called, so a model traced inside the
    block (a `tf.function`, a jitted JAX step) keeps the choice it was traced with.
    """
    _override.append(bool(enabled))
    try:
        yield
    finally:
        _override.pop()


@functools.cache
def _kernel_module(backend):
    """Returns keras_bn/_layer/<backend>.py, the module of `backend`'s kernel, or `None` (JAX)."""
    if backend == "tensorflow":
        from keras_bn._layer import tensorflow as module
    elif backend == "torch":
        from keras_bn._layer import torch as module
    else:
        return None
    return module


def upcast(inputs):
    """Returns `inputs` in the dtype the statistics are computed in: float64 stays, all else is float32.

    float16 and bfloat16 are upcast: the squares in the variance overflow
    float16 for activations above ~256, and its 10-bit mantissa would round
    the statistics. Integers become float32 as well. (`keras.backend.result_type`
    would demote float64 to float32 on the JAX and PyTorch backends.)
    """
    backend = keras.backend.backend()
    if backend == "torch":
        return _kernel_module(backend).upcast(inputs)
    dtype = "float64" if keras.backend.standardize_dtype(inputs.dtype) == "float64" else "float32"
    return ops.cast(inputs, dtype)


def cast(outputs, dtype):
    """Returns `outputs` in `dtype` (the layer's compute dtype)."""
    backend = keras.backend.backend()
    if backend == "torch":
        return _kernel_module(backend).cast(outputs, dtype)
    return ops.cast(outputs, dtype)


def choose(spec, x, *, training, mask, all_reduce):
    """Returns the forward this call runs, `forward(x, weights, spec)`; raises `fused=True`'s refusal.

    `x` is upcast already; `all_reduce` sums over replicas, or is `None`.
    """
    backend = keras.backend.backend()
    kernel = spec.fused is not False and kernel_applies(
        spec, x, training=training, mask=mask, all_reduce=all_reduce
    )
    closed_form = hand_written()
    if backend == "tensorflow" and kernel:
        tensorflow_path = _kernel_module(backend)
        return tensorflow_path.training if training else tensorflow_path.inference
    if backend == "torch":
        forward = _kernel_module(backend).choose(
            spec, x, training=training, mask=mask, all_reduce=all_reduce,
            kernel=kernel, closed_form=closed_form,
        )
        if forward is not None:
            return forward
    if not training:
        return reference.inference
    return functools.partial(
        reference.training, mask=mask, all_reduce=all_reduce, closed_form=closed_form
    )


def configuration_obstacles(*, axis, epsilon, renorm, training=True):
    """Returns why these options rule the native kernel out, as phrases.

    In inference only the backend, the axes and `epsilon` matter: renorm, ghost
    batches and masks change nothing there.
    """
    backend = keras.backend.backend()
    reasons = []
    if backend not in NATIVE_BACKENDS:
        reasons.append(f"the {backend} backend (it has no batch-norm kernel; XLA fuses the ops)")
    if isinstance(axis, tuple) and len(axis) > 1:
        reasons.append(f"axis={list(axis)!r} (more than one channel axis)")
    if backend == "tensorflow" and epsilon < MIN_EPSILON:
        reasons.append(f"epsilon={epsilon!r} (cuDNN's kernels need epsilon >= {MIN_EPSILON})")
    if training and renorm:
        reasons.append("renorm=True")
    return reasons


def call_obstacles(spec, x, *, training, mask, all_reduce):
    """Returns why this call cannot take the native kernel, as phrases (empty: it can)."""
    reasons = configuration_obstacles(
        axis=spec.layout.axis, epsilon=spec.epsilon, renorm=spec.renorm, training=training
    )
    backend = keras.backend.backend()
    if backend == "tensorflow" and keras.backend.standardize_dtype(x.dtype) == "float64":
        reasons.append("float64 inputs on TensorFlow (FusedBatchNormV3 has no float64 kernel)")
    if training and mask is not None:
        reasons.append("a mask")
    if training and all_reduce is not None:
        reasons.append("synchronized=True across more than one replica")
    if training and backend == "tensorflow" and _keras_compat.tensorflow_in_xla():
        reasons.append(
            "training under XLA (jit_compile=True), which computes the kernel's variance "
            "as E[x^2] - E[x]^2"
        )
    return reasons


def kernel_applies(spec, x, *, training, mask, all_reduce):
    """Returns whether this call takes the kernel; raises `fused=True`'s refusal where it cannot."""
    reasons = call_obstacles(spec, x, training=training, mask=mask, all_reduce=all_reduce)
    if reasons and spec.fused:
        raise refusal(reasons)
    if reasons:
        return False
    return spec.fused is True or not (training and _small_on_tensorflow_cpu(x))


def _small_on_tensorflow_cpu(x):
    """Returns whether `x` is too small for TensorFlow's kernel to pay in training, without a GPU.

    Counted per sample (every axis but the first), which a traced step knows even
    when its batch size is unknown.
    """
    if keras.backend.backend() != "tensorflow" or _tensorflow_sees_a_gpu():
        return False
    sample = x.shape[1:]
    return all(d is not None for d in sample) and math.prod(sample) < CPU_MIN_SAMPLE_VALUES


@functools.lru_cache(maxsize=1)
def _tensorflow_sees_a_gpu():
    """Returns whether TensorFlow places work on a GPU by default (asked once: a layer
    call has started TensorFlow's runtime, after which its devices are fixed)."""
    import tensorflow as tf

    return bool(tf.config.list_logical_devices("GPU"))


def refusal(reasons):
    """Returns the `ValueError` for `fused=True` when `reasons` rule the native kernel out."""
    return ValueError(
        "`fused=True` needs the framework's native batch-norm kernel, which this layer "
        f"cannot use with: {'; '.join(reasons)}. Use fused=None to fall back to the "
        "hand-written path where needed (docs/guide/native.md lists the options)."
    )
