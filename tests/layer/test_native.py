"""`ManualBatchNorm(fused=...)`: the framework's kernel against the hand-written path and NumPy.

Three independent answers for every case: the native kernel (`fused=True` where the
backend has one), the hand-written path (`fused=False`), and float64 NumPy written
here from the paper: outputs in training and inference, moving statistics, input and
parameter gradients, and second derivatives (a Hessian-vector product, in NumPy by
central differences of the closed-form gradient). Layouts: channels-last and
channels-first 4-D, a dense (N, C) input, and a sequence with its channel axis 1; in
float32, mixed_float16, mixed_bfloat16 and float64. On JAX, which has no kernel,
`fused=None` must be the hand-written path and `fused=True` is refused. Ghost batches
take the kernel (each ghost batch's channels as channels of their own) on TensorFlow
and PyTorch.
"""

import importlib

import ml_dtypes
import numpy as np
import pytest

import keras
from helpers import to_numpy
from keras_bn import ManualBatchNorm
from keras_bn._layer import paths

BACKEND = keras.backend.backend()
HAS_KERNEL = BACKEND in paths.NATIVE_BACKENDS
EPSILON = 1e-3
MOMENTUM = 0.7
LAYOUTS = {  # name: (input shape, axis)
    "nhwc": ((6, 4, 5, 3), -1),
    "nchw": ((6, 3, 4, 5), 1),
    "dense": ((16, 5), -1),
    "sequence_axis1": ((6, 3, 7), 1),
}
#: Per dtype policy: the input's dtype, and how far apart two correct answers may be,
#: relative to the largest reference value: float32 round-off, one rounding step of a
#: float16 or bfloat16 output, float64 round-off. Worst seen on the three backends
#: (outputs, statistics, gradients): 6.7e-7, 4.5e-4, 3.9e-3 and 8.4e-16; second
#: derivatives 5.1e-7, 6.3e-4, 5.0e-3 and 2.3e-11 (float64 against a difference quotient).
POLICIES = {
    "float32": ("float32", 4e-6),
    "mixed_float16": ("float16", 1e-3),
    "mixed_bfloat16": ("bfloat16", 8e-3),
    "float64": ("float64", 1e-12),
}


_NO_X64 = pytest.mark.skipif(
    BACKEND == "jax", reason="JAX computes in float64 only with jax_enable_x64, which the suite leaves off"
)


def _policies(names):
    """Returns `names` as parameters, float64 skipped on JAX."""
    return [pytest.param(n, marks=_NO_X64) if n == "float64" else n for n in names]


def _kernel_flag(dtype):
    """Returns the `fused` value that must take the kernel, or `None` where none exists."""
    if not HAS_KERNEL or (BACKEND == "tensorflow" and dtype == "float64"):
        return None
    return True


@pytest.fixture
def kernel_calls(monkeypatch):
    """Counts the calls that reach the backend's kernel."""
    calls = []
    if HAS_KERNEL:  # keras_bn/_layer/tensorflow.py or torch.py
        kernel = importlib.import_module(f"keras_bn._layer.{BACKEND}")
        original = kernel.batch_norm

        def counted(*args, **kwargs):
            calls.append(1)
            return original(*args, **kwargs)

        monkeypatch.setattr(kernel, "batch_norm", counted)
    return calls


# -- the NumPy references ------------------------------------------------------------------


def _channels_last(x, axis):
    """Returns `x` with its channel axis moved last, as float64."""
    return np.moveaxis(np.asarray(x, "float64"), axis, -1)


def numpy_forward(x, gamma, beta, axis):
    """Returns the training output, the batch mean and the biased batch variance."""
    x = _channels_last(x, axis)
    reduce = tuple(range(x.ndim - 1))
    mean = x.mean(axis=reduce)
    var = ((x - mean) ** 2).mean(axis=reduce)
    y = (x - mean) / np.sqrt(var + EPSILON) * gamma + beta
    return np.moveaxis(y, -1, axis), mean, var


