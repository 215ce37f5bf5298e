"""`LayerStatistics` against NumPy percentiles and an explicit autodiff gradient, on every backend."""

import json

import keras
import numpy as np
import pytest

from helpers import to_numpy
from keras_bn.layer_statistics import LayerStatistics


def _np(value):
    return np.asarray(keras.ops.convert_to_numpy(value), dtype=np.float64)


def _data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(0.5, 1.5, size=(n, 4)).astype("float32")
    y = rng.normal(size=(n, 2)).astype("float32")
    return x, y


def _model(seed=1):
    """Dense(relu) -> Dense -> BN -> Activation(tanh) -> Dense: one fused and one separate nonlinearity."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((4,))
    h = keras.layers.Dense(6, activation="relu", name="d1")(inputs)
    h = keras.layers.Dense(5, name="d2")(h)
    h = keras.layers.BatchNormalization(name="bn")(h)
    h = keras.layers.Activation("tanh", name="act")(h)
    model = keras.Model(inputs, keras.layers.Dense(2, name="out")(h))
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    return model


def test_default_layers_and_json_history():
    x, y = _data()
    model = _model()
    stats = LayerStatistics(x[:8], every=2)
    model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0, callbacks=[stats])
    assert [layer.name for layer in stats.input_layers] == ["d1", "act"]
    assert [layer.name for layer in stats.kernel_layers] == ["d1", "d2", "out"]
    history = json.loads(json.dumps(stats.history))
    assert history["step"] == [2, 4]
    assert history["percentiles"] == [15.0, 50.0, 85.0]
    assert all(len(v) == 2 and len(v[0]) == 3 for v in history["inputs"].values())
    assert all(len(v) == 2 for v in history["gradient_norms"].values())


@pytest.mark.parametrize("training", [False, True])
def test_percentiles_equal_numpy_on_the_probe(training):
    x, y = _data()
    probe = x[:24]
    model = _model()
    stats = LayerStatistics((probe, y[:24]), every=2, percentiles=(15, 50, 85, 99), training=training)
    model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0, callbacks=[stats])
    # The last record (step 4) was taken with the final weights.
    d1, d2, bn = (model.get_layer(n) for n in ("d1", "d2", "bn"))
    pre1 = probe.astype(np.float64) @ _np(d1.kernel) + _np(d1.bias)
    h2 = np.maximum(pre1, 0.0) @ _np(d2.kernel) + _np(d2.bias)
    if training:  # the probe's own batch statistics
        mean, variance = h2.mean(axis=0), h2.var(axis=0)
    else:
        mean, variance = _np(bn.moving_mean), _np(bn.moving_variance)
    pre_act = _np(bn.gamma) * (h2 - mean) / np.sqrt(variance + bn.epsilon) + _np(bn.beta)
    q = [15, 50, 85, 99]
    np.testing.assert_allclose(stats.history["inputs"]["d1"][-1], np.percentile(pre1, q), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(stats.history["inputs"]["act"][-1], np.percentile(pre_act, q), rtol=1e-5, atol=1e-5)


def _explicit_kernel_gradients(model, x, y, names):
    """The gradient of the mean squared error in training mode, by the backend's own autodiff."""
    kernels = [model.get_layer(n).kernel for n in names]
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(y - model(x, training=True)))
        return [g.numpy() for g in tape.gradient(loss, [k.value for k in kernels])]
    if backend == "jax":
        import jax
        import jax.numpy as jnp

        trainable = [v.value for v in model.trainable_variables]
        non_trainable = [v.value for v in model.non_trainable_variables]

        def loss_fn(values):
            pred, _ = model.stateless_call(values, non_trainable, x, training=True)
            return jnp.mean(jnp.square(y - pred))

        grads = jax.grad(loss_fn)(trainable)
        index = {id(v): i for i, v in enumerate(model.trainable_variables)}
        return [np.asarray(grads[index[id(k)]]) for k in kernels]
    import torch

    for k in kernels:
        k.value.grad = None
    loss = torch.mean(torch.square(torch.as_tensor(y) - model(torch.as_tensor(x), training=True)))
    loss.backward()
    return [k.value.grad.detach().cpu().numpy() for k in kernels]


