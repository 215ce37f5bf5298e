"""Every use keras-bn makes of Keras's and TensorFlow's private API, in one place.

Each function says what it reaches, why no public API does, and what keras-bn
does where a release has moved it: every one degrades to an answer that is
slower or more cautious, never wrong. All were checked on Keras 3.10.0 and
3.15.1 with TensorFlow 2.16.1 and 2.21.0 (`CHECKED_ON`);
`tests/layer/test_keras_compat.py` probes each of them on the installed versions and
fails loudly when one stops working, so a new release is caught by CI, not by
a user. Nothing else in keras-bn imports `keras.src` or reads a private
attribute of a Keras object.
"""

import contextlib

CHECKED_ON = {"keras": ("3.10.0", "3.15.1"), "tensorflow": ("2.16.1", "2.21.0")}

try:  # No public API tells whether a `keras.StatelessScope` is open; Keras keeps it here.
    from keras.src.backend.common import global_state as _global_state
except ImportError:  # pragma: no cover - a Keras that moved it
    _global_state = None


def stateless_scope_open():
    """Returns whether a `keras.StatelessScope` is open; `True` where Keras no longer tells.

    The PyTorch paths (`_layer/torch.py`) assign variables in place, which a
    stateless scope forbids: where this cannot be known, they take Keras's call
    and `Variable.assign`.
    """
    return _global_state is None or _global_state.get_global_attribute("stateless_scope") is not None


def variable_reader(x):
    """Returns how a PyTorch path reads its variables' tensors in a call on `x`: `read(variable)`.

    `Variable.value` checks at every read whether a stateless scope or an
    autocast scope is open and whether the call is symbolic (Keras's meta
    device), each a lookup in Keras's global state: on PyTorch's eager steps
    the reads of one batch-norm call cost more than its update's arithmetic.
    Outside those three cases the value is the variable's own tensor
    (`variable._value`), so this checks them once per call and then reads
    that tensor directly; in any of them, or where Keras moved its state, it
    returns `Variable.value` itself.
    """
    if (
        _global_state is None
        or x.device.type == "meta"
        or _global_state.get_global_attribute("stateless_scope") is not None
        or _global_state.get_global_attribute("autocast_scope") is not None
    ):
        return read_value
    return read_own_tensor


def read_value(variable):
    """Returns `variable.value`: what `variable_reader` returns where a scope is open."""
    return variable.value


def read_own_tensor(variable):
    """Returns the variable's own tensor (`variable._value`); only where `variable_reader` chose it."""
    value = getattr(variable, "_value", None)
    return variable.value if value is None else value


def keras_mask(x):
    """Returns the mask Keras attached to tensor `x` (`x._keras_mask`), or `None`."""
    return getattr(x, "_keras_mask", None)


def remat_mode(layer):
    """Returns the rematerialization mode Keras set on `layer` (`layer._remat_mode`), or `None`."""
    return getattr(layer, "_remat_mode", None)


def tracked_layers(layer):
    """Returns the sub-layers Keras tracks for `layer` (`layer._layers`), attributes, lists and dicts alike.

    Keras 3 has no public list of a custom layer's sub-layers; on PyTorch they
    are not in the instance's `__dict__`, so the tracker's list is what every
    backend shares.
    """
    return list(getattr(layer, "_layers", []))


def is_functional(model):
    """Returns whether `model` is a Functional model, a Functional subclass included.

    `Functional` is not a public name; Keras injects it into the MRO of a
    `keras.Model` subclass built from inputs and outputs (keras-hub's backbones
    and tasks).
    """
    return any(cls.__name__ == "Functional" and cls.__module__.startswith("keras") for cls in type(model).__mro__)


def lambda_output_shape(layer):
    """Returns the `output_shape` a `keras.layers.Lambda` was made with (`layer._output_shape`), or `None`."""
    return getattr(layer, "_output_shape", None)


def tensorflow_in_xla():
    """Returns whether TensorFlow is tracing for XLA (`jit_compile=True`); `True` when it cannot tell.

    No public API tells; tf.keras's own layers ask `control_flow_util`. The
    TensorFlow kernel path stays off under XLA, so `True` is the cautious answer.
    """
    import tensorflow as tf

    if tf.executing_eagerly():
        return False
    try:
        from tensorflow.python.framework import ops as tf_ops
        from tensorflow.python.ops import control_flow_util
    except ImportError:  # pragma: no cover - a TensorFlow that moved it
        return True
    return control_flow_util.GraphOrParentsInXlaContext(tf_ops.get_default_graph())


#: The kinds whose attribute sets `saving_lib.get_attr_skipset` computes.
_SKIPSET_KINDS = ("Operation", "Layer", "Functional", "Sequential", "Metric", "Optimizer", "Loss")


def reuse_saving_skipsets():
    """Files the attribute sets Keras's `save_weights` computed under the name it reads them by.

    Keras 3.15's `saving_lib.get_attr_skipset` stores its sets as
    `saving_attr_skipset_<kind>` and looks them up as `saving_attr_skiplist_<kind>`,
    so every save rebuilds them from throwaway layers (docs/benchmarks.md has
    what it costs a checkpoint). The sets are Keras's own, the same at every
    save. Where Keras moved its global state, saves stay as fast as Keras's.
    """
    if _global_state is None:  # pragma: no cover - a Keras that moved it
        return
    for kind in _SKIPSET_KINDS:
        stored = _global_state.get_global_attribute(f"saving_attr_skipset_{kind}")
        if stored is not None and _global_state.get_global_attribute(f"saving_attr_skiplist_{kind}") is None:
            _global_state.set_global_attribute(f"saving_attr_skiplist_{kind}", stored)


def patch_instance(obj, name, value):
    """Sets `obj.name = value` on the instance, shadowing its class's attribute; returns the undo.

    keras-bn patches three things for a while, each documented where it does:
    a layer's `call` (dropout held in inference during recalibration), a
    layer's `activation` (the pre-activation of `LayerStatistics`), and an
    optimizer's `apply` (gradient norms of `LayerStatistics`). `Layer.__call__`
    and the trainers look the attribute up on the instance on every backend.
    """
    had = name in vars(obj)
    previous = vars(obj).get(name)
    setattr(obj, name, value)

    def undo():
        if had:
            setattr(obj, name, previous)
        else:
            delattr(obj, name)

    return undo


@contextlib.contextmanager
def patched(obj, name, value):
    """`patch_instance` for the duration of a `with` block."""
    undo = patch_instance(obj, name, value)
    try:
        yield
    finally:
        undo()
