"""`bench.py`'s figures of batch norm alone: `bn` (the network's 20 shapes, forward and backward) and `ghost`."""

from _common import (
    AUTODIFF,
    BATCH,
    CLOSED_FORM,
    KERAS,
    NATIVE,
    Figure,
    _hand_written,
    alternate,
    torch_device,
)

#: The bn figure's baseline rows: the backend's kernel, or on JAX the formula in plain jax.numpy.
KERNEL, PLAIN_JAX = "native kernel", "plain jax.numpy (no kernel)"


def _bn_shapes():
    """Returns the input shapes of the 20 batch-norm layers of the network at batch 32."""
    from keras_bn import deep_mnist_model

    model = deep_mnist_model(bn="manual")
    return [
        (BATCH, *layer.input.shape[1:]) for layer in model.layers if layer.name.startswith("bn")
    ], model.get_layer("bn1").axis


def _layers_fwd_bwd(make_layer, shapes, hand_written):
    """Returns a function: forward and backward of one fresh layer per shape, as the backend compiles a step."""
    import keras
    import numpy as np

    rng = np.random.default_rng(0)
    data = [(rng.normal(size=s).astype("float32"), rng.normal(size=s).astype("float32")) for s in shapes]
    layers = []
    for shape in shapes:
        layer = make_layer(len(shape))
        layer.build(shape)
        layers.append(layer)
    backend = keras.backend.backend()
    step = _tf_layers if backend == "tensorflow" else _jax_layers if backend == "jax" else _torch_layers
    return step(layers, data, hand_written)


def _tf_layers(layers, data, hand_written):
    """Returns `_layers_fwd_bwd`'s function on TensorFlow: one `tf.function` over every layer."""
    import tensorflow as tf

    data = [(tf.constant(x), tf.constant(dy)) for x, dy in data]

    @tf.function
    def run():
        total = 0.0
        for layer, (x, dy) in zip(layers, data):
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = layer(x, training=True)
            grads = tape.gradient(y, [x, *layer.trainable_variables], output_gradients=dy)
            total += tf.add_n([tf.reduce_sum(g) for g in grads])
        return total

    with _hand_written(hand_written):
        run()
    return lambda: run().numpy()


def _jax_layers(layers, data, hand_written):
    """Returns `_layers_fwd_bwd`'s function on JAX: one jitted gradient over every layer."""
    import jax
    import jax.numpy as jnp

    def loss(trainables, frozens, xs):
        total = 0.0
        for layer, t, f, x, (_, dy) in zip(layers, trainables, frozens, xs, data):
            y, _ = layer.stateless_call(t, f, x, training=True)
            total += jnp.sum(y * dy)
        return total

    with _hand_written(hand_written):
        grad = jax.jit(jax.grad(loss, argnums=(0, 2)))
        args = (
            [[v.value for v in l.trainable_variables] for l in layers],
            [[v.value for v in l.non_trainable_variables] for l in layers],
            [jnp.asarray(x) for x, _ in data],
        )
        jax.block_until_ready(grad(*args))
    return lambda: jax.block_until_ready(grad(*args))


def _torch_layers(layers, data, hand_written):
    """Returns `_layers_fwd_bwd`'s function on PyTorch: eager calls and `autograd.grad`, layer by layer."""
    import torch

    device = torch_device()
    data = [(torch.tensor(x, device=device, requires_grad=True), torch.tensor(dy, device=device)) for x, dy in data]

    # As a training step does: the trainable tensors are collected once, not per layer call.
    params = [[v.value for v in layer.trainable_variables] for layer in layers]

    def run():
        with _hand_written(hand_written):
            for layer, (x, dy), p in zip(layers, data, params):
                y = layer(x, training=True)
                torch.autograd.grad(y, [x, *p], dy)

    run()
    return run