def numpy_gradients(x, gamma, dy, axis):
    """Returns the gradients of `sum(y * dy)` with respect to x, gamma and beta (the paper's formula)."""
    x, dy = _channels_last(x, axis), _channels_last(dy, axis)
    reduce = tuple(range(x.ndim - 1))
    mean, var = x.mean(axis=reduce), x.var(axis=reduce)
    x_hat = (x - mean) / np.sqrt(var + EPSILON)
    d_beta, d_gamma = dy.sum(axis=reduce), (dy * x_hat).sum(axis=reduce)
    m = x.size // x.shape[-1]
    dx = gamma / np.sqrt(var + EPSILON) * (dy - (d_beta + x_hat * d_gamma) / m)
    return [np.moveaxis(dx, -1, axis), d_gamma, d_beta]


def numpy_second_derivatives(x, gamma, dy, direction, axis, h=1e-5):
    """Returns the gradients of `sum(dx * direction)` w.r.t. x and gamma, by central differences."""

    def penalty(x_, gamma_):
        return numpy_gradients(x_, gamma_, dy, axis)[0]

    x = np.asarray(x, "float64")
    # The Hessian of sum(y * dy) is symmetric: its product with `direction` is the
    # derivative of the input gradient along `direction`.
    d_x = (penalty(x + h * direction, gamma) - penalty(x - h * direction, gamma)) / (2 * h)
    d_gamma = np.empty_like(gamma)
    for c in range(len(gamma)):
        step = np.zeros_like(gamma)
        step[c] = h
        d_gamma[c] = np.sum((penalty(x, gamma + step) - penalty(x, gamma - step)) * direction) / (2 * h)
    return [d_x, d_gamma]


# -- each backend's gradients ---------------------------------------------------------------


def gradients(layer, x, dy, direction=None):
    """Returns d sum(layer(x) * dy) w.r.t. x, gamma, beta; with `direction`, d sum(dx * direction) w.r.t. x, gamma.

    The output is cast to float32 before the product, so every policy is differentiated alike.
    """
    if BACKEND == "tensorflow":
        import tensorflow as tf

        xt = tf.constant(x)
        variables = [v.value for v in layer.trainable_variables]
        with tf.GradientTape() as outer:
            outer.watch(xt)
            with tf.GradientTape() as tape:
                tape.watch(xt)
                loss = tf.reduce_sum(tf.cast(layer(xt, training=True), "float64") * dy)
            first = tape.gradient(loss, [xt, *variables])
            if direction is not None:
                penalty = tf.reduce_sum(tf.cast(first[0], "float64") * direction)
        grads = first if direction is None else outer.gradient(penalty, [xt, variables[0]])
    elif BACKEND == "jax":
        import jax
        import jax.numpy as jnp

        frozen = [v.value for v in layer.non_trainable_variables]

        def loss(x_, trainable):
            y, _ = layer.stateless_call(trainable, frozen, x_, training=True)
            upstream = jnp.asarray(dy)
            return jnp.sum(y.astype(upstream.dtype) * upstream)

        def penalty(x_, trainable):
            along = jnp.asarray(direction)
            return jnp.sum(jax.grad(loss)(x_, trainable).astype(along.dtype) * along)

        args = (jnp.asarray(x), [v.value for v in layer.trainable_variables])
        if direction is None:
            gx, gw = jax.grad(loss, argnums=(0, 1))(*args)
            grads = [gx, *gw]
        else:
            gx, gw = jax.grad(penalty, argnums=(0, 1))(*args)
            grads = [gx, gw[0]]
    else:
        import torch

        xt = torch.tensor(x, requires_grad=True)
        variables = [v.value for v in layer.trainable_variables]
        loss = (layer(xt, training=True).double() * torch.as_tensor(dy)).sum()
        first = torch.autograd.grad(loss, [xt, *variables], create_graph=direction is not None)
        if direction is None:
            grads = first
        else:
            penalty = (first[0].double() * torch.as_tensor(direction)).sum()
            grads = torch.autograd.grad(penalty, [xt, variables[0]])
    return [np.asarray(to_numpy(g), "float64") for g in grads]