def test_gradient_norms_equal_an_explicit_autodiff_step():
    x, y = _data(n=16)
    model = _model()
    initial = model.get_weights()
    stats = LayerStatistics(x, every=1)
    model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0, callbacks=[stats])
    assert stats.history["step"] == [1]

    reference = _model()
    reference.set_weights(initial)
    names = ["d1", "d2", "out"]
    grads = _explicit_kernel_gradients(reference, x, y, names)
    for name, grad in zip(names, grads):
        norm = float(np.sqrt(np.sum(np.square(np.asarray(grad, np.float64)))))
        np.testing.assert_allclose(stats.history["gradient_norms"][name], [norm], rtol=1e-5)
        assert norm > 1e-3


def _trained(with_callback, training=False):
    x, y = _data()
    model = _model()
    callbacks = [LayerStatistics(x[:8], every=2, training=training)] if with_callback else []
    history = model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0, callbacks=callbacks)
    return model, history.history


@pytest.mark.parametrize("training", [False, True])
def test_recording_does_not_change_training(training):
    plain, plain_history = _trained(with_callback=False)
    model, history = _trained(with_callback=True, training=training)
    np.testing.assert_array_equal(history["loss"], plain_history["loss"])
    for old, new in zip(plain.weights, model.weights):
        np.testing.assert_array_equal(_np(old), _np(new))
    # The optimizer is itself again, and a later fit without the callback works.
    assert "apply" not in vars(model.optimizer)
    x, y = _data()
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)


def test_chosen_layers():
    x, y = _data()
    model = _model()
    stats = LayerStatistics(x[:8], inputs_of=["act"], kernels_of=[model.get_layer("d1")], every=4)
    model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0, callbacks=[stats])
    assert list(stats.history["inputs"]) == ["act"]
    assert list(stats.history["gradient_norms"]) == ["d1"]
    assert stats.history["step"] == [4]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"every": 0}, ValueError, r"`every` must be a positive int. Received: every=0"),
        ({"every": 2.5}, ValueError, r"Received: every=2.5"),
        ({"percentiles": (15, 150)}, ValueError, r"numbers in \[0, 100\]. Received: percentiles=\(15, 150\)"),
        ({"percentiles": ("low",)}, TypeError, r"Received: percentiles=\('low',\)"),
        ({"training": 1}, TypeError, r"`training` must be a bool. Received: training=1"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    x, _ = _data()
    with pytest.raises(error, match=match):
        LayerStatistics(x[:8], **kwargs)


def test_bad_layers():
    x, _ = _data()
    with pytest.raises(ValueError, match="`probe` must hold at least one example"):
        LayerStatistics(x[:0])
    model = _model()
    with pytest.raises(ValueError, match="apply a nonlinearity.*'d2'"):
        LayerStatistics(x[:8], inputs_of=["d2"]).set_model(model)
    with pytest.raises(ValueError, match="with a `kernel`.*'bn'"):
        LayerStatistics(x[:8], kernels_of=["bn"]).set_model(model)
    with pytest.raises(ValueError, match=r"does not have \(a layer of a nested model is named by its path.*'nope'"):
        LayerStatistics(x[:8], inputs_of=["nope"]).set_model(model)
    with pytest.raises(TypeError, match="must list layers or layer names"):
        LayerStatistics(x[:8], kernels_of=[3]).set_model(model)


def test_layers_of_a_nested_model_are_found_by_path_and_recorded_against_numpy():
    # A task-like model: the network is a nested Functional model, the head sits on top.
    keras.utils.set_random_seed(3)
    inner_in = keras.Input((4,))
    hidden = keras.layers.Dense(6, activation="relu", name="d1")(inner_in)
    backbone = keras.Model(inner_in, keras.layers.BatchNormalization(name="bn")(hidden), name="backbone")
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(2, name="head")(backbone(inputs) + 1.0))
    model.compile(optimizer="sgd", loss="mse")
    x, y = _data()
    stats = LayerStatistics(x[:8], every=4)
    model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0, callbacks=[stats])
    assert stats.input_paths == ["backbone/d1"]
    assert stats.kernel_paths == ["backbone/d1", "head"]
    # The last record is the probe's pre-activation after the last step: x @ W + b.
    d1 = backbone.get_layer("d1")
    pre = x[:8] @ to_numpy(d1.kernel) + to_numpy(d1.bias)
    np.testing.assert_allclose(
        stats.history["inputs"]["backbone/d1"][-1], np.percentile(pre, [15, 50, 85]), rtol=1e-5, atol=1e-6
    )
    with pytest.raises(ValueError, match=r"names a layer that `model` does not have.*'d1'"):
        LayerStatistics(x[:8], inputs_of=["d1"]).set_model(model)
