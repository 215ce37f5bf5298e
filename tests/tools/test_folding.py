"""fold_batch_norm: same inference predictions, fewer layers, unfoldable layers kept."""

import numpy as np
import pytest

import keras
from helpers import to_numpy
from keras_bn import ManualBatchNorm, fold_batch_norm


def _warm_up(model, x, steps=3):
    """Calls `model` in training mode so the moving statistics leave their initial values."""
    for k in range(steps):
        model(x + k, training=True)


def _randomize_affine(model, rng):
    """Gives every gamma and beta a value far from its initializer."""
    for layer in model.layers:
        if isinstance(layer, (ManualBatchNorm, keras.layers.BatchNormalization)):
            if layer.scale:
                layer.gamma.assign(rng.uniform(0.5, 2.0, layer.gamma.shape).astype("float32"))
            if layer.center:
                layer.beta.assign(rng.normal(size=layer.beta.shape).astype("float32"))


def _draw_statistics(model, rng):
    """Gives every batch norm's moving statistics, gamma and beta random values far from their initial ones."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            _draw_statistics(layer, rng)
        elif isinstance(layer, (ManualBatchNorm, keras.layers.BatchNormalization)):
            shape = layer.moving_mean.shape
            layer.moving_mean.assign(rng.normal(1.0, 2.0, shape).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.3, 3.0, shape).astype("float32"))
    _randomize_affine(model, rng)


def _relative_gap(folded, model, x):
    """Returns max |folded(x) - model(x)| over max |model(x)|, both in inference mode, in float64."""
    expected = to_numpy(model(x, training=False)).astype("float64")
    scale = np.abs(expected).max()
    assert scale > 0, "the model's outputs are all 0: they would show no gap"
    return np.abs(to_numpy(folded(x, training=False)).astype("float64") - expected).max() / scale


def _kinds(model):
    """Returns the class names of a model's layers."""
    return [layer.__class__.__name__ for layer in model.layers]


@pytest.mark.parametrize("bn_cls", [ManualBatchNorm, keras.layers.BatchNormalization])
def test_conv_and_dense_followed_by_bn_are_folded(bn_cls):
    rng = np.random.default_rng(0)
    inputs = keras.Input((10, 10, 3))
    h = keras.layers.Conv2D(8, 3, strides=2, padding="same", use_bias=False, name="conv")(inputs)
    h = bn_cls(name="bn_conv")(h)
    h = keras.layers.ReLU()(h)
    h = keras.layers.Flatten()(h)
    h = keras.layers.Dense(5, name="dense")(h)  # with a bias of its own
    h = bn_cls(center=False, name="bn_dense")(h)
    model = keras.Model(inputs, h)
    x = rng.normal(1.0, 2.0, size=(16, 10, 10, 3)).astype("float32")
    _warm_up(model, x)
    _randomize_affine(model, rng)
    model.get_layer("dense").bias.assign(rng.normal(size=5).astype("float32"))

    folded = fold_batch_norm(model)
    assert _kinds(folded) == ["InputLayer", "Conv2D", "FoldedBatchNorm", "ReLU", "Flatten", "Dense", "FoldedBatchNorm"]
    assert folded.get_layer("conv").use_bias
    np.testing.assert_allclose(
        to_numpy(folded(x, training=False)), to_numpy(model(x, training=False)), rtol=1e-5, atol=1e-5
    )
    # The original model is untouched.
    assert _kinds(model).count(bn_cls.__name__) == 2


@pytest.mark.skipif(
    keras.backend.backend() == "tensorflow",
    reason="TensorFlow's CPU Conv2D implements channels_first only on some CPUs (with "
    "AVX-512); the same case runs on the JAX and PyTorch backends",
)
def test_channels_first_conv_folds_with_axis_1():
    rng = np.random.default_rng(1)
    model = keras.Sequential(
        [
            keras.Input((2, 6, 9)),
            keras.layers.Conv2D(5, 3, data_format="channels_first", use_bias=False),
            ManualBatchNorm(axis=1),
        ]
    )
    x = rng.normal(size=(8, 2, 6, 9)).astype("float32")
    _warm_up(model, x)
    _randomize_affine(model, rng)
    folded = fold_batch_norm(model)
    assert isinstance(folded, keras.Sequential)
    assert _kinds(folded) == ["Conv2D", "FoldedBatchNorm"]
    np.testing.assert_allclose(to_numpy(folded(x)), to_numpy(model(x)), rtol=1e-5, atol=1e-5)


