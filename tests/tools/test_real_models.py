"""The tools on networks nobody here wrote: keras.applications and keras-hub, from tests/zoo.py.

Each model is built offline with random weights and drawn batch-norm statistics
(`zoo.build`), then folded, converted, frozen, recalibrated and watched by
`LayerStatistics`, against the model itself: the folded and converted models
must predict what it predicts, the converted one must also train like it.

Which models run where, to keep CI short: every model on TensorFlow; on PyTorch
the keras-hub and hand-written models and three applications (MobileNetV3Small
for its plain `x * scale + offset` operations, ResNet50V2, EfficientNetB0); on
JAX, where building compiles each initializer (minutes for the applications),
four small keras-hub models, one of them with batch norms inside custom blocks,
and the hand-written models.

Training mode is compared in float64 on TensorFlow: through 50 to 200 layers of
batch statistics on 2 samples, float32 round-off grows to 1e-3 of the outputs'
scale, which would hide a real difference. JAX has float64 only with
jax_enable_x64, and Keras's own layer reduces float64 in float32 on PyTorch, so
the other backends compare float32, on the keras-hub models that are shallow.
"""

import functools

import keras
import numpy as np
import pytest
import zoo
from helpers import to_numpy, warns_once

from keras_bn import (
    FrozenBatchNorm,
    LayerStatistics,
    ManualBatchNorm,
    convert_batch_norm,
    fold_batch_norm,
    freeze_batch_norm,
    recalibrate_batch_norm,
)

BACKEND = keras.backend.backend()
_ON_TORCH = ("MobileNetV3Small", "ResNet50V2", "EfficientNetB0")
_ON_JAX = ("ResNetBackbone(v2)", "DenseNetBackbone", "MobileNetBackbone", "ResNetImageClassifier(preprocessor)")
# Relative to the largest output: float32 through 200 layers of folded
# (float64-computed, float32-stored) weights lands within 1e-4.
FOLD_RTOL = 2e-4


def _runs_here(name):
    """Whether `name` runs on this backend (see the module docstring)."""
    if BACKEND == "tensorflow":
        return True
    if BACKEND == "torch":
        return name.startswith(("keras_hub.", "handwritten.")) or name.endswith(_ON_TORCH)
    return name.startswith("handwritten.") or name.endswith(_ON_JAX)


NAMES = [name for name in zoo.MODELS if _runs_here(name)]


@functools.cache
def _built(name, dtype="float32"):
    """The zoo model (built once per module run) and its sample input."""
    model = zoo.build(name, dtype=dtype)
    return model, zoo.sample_input(model, batch=2).astype(dtype)


def _outputs(model, x, training=False):
    """The model's outputs on `x`, flattened to a list of float64 arrays."""
    return [np.asarray(to_numpy(y), dtype="float64") for y in keras.tree.flatten(model(x, training=training))]


def _assert_close(actual, expected, rtol, what):
    """Asserts every output agrees to `rtol` of the largest output's magnitude."""
    for a, e in zip(actual, expected, strict=True):
        scale = max(np.abs(e).max(), 1.0)
        error = np.abs(a - e).max() / scale
        assert error <= rtol, f"{what}: largest difference {error:.2e} of the outputs' scale {scale:.3g}"


# keras-hub's SegFormer attention (in its MiT encoder) cannot be rebuilt from its
# own config (its get_config() returns arguments its constructor does not take),
# nor from its call(), which reads the batch size in Python. D-FINE's decoder
# rebuilt from its config creates its `upsampling_factor` weight twice.
# RetinaNetObjectDetector's constructor reads `image_shape`, `min_level` and
# `max_level` from its backbone, which the rebuilt backbone (a plain Functional
# model) lacks. Every tool that rebuilds refuses them, naming the layer or the task.
_REFUSED = {
    "keras_hub.SegFormerBackbone": r"'.*seg_former_multihead_attention\w*' of type SegFormerMultiheadAttention cannot be rebuilt",
    "keras_hub.DFineBackbone": r"Layer 'decoder' has 47 weights but its rebuilt copy has 48",
    "keras_hub.RetinaNetObjectDetector": r"task '.*RetinaNetObjectDetector' .* cannot be rebuilt around its new backbone",
}


