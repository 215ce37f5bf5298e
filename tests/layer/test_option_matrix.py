"""Every ManualBatchNorm option under every way of running, against NumPy.

Rows (`OPTIONS`): an int and a list `axis`, ghost batches, renorm with clipping, the
cumulative average (`momentum=None`), the unbiased variance, Keras sequence masks (from a
`Masking` and an `Embedding(mask_zero=True)` layer), `synchronized`, mixed precision per
layer and per model, a few combinations, and the hand-written path where the default
takes the framework's kernel (`fused=False`). Columns (one test function each): eager calls
in training and inference mode, `model.fit` with a ragged last batch (on TensorFlow the
retraced step then sees an unknown batch size), `model.predict` with a ragged last batch,
and a `.keras` save/load.

Every model is `Input -> [Masking | Embedding] -> ManualBatchNorm`: the batch norm sees
the raw input, which `fit`'s gradient steps never change, so `reference_call` (float64
NumPy, written from the papers, never calling the layer) can follow the moving statistics
through every batch that `fit` sees. Runs on every backend.
"""

import dataclasses

import ml_dtypes
import numpy as np
import pytest

import keras
from helpers import kernel_at_any_size, to_numpy
from keras_bn import ManualBatchNorm


@pytest.fixture(autouse=True, scope="module")
def _kernel_at_any_size():
    """`fused=None` takes TensorFlow's kernel on these small inputs too (`helpers.kernel_at_any_size`)."""
    with kernel_at_any_size():
        yield


# Every option is tested with this momentum (unless it sets its own), so that each
# batch visibly moves the statistics.
BASE_KWARGS = {"momentum": 0.7, "epsilon": 1e-3}
# Output tolerance per compute dtype, relative to the output's scale: float32
# round-off, or the rounding of a low-precision output itself.
TOLERANCE = {"float32": 1e-5, "float16": 2e-3, "bfloat16": 2e-2}
VOCABULARY = 11  # token ids of the Embedding option; 0 is padding


@dataclasses.dataclass(frozen=True)
class Option:
    """One row of the matrix: the layer's arguments and the model around it."""

    name: str
    kwargs: dict = dataclasses.field(default_factory=dict)
    sample_shape: tuple = (5, 3)  # one sample's shape at the batch norm's input
    front: str = None  # "masking" or "embedding": a layer that makes a sequence mask
    model_policy: str = None  # a dtype policy for the whole model
    batch: int = 8  # batch size of the eager training calls
    fit_samples: int = 10
    fit_batch: int = 4

    @property
    def layer_kwargs(self):
        """Returns the keyword arguments of the ManualBatchNorm."""
        return {**BASE_KWARGS, **self.kwargs}

    @property
    def compute_dtype(self):
        """Returns the dtype the batch norm computes its output in."""
        policy = self.kwargs.get("dtype") or self.model_policy or "float32"
        return policy.removeprefix("mixed_")


GHOST = {"virtual_batch_size": 4}
RENORM = {
    "renorm": True,
    "renorm_clipping": {"rmax": 1.2, "rmin": 0.8, "dmax": 0.3},
    "renorm_momentum": 0.6,
}
OPTIONS = [
    Option("axis_int_1", {"axis": 1}, sample_shape=(3, 5)),
    Option("axis_list_1_3", {"axis": [1, 3]}, sample_shape=(3, 2, 2)),
    Option("axis_list_last", {"axis": [-1]}),
    # Batches of 8 then 4: every batch fit sees is a multiple of the ghost batch.
    Option("virtual_batch_size", GHOST, fit_samples=12, fit_batch=8),
    Option("renorm_clipped", RENORM),
    Option("momentum_none", {"momentum": None}),
    Option("unbiased_variance", {"unbiased_variance": True}),
    Option("mask_from_masking", front="masking"),
    Option("mask_from_embedding", front="embedding"),
    Option("synchronized", {"synchronized": True}),
    Option("mixed_float16_model", model_policy="mixed_float16"),
    Option("mixed_bfloat16_layer", {"dtype": "mixed_bfloat16"}),
    # Combinations whose code paths meet.
    Option("virtual_batch_size+mask", GHOST, front="masking", fit_samples=12, fit_batch=8),
    Option("momentum_none+unbiased", {"momentum": None, "unbiased_variance": True}),
    Option("renorm+mixed_float16_layer", {**RENORM, "dtype": "mixed_float16"}),
    # The rows above take the framework's kernel where it applies (fused=None, the
    # default); this one takes the hand-written path throughout. tests/test_native.py
    # holds the two paths to each other in every dtype (one row here: CI time).
    Option("fused_false", {"fused": False}),
]
option_params = pytest.mark.parametrize("option", OPTIONS, ids=lambda o: o.name)