def test_channels_first_axis_check_without_running_a_conv():
    # The same rule on every backend, with no channels_first convolution to run:
    # a BN over axis 1 after a channels_last conv is kept, with the reason.
    model = keras.Sequential(
        [keras.Input((6, 6, 6)), keras.layers.Conv2D(6, 1, name="conv"), ManualBatchNorm(axis=1, name="bn")]
    )
    _, report = fold_batch_norm(model, return_report=True)
    assert report.folded == {}
    assert "axis 1 is not the channel axis (3) of 'conv'" in report.kept["bn"]


@pytest.mark.parametrize("merge", ["add", "concatenate", "multiply"])
def test_a_linear_output_with_another_consumer_is_not_folded(merge):
    # Dense -> BN, and the Dense output also feeds a multi-input layer: folding
    # would change what that layer sees, so the BN must stay.
    rng = np.random.default_rng(6)
    inputs = keras.Input((4,))
    dense = keras.layers.Dense(4, name="dense")(inputs)
    bn = ManualBatchNorm(name="bn")(dense)
    merged = {
        "add": keras.layers.Add(name="merge"),
        "concatenate": keras.layers.Concatenate(name="merge"),
        "multiply": keras.layers.Multiply(name="merge"),
    }[merge]([bn, dense])
    model = keras.Model(inputs, merged)
    x = rng.normal(2.0, 3.0, size=(16, 4)).astype("float32")
    _warm_up(model, x)
    _randomize_affine(model, rng)
    folded, report = fold_batch_norm(model, return_report=True)
    assert report.folded == {}
    assert report.kept["bn"] == "the output of 'dense' also goes to 'merge', which folding would change"
    np.testing.assert_allclose(to_numpy(folded(x)), to_numpy(model(x)), rtol=1e-6, atol=1e-6)


def test_a_linear_output_returned_by_the_model_is_not_folded():
    inputs = keras.Input((4,))
    dense = keras.layers.Dense(4, name="dense")(inputs)
    model = keras.Model(inputs, [ManualBatchNorm(name="bn")(dense), dense])
    _, report = fold_batch_norm(model, return_report=True)
    assert report.folded == {}
    assert report.kept["bn"] == (
        "the output of 'dense' also goes to the model's outputs, which folding would change"
    )


