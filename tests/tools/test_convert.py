"""convert_batch_norm: Keras's layer to ManualBatchNorm and back, same predictions, same training."""

import numpy as np
import pytest

import keras
from helpers import input_and_weight_grads, numpy_batch_norm, to_numpy
from keras_bn import ManualBatchNorm, convert_batch_norm

BN = keras.layers.BatchNormalization
# Keras's own layer has `renorm` from Keras 3.14 on; keras-bn's oldest Keras is 3.10.
KERAS_HAS_RENORM = tuple(int(part) for part in keras.version().split(".")[:2]) >= (3, 14)


def _model(bn=BN, **bn_kwargs):
    """A small functional model with a nested Sequential block and three batch norms of `bn`."""
    block = keras.Sequential(
        [keras.Input((6, 6, 4)), keras.layers.Conv2D(4, 3, padding="same", name="conv"), bn(name="bn", **bn_kwargs)],
        name="block",
    )
    inputs = keras.Input((6, 6, 3))
    h = keras.layers.Conv2D(4, 1, name="stem")(inputs)
    h = bn(name="stem_bn", **bn_kwargs)(h)
    h = keras.layers.Add()([block(h), h])
    h = keras.layers.GlobalAveragePooling2D()(h)
    h = keras.layers.Dense(3, name="head")(h)
    return keras.Model(inputs, bn(name="head_bn", **bn_kwargs)(h))


def _batch_norms(model, prefix=""):
    """Returns `{path: layer}` for the batch norms of `model`, nested ones included."""
    found = {}
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            found.update(_batch_norms(layer, prefix + layer.name + "/"))
        elif isinstance(layer, (BN, ManualBatchNorm)):
            found[prefix + layer.name] = layer
    return found


def _prepare(model, seed=0):
    """Moves the moving statistics off their initial values and gives gamma, beta non-trivial values."""
    rng = np.random.default_rng(seed)
    x = rng.normal(1.0, 2.0, size=(8, 6, 6, 3)).astype("float32")
    for k in range(3):
        model(x + k, training=True)
    for layer in _batch_norms(model).values():
        if layer.scale:
            layer.gamma.assign(rng.uniform(0.5, 2.0, layer.gamma.shape).astype("float32"))
        if layer.center:
            layer.beta.assign(rng.normal(size=layer.beta.shape).astype("float32"))
    return rng.normal(0.5, 1.5, size=(8, 6, 6, 3)).astype("float32")


def _statistics(model):
    """Returns the moving statistics of every batch norm, by path."""
    return {
        f"{path}:{name}": to_numpy(getattr(layer, name))
        for path, layer in _batch_norms(model).items()
        for name in ("moving_mean", "moving_variance")
    }


def test_converted_model_predicts_and_trains_the_same():
    original = _model()
    x = _prepare(original)
    converted = convert_batch_norm(original)
    layers = _batch_norms(converted)
    assert sorted(layers) == ["block/bn", "head_bn", "stem_bn"]
    assert all(type(layer) is ManualBatchNorm for layer in layers.values())
    assert all(type(layer) is BN for layer in _batch_norms(original).values())  # untouched

    np.testing.assert_allclose(to_numpy(converted(x)), to_numpy(original(x)), rtol=1e-5, atol=1e-5)
    upstream = np.random.default_rng(1).normal(size=(8, 3)).astype("float32")
    grads = input_and_weight_grads(original, x, upstream)
    converted_grads = input_and_weight_grads(converted, x, upstream)
    assert len(grads) == len(converted_grads)
    # Absolute tolerance on the scale of all gradients: a conv bias before a batch
    # norm has a gradient of exactly 0, so both sides hold only round-off there.
    scale = 1 + max(np.abs(g).max() for g in grads)
    for ours, ref in zip(converted_grads, grads):
        np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-5 * scale)
    np.testing.assert_allclose(
        to_numpy(converted(x, training=True)), to_numpy(original(x, training=True)), rtol=1e-4, atol=1e-4
    )
    expected = _statistics(original)
    for key, value in _statistics(converted).items():
        np.testing.assert_allclose(value, expected[key], rtol=1e-5, atol=1e-6, err_msg=key)


def test_options_apply_to_every_converted_layer_and_only_to_them():
    original = _model(momentum=0.9, epsilon=1e-4)
    original.get_layer("stem_bn").trainable = False
    converted = convert_batch_norm(original, virtual_batch_size=4, unbiased_variance=True)
    for path, layer in _batch_norms(converted).items():
        assert (layer.virtual_batch_size, layer.unbiased_variance) == (4, True), path
        assert (layer.momentum, layer.epsilon) == (0.9, 1e-4), path
    assert converted.get_layer("stem_bn").trainable is False
    assert [type(layer).__name__ for layer in converted.layers] == [type(layer).__name__.replace("BatchNormalization", "ManualBatchNorm") for layer in original.layers]