# -- the NumPy reference -----------------------------------------------------------------


def _channel_axes(kwargs, rank):
    """Returns the layer's channel axes as sorted non-negative ints."""
    axis = kwargs.get("axis", -1)
    axes = axis if isinstance(axis, (list, tuple)) else [axis]
    return tuple(sorted(a % rank for a in axes))


def reference_call(x, state, kwargs, *, training, mask=None):
    """Batch normalization in float64 NumPy with every option of the layer.

    `state` maps weight names to float64 arrays shaped like the channel axes (and
    `num_batches_tracked` to an int); a training call updates it in place. `mask`,
    if given, is a bool array broadcastable to `x`. Ghost batches (Hoffer et al.):
    each group of `virtual_batch_size` samples is normalized with its own statistics,
    and the moving averages follow the mean of the groups' statistics. Renorm (Ioffe,
    2017): `x_hat * r + d`, with `r`, `d` from the renorm averages before this batch,
    clipped. `momentum=None`: batch `n` enters with weight `1 / n`.
    """
    x = x.astype("float64")
    axes = _channel_axes(kwargs, x.ndim)
    reduce = tuple(i for i in range(x.ndim) if i not in axes)
    bshape = [x.shape[i] if i in axes else 1 for i in range(x.ndim)]
    eps = kwargs["epsilon"]

    def b(name):
        return state[name].reshape(bshape)

    if not training:
        return (x - b("moving_mean")) / np.sqrt(b("moving_variance") + eps) * b("gamma") + b("beta")

    weights = np.ones_like(x) if mask is None else np.broadcast_to(mask, x.shape).astype("float64")
    group = kwargs.get("virtual_batch_size") or len(x)
    outputs = np.empty_like(x)
    means, variances = [], []
    for start in range(0, len(x), group):
        part = slice(start, start + group)
        g, w = x[part], weights[part]
        n = w.sum(axis=reduce, keepdims=True)
        mean = (g * w).sum(axis=reduce, keepdims=True) / n
        var = ((g - mean) ** 2 * w).sum(axis=reduce, keepdims=True) / n
        x_hat = (g - mean) / np.sqrt(var + eps)
        if kwargs.get("renorm"):
            clip = kwargs.get("renorm_clipping") or {}
            r = np.clip(np.sqrt(var + eps) / b("renorm_stddev"), clip.get("rmin"), clip.get("rmax"))
            d = (mean - b("renorm_mean")) / b("renorm_stddev")
            if "dmax" in clip:
                d = np.clip(d, -clip["dmax"], clip["dmax"])
            x_hat = x_hat * r + d
        outputs[part] = x_hat * b("gamma") + b("beta")
        means.append(mean)
        variances.append(var * n / (n - 1) if kwargs.get("unbiased_variance") else var)
    _reference_update(state, kwargs, np.mean(means, axis=0), np.mean(variances, axis=0))
    return outputs