@pytest.mark.parametrize(
    "make",
    [
        lambda: keras.layers.DepthwiseConv2D(3, depth_multiplier=2, padding="same", name="linear"),
        lambda: keras.layers.DepthwiseConv1D(3, depth_multiplier=3, name="linear"),
        lambda: keras.layers.SeparableConv2D(5, 3, depth_multiplier=2, name="linear"),
        lambda: keras.layers.SeparableConv1D(5, 3, use_bias=False, name="linear"),
        lambda: keras.layers.Conv3D(4, 2, name="linear"),
        lambda: keras.layers.Conv2D(6, 3, groups=3, use_bias=False, name="linear"),
    ],
    ids=["depthwise2d", "depthwise1d", "separable2d", "separable1d", "conv3d", "grouped"],
)
@pytest.mark.parametrize("bn_cls", [ManualBatchNorm, keras.layers.BatchNormalization])
def test_every_foldable_layer_type(make, bn_cls):
    rng = np.random.default_rng(7)
    linear = make()
    rank = {"1D": 3, "2D": 4, "3D": 5}[next(k for k in ("1D", "2D", "3D") if k in type(linear).__name__)]
    shape = (6, 6, 6, 3)[: rank - 2] + (3,)
    model = keras.Sequential([keras.Input(shape), linear, bn_cls(name="bn")])
    x = rng.normal(1.0, 2.0, size=(8,) + shape).astype("float32")
    _warm_up(model, x)
    _randomize_affine(model, rng)
    folded, report = fold_batch_norm(model, return_report=True)
    assert report.folded == {"bn": "linear"}, report.kept
    expected = to_numpy(model(x, training=False))
    np.testing.assert_allclose(to_numpy(folded(x, training=False)), expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


_TRANSPOSED = {
    "1d_strided": lambda **kw: keras.layers.Conv1DTranspose(5, 3, strides=2, output_padding=1, name="linear", **kw),
    "2d_strided": lambda **kw: keras.layers.Conv2DTranspose(
        5, 3, strides=2, padding="same", output_padding=1, name="linear", **kw
    ),
    "2d_dilated": lambda **kw: keras.layers.Conv2DTranspose(5, 3, dilation_rate=2, name="linear", **kw),
    "3d_strided": lambda **kw: keras.layers.Conv3DTranspose(4, 2, strides=2, output_padding=1, name="linear", **kw),
}


def _transposed(linear, bn):
    """Returns `Input -> linear -> bn -> ReLU`, a decoder's upsampling block, and its input's shape."""
    rank = 1 + int(type(linear).__name__[4])  # Conv2DTranspose: 2 spatial axes, 4 in all with batch and channels
    shape = (3,) + (5,) * (rank - 1) if linear.data_format == "channels_first" else (5,) * (rank - 1) + (3,)
    return keras.Sequential([keras.Input(shape), linear, bn, keras.layers.ReLU()]), shape


@pytest.mark.parametrize("use_bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("make", list(_TRANSPOSED.values()), ids=list(_TRANSPOSED))
@pytest.mark.parametrize("bn_cls", [ManualBatchNorm, keras.layers.BatchNormalization])
def test_transposed_convolutions_fold(make, use_bias, bn_cls):
    keras.utils.set_random_seed(11)
    rng = np.random.default_rng(11)
    model, shape = _transposed(make(use_bias=use_bias), bn_cls(name="bn"))
    x = rng.normal(1.0, 2.0, size=(4,) + shape).astype("float32")
    _draw_statistics(model, rng)
    if use_bias:
        bias = model.get_layer("linear").bias
        bias.assign(rng.normal(size=bias.shape).astype("float32"))
    folded, report = fold_batch_norm(model, return_report=True)
    assert report.folded == {"bn": "linear"}, report.kept
    assert report.forward == ()
    assert _kinds(folded)[1:] == ["FoldedBatchNorm", "ReLU"]
    assert folded.get_layer("linear").use_bias
    assert _relative_gap(folded, model, x) < 1e-5


@pytest.mark.skipif(
    keras.backend.backend() == "tensorflow",
    reason="TensorFlow's CPU convolutions implement channels_first only on some CPUs (with "
    "AVX-512); the same case runs on the JAX and PyTorch backends",
)
@pytest.mark.parametrize("make", [_TRANSPOSED["1d_strided"], _TRANSPOSED["2d_strided"]], ids=["1d", "2d"])
def test_channels_first_transposed_convolutions_fold_with_axis_1(make):
    keras.utils.set_random_seed(12)
    rng = np.random.default_rng(12)
    model, shape = _transposed(make(use_bias=False, data_format="channels_first"), ManualBatchNorm(axis=1, name="bn"))
    x = rng.normal(size=(4,) + shape).astype("float32")
    _draw_statistics(model, rng)
    folded, report = fold_batch_norm(model, return_report=True)
    assert report.folded == {"bn": "linear"}, report.kept
    assert _relative_gap(folded, model, x) < 1e-5


def test_a_transposed_convolution_with_an_activation_keeps_its_batch_norm():
    linear = keras.layers.Conv2DTranspose(4, 3, activation="relu", name="linear")
    model, _ = _transposed(linear, ManualBatchNorm(name="bn"))
    _, report = fold_batch_norm(model, return_report=True)
    assert report.folded == {}
    assert report.kept == {"bn": "'linear' applies the activation 'relu' before it"}


def _forward(kind, bn_cls):
    """Returns `(model, {bn: layer}, forward)`: a model where a batch norm folds into the Dense after it."""
    inputs = keras.Input((5, 6) if kind == "sequence" else (6,))
    h = inputs
    if kind == "after_activation":  # the Dense before applies a relu: only forward is left
        h = keras.layers.Dense(8, activation="relu", name="hidden")(h)
    h = bn_cls(name="bn")(h)
    if kind == "both_sides":  # the Dense takes the batch norm before it and the one after it
        h = keras.layers.Dense(4, use_bias=False, name="dense")(h)
        h = keras.layers.ReLU()(bn_cls(name="bn_after")(h))
        return keras.Model(inputs, h), {"bn": "dense", "bn_after": "dense"}, ("bn",)
    h = keras.layers.Dense(4, activation="tanh", name="dense")(h)  # its activation comes after the affine map
    if kind == "input_used_twice":  # only the batch norm's output matters
        h = keras.layers.Concatenate()([h, keras.layers.Dense(2, name="skip")(inputs)])
    return keras.Model(inputs, h), {"bn": "dense"}, ("bn",)


@pytest.mark.parametrize("kind", ["tabular", "sequence", "after_activation", "both_sides", "input_used_twice"])
@pytest.mark.parametrize("bn_cls", [ManualBatchNorm, keras.layers.BatchNormalization])
def test_a_batch_norm_folds_forward_into_the_dense_after_it(kind, bn_cls):
    keras.utils.set_random_seed(13)
    rng = np.random.default_rng(13)
    model, folded_into, forward = _forward(kind, bn_cls)
    _draw_statistics(model, rng)
    x = rng.normal(1.0, 2.0, size=(16,) + tuple(model.inputs[0].shape[1:])).astype("float32")
    folded, report = fold_batch_norm(model, return_report=True)
    assert report.folded == folded_into, report.kept
    assert report.forward == forward
    assert report.kept == {}
    assert "  folded bn forward into dense" in str(report).splitlines()
    assert "FoldedBatchNorm" in _kinds(folded) and bn_cls.__name__ not in _kinds(folded)
    assert _relative_gap(folded, model, x) < 1e-5


_FROM_INPUT = "its input is an input of the model it belongs to, not a layer's output"


def _not_forward(kind):
    """Returns `(model, why its batch norm "bn" is kept)`: a batch norm before a layer that cannot take it exactly."""
    inputs = keras.Input({"conv_same": (8, 8, 3), "conv_valid": (8, 3), "other_axis": (4, 6)}.get(kind, (6,)))
    bn = ManualBatchNorm(axis=1 if kind == "other_axis" else -1, name="bn")
    h = bn(inputs, training=True) if kind == "training" else bn(inputs)
    dtype = "mixed_float16" if kind == "narrower_dtype" else None
    dense = keras.layers.Dense(4, dtype=dtype, name="dense")
    if kind == "conv_same":
        out = keras.layers.Conv2D(4, 3, padding="same", name="conv")(h)
        why = "nor forward into 'conv': its 'same' padding adds zeros after the normalization"
    elif kind == "conv_valid":
        out = keras.layers.Conv1D(4, 3, name="conv")(h)
        why = "nor forward into 'conv' (Conv1D): keras-bn folds forward into Dense only"
    elif kind == "two_layers":
        out = keras.layers.Concatenate()([keras.layers.Dense(3, name="a")(h), keras.layers.Dense(3, name="b")(h)])
        why = "nor forward: its output goes to 'a' and 'b', not to one Dense alone"
    elif kind == "model_output":
        out = [dense(h), h]
        why = "nor forward: its output goes to 'dense' and the model's outputs, not to one Dense alone"
    elif kind == "shared_dense":
        out = keras.layers.Add()([dense(h), dense(inputs)])
        why = "nor forward into 'dense', which is called at 2 places"
    elif kind == "nested":
        inner_in = keras.Input((6,))
        out = keras.Model(inner_in, dense(inner_in), name="inner")(h)
        why = "nor forward into 'inner/dense', which is in another model"
    elif kind == "after_relu":  # no layer with a kernel after it: nothing about forward to say
        out, why = dense(keras.layers.ReLU()(h)), ""
    else:
        out, why = dense(h), {
            "other_axis": "nor forward into 'dense': the batch norm's axis 1 is not the last axis (2), "
            "the one 'dense' contracts",
            "narrower_dtype": "nor forward into 'dense': it computes in float16, the batch norm in float32, "
            "so the input would be rounded to float16 before it is normalized",
            "lora": "nor forward into 'dense', which has a LoRA update (lora_rank=2) that the fold would "
            "leave unscaled",
            "training": "",
        }[kind]
    model = keras.Model(inputs, out)
    if kind == "lora":
        dense.enable_lora(2)
        dense.lora_kernel_b.assign(np.full(dense.lora_kernel_b.shape, 0.5, "float32"))
    if kind == "training":
        return model, "it is called with training=True, so it always uses batch statistics"
    return model, f"{_FROM_INPUT}; {why}" if why else _FROM_INPUT


@pytest.mark.parametrize(
    "kind",
    ["conv_same", "conv_valid", "two_layers", "model_output", "shared_dense", "nested", "other_axis",
     "narrower_dtype", "lora", "training", "after_relu"],
)
def test_forward_cases_that_are_not_exact_are_kept_with_the_reason(kind):
    keras.utils.set_random_seed(14)
    rng = np.random.default_rng(14)
    model, why = _not_forward(kind)
    _draw_statistics(model, rng)
    x = rng.normal(1.0, 2.0, size=(8,) + tuple(model.inputs[0].shape[1:])).astype("float32")
    folded, report = fold_batch_norm(model, return_report=True)
    assert report.folded == {}
    assert report.kept == {"bn": why}
    for got, expected in zip(keras.tree.flatten(folded(x)), keras.tree.flatten(model(x))):
        np.testing.assert_allclose(to_numpy(got), to_numpy(expected), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("quantized", [False, True], ids=["lora", "int8"])
def test_a_dense_with_lora_or_a_quantized_kernel_keeps_the_batch_norm_after_it(quantized):
    keras.utils.set_random_seed(15)
    rng = np.random.default_rng(15)
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(4, name="dense"), ManualBatchNorm(name="bn")])
    dense = model.get_layer("dense")
    if quantized:
        dense.quantize("int8")
        why = ("its input comes from 'dense', which is quantized ('int8'): its integer kernel cannot "
               "take the scale exactly")
    else:
        dense.enable_lora(2)
        dense.lora_kernel_b.assign(rng.normal(size=dense.lora_kernel_b.shape).astype("float32"))
        why = "its input comes from 'dense', which has a LoRA update (lora_rank=2) that the fold would leave unscaled"
    _draw_statistics(model, rng)
    x = rng.normal(size=(8, 5)).astype("float32")
    folded, report = fold_batch_norm(model, return_report=True)
    assert report.kept == {"bn": why}
    np.testing.assert_allclose(to_numpy(folded(x)), to_numpy(model(x)), rtol=1e-6, atol=1e-6)


def test_nested_models_are_folded_inside():
    rng = np.random.default_rng(8)
    block = keras.Sequential(
        [keras.Input((6, 6, 3)), keras.layers.Conv2D(4, 3, name="conv"), ManualBatchNorm(name="bn"), keras.layers.ReLU()],
        name="block",
    )
    inputs = keras.Input((6, 6, 3))
    h = block(inputs)
    h = keras.layers.GlobalAveragePooling2D()(h)
    h = keras.layers.Dense(3, name="head")(h)
    outputs = keras.layers.BatchNormalization(name="head_bn")(h)
    model = keras.Model(inputs, outputs)
    x = rng.normal(size=(8, 6, 6, 3)).astype("float32")
    _warm_up(model, x)
    _randomize_affine(block, rng)
    _randomize_affine(model, rng)
    folded, report = fold_batch_norm(model, return_report=True)
    assert report.folded == {"block/bn": "block/conv", "head_bn": "head"}
    assert _kinds(folded.get_layer("block")) == ["Conv2D", "FoldedBatchNorm", "ReLU"]
    np.testing.assert_allclose(to_numpy(folded(x)), to_numpy(model(x)), rtol=1e-5, atol=1e-5)


def test_report_explains_what_was_kept(capsys):
    inputs = keras.Input((4,))
    h = keras.layers.Dense(4, activation="relu", name="relu_dense")(inputs)
    # A tanh after each batch norm that a Dense would otherwise take forward.
    h = keras.layers.Activation("tanh")(ManualBatchNorm(name="after_relu")(h))
    h = keras.layers.Dense(4, name="plain")(h)
    h = ManualBatchNorm(name="folds")(h)
    h = keras.layers.Activation("tanh")(ManualBatchNorm(name="after_bn")(h))
    bn_train = ManualBatchNorm(name="always_training")
    h = bn_train(keras.layers.Dense(4, name="d2")(h), training=True)
    model = keras.Model(inputs, h)
    folded, report = fold_batch_norm(model, verbose=True, return_report=True)
    assert report.folded == {"folds": "plain"}
    assert "activation 'relu'" in report.kept["after_relu"]
    assert report.kept["after_bn"] == "its input comes from 'folds' (ManualBatchNorm), which cannot absorb it"
    assert "training=True" in report.kept["always_training"]
    printed = capsys.readouterr().out
    # Each reason reads as a sentence: no doubled quotes, the paths quoted once.
    assert printed.splitlines()[:3] == [
        "Folded 1 batch norm(s), kept 3.",
        "  folded folds into plain",
        "  kept after_relu: 'relu_dense' applies the activation 'relu' before it",
    ]
    assert "''" not in printed


def test_mixed_precision_model_keeps_its_dtypes():
    rng = np.random.default_rng(9)
    model = keras.Sequential(
        [
            keras.Input((5,)),
            keras.layers.Dense(4, dtype="mixed_float16", name="dense"),
            ManualBatchNorm(dtype="mixed_float16", name="bn"),
        ]
    )
    x = rng.normal(size=(8, 5)).astype("float32")
    _warm_up(model, x)
    folded = fold_batch_norm(model)
    y = folded(x)
    assert keras.backend.standardize_dtype(y.dtype) == "float16"
    np.testing.assert_allclose(to_numpy(y).astype("float32"), to_numpy(model(x)).astype("float32"), rtol=2e-2, atol=2e-2)


def _mixed(case, policy):
    """Returns a model of `policy` where a batch norm folds into a transposed convolution, or forward into a Dense."""
    if case == "transposed":
        linear = keras.layers.Conv2DTranspose(6, 3, strides=2, output_padding=1, dtype=policy, name="linear")
        return _transposed(linear, ManualBatchNorm(dtype=policy, name="bn"))[0]
    inputs = keras.Input((6,))
    h = ManualBatchNorm(dtype=policy, name="bn")(inputs)
    h = keras.layers.Dense(8, use_bias=False, dtype=policy, name="linear")(h)
    return keras.Model(inputs, keras.layers.BatchNormalization(dtype=policy, name="bn_after")(h))


# The largest gaps measured, relative to the outputs' scale, over seeds 0-19 on the
# three backends (CPU): 2.0e-3 in float16 and 1.4e-2 in bfloat16, about four units of
# their rounding (2**-11 and 2**-8); float32 cases stay under 6e-7.
_MIXED_RTOL = {"mixed_float16": 1e-2, "mixed_bfloat16": 4e-2}


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
@pytest.mark.parametrize("case", ["transposed", "forward"])
def test_mixed_precision_folds_predict_the_same(case, policy):
    keras.utils.set_random_seed(16)
    rng = np.random.default_rng(16)
    model = _mixed(case, policy)
    _draw_statistics(model, rng)
    x = rng.normal(1.0, 2.0, size=(8,) + tuple(model.inputs[0].shape[1:])).astype("float32")
    folded, report = fold_batch_norm(model, return_report=True)
    assert report.kept == {} and len(report.folded) == (1 if case == "transposed" else 2), report
    linear = folded.get_layer("linear")
    # The weights were worked out in float64 and stored as float32 variables; the layer computes in 16 bits.
    assert (linear.kernel.dtype, linear.compute_dtype) == ("float32", policy.removeprefix("mixed_"))
    assert _relative_gap(folded, model, x) < _MIXED_RTOL[policy]


@pytest.mark.parametrize(
    "layers",
    [
        lambda: [keras.Input((5,)), keras.layers.Dense(4), ManualBatchNorm()],
        lambda: [keras.Input((5, 3)), keras.layers.Conv1DTranspose(4, 3, strides=2), ManualBatchNorm()],
        lambda: [keras.Input((5,)), ManualBatchNorm(), keras.layers.Dense(4)],
    ],
    ids=["dense", "transposed", "forward"],
)
def test_folded_model_saves_and_loads(layers, tmp_path):
    keras.utils.set_random_seed(10)
    rng = np.random.default_rng(10)
    model = keras.Sequential(layers())
    x = rng.normal(size=(8,) + tuple(model.inputs[0].shape[1:])).astype("float32")
    _draw_statistics(model, rng)
    folded, report = fold_batch_norm(model, return_report=True)
    assert len(report.folded) == 1, report
    folded.save(tmp_path / "folded.keras")
    loaded = keras.saving.load_model(tmp_path / "folded.keras")
    np.testing.assert_array_equal(to_numpy(loaded(x)), to_numpy(folded(x)))
    assert _relative_gap(loaded, model, x) < 1e-5


def test_unfoldable_layers_are_kept():
    rng = np.random.default_rng(2)
    inputs = keras.Input((6, 6, 3))
    a = keras.layers.Conv2D(4, 3, activation="relu", name="conv_relu")(inputs)
    a = ManualBatchNorm(name="after_activation")(a)
    b = keras.layers.MaxPooling2D(name="pool")(a)
    b = ManualBatchNorm(name="after_pool")(b)
    c = keras.layers.Conv2D(4, 1, name="shared_out")(b)
    d = ManualBatchNorm(name="bn_of_shared")(c)
    e = keras.layers.Conv2D(4, 1, name="conv_axis")(d)
    e = ManualBatchNorm(axis=1, name="other_axis")(e)
    out = keras.layers.Concatenate()([keras.layers.Flatten()(c), keras.layers.Flatten()(d), keras.layers.Flatten()(e)])
    model = keras.Model(inputs, out)
    x = rng.normal(size=(8, 6, 6, 3)).astype("float32")
    _warm_up(model, x)
    _randomize_affine(model, rng)
    folded = fold_batch_norm(model)
    # Nothing here is foldable: after an activation, after pooling, a conv whose
    # output is also used elsewhere, and a normalization over another axis.
    assert _kinds(folded).count("ManualBatchNorm") == 4
    assert "FoldedBatchNorm" not in _kinds(folded)
    np.testing.assert_allclose(to_numpy(folded(x)), to_numpy(model(x)), rtol=1e-6, atol=1e-6)


def test_a_subclassed_model_is_folded_through_its_graph_or_copied_with_every_batch_norm_kept():
    @keras.saving.register_keras_serializable(package="test_folding")
    class Custom(keras.Model):
        def __init__(self, branch=False, **kwargs):
            super().__init__(**kwargs)
            self.branch = branch
            self.dense = keras.layers.Dense(3, name="dense")
            self.bn = keras.layers.BatchNormalization(name="bn")

        def call(self, x, training=None):
            if self.branch and training:
                x = x * 2.0
            return self.bn(self.dense(x), training=training)

        def get_config(self):
            return {**super().get_config(), "branch": self.branch}

    x = np.random.default_rng(0).normal(size=(8, 4)).astype("float32")
    model = Custom(name="custom")
    model(x, training=True)
    folded, report = fold_batch_norm(model, return_report=True)
    assert report.folded == {"bn": "dense"} and report.kept == {}
    np.testing.assert_allclose(to_numpy(folded(x)), to_numpy(model(x)), rtol=1e-5, atol=1e-6)

    branching = Custom(branch=True, name="custom")
    branching(x, training=True)
    folded, report = fold_batch_norm(branching, return_report=True)
    assert report.folded == {}
    assert report.kept == {"bn": "it is inside the subclassed model 'custom', which keras-bn cannot turn into a "
                                 "graph: its call() takes other steps in training than in inference (Python "
                                 "branching on `training`)"}
    assert folded is not branching
    np.testing.assert_allclose(to_numpy(folded(x)), to_numpy(branching(x)), rtol=1e-6, atol=1e-6)


def test_a_subclassed_model_without_config_is_refused_by_name():
    class NoConfig(keras.Model):
        def __init__(self, units):
            super().__init__(name="no_config")
            self.dense = keras.layers.Dense(units)

        def call(self, x):
            return self.dense(x)

    model = NoConfig(2)
    model(np.zeros((1, 3), "float32"))
    with pytest.raises(ValueError, match=r"cannot copy model 'no_config'.*subclassed NoConfig.*Functional API"):
        fold_batch_norm(model)


def test_unbuilt_models_and_non_models_are_refused():
    with pytest.raises(TypeError, match=r"needs a keras.Model.*Received: model of type Dense"):
        fold_batch_norm(keras.layers.Dense(2))
    with pytest.raises(ValueError, match=r"needs a built model"):
        fold_batch_norm(keras.Sequential([keras.layers.Dense(2)]))