# -- parity ------------------------------------------------------------------------------------


def _layer(fused, shape, axis, policy, gamma, beta, **kwargs):
    """Returns a built ManualBatchNorm with the given weights and moving statistics 0 and 1."""
    layer = ManualBatchNorm(axis=axis, momentum=MOMENTUM, epsilon=EPSILON, fused=fused, dtype=policy, **kwargs)
    layer.build(shape)
    layer.gamma.assign(gamma)
    layer.beta.assign(beta)
    return layer


def _data(shape, axis, dtype, seed):
    """Returns the input as the layer sees it (rounded to `dtype`), an upstream gradient and a direction."""
    rng = np.random.default_rng(seed)
    x = rng.normal(2.0, 3.0, shape)
    low = {"float16": np.float16, "bfloat16": ml_dtypes.bfloat16}.get(dtype)
    x = x.astype(low).astype("float32") if low else x.astype(dtype)
    channels = shape[axis]
    gamma = rng.uniform(0.5, 2.0, channels).astype("float32")
    beta = rng.normal(size=channels).astype("float32")
    return x, rng.normal(size=shape), rng.normal(size=shape), gamma, beta


def _assert_close(actual, expected, tol, what):
    """Checks `actual` against `expected` with `tol` relative to the largest reference value."""
    actual, expected = np.asarray(actual, "float64"), np.asarray(expected, "float64")
    scale = max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(actual, expected, rtol=0, atol=tol * scale, err_msg=what)


def _layouts(names):
    """Returns `names` as parameters; on JAX only the first (its compiles are slow).

    JAX has no kernel: both paths are the hand-written one, which
    tests/layer/test_batch_norm*.py hold to NumPy in every layout.
    """
    jax_skip = pytest.mark.skipif(BACKEND == "jax", reason="both paths are one on JAX")
    return [names[0]] + [pytest.param(n, marks=jax_skip) for n in names[1:]]


@pytest.mark.parametrize("policy", _policies(sorted(POLICIES)))
@pytest.mark.parametrize("layout", _layouts(sorted(LAYOUTS)))
def test_outputs_statistics_and_gradients_agree_on_both_paths_and_with_numpy(layout, policy, kernel_calls):
    shape, axis = LAYOUTS[layout]
    dtype, tol = POLICIES[policy]
    x, dy, direction, gamma, beta = _data(shape, axis, dtype, seed=len(layout))
    x_in = x  # low-precision values in float32: the layer's autocast rounds nothing
    y_ref, mean, var = numpy_forward(x, gamma, beta, axis)
    grads_ref = numpy_gradients(x, gamma, dy, axis)
    results = {}
    for fused in (_kernel_flag(dtype), False):
        layer = _layer(fused, shape, axis, policy, gamma, beta)
        before = len(kernel_calls)
        y = layer(x_in, training=True)
        assert (len(kernel_calls) > before) == (fused is True), "the wrong path ran"
        assert keras.backend.standardize_dtype(y.dtype) == layer.compute_dtype
        statistics = [to_numpy(layer.moving_mean), to_numpy(layer.moving_variance)]
        inference = layer(x_in[:3], training=False)
        results[fused] = [to_numpy(y), *statistics, to_numpy(inference), *gradients(layer, x_in, dy)]
    moving = [MOMENTUM * 0.0 + (1 - MOMENTUM) * mean, MOMENTUM * 1.0 + (1 - MOMENTUM) * var]
    channels_last = _channels_last(x[:3], axis)
    inference_ref = np.moveaxis(
        (channels_last - moving[0]) / np.sqrt(moving[1] + EPSILON) * gamma + beta, -1, axis
    )
    stat_tol = min(tol, 1e-5) if dtype != "float64" else tol  # float32 weights
    references = [y_ref, *moving, inference_ref, *grads_ref]
    names = ["output", "moving_mean", "moving_variance", "inference", "dx", "dgamma", "dbeta"]
    for fused, values in results.items():
        for name, value, reference in zip(names, values, references):
            bound = stat_tol if name.startswith("moving") else tol
            _assert_close(value, reference, bound, f"fused={fused}: {name}")
    for name, native, hand in zip(names, *results.values()):
        _assert_close(native, hand, tol, f"native vs hand-written: {name}")