def _native_fwd_bwd(shapes, axis):
    """Returns a function: the backend's own batch-norm kernel, forward and backward, on `shapes`."""
    import keras
    import numpy as np

    backend = keras.backend.backend()
    rng = np.random.default_rng(0)
    data = [(rng.normal(size=s).astype("float32"), rng.normal(size=s).astype("float32")) for s in shapes]
    if backend == "tensorflow":
        import tensorflow as tf

        # FusedBatchNormV3 takes 4-D NHWC: the dense layer's (32, 100) becomes (32, 1, 1, 100).
        data = [(tf.constant(x.reshape(s if len(s) == 4 else (s[0], 1, 1, s[1]))),
                 tf.constant(dy.reshape(s if len(s) == 4 else (s[0], 1, 1, s[1])))) for (x, dy), s in zip(data, shapes)]
        params = [(tf.Variable(tf.ones(s[-1])), tf.Variable(tf.zeros(s[-1]))) for s in shapes]
        empty = tf.constant([], tf.float32)

        @tf.function
        def run():
            total = 0.0
            for (x, dy), (scale, offset) in zip(data, params):
                with tf.GradientTape() as tape:
                    tape.watch(x)
                    y = tf.raw_ops.FusedBatchNormV3(
                        x=x, scale=scale, offset=offset, mean=empty, variance=empty,
                        epsilon=1e-3, exponential_avg_factor=1.0, is_training=True,
                    )[0]
                grads = tape.gradient(y, [x, scale, offset], output_gradients=dy)
                total += tf.add_n([tf.reduce_sum(g) for g in grads])
            return total

        run()
        return lambda: run().numpy()
    if backend == "torch":
        import torch
        import torch.nn.functional as F

        device = torch_device()
        tensors = [(torch.tensor(x, device=device, requires_grad=True), torch.tensor(dy, device=device))
                   for x, dy in data]
        channel = [s[axis] if len(s) == 4 else s[-1] for s in shapes]
        params = [(torch.ones(c, device=device, requires_grad=True), torch.zeros(c, device=device, requires_grad=True),
                   torch.zeros(c, device=device), torch.ones(c, device=device)) for c in channel]
        if axis != 1:
            return None  # F.batch_norm is NCHW only

        def run():
            for (x, dy), (w, b, rm, rv) in zip(tensors, params):
                y = F.batch_norm(x, rm, rv, w, b, training=True, momentum=0.01, eps=1e-3)
                torch.autograd.grad(y, [x, w, b], dy)

        run()
        return run
    return _jax_fwd_bwd(data)


def _jax_fwd_bwd(data):
    """Returns a function: batch norm in plain `jax.numpy` (two passes), jitted, forward and backward.

    JAX has no batch-norm kernel; this is the floor of what XLA makes of the formula
    with no Keras layer around it. Prints how many fusions XLA compiled it into.
    """
    import jax
    import jax.numpy as jnp

    def loss(params, xs):
        total = 0.0
        for (gamma, beta), x, (_, dy) in zip(params, xs, data):
            axes = tuple(range(x.ndim - 1))
            mean = jnp.mean(x, axis=axes)
            centered = x - mean
            var = jnp.mean(centered * centered, axis=axes)
            total += jnp.sum((centered * jax.lax.rsqrt(var + 1e-3) * gamma + beta) * dy)
        return total

    params = [(jnp.ones(x.shape[-1]), jnp.zeros(x.shape[-1])) for x, _ in data]
    xs = [jnp.asarray(x) for x, _ in data]
    grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
    fusions = grad.lower(params, xs).compile().as_text().count("fusion(")
    print(f"bn          {PLAIN_JAX}: {fusions} fusions in the compiled forward and backward")
    jax.block_until_ready(grad(params, xs))
    return lambda: jax.block_until_ready(grad(params, xs))