def _refused(name, tool, *args, **kwargs):
    """Runs `tool`, or checks that it refuses a model the zoo knows it must refuse; returns whether it ran."""
    if name not in _REFUSED:
        return False
    with pytest.raises(ValueError, match=_REFUSED[name]):
        tool(*args, **kwargs)
    return True


def _no_dropout(model):
    """Sets every dropout rate to 0, so that training-mode calls of two models are comparable."""
    for layer in zoo.walk_layers(model):
        if isinstance(layer, keras.layers.Dropout):
            layer.rate = 0.0
    return model


# In float32, training mode on 2 samples is chaotic for this one: a 1e-6 relative
# change of the input moves its outputs by 0.47 (measured on PyTorch), so only
# float64 (TensorFlow) can compare its training mode.
_CHAOTIC_IN_FLOAT32 = ("keras_hub.BASNetBackbone",)


def _unused(name):
    """Batch norms that the model keeps but never calls.

    BASNet's image encoder's conv1_bn; RetinaNet's feature pyramid makes output
    norms for P3 to P5 but calls them only for levels above the backbone's.
    """
    return 1 if "BASNet" in name else 3 if "RetinaNet" in name else 0


# The zoo's custom layers that cannot be turned into graphs, and how many batch
# norms each model keeps inside them: a Python branch on `training`
# (DropPathBlock), a weight of the block's own (LayerScaleBlock).
_OUT_OF_REACH = {"handwritten.DropPathBlock": 2, "handwritten.LayerScaleBlock": 2}


def _out_of_reach(name):
    """Batch norms of `name` inside custom layers that the tools cannot turn into graphs."""
    return _OUT_OF_REACH.get(name, 0)


@pytest.mark.parametrize("name", NAMES)
def test_fold_predicts_the_same_and_accounts_for_every_batch_norm(name):
    model, x = _built(name)
    if _refused(name, fold_batch_norm, model):
        return
    expected = _outputs(model, x)
    folded, report = fold_batch_norm(model, return_report=True)
    _assert_close(_outputs(folded, x), expected, FOLD_RTOL, f"{name} folded")
    count = len(zoo.batch_norm_layers(model)) - _unused(name)
    assert len(report.folded) + len(report.kept) == count, report
    hidden = sum("keras-bn cannot turn into a graph" in why for why in report.kept.values())
    assert hidden == _out_of_reach(name), report
    assert not any(isinstance(layer, FrozenBatchNorm) for layer in folded.layers)


def _convert_dtype():
    """float64 where both layers compute in it (TensorFlow), else float32."""
    return "float64" if BACKEND == "tensorflow" else "float32"


@pytest.mark.parametrize("name", [n for n in NAMES if BACKEND == "tensorflow" or n.startswith(("keras_hub.", "handwritten."))])
def test_conversion_predicts_and_trains_the_same(name):
    dtype = _convert_dtype()
    model, x = _built(name, dtype)
    if _refused(name, convert_batch_norm, model, custom_layers="keep"):
        return
    hidden = _out_of_reach(name)
    if hidden:
        with pytest.raises(ValueError, match=r"cannot reach these layers inside custom layers"):
            convert_batch_norm(model)
        with warns_once(UserWarning, rf"convert_batch_norm kept {hidden} batch norm\(s\) as they were"):
            converted = convert_batch_norm(_no_dropout(model), custom_layers="keep")
    else:
        converted = convert_batch_norm(_no_dropout(model))
    converted = _no_dropout(converted)
    manual = zoo.batch_norm_layers(converted, ManualBatchNorm)
    assert len(manual) == len(zoo.batch_norm_layers(model)) - hidden - _unused(name)
    # float64 round-off, amplified by batch statistics of 2 samples through up to
    # 200 layers, reaches 6e-6 (EfficientNetV2B0); float32's reaches 1e-4 on the
    # shallow keras-hub models.
    rtol = 1e-5 if dtype == "float64" else 1e-3
    _assert_close(_outputs(converted, x), _outputs(model, x), rtol, f"{name} converted, inference")
    if dtype == "float32" and name in _CHAOTIC_IN_FLOAT32:
        return
    # Training mode: batch statistics, and the moving averages it leaves behind.
    _assert_close(_outputs(converted, x, True), _outputs(model, x, True), rtol, f"{name} converted, training")
    _assert_close(_outputs(converted, x), _outputs(model, x), rtol, f"{name} converted, after a training call")