def _reference_update(state, kwargs, mean, var):
    """Folds one batch's statistics into the NumPy state's moving averages."""
    momentum = kwargs.get("momentum", 0.99)
    if momentum is None:
        state["num_batches_tracked"] += 1
        momentum = 1.0 - 1.0 / state["num_batches_tracked"]

    def ema(name, value, m):
        state[name] = state[name] * m + value.reshape(state[name].shape) * (1.0 - m)

    ema("moving_mean", mean, momentum)
    if not kwargs.get("renorm"):
        ema("moving_variance", var, momentum)
        return
    stddev = np.sqrt(var + kwargs["epsilon"])
    ema("renorm_mean", mean, kwargs["renorm_momentum"])
    ema("renorm_stddev", stddev, kwargs["renorm_momentum"])
    ema("moving_stddev", stddev, momentum)
    state["moving_variance"] = np.maximum(state["moving_stddev"] ** 2 - kwargs["epsilon"], 0.0)


# -- models, data and checks ---------------------------------------------------------------


class _global_policy:
    """Sets Keras's global dtype policy inside a `with` block (`None`: leaves it)."""

    def __init__(self, name):
        self.name = name

    def __enter__(self):
        self.previous = keras.config.dtype_policy()
        if self.name:
            keras.config.set_dtype_policy(self.name)

    def __exit__(self, *exc):
        keras.config.set_dtype_policy(self.previous)


def _model_and_state(option, rng):
    """Returns `Input -> [front] -> ManualBatchNorm`, the batch norm, and its state in NumPy.

    The weights get random values (a cumulative average resumes after 3 batches),
    written into the layer and kept in float64 as the reference's starting point.
    """
    with _global_policy(option.model_policy):
        if option.front == "embedding":
            inputs = keras.Input(option.sample_shape[:-1], dtype="int32")
            embedding = keras.layers.Embedding(
                VOCABULARY, option.sample_shape[-1], mask_zero=True, trainable=False
            )
            features = embedding(inputs)
        else:
            inputs = features = keras.Input(option.sample_shape)
            if option.front == "masking":
                features = keras.layers.Masking(mask_value=0.0)(features)
        bn = ManualBatchNorm(**option.layer_kwargs)
        model = keras.Model(inputs, bn(features))
    if option.front == "embedding":
        # Float32 rows of a fixed table: the batch norm's input is table[ids].
        embedding.embeddings.assign(rng.normal(2.0, 3.0, embedding.embeddings.shape).astype("float32"))

    channels = tuple(bn.gamma.shape)
    state = {
        "gamma": rng.uniform(0.5, 2.0, channels),
        "beta": rng.normal(size=channels),
        "moving_mean": rng.normal(size=channels),
        "moving_variance": rng.uniform(0.5, 2.0, channels),
    }
    if option.layer_kwargs.get("renorm"):
        state["moving_stddev"] = rng.uniform(0.7, 1.5, channels)
        state["renorm_mean"] = rng.normal(size=channels)
        state["renorm_stddev"] = rng.uniform(0.7, 1.5, channels)
    for name, value in state.items():
        value = value.astype("float32")
        getattr(bn, name).assign(value)
        state[name] = value.astype("float64")
    if option.layer_kwargs.get("momentum", 0.99) is None:
        bn.num_batches_tracked.assign(3)
        state["num_batches_tracked"] = 3
    return model, bn, state


def _data(option, rng, n, model):
    """Returns `n` samples: the model's input, the batch norm's input as the layer sees it, and the mask.

    The batch norm's input is rounded to its compute dtype, as the layer's autocast
    does, so the reference starts from the same numbers.
    """
    mask = None
    if option.front == "embedding":
        ids = rng.integers(1, VOCABULARY, (n, *option.sample_shape[:-1])).astype("int32")
        ids[:, 1:][rng.random(ids[:, 1:].shape) < 0.3] = 0  # padding; step 0 is always real
        table = to_numpy(model.layers[1].embeddings)
        inputs, x, mask = ids, table[ids], ids != 0
    else:
        inputs = x = rng.normal(2.0, 3.0, (n, *option.sample_shape)).astype("float32")
        if option.front == "masking":
            padded = rng.random(x.shape[:2]) < 0.3
            padded[:, 0] = False
            x[padded] = 0.0  # Masking(mask_value=0) masks the steps that are all 0
            mask = ~padded
    if mask is not None:
        mask = mask[..., None]  # a sequence mask, broadcast over the channel axis
    low = {"float16": np.float16, "bfloat16": ml_dtypes.bfloat16}.get(option.compute_dtype)
    if low is not None:
        x = x.astype(low).astype("float32")
    return inputs, x, mask


