"""Every private Keras and TensorFlow hook of `keras_bn._keras_compat`, probed on the installed versions.

Each hook degrades quietly where a release has moved what it reads (slower or
more cautious, never wrong); these tests make such a move loud instead, so a
new Keras is caught here. Each asserts the answer a working hook gives.
"""

import ast
from pathlib import Path

import keras
import numpy as np
import pytest

from keras_bn import _keras_compat

BACKEND = keras.backend.backend()
PACKAGE = Path(__file__).resolve().parents[2] / "keras_bn"


def test_stateless_scope_is_seen():
    assert _keras_compat._global_state is not None, "keras.src.backend.common.global_state moved"
    assert not _keras_compat.stateless_scope_open()
    with keras.StatelessScope():
        assert _keras_compat.stateless_scope_open()


@pytest.mark.skipif(BACKEND != "torch", reason="the reader serves the PyTorch paths")
def test_a_variable_is_read_as_variable_value_reads_it():
    import torch

    variable = keras.Variable(np.arange(3.0, dtype="float32"), name="v")
    x = torch.zeros(2)
    read = _keras_compat.variable_reader(x)
    assert read is _keras_compat.read_own_tensor, "Keras's global state moved: reads take Variable.value"
    assert read(variable) is variable.value
    with keras.StatelessScope(state_mapping=[(variable, np.ones(3, "float32"))]):
        read = _keras_compat.variable_reader(x)
        np.testing.assert_array_equal(read(variable).numpy(), np.ones(3))
    with keras.src.backend.AutocastScope("float16"):  # the scope Keras opens for mixed precision
        read = _keras_compat.variable_reader(x)
        assert read(variable).dtype == torch.float16
    assert _keras_compat.variable_reader(torch.zeros(2, device="meta")) is _keras_compat.read_value


def test_a_keras_mask_is_read():
    x = np.array([[[1.0], [0.0]], [[2.0], [3.0]]], "float32")
    masked = keras.layers.Masking()(x)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(_keras_compat.keras_mask(masked)),
                                  [[True, False], [True, True]])
    assert _keras_compat.keras_mask(keras.ops.convert_to_tensor(x)) is None


def test_the_remat_mode_is_read():
    layer = keras.layers.Dense(2)
    assert _keras_compat.remat_mode(layer) is None
    with keras.RematScope(mode="full"):
        remat = keras.layers.Dense(2)
    assert _keras_compat.remat_mode(remat) is not None


def test_tracked_sub_layers_of_a_custom_layer():
    class Block(keras.layers.Layer):
        def __init__(self):
            super().__init__()
            self.items = [keras.layers.Dense(2, name="in_list")]
            self.table = {"a": keras.layers.Dense(2, name="in_dict")}
            self.plain = keras.layers.Dense(2, name="attribute")

    assert sorted(layer.name for layer in _keras_compat.tracked_layers(Block())) == ["attribute", "in_dict", "in_list"]


def test_functional_models_are_told_apart():
    inputs = keras.Input((3,))
    functional = keras.Model(inputs, keras.layers.Dense(2)(inputs))

    class Subclassed(keras.Model):
        def call(self, x):
            return x

    class FunctionalSubclass(keras.Model):
        def __init__(self):
            x = keras.Input((3,))
            super().__init__(x, keras.layers.Dense(2)(x))

    assert _keras_compat.is_functional(functional)
    assert _keras_compat.is_functional(FunctionalSubclass())
    assert not _keras_compat.is_functional(Subclassed())


def test_a_lambda_output_shape_is_read():
    assert _keras_compat.lambda_output_shape(keras.layers.Lambda(lambda x: x, output_shape=(3,))) == (3,)
    assert _keras_compat.lambda_output_shape(keras.layers.Lambda(lambda x: x)) is None


@pytest.mark.skipif(BACKEND != "tensorflow", reason="TensorFlow's XLA context")
def test_xla_is_seen():
    import tensorflow as tf

    seen = {}

    def probe(jit):
        @tf.function(jit_compile=jit)
        def f(x):
            seen[jit] = _keras_compat.tensorflow_in_xla()
            return x + 1

        f(tf.constant(1.0))

    probe(True)
    probe(False)
    assert seen == {True: True, False: False}
    assert not _keras_compat.tensorflow_in_xla()  # eager


def test_the_saving_skipsets_are_filed_under_the_name_keras_reads(tmp_path):
    from keras.src.backend.common import global_state

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.save_weights(str(tmp_path / "a.weights.h5"))
    assert global_state.get_global_attribute("saving_attr_skipset_Layer") is not None, (
        "Keras no longer stores saving_attr_skipset_<kind>: reuse_saving_skipsets has nothing to reuse"
    )
    _keras_compat.reuse_saving_skipsets()
    assert global_state.get_global_attribute("saving_attr_skiplist_Layer") is not None


def test_an_instance_patch_is_undone():
    layer = keras.layers.Dense(2, activation="relu")
    original = layer.activation
    with _keras_compat.patched(layer, "activation", keras.activations.linear):
        assert layer.activation is keras.activations.linear
    assert layer.activation is original
    undo = _keras_compat.patch_instance(layer, "call", lambda x: x)
    assert layer(np.ones((1, 3), "float32")).shape == (1, 3)  # Keras calls the instance's call
    undo()
    assert "call" not in vars(layer) and layer(np.ones((1, 3), "float32")).shape == (1, 2)


def test_nothing_else_uses_private_keras():
    # No `keras.src` or `tensorflow.python` import outside _keras_compat.
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "_keras_compat.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.startswith(("keras.src", "tensorflow.python"))]
    assert not offenders, offenders