@pytest.mark.parametrize("name", [n for n in NAMES if n.startswith(("keras_hub.", "handwritten."))]
                         + ["keras.applications.MobileNetV3Small"])
def test_frozen_model_is_the_inference_model_in_training_mode(name):
    if name not in NAMES:
        pytest.skip(f"{name} does not run on {BACKEND} (see the module docstring)")
    model, x = _built(name)
    if _refused(name, freeze_batch_norm, model, custom_layers="keep"):
        return
    hidden = _out_of_reach(name)
    if hidden:
        with pytest.raises(ValueError, match=r"freeze_batch_norm cannot reach these layers inside custom layers"):
            freeze_batch_norm(model)
        with warns_once(UserWarning, rf"freeze_batch_norm kept {hidden} batch norm\(s\) as they were"):
            frozen = freeze_batch_norm(model, custom_layers="keep")
    else:
        frozen = freeze_batch_norm(model)
    frozen = _no_dropout(frozen)
    count = len(zoo.batch_norm_layers(model)) - hidden - _unused(name)
    assert len(zoo.batch_norm_layers(frozen, FrozenBatchNorm)) == count
    if hidden:
        return  # those left inside their blocks still train: the model is not the inference model
    frozen.trainable = True
    _assert_close(_outputs(frozen, x, training=True), _outputs(model, x), FOLD_RTOL, f"{name} frozen")


@pytest.mark.parametrize("name", NAMES)
def test_recalibration_gives_every_batch_norm_the_statistics_numpy_computes(name):
    # One batch as the data: each batch norm's new statistics are the mean and
    # the (biased) variance of the inputs it receives in a training-mode call on
    # that batch, computed here in NumPy from what Keras feeds it. In float64
    # on TensorFlow; in float32 elsewhere, where the round-off of a traced and an
    # eager pass, computed in different orders, grows to 1e-3 of the statistics'
    # scale in the last layers of the deep applications.
    dtype = _convert_dtype()
    model = _no_dropout(zoo.build(name, dtype=dtype))
    x = zoo.sample_input(model, batch=4).astype(dtype)
    layers = zoo.batch_norm_layers(model)
    # A subclassed model has no graph to read inputs from: only its statistics' change is checked.
    graph = getattr(model, "inputs", None) is not None
    top = [layer for layer in model.layers if graph and isinstance(layer, keras.layers.BatchNormalization)]
    inputs = keras.Model(model.input, [layer.input for layer in top])(x, training=True) if top else []
    before = [to_numpy(layer.moving_mean).copy() for layer in layers]
    recalibrate_batch_norm(model, x, batch_size=4)
    rtol = 1e-9 if dtype == "float64" else 3e-3
    for layer, h in zip(top, keras.tree.flatten(inputs)):
        h = np.asarray(to_numpy(h), dtype="float64")
        axes = tuple(range(h.ndim - 1))
        for name_, expected in (("moving_mean", h.mean(axes)), ("moving_variance", h.var(axes))):
            actual = to_numpy(getattr(layer, name_))
            scale = max(np.abs(expected).max(), 1e-2)
            assert np.abs(actual - expected).max() <= rtol * scale, (layer.name, name_)
    # Every batch norm the model calls was reached, custom blocks' included.
    unchanged = [layer.name for layer, old in zip(layers, before) if np.array_equal(to_numpy(layer.moving_mean), old)]
    assert len(unchanged) == _unused(name), unchanged