def _assert_output(actual, expected, option):
    """Checks an output against the reference at the option's compute-dtype tolerance."""
    actual = np.asarray(to_numpy(actual), dtype="float64")
    tol = TOLERANCE[option.compute_dtype]
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol * (1 + np.abs(expected).max()))


def _assert_state(bn, state):
    """Checks the layer's moving statistics (and batch counter) against the NumPy state."""
    for name, value in state.items():
        actual = to_numpy(getattr(bn, name))
        if name == "num_batches_tracked":
            assert int(actual) == value
        elif name not in ("gamma", "beta"):  # fit trains those; the rest it must not
            np.testing.assert_allclose(actual, value, rtol=1e-5, atol=1e-5, err_msg=name)


# -- the ways of running -------------------------------------------------------------------


@option_params
def test_eager_calls_in_training_and_inference(option):
    rng = np.random.default_rng(0)
    model, bn, state = _model_and_state(option, rng)
    kwargs = option.layer_kwargs
    for _ in range(2):  # the second call starts from the first one's statistics
        inputs, x, mask = _data(option, rng, option.batch, model)
        y = model(inputs, training=True)
        assert keras.backend.standardize_dtype(y.dtype) == option.compute_dtype
        _assert_output(y, reference_call(x, state, kwargs, training=True, mask=mask), option)
        _assert_state(bn, state)
    inputs, x, _ = _data(option, rng, 5, model)
    _assert_output(model(inputs, training=False), reference_call(x, state, kwargs, training=False), option)
    _assert_state(bn, state)  # inference moves nothing


@option_params
def test_fit_with_a_ragged_last_batch(option):
    assert option.fit_samples % option.fit_batch, "the last batch must be smaller than the others"
    rng = np.random.default_rng(1)
    model, bn, state = _model_and_state(option, rng)
    inputs, x, mask = _data(option, rng, option.fit_samples, model)
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    gamma = to_numpy(bn.gamma).copy()
    history = model.fit(
        inputs, np.zeros(x.shape, "float32"), batch_size=option.fit_batch, epochs=2, shuffle=False, verbose=0
    )
    for _epoch in range(2):
        for start in range(0, option.fit_samples, option.fit_batch):
            part = slice(start, start + option.fit_batch)
            batch_mask = None if mask is None else mask[part]
            reference_call(x[part], state, option.layer_kwargs, training=True, mask=batch_mask)
    _assert_state(bn, state)
    assert np.all(np.isfinite(history.history["loss"]))
    assert not np.allclose(to_numpy(bn.gamma), gamma), "fit trained nothing"


@option_params
def test_predict_with_a_ragged_last_batch(option):
    rng = np.random.default_rng(2)
    model, _, state = _model_and_state(option, rng)
    inputs, x, _ = _data(option, rng, 10, model)
    y = model.predict(inputs, batch_size=4, verbose=0)
    _assert_output(y, reference_call(x, state, option.layer_kwargs, training=False), option)


@option_params
def test_keras_save_and_load(option, tmp_path):
    rng = np.random.default_rng(3)
    model, bn, state = _model_and_state(option, rng)
    inputs, x, mask = _data(option, rng, option.batch, model)
    model(inputs, training=True)  # moves the statistics (and the batch counter)
    reference_call(x, state, option.layer_kwargs, training=True, mask=mask)
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    loaded_bn = loaded.get_layer(bn.name)

    assert type(loaded_bn) is ManualBatchNorm
    assert loaded_bn.get_config() == bn.get_config()
    _assert_state(loaded_bn, state)
    for a, b in zip(bn.weights, loaded_bn.weights, strict=True):
        assert a.path == b.path
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b))
    test_inputs, _, _ = _data(option, rng, 10, model)
    np.testing.assert_array_equal(
        loaded.predict(test_inputs, batch_size=10, verbose=0),
        model.predict(test_inputs, batch_size=10, verbose=0),
    )
    # Training goes on from exactly the same state (the counter, the renorm averages).
    more, _, _ = _data(option, rng, option.batch, model)
    np.testing.assert_array_equal(to_numpy(loaded(more, training=True)), to_numpy(model(more, training=True)))
    for a, b in zip(bn.weights, loaded_bn.weights, strict=True):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b))