def bench_bn(repeats, block=10):
    """Times batch norm alone, forward and backward, on the network's 20 shapes, alternately."""
    import keras

    from keras_bn import ManualBatchNorm

    shapes, conv_axis = _bn_shapes()

    def axis_for(rank):
        return conv_axis if rank == 4 else -1

    runners = {
        KERAS: _layers_fwd_bwd(
            lambda r: keras.layers.BatchNormalization(axis=axis_for(r)), shapes, True),
        NATIVE: _layers_fwd_bwd(lambda r: ManualBatchNorm(axis=axis_for(r)), shapes, None),
        CLOSED_FORM: _layers_fwd_bwd(
            lambda r: ManualBatchNorm(axis=axis_for(r), fused=False), shapes, True),
        AUTODIFF: _layers_fwd_bwd(
            lambda r: ManualBatchNorm(axis=axis_for(r), fused=False), shapes, False),
    }
    native = _native_fwd_bwd(shapes, conv_axis % 4)
    kernel = KERNEL if keras.backend.backend() != "jax" else PLAIN_JAX
    if native is not None:
        runners[kernel] = native
    figure = Figure("bn", "ms")
    figure.note(f"20 shapes, {shapes[0]} .. {shapes[-1]}")
    for name, samples in alternate(runners, repeats, block).items():
        figure.add(name, samples)
    for name in (NATIVE, CLOSED_FORM, AUTODIFF):
        figure.ratio(f"{name} / {kernel}", name, kernel)
        figure.ratio(f"{name} / Keras", name, KERAS)
    return figure.report()


def bench_ghost(repeats, block=10):
    """Times ghost batch norm alone, forward and backward, on the network's 20 shapes, alternately."""
    from keras_bn import ManualBatchNorm

    shapes, conv_axis = _bn_shapes()

    def make(fused):
        return lambda r: ManualBatchNorm(axis=conv_axis if r == 4 else -1, virtual_batch_size=8, fused=fused)

    runners = {name: _layers_fwd_bwd(make(fused), shapes, True)
               for name, fused in ((NATIVE, None), (CLOSED_FORM, False))}
    figure = Figure("ghost", "ms")
    for name, samples in alternate(runners, repeats, block).items():
        figure.add(name, samples)
    figure.ratio("fused=None / fused=False", NATIVE, CLOSED_FORM)
    return figure.report()


def bench_shapes(repeats, block=5):
    """Times each of the network's 20 batch norms alone on the kernel and on the hand-written path.

    Per shape, forward and backward of 20 layers of that shape in one compiled call,
    alternately: `fused=True`, and `fused=False` with the backend's default backward
    and with the closed form, in µs per layer. Where the kernel's fixed cost per call
    outweighs its single pass (`_layer.paths.CPU_MIN_SAMPLE_VALUES` on TensorFlow),
    and which path `fused=None` takes.
    """
    import keras

    from keras_bn import ManualBatchNorm
    from keras_bn._layer.paths import NATIVE_BACKENDS, kernel_applies

    figure = Figure("shapes", "µs")
    if keras.backend.backend() not in NATIVE_BACKENDS:
        figure.note("no kernel on this backend")
        return figure.report()
    shapes, conv_axis = _bn_shapes()
    copies = 20  # layers of one shape per compiled call, so that the call's own cost is shared
    paths = {"kernel": (True, True), "hand-written, default backward": (False, None), "closed form": (False, True)}
    for shape in shapes:
        axis = conv_axis if len(shape) == 4 else -1
        runners = {name: _layers_fwd_bwd(lambda r, f=fused: ManualBatchNorm(axis=axis, fused=f),
                                         [shape] * copies, hand)
                   for name, (fused, hand) in paths.items()}
        for name, samples in alternate(runners, repeats, block).items():
            figure.add(f"{shape} {name}", [ms * 1000 / copies for ms in samples])
        figure.ratio(f"{shape} kernel / closed form", f"{shape} kernel", f"{shape} closed form")
        probe = ManualBatchNorm(axis=axis)
        probe.build(shape)
        takes = "kernel" if kernel_applies(
            probe._bn_spec, keras.KerasTensor(shape), training=True, mask=None, all_reduce=None) else "hand-written path"
        figure.note(f"{shape}: fused=None takes the {takes}")
    return figure.report()