@pytest.mark.parametrize("policy", _policies(sorted(POLICIES)))
@pytest.mark.parametrize("layout", _layouts(["nhwc", "nchw"]))
def test_second_derivatives_agree_on_both_paths_and_with_numpy(layout, policy):
    shape, axis = LAYOUTS[layout]
    dtype, tol = POLICIES[policy]
    x, dy, direction, gamma, beta = _data(shape, axis, dtype, seed=7)
    reference = numpy_second_derivatives(x, gamma.astype("float64"), dy, direction, axis)
    results = []
    for fused in (_kernel_flag(dtype), False):
        layer = _layer(fused, shape, axis, policy, gamma, beta)
        results.append(gradients(layer, x, dy, direction))
        for name, value, ref in zip(("d2x", "d2gamma"), results[-1], reference):
            _assert_close(value, ref, max(tol, 1e-9), f"fused={fused}: {name}")
    for name, native, hand in zip(("d2x", "d2gamma"), *results):
        _assert_close(native, hand, max(tol, 1e-9), f"native vs hand-written: {name}")


@pytest.mark.parametrize(
    "options",
    [
        {"unbiased_variance": True},
        {"momentum": None},
        {"center": False, "scale": False},
        {"synchronized": True},  # one replica: the plain statistics
    ],
    ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()),
)
def test_options_the_kernel_takes_agree_with_the_hand_written_path(options, kernel_calls):
    shape, axis = LAYOUTS["nhwc"]
    rng = np.random.default_rng(3)
    batches = [rng.normal(2.0, 3.0, shape).astype("float32") for _ in range(2)]
    results = []
    for fused in (_kernel_flag("float32"), False):
        layer = ManualBatchNorm(fused=fused, **{"momentum": MOMENTUM, **options})
        outputs = [to_numpy(layer(x, training=True)) for x in batches]
        results.append([*outputs, *(to_numpy(w) for w in layer.non_trainable_weights)])
    assert bool(kernel_calls) == HAS_KERNEL
    for native, hand in zip(*results):
        _assert_close(native, hand, POLICIES["float32"][1], str(options))


# -- which path runs, and what is refused -------------------------------------------------------


@pytest.mark.parametrize("fused", ["yes", 1, 0.0])
def test_fused_must_be_none_or_a_bool(fused):
    with pytest.raises(TypeError, match=r"`fused` must be None .* Received: fused="):
        ManualBatchNorm(fused=fused)


@pytest.mark.parametrize(
    "kwargs, named",
    [
        ({"renorm": True}, r"renorm=True"),
        ({"axis": [1, 2]}, r"axis=\[1, 2\] \(more than one channel axis\)"),
    ],
)
def test_fused_true_refuses_a_configuration_the_kernel_cannot_take(kwargs, named):
    with pytest.raises(ValueError, match=r"`fused=True` needs the framework's native .*" + named):
        ManualBatchNorm(fused=True, **kwargs)
    ManualBatchNorm(fused=None, **kwargs)  # falls back instead


def test_the_config_round_trips_fused():
    for fused in (None, False) + ((True,) if HAS_KERNEL else ()):
        config = ManualBatchNorm(fused=fused).get_config()
        assert config["fused"] is fused
        assert ManualBatchNorm.from_config(config).get_config() == config


@pytest.mark.skipif(HAS_KERNEL, reason="this backend has a kernel")
def test_fused_true_is_refused_where_the_backend_has_no_kernel():
    with pytest.raises(ValueError, match=rf"the {BACKEND} backend \(it has no batch-norm kernel"):
        ManualBatchNorm(fused=True)