def test_round_trip_back_to_keras_restores_config_and_weights():
    original = _model(momentum=0.95, center=False)
    x = _prepare(original)
    back = convert_batch_norm(convert_batch_norm(original), to="keras")
    for path, layer in _batch_norms(back).items():
        ref = _batch_norms(original)[path]
        assert type(layer) is BN
        assert layer.get_config() == ref.get_config()
        for ours, theirs in zip(layer.weights, ref.weights):
            np.testing.assert_array_equal(to_numpy(ours), to_numpy(theirs))
    np.testing.assert_array_equal(to_numpy(back(x)), to_numpy(original(x)))


def test_options_keras_lacks_are_refused_by_name():
    manual = convert_batch_norm(_model(), virtual_batch_size=4)
    with pytest.raises(ValueError, match=r"convert_batch_norm\(to='keras'\) cannot convert these layers") as raised:
        convert_batch_norm(manual, to="keras")
    for path in ("block/bn", "head_bn", "stem_bn"):
        assert f"'{path}': virtual_batch_size=4 (Keras 3's BatchNormalization has no ghost batches)" in str(raised.value)
    cumulative = convert_batch_norm(_model(), momentum=None)
    with pytest.raises(ValueError, match=r"momentum=None"):
        convert_batch_norm(cumulative, to="keras")


def test_bad_arguments():
    model = _model()
    with pytest.raises(ValueError, match=r"`to` must be one of 'manual', 'keras', .*'identity'. Received: to='torch'"):
        convert_batch_norm(model, to="torch")
    with pytest.raises(TypeError, match=r"unknown option\(s\): virtual_batch"):
        convert_batch_norm(model, virtual_batch=4)
    with pytest.raises(TypeError, match=r"unknown option\(s\): unbiased_variance"):
        convert_batch_norm(model, to="keras", unbiased_variance=True)
    with pytest.raises(ValueError, match=r"virtual_batch_size"):
        convert_batch_norm(model, virtual_batch_size=0)

    with pytest.raises(TypeError, match=r"needs a keras.Model.*Received: model of type BatchNormalization"):
        convert_batch_norm(keras.layers.BatchNormalization())


def test_a_subclassed_model_becomes_a_graph_or_is_refused_with_its_batch_norms_named():
    class Custom(keras.Model):
        def __init__(self, branch=False):
            super().__init__(name="custom")
            self.branch = branch
            self.dense = [keras.layers.Dense(3)]
            self.norm = {"bn": keras.layers.BatchNormalization(name="bn")}

        def call(self, x, training=None):
            if self.branch and training:
                x = x + 1.0
            return self.norm["bn"](self.dense[0](x), training=training)

    x = np.random.default_rng(0).normal(size=(8, 4)).astype("float32")
    model = Custom()
    model(x)
    converted = convert_batch_norm(model)
    assert [type(layer).__name__ for layer in converted.layers] == ["InputLayer", "Dense", "ManualBatchNorm"]
    np.testing.assert_allclose(to_numpy(converted(x, training=True)), to_numpy(model(x, training=True)),
                               rtol=1e-5, atol=1e-6)
    branching = Custom(branch=True)
    branching(x)
    with pytest.raises(ValueError, match=r"inside the subclassed model 'custom' \(Custom\), which keras-bn could not "
                                         r"turn into a graph \(its call\(\) takes other steps.*'bn'.*Nothing was changed"):
        convert_batch_norm(branching)


def test_a_batch_norm_inside_a_custom_layer_is_converted_or_refused_by_path():
    class Block(keras.layers.Layer):
        def __init__(self, branch=False, **kwargs):
            super().__init__(**kwargs)
            self.branch = branch
            self.dense = keras.layers.Dense(3)
            self.bns = [keras.layers.BatchNormalization(name="inner_bn")]

        def call(self, x, training=None):
            x = self.dense(x)
            if self.branch and training:
                x = x * 2.0
            return self.bns[0](x, training=training)

    inputs = keras.Input((4,))
    outer = keras.layers.BatchNormalization(name="outer")(inputs)
    model = keras.Model(inputs, Block(name="block")(outer))
    converted = convert_batch_norm(model)
    assert type(converted.get_layer("block").get_layer("inner_bn")) is ManualBatchNorm
    x = np.random.default_rng(0).normal(size=(8, 4)).astype("float32")
    np.testing.assert_allclose(to_numpy(converted(x, training=True)), to_numpy(model(x, training=True)), rtol=1e-5, atol=1e-6)

    branching = keras.Model(inputs, Block(branch=True, name="block")(outer))
    with pytest.raises(ValueError, match=r"(?s)cannot reach these layers inside custom layers.*'block/inner_bn': inside "
                                         r"'block' \(Block\): its call\(\) takes other steps in training"):
        convert_batch_norm(branching)


