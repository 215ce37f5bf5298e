"""Shared test helpers: the layer contract, gradients on every backend, and a NumPy BN."""

import contextlib
import re
import warnings
from pathlib import Path

import numpy as np

import keras


@contextlib.contextmanager
def kernel_at_any_size():
    """Within the block `fused=None` trains on TensorFlow's kernel whatever the input's size.

    Without a GPU it trains inputs of fewer than `paths.CPU_MIN_SAMPLE_VALUES`
    values per sample on the hand-written path, and the tests' inputs are that small:
    the option matrix and the property tests are to run the kernel where it applies.
    """
    from keras_bn._layer import paths

    saved = paths.CPU_MIN_SAMPLE_VALUES
    paths.CPU_MIN_SAMPLE_VALUES = 0
    try:
        yield
    finally:
        paths.CPU_MIN_SAMPLE_VALUES = saved


def to_numpy(x):
    """Returns a backend tensor or variable as a NumPy array."""
    if isinstance(x, keras.Variable):
        x = x.value
    return np.asarray(keras.ops.convert_to_numpy(x))


def input_and_weight_grads(layer, x, upstream):
    """Returns d sum(layer(x, training=True) * upstream) w.r.t. x and the trainable weights.

    Each backend's own autodiff is used, so this checks what Keras training
    would really see. On TensorFlow and PyTorch the call also updates the
    layer's moving statistics, as a training step would; on JAX the call is
    stateless and leaves them alone.
    """
    backend = keras.backend.backend()
    upstream = np.asarray(upstream, dtype="float32")
    if backend == "tensorflow":
        import tensorflow as tf

        xt = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(xt)
            loss = tf.reduce_sum(layer(xt, training=True) * upstream)
        grads = tape.gradient(loss, [xt] + [v.value for v in layer.trainable_variables])
    elif backend == "jax":
        import jax
        import jax.numpy as jnp

        trainable = [v.value for v in layer.trainable_variables]
        frozen = [v.value for v in layer.non_trainable_variables]

        def loss_fn(x, trainable):
            out, _ = layer.stateless_call(trainable, frozen, x, training=True)
            return jnp.sum(out * upstream)

        gx, gw = jax.grad(loss_fn, argnums=(0, 1))(jnp.asarray(x), trainable)
        grads = [gx, *gw]
    elif backend == "torch":
        import torch

        xt = torch.tensor(x, requires_grad=True)
        out = layer(xt, training=True)
        loss = (out * torch.as_tensor(upstream)).sum()
        grads = torch.autograd.grad(
            loss, [xt] + [v.value for v in layer.trainable_variables]
        )
    else:  # pragma: no cover - the suite runs on the three backends above.
        raise NotImplementedError(backend)
    return [np.asarray(keras.ops.convert_to_numpy(g)) for g in grads]


def gradient_penalty_grads(layer, x, upstream, direction):
    """Returns the gradients of `sum(g * direction)`, `g` the input gradient of `sum(layer(x) * upstream)`.

    A second derivative, as a gradient penalty or a Hessian-vector product
    takes it: the gradient with respect to `x` and to the layer's first
    trainable weight, each backend differentiating its own gradient.
    """
    backend = keras.backend.backend()
    upstream = np.asarray(upstream, dtype="float32")
    direction = np.asarray(direction, dtype="float32")
    weight = layer.trainable_variables[0]
    if backend == "tensorflow":
        import tensorflow as tf

        xt = tf.constant(x)
        with tf.GradientTape() as outer:
            outer.watch(xt)
            with tf.GradientTape() as inner:
                inner.watch(xt)
                loss = tf.reduce_sum(layer(xt, training=True) * upstream)
            penalty = tf.reduce_sum(inner.gradient(loss, xt) * direction)
        grads = outer.gradient(penalty, [xt, weight.value])
    elif backend == "jax":
        import jax
        import jax.numpy as jnp

        trainable = [v.value for v in layer.trainable_variables]
        frozen = [v.value for v in layer.non_trainable_variables]

        def loss_fn(x, trainable):
            out, _ = layer.stateless_call(trainable, frozen, x, training=True)
            return jnp.sum(out * upstream)

        def penalty_fn(x, trainable):
            return jnp.sum(jax.grad(loss_fn)(x, trainable) * direction)

        gx, gw = jax.grad(penalty_fn, argnums=(0, 1))(jnp.asarray(x), trainable)
        grads = [gx, gw[0]]
    elif backend == "torch":
        import torch

        xt = torch.tensor(x, requires_grad=True)
        loss = (layer(xt, training=True) * torch.as_tensor(upstream)).sum()
        (g,) = torch.autograd.grad(loss, xt, create_graph=True)
        penalty = (g * torch.as_tensor(direction)).sum()
        grads = torch.autograd.grad(penalty, [xt, weight.value])
    else:  # pragma: no cover - the suite runs on the three backends above.
        raise NotImplementedError(backend)
    return [np.asarray(keras.ops.convert_to_numpy(g)) for g in grads]