@pytest.mark.skipif(not HAS_KERNEL, reason="no kernel on this backend")
def test_a_mask_takes_the_hand_written_path_in_training_only(kernel_calls):
    x = np.random.default_rng(4).normal(size=(4, 5, 3)).astype("float32")
    mask = np.ones((4, 5), bool)
    layer = ManualBatchNorm()
    layer(x, training=True, mask=mask)
    assert not kernel_calls
    layer(x, training=False, mask=mask)
    assert kernel_calls
    with pytest.raises(ValueError, match=r"cannot use with: a mask"):
        ManualBatchNorm(fused=True)(x, training=True, mask=mask)


@pytest.mark.skipif(not HAS_KERNEL, reason="no kernel on this backend")
def test_fused_none_trains_small_inputs_by_hand_on_a_tensorflow_cpu(kernel_calls):
    # TensorFlow's kernel costs a fixed time a call on a CPU (docs/benchmarks.md):
    # below CPU_MIN_SAMPLE_VALUES values per sample fused=None trains without it there.
    # Inference, fused=True, PyTorch and a GPU keep the kernel.
    small = np.random.default_rng(5).normal(size=(4, 5, 5, 3)).astype("float32")  # 75 a sample
    large = np.random.default_rng(6).normal(size=(2, 32, 32, 3)).astype("float32")  # 3,072
    assert 75 < paths.CPU_MIN_SAMPLE_VALUES <= 3072
    on_cpu = BACKEND == "tensorflow" and not paths._tensorflow_sees_a_gpu()

    def kernel_ran(fused, x, training):
        before = len(kernel_calls)
        ManualBatchNorm(fused=fused)(x, training=training)
        return len(kernel_calls) > before

    assert kernel_ran(None, small, True) is not on_cpu
    assert kernel_ran(None, small, False)
    assert kernel_ran(True, small, True)
    assert kernel_ran(None, large, True)
    if BACKEND == "tensorflow":  # a traced step with its batch size unknown counts per sample too
        import tensorflow as tf

        layer = ManualBatchNorm()
        step = tf.function(lambda t: layer(t, training=True),
                           input_signature=[tf.TensorSpec((None, 5, 5, 3), tf.float32)])
        before = len(kernel_calls)
        step(tf.constant(small))
        assert (len(kernel_calls) > before) is not on_cpu


@pytest.mark.skipif(BACKEND != "tensorflow", reason="TensorFlow's kernel and XLA")
def test_tensorflow_refusals_float64_small_epsilon_and_xla_training():
    import tensorflow as tf

    x = np.random.default_rng(5).normal(1000.0, 1.0, size=(32, 3)).astype("float32")
    with pytest.raises(ValueError, match=r"float64 inputs on TensorFlow"):
        ManualBatchNorm(fused=True, dtype="float64")(x.astype("float64"), training=True)
    with pytest.raises(ValueError, match=r"epsilon=1e-06 \(cuDNN's kernels need epsilon >= 1.001e-05\)"):
        ManualBatchNorm(fused=True, epsilon=1e-6)
    # XLA rewrites the kernel with the one-pass variance E[x^2] - E[x]^2, which loses
    # every digit here (mean 1000, std 1): fused=None keeps the hand-written path.
    layer = ManualBatchNorm(momentum=0.0)
    tf.function(lambda t: layer(t, training=True), jit_compile=True)(tf.constant(x))
    np.testing.assert_allclose(to_numpy(layer.moving_variance), x.astype("float64").var(0), rtol=1e-3)
    insisting = ManualBatchNorm(fused=True)
    with pytest.raises(ValueError, match=r"training under XLA \(jit_compile=True\)"):
        tf.function(lambda t: insisting(t, training=True), jit_compile=True)(tf.constant(x))


# -- ghost batches: the kernel with each ghost batch's channels as channels of their own --