def test_to_keras_works_on_every_keras_and_refuses_renorm_where_keras_lacks_it():
    """Issue 31: on Keras 3.10 to 3.13 `to="keras"` passed renorm's arguments to a layer without them.

    The converted layer is checked against NumPy: same output in inference, same
    moving statistics after a training step. A renorm layer converts where Keras
    has renorm and is refused by name, with both versions, where it does not.
    """
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4, name="dense"),
                              ManualBatchNorm(momentum=0.8, epsilon=0.01, name="bn")])
    rng = np.random.default_rng(3)
    x = rng.normal(2.0, 3.0, size=(16, 6)).astype("float32")
    model(x, training=True)  # moving statistics off their initial values
    layer = convert_batch_norm(model, to="keras").get_layer("bn")
    assert type(layer) is BN and (layer.momentum, layer.epsilon) == (0.8, 0.01)
    state = {name: to_numpy(getattr(model.get_layer("bn"), name)).astype("float64")
             for name in ("gamma", "beta", "moving_mean", "moving_variance")}
    h = to_numpy(model.get_layer("dense")(x))
    for training in (False, True):
        expected = numpy_batch_norm(h, [-1], state, momentum=0.8, epsilon=0.01, training=training)
        np.testing.assert_allclose(to_numpy(layer(h, training=training)), expected, rtol=1e-5, atol=1e-5)
    for name in ("moving_mean", "moving_variance"):
        np.testing.assert_allclose(to_numpy(getattr(layer, name)), state[name], rtol=1e-5, atol=1e-6)

    renorm = keras.Sequential([keras.Input((6,)), ManualBatchNorm(renorm=True, renorm_clipping={"rmax": 2.0}, name="bn")])
    for converting in (lambda: convert_batch_norm(renorm, to="keras"),
                       lambda: convert_batch_norm(model, to="keras", renorm=True)):
        if KERAS_HAS_RENORM:
            assert converting().get_layer("bn").renorm
            continue
        with pytest.raises(ValueError, match=r"cannot convert these layers") as raised:
            converting()
        assert (f"'bn': renorm=True (the installed Keras {keras.version()}'s BatchNormalization has no "
                "renorm; it needs Keras 3.14 or later)") in str(raised.value)


@pytest.mark.skipif(not KERAS_HAS_RENORM, reason=f"Keras {keras.version()}'s BatchNormalization has no renorm "
                    "(it came in Keras 3.14); test_to_keras_works_on_every_keras_and_refuses_renorm_where_keras_"
                    "lacks_it checks what conversion does there")
def test_renorm_and_mixed_precision_carry_over():
    original = keras.Sequential(
        [
            keras.Input((5,)),
            keras.layers.Dense(4, dtype="mixed_float16"),
            BN(renorm=True, renorm_clipping={"rmax": 2.0, "dmax": 1.0}, dtype="mixed_float16", name="bn"),
        ]
    )
    x = np.random.default_rng(2).normal(2.0, 1.0, size=(8, 5)).astype("float32")
    for k in range(3):
        original(x + k, training=True)
    converted = convert_batch_norm(original)
    bn = converted.get_layer("bn")
    assert bn.renorm and bn.renorm_clipping == {"rmax": 2.0, "dmax": 1.0}
    assert bn.dtype_policy.name == "mixed_float16"
    for name in ("moving_stddev", "renorm_mean", "renorm_stddev", "moving_variance"):
        np.testing.assert_array_equal(to_numpy(getattr(bn, name)), to_numpy(getattr(original.get_layer("bn"), name)))
    y = converted(x)
    assert keras.backend.standardize_dtype(y.dtype) == "float16"
    np.testing.assert_allclose(to_numpy(y).astype("float32"), to_numpy(original(x)).astype("float32"), rtol=1e-3, atol=1e-3)