# -- what a single-process run owes `synchronized`, and combinations that are refused --------


def test_synchronized_equals_the_plain_layer_outside_a_distributed_run():
    rng = np.random.default_rng(4)
    x = rng.normal(2.0, 3.0, (10, 5, 3)).astype("float32")
    layers = [ManualBatchNorm(momentum=0.7, synchronized=flag) for flag in (False, True)]
    models = [keras.Sequential([keras.Input((5, 3)), layer]) for layer in layers]
    for model in models:
        model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
        model.fit(x, np.zeros_like(x), batch_size=4, shuffle=False, verbose=0)
    plain, synced = (to_numpy(m(x[:4], training=True)) for m in models)
    np.testing.assert_array_equal(synced, plain)
    for a, b in zip(*(layer.weights for layer in layers), strict=True):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b))


def test_ghost_batches_and_synchronized_are_refused_together():
    with pytest.raises(ValueError, match=r"cannot be combined.*virtual_batch_size=4, synchronized=True"):
        ManualBatchNorm(virtual_batch_size=4, synchronized=True)
    # A saved config is refused the same way (Keras's from_config wraps it in a TypeError).
    config = ManualBatchNorm(synchronized=True).get_config()
    with pytest.raises((ValueError, TypeError), match=r"cannot be combined"):
        ManualBatchNorm.from_config({**config, "virtual_batch_size": 4})


@pytest.mark.parametrize("batch_size, bad_batch", [(4, 2), (6, 6)], ids=["ragged_last", "every"])
def test_fit_refuses_a_batch_that_ghost_batches_cannot_split(batch_size, bad_batch):
    # 10 samples in batches of 4: the last batch of 2 is not a multiple of 4;
    # in batches of 6, not even the first is.
    model = keras.Sequential([keras.Input((3,)), ManualBatchNorm(virtual_batch_size=4)])
    model.compile(optimizer="sgd", loss="mse")
    x = np.random.default_rng(5).normal(size=(10, 3)).astype("float32")
    errors = (ValueError,)
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        # fit traces its step for any batch size, so the check runs in the graph.
        errors = (tf.errors.InvalidArgumentError,)
    # The same words as an eager call, both numbers in them, on every backend.
    wording = (
        r"The batch size must be a multiple of `virtual_batch_size`\. "
        rf"Received: a batch of {bad_batch} with virtual_batch_size=4"
    )
    # Several runs: on TensorFlow an unordered run-time check races the reshape
    # that it guards, and half the runs raised the raw reshape error instead.
    for _ in range(6 if batch_size == 4 else 1):
        with pytest.raises(errors, match=wording):
            model.fit(x, np.zeros_like(x), batch_size=batch_size, shuffle=False, verbose=0)
    with pytest.raises(ValueError, match=wording):
        ManualBatchNorm(virtual_batch_size=4)(x[:bad_batch], training=True)  # an eager call


def test_fit_refuses_a_last_batch_with_one_value_per_channel_for_the_unbiased_variance():
    # 9 samples in batches of 4: the last batch has 1 value per channel, where
    # n / (n - 1) is undefined. Every backend must refuse it as an eager call does,
    # TensorFlow too, although there the batch size is known only at run time.
    model = keras.Sequential([keras.Input((3,)), ManualBatchNorm(unbiased_variance=True)])
    model.compile(optimizer="sgd", loss="mse")
    x = np.random.default_rng(6).normal(size=(9, 3)).astype("float32")
    errors = (ValueError,)
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        errors = (tf.errors.InvalidArgumentError,)
    with pytest.raises(errors, match=r"at least 2 values per channel"):
        model.fit(x, np.zeros_like(x), batch_size=4, shuffle=False, verbose=0)