@pytest.mark.parametrize("layout", _layouts(["nchw", "nhwc", "sequence_axis1"]))
def test_ghost_batches_agree_on_both_paths_and_with_numpy(layout, kernel_calls):
    shape, axis = LAYOUTS[layout]
    v = 2
    x, dy, direction, gamma, beta = _data(shape, axis, "float32", seed=11)
    groups = [slice(start, start + v) for start in range(0, shape[0], v)]
    forward = [numpy_forward(x[g], gamma, beta, axis) for g in groups]
    grads = [numpy_gradients(x[g], gamma, dy[g], axis) for g in groups]
    references = [
        np.concatenate([f[0] for f in forward]),
        (1 - MOMENTUM) * np.mean([f[1] for f in forward], axis=0),
        MOMENTUM + (1 - MOMENTUM) * np.mean([f[2] for f in forward], axis=0),
        np.concatenate([g[0] for g in grads]),
        sum(g[1] for g in grads),
        sum(g[2] for g in grads),
    ]
    names = ["output", "moving_mean", "moving_variance", "dx", "dgamma", "dbeta"]
    results = []
    for fused in (_kernel_flag("float32"), False):
        layer = _layer(fused, shape, axis, None, gamma, beta, virtual_batch_size=v)
        y = to_numpy(layer(x, training=True))
        statistics = [to_numpy(layer.moving_mean), to_numpy(layer.moving_variance)]
        results.append([y, *statistics, *gradients(layer, x, dy)])
        results[-1] += gradients(layer, x, dy, direction)  # second derivatives
        for name, value, reference in zip(names, results[-1], references):
            _assert_close(value, reference, POLICIES["float32"][1], f"fused={fused}: {name}")
    assert bool(kernel_calls) == HAS_KERNEL
    for name, native, hand in zip(names + ["d2x", "d2gamma"], *results):
        _assert_close(native, hand, POLICIES["float32"][1], f"native vs hand-written: {name}")


@pytest.mark.skipif(BACKEND != "tensorflow", reason="a batch size unknown when traced is TensorFlow's")
def test_ghost_batches_on_the_kernel_with_a_batch_size_unknown_when_traced(kernel_calls):
    """A compiled step sees `(None, ...)`: the kernel's regrouping is dynamic, its check runs in the graph."""
    import tensorflow as tf

    x = np.random.default_rng(12).normal(3.0, 2.0, size=(12, 4, 5, 3)).astype("float32")
    results = []
    for fused in (True, False):
        layer = ManualBatchNorm(fused=fused, virtual_batch_size=4, momentum=0.5)
        step = tf.function(
            lambda t, layer=layer: layer(t, training=True),
            input_signature=[tf.TensorSpec((None, 4, 5, 3), tf.float32)],
        )
        results.append([to_numpy(step(tf.constant(x))), to_numpy(layer.moving_mean), to_numpy(layer.moving_variance)])
        with pytest.raises(tf.errors.InvalidArgumentError, match=r"batch of 10 with virtual_batch_size=4"):
            step(tf.constant(x[:10]))
    assert kernel_calls
    for native, hand in zip(*results):
        _assert_close(native, hand, POLICIES["float32"][1], "native vs hand-written, unknown batch size")


@pytest.mark.parametrize("case", ["one ghost batch, cumulative", "empty batch"])
def test_ghost_batch_corner_cases_agree_on_every_path(case):
    # On PyTorch's kernel these raised (a RuntimeError, a ZeroDivisionError)
    # before the layer's paths shared one update rule.
    rng = np.random.default_rng(3)
    kwargs = {"virtual_batch_size": 4, "momentum": None if case.startswith("one") else 0.9}
    x = rng.normal(size=(4 if case.startswith("one") else 0, 5, 5, 3)).astype("float32")
    results = []
    for fused in (None, False):
        layer = ManualBatchNorm(fused=fused, **kwargs)
        layer.build((None, 5, 5, 3))
        y = to_numpy(layer(x, training=True))
        results.append([y] + [to_numpy(w) for w in layer.weights])
    for ours, reference in zip(*results, strict=True):
        np.testing.assert_allclose(ours, reference, rtol=1e-5, atol=1e-6)
    if case == "empty batch":
        np.testing.assert_array_equal(results[0][-1], np.ones(3, "float32"))  # moving variance untouched