def _conv_bn(bn=BN, **bn_kwargs):
    """Conv -> batch norm -> pooling: the smallest model where a normalization's axis matters."""
    keras.utils.set_random_seed(4)
    inputs = keras.Input((5, 5, 3))
    h = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    h = bn(name="bn", **bn_kwargs)(h)
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(h))
    rng = np.random.default_rng(5)
    layer = model.get_layer("bn")
    layer.gamma.assign(rng.uniform(0.5, 2.0, layer.gamma.shape).astype("float32"))
    layer.beta.assign(rng.normal(size=layer.beta.shape).astype("float32"))
    return model, rng.normal(1.0, 2.0, size=(3, 5, 5, 3)).astype("float32")


def _numpy_group_norm(h, groups, gamma, beta, epsilon):
    """Group normalization of NHWC `h` over (H, W, channels of the group), in float64."""
    n, height, width, c = h.shape
    g = h.reshape(n, height, width, groups, c // groups)
    mean = g.mean(axis=(1, 2, 4), keepdims=True)
    var = g.var(axis=(1, 2, 4), keepdims=True)
    return ((g - mean) / np.sqrt(var + epsilon)).reshape(h.shape) * gamma + beta


@pytest.mark.parametrize("bn_cls", [BN, ManualBatchNorm])
@pytest.mark.parametrize("to", ["group_norm", "layer_norm", "identity"])
def test_conversions_to_other_normalizations_match_numpy_and_keras_own_layers(to, bn_cls):
    model, x = _conv_bn(bn_cls, epsilon=0.01)
    options = {"groups": 2} if to == "group_norm" else {}
    converted = convert_batch_norm(model, to=to, **options)
    bn = model.get_layer("bn")
    gamma, beta = to_numpy(bn.gamma).astype("float64"), to_numpy(bn.beta).astype("float64")
    h = to_numpy(model.get_layer("conv")(x)).astype("float64")
    expected = {
        "group_norm": lambda: _numpy_group_norm(h, 2, gamma, beta, 0.01),
        "layer_norm": lambda: (h - h.mean(-1, keepdims=True)) / np.sqrt(h.var(-1, keepdims=True) + 0.01) * gamma + beta,
        "identity": lambda: h,
    }[to]().mean(axis=(1, 2))
    for training in (False, True):
        np.testing.assert_allclose(to_numpy(converted(x, training=training)), expected, rtol=1e-4, atol=1e-5)
    layer = converted.get_layer("bn")
    if to != "identity":
        # Keras's own layer, built by hand with the batch norm's gamma and beta, agrees.
        own = {"group_norm": keras.layers.GroupNormalization(groups=2, epsilon=0.01),
               "layer_norm": keras.layers.LayerNormalization(epsilon=0.01)}[to]
        own.build(h.shape)
        own.set_weights([to_numpy(bn.gamma), to_numpy(bn.beta)])
        np.testing.assert_allclose(to_numpy(layer(h.astype("float32"))), to_numpy(own(h.astype("float32"))), rtol=1e-6, atol=1e-6)
    assert type(layer).__name__ == {"group_norm": "GroupNormalization", "layer_norm": "LayerNormalization",
                                    "identity": "Identity"}[to]


def test_synchronized_and_back_keeps_everything_else():
    model = _model()
    x = _prepare(model)
    synced = convert_batch_norm(model, to="synchronized")
    expected_type = BN if keras.backend.backend() == "tensorflow" else ManualBatchNorm
    for path, layer in _batch_norms(synced).items():
        assert type(layer) is expected_type and layer.synchronized, path
    plain = convert_batch_norm(synced, to="unsynchronized")
    for path, layer in _batch_norms(plain).items():
        assert not layer.synchronized and layer.momentum == 0.99, path
    # One replica: synchronized statistics are the local ones.
    for candidate in (synced, plain):
        np.testing.assert_allclose(to_numpy(candidate(x, training=True)), to_numpy(model(x, training=True)), rtol=1e-4, atol=1e-5)


def test_bad_conversion_targets_and_options():
    model, _ = _conv_bn(ManualBatchNorm, axis=[1, 3])
    with pytest.raises(TypeError, match=r"to='group_norm'\) needs the option\(s\) groups"):
        convert_batch_norm(model, to="group_norm")
    with pytest.raises(TypeError, match=r"to='identity'\) takes the options \(none\). Received unknown option\(s\): groups"):
        convert_batch_norm(model, to="identity", groups=2)
    with pytest.raises(ValueError, match=r"(?s)cannot convert these layers.*'bn': axis=\(1, 3\) \(LayerNormalization takes one channel axis here\)"):
        convert_batch_norm(model, to="layer_norm")