@pytest.mark.parametrize("name", ["keras_hub.ResNetImageClassifier", "keras.applications.MobileNetV3Small"])
def test_layer_statistics_records_layers_of_nested_models(name):
    if name not in NAMES:
        pytest.skip(f"{name} does not run on {BACKEND} (see the module docstring)")
    model = zoo.build(name)
    x = zoo.sample_input(model, batch=4)
    y = np.arange(4) % 3
    model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=[])
    stats = LayerStatistics(x, every=1)
    model.fit(x, y, batch_size=2, epochs=1, shuffle=False, verbose=0, callbacks=[stats])
    assert stats.history["step"] == [1, 2]
    assert stats.input_paths and stats.kernel_paths
    for series in [*stats.history["inputs"].values(), *stats.history["gradient_norms"].values()]:
        assert len(series) == 2 and np.all(np.isfinite(series))
    if "Classifier" in name:
        prefix = model.backbone.name + "/"
        assert any(path.startswith(prefix) for path in stats.input_paths), stats.input_paths


def _top_batch_norm_inputs(model, x, kinds):
    """The layers of `kinds` at the model's top level and their inputs on `x` (inference)."""
    layers = [layer for layer in model.layers if isinstance(layer, kinds)]
    outputs = keras.Model(model.input, [layer.input for layer in layers])(x, training=False)
    return layers, [np.asarray(to_numpy(h), "float64") for h in keras.tree.flatten(outputs)]


@pytest.mark.parametrize("name", ["keras.applications.MobileNetV3Small", "keras_hub.ResNetBackbone(v2)"])
def test_other_conversions_and_torch_state_dicts_on_real_models(name):
    if name not in NAMES:
        pytest.skip(f"{name} does not run on {BACKEND} (see the module docstring)")
    import torch

    from keras_bn import to_torch_state_dict

    model, x = _built(name)
    expected = _outputs(model, x)
    # Synchronized and back: one replica, so the same model in both modes.
    synced = convert_batch_norm(convert_batch_norm(model, to="synchronized"), to="unsynchronized")
    _assert_close(_outputs(synced, x), expected, 1e-5, f"{name} synchronized and back")
    count = len(zoo.batch_norm_layers(model))
    assert sum(isinstance(layer, keras.layers.Identity) for layer in zoo.walk_layers(
        convert_batch_norm(model, to="identity"))) == count
    # Every group norm computes NumPy's group norm of its input with the batch norm's gamma and beta.
    grouped = convert_batch_norm(model, to="group_norm", groups=8)
    layers, inputs = _top_batch_norm_inputs(grouped, x, keras.layers.GroupNormalization)
    assert len(layers) == count
    for layer, h in zip(layers, inputs):
        original = model.get_layer(layer.name)
        gamma, beta = to_numpy(original.gamma).astype("float64"), to_numpy(original.beta).astype("float64")
        g = h.reshape(h.shape[:-1] + (8, h.shape[-1] // 8))
        axes = tuple(range(1, h.ndim - 1)) + (h.ndim,)
        normed = (g - g.mean(axes, keepdims=True)) / np.sqrt(g.var(axes, keepdims=True) + original.epsilon)
        reference = normed.reshape(h.shape) * gamma + beta
        np.testing.assert_allclose(to_numpy(layer(h.astype("float32"))), reference, rtol=1e-4, atol=1e-4)
    # Each batch norm, as a PyTorch state dict, in torch.nn.BatchNorm2d: the same inference outputs.
    manual = convert_batch_norm(model)
    layers, inputs = _top_batch_norm_inputs(manual, x, ManualBatchNorm)
    for layer, h in zip(layers, inputs):
        torch_bn = torch.nn.BatchNorm2d(h.shape[-1], eps=layer.epsilon).eval()
        torch_bn.load_state_dict(to_torch_state_dict(layer))
        with torch.no_grad():
            theirs = torch_bn(torch.from_numpy(h.transpose(0, 3, 1, 2).astype("float32"))).numpy().transpose(0, 2, 3, 1)
        np.testing.assert_allclose(to_numpy(layer(h.astype("float32"))), theirs, rtol=1e-5, atol=1e-5)