def numpy_batch_norm(x, axes, state, *, momentum, epsilon, training, mask=None):
    """Batch normalization in float64 NumPy, written from the paper.

    `axes` are the channel axes; `state` is a dict with `gamma`, `beta`,
    `moving_mean` and `moving_variance` shaped like the channel axes, updated in
    place when training. `mask`, if given, is a bool array broadcastable to `x`.
    Returns the output in float64.
    """
    x = x.astype("float64")
    rank = x.ndim
    axes = tuple(sorted(a % rank for a in axes))
    reduce = tuple(i for i in range(rank) if i not in axes)
    bshape = [x.shape[i] if i in axes else 1 for i in range(rank)]

    def b(name):
        return state[name].astype("float64").reshape(bshape)

    if training:
        if mask is None:
            mean = x.mean(axis=reduce, keepdims=True)
            var = ((x - mean) ** 2).mean(axis=reduce, keepdims=True)
        else:
            w = np.broadcast_to(mask, x.shape).astype("float64")
            n = w.sum(axis=reduce, keepdims=True)
            mean = (x * w).sum(axis=reduce, keepdims=True) / np.maximum(n, 1)
            var = (((x - mean) ** 2) * w).sum(axis=reduce, keepdims=True) / np.maximum(n, 1)
            mean = np.where(n > 0, mean, b("moving_mean"))
            var = np.where(n > 0, var, b("moving_variance"))
        for name, stat in (("moving_mean", mean), ("moving_variance", var)):
            state[name] = (b(name) * momentum + stat * (1 - momentum)).reshape(
                state[name].shape
            )
    else:
        mean, var = b("moving_mean"), b("moving_variance")
    return (x - mean) / np.sqrt(var + epsilon) * b("gamma") + b("beta")


def check_layer_contract(layer_cls, init_kwargs, input_shape, tmp_path):
    """Checks what every Keras layer owes its users, in the spirit of Keras's `run_layer_test`.

    Config round trip, a symbolic and an eager call, one `fit` step that moves the
    weights, mixed precision, and a `.keras` save/load that predicts the same.
    """
    rng = np.random.default_rng(0)
    x = rng.normal(2.0, 3.0, size=input_shape).astype("float32")

    layer = layer_cls(**init_kwargs)
    config = layer.get_config()
    clone = layer_cls.from_config(config)
    assert clone.get_config() == config

    symbolic = layer_cls(**init_kwargs)(keras.Input(batch_shape=input_shape))
    assert tuple(symbolic.shape) == tuple(input_shape)
    eager = layer_cls(**init_kwargs)(x, training=True)
    assert tuple(eager.shape) == tuple(input_shape)

    inputs = keras.Input(shape=input_shape[1:])
    outputs = layer_cls(**init_kwargs)(inputs)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    before = [to_numpy(w).copy() for w in model.weights]
    model.fit(x, np.zeros_like(x), batch_size=input_shape[0], epochs=1, verbose=0)
    after = [to_numpy(w) for w in model.weights]
    assert any(not np.allclose(a, b) for a, b in zip(before, after)), "fit moved nothing"

    path = tmp_path / "contract.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(
        to_numpy(loaded(x, training=False)), to_numpy(model(x, training=False)), rtol=0, atol=0
    )

    mixed = layer_cls(**init_kwargs, dtype="mixed_float16")
    y = mixed(x.astype("float16"), training=True)
    assert keras.backend.standardize_dtype(y.dtype) == "float16"
    assert all(keras.backend.standardize_dtype(w.dtype) == "float32" for w in mixed.weights)


def write_fake_mnist_npz(folder):
    """Writes a small random `mnist.npz` (5,010 train images, 40 test) that load_mnist accepts."""
    rng = np.random.default_rng(0)
    np.savez(
        folder / "mnist.npz",
        x_train=rng.integers(0, 256, (5010, 28, 28), dtype=np.uint8),
        y_train=rng.integers(0, 10, 5010).astype(np.uint8),
        x_test=rng.integers(0, 256, (40, 28, 28), dtype=np.uint8),
        y_test=rng.integers(0, 10, 40).astype(np.uint8),
    )
    return folder


#: The Keras backends the suite knows; scripts/test.sh runs it once under each.
BACKENDS = ("tensorflow", "jax", "torch")


def left_out(conftest_file, backends, modules=None):
    """The test files of an area that do not run on this process's backend.

    Each area of the suite (`tests/layer/`, `tests/tools/`, ...) declares in its
    `conftest.py` the backends its tests run on, and sets `collect_ignore` to this
    list. Keras picks its backend once per process, so a file left out is not even
    imported here.

    Args:
        conftest_file: the area's `conftest.py` (its `__file__`).
        backends: the backends the area's test files run on.
        modules: `{file name: backends}` for the files that run on others.
    """
    for declared in (backends, *(modules or {}).values()):
        unknown = set(declared) - set(BACKENDS)
        if unknown:
            raise ValueError(f"backends must be among {BACKENDS}; got {sorted(unknown)}")
    backend = keras.backend.backend()
    area = Path(conftest_file).parent
    return [
        path.name
        for path in sorted(area.glob("test_*.py"))
        if backend not in (modules or {}).get(path.name, backends)
    ]


@contextlib.contextmanager
def warns_once(category, match):
    """Expects the block to warn exactly once with `category`, a message that `match` finds.

    The configuration's filters stay in force for every other warning (an error,
    or ignored for the backends' own deprecations). `pytest.warns` would catch
    those too and show them again from the module `warnings`, where the filters
    for `keras.src` and the backends no longer match, failing the test. Yields
    the list of the warnings caught.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.filterwarnings("always", category=category)
        yield caught
    messages = [str(w.message) for w in caught if issubclass(w.category, category)]
    assert len(messages) == 1, f"expected one {category.__name__}, got {messages}"
    assert re.search(match, messages[0]), f"{match!r} not found in {messages[0]!r}"
