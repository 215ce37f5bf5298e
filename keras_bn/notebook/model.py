"""`deep_mnist_model`: the seed notebook's over-deep MNIST network, with or without batch norm."""

import functools

import keras

from keras_bn import _checks
from keras_bn.batch_norm import ManualBatchNorm

__all__ = ["deep_mnist_model", "compile_like_notebook", "NUM_CONV_LAYERS"]

#: How many convolution layers the notebook stacks (layer `d` has `4 * d` filters).
NUM_CONV_LAYERS = 19

_BN_VALUES = 'None/False, "keras", "manual"/True, or a callable returning a layer'


def _conv_strides(depth):
    """Returns the notebook's stride for conv layer `depth` (1-based): 2 every third layer."""
    return 2 if depth % 3 == 0 else 1


def _resolve_bn(bn):
    """Returns `(tag, factory)` for the `bn` argument; `factory(name=...)` builds a norm layer."""
    # Booleans first: `True == 1` would otherwise slip through equality checks.
    if bn is None or bn is False:
        return "none", None
    if bn is True:
        bn = "manual"
    if isinstance(bn, str):
        key = bn.lower()
        if key == "keras":
            return "keras", keras.layers.BatchNormalization
        if key == "manual":
            return "manual", ManualBatchNorm
        if key == "none":
            return "none", None
    elif callable(bn):
        return "custom", bn
    raise ValueError(
        f"`bn` must be one of {_BN_VALUES}. Received: bn={bn!r}"
    )


def _default_data_format(tag):
    """Returns the layout the backend trains this network fastest in (measured, see docs/benchmarks.md).

    PyTorch's CPU convolutions take NCHW: Keras's torch backend permutes every
    channels-last input to NCHW and back around each convolution, copies that
    channels-first layers skip. TensorFlow stays channels-last (its CPU Conv2D
    refuses channels-first without AVX-512), JAX too (XLA picks its own layout).
    A custom `bn` callable keeps channels-last: it is called without an axis.
    """
    if tag != "custom" and keras.backend.backend() == "torch":
        return "channels_first"
    return "channels_last"


def _check_data_format(data_format, tag):
    """Returns `data_format` resolved and validated, raising a `ValueError` naming it."""
    if data_format is None:
        return _default_data_format(tag)
    if data_format not in ("channels_last", "channels_first"):
        raise ValueError(
            '`data_format` must be "channels_last", "channels_first" or None (the '
            f"backend's faster one). Received: data_format={data_format!r}"
        )
    return data_format


def _layer_seed(seed, index):
    """Returns a distinct per-layer seed derived from `seed`, or `None` when `seed` is `None`."""
    return None if seed is None else int(seed) * 1000 + index


def _make_initializer(spec, seed, index):
    """Returns a fresh initializer for layer `index` from `spec`, never a shared instance."""
    if isinstance(spec, keras.initializers.Initializer):
        # Clone, so that no two layers share one object (and its state).
        config = spec.get_config()
        if seed is not None and "seed" in config:
            config["seed"] = _layer_seed(seed, index)
        return spec.__class__.from_config(config)
    initializer = keras.initializers.get(spec)
    if not isinstance(initializer, keras.initializers.Initializer):
        return initializer  # A plain callable `(shape, dtype) -> tensor`: use as given.
    config = initializer.get_config()
    if seed is not None and "seed" in config:
        config["seed"] = _layer_seed(seed, index)
        initializer = initializer.__class__.from_config(config)
    return initializer


def _check_initializer(kernel_initializer):
    """Raises a `ValueError` naming `kernel_initializer` when Keras cannot resolve it."""
    if isinstance(kernel_initializer, str) and kernel_initializer == "notebook":
        return
    try:
        keras.initializers.get(kernel_initializer)
    except (ValueError, TypeError) as error:
        raise ValueError(
            '`kernel_initializer` must be "notebook" or anything '
            "`keras.initializers.get` accepts (a name, a config dict, an "
            f"Initializer). Received: kernel_initializer={kernel_initializer!r}"
        ) from error


def deep_mnist_model(
    bn=None,
    *,
    data_format=None,
    kernel_initializer="glorot_uniform",
    seed=None,
    name=None,
):
    """Builds the seed notebook's deliberately over-deep MNIST network.

    The network is exactly the notebook's: input `(28, 28, 1)`; 19 convolution
    layers where layer `d` (1..19) has `4 * d` filters, a 3x3 kernel, `"same"`
    padding and stride 2 when `d % 3 == 0` (else 1), so the feature map goes
    28 -> 14 -> 7 -> 4 -> 2 -> 1 -> 1; a flatten (76 features); `Dense(100)`;
    and `Dense(10)` logits (no activation).

    Without normalization each conv/dense layer has a bias and a ReLU
    activation. With normalization each conv/dense layer has no bias and is
    followed by the normalization layer and then a ReLU:
    `relu(norm(conv(x)))`, as in the notebook's `tf.layers.batch_normalization`
    and hand-written versions. The logits layer is never normalized.

    Layers are named `conv1`..`conv19`, `bn1`..`bn19` and `relu1`..`relu19`
    (when normalized), `flatten`, `dense`, `bn_dense` and `relu_dense` (when
    normalized), and `logits`.

    Args:
        bn: Which normalization to put after each conv/dense layer. `None` or
            `False`: none (biases and ReLU, the notebook's first network).
            `"keras"`: `keras.layers.BatchNormalization()` (the notebook's
            `tf.layers.batch_normalization`, same momentum 0.99 and epsilon
            0.001). `"manual"` or `True`: `keras_bn.ManualBatchNorm()` (the
            notebook's hand-written version). A callable: called once per
            normalized layer as `bn(name=...)` with the layer name
            (`"bn1"`..`"bn19"`, `"bn_dense"`) and must return a
            `keras.layers.Layer`, e.g. `keras.layers.LayerNormalization` or
            `functools.partial(keras.layers.BatchNormalization, momentum=0.9)`.
            Defaults to `None`.
        data_format: The layout the convolutions run in, `"channels_last"`
            or `"channels_first"`; the input stays `(28, 28, 1)` images
            either way (a `Permute` layer named `"to_channels_first"` turns
            them around inside the model), the normalization layers take
            `axis=1` after channels-first convolutions, and the weights and
            the numbers computed are the same. With a `bn` callable,
            channels-first calls it as `bn(name=..., axis=1)`. Defaults to
            `None`: `"channels_first"` on the PyTorch backend, whose
            convolutions are NCHW (a `bn` callable excepted), and
            `"channels_last"` elsewhere (TensorFlow's CPU convolutions
            refuse channels-first without AVX-512).
        kernel_initializer: Initializer of the convolution kernels: anything
            `keras.initializers.get` accepts, or `"notebook"` for the
            notebook's low-level version, truncated normal with stddev 0.05
            (`keras.initializers.TruncatedNormal(stddev=0.05)`) on the conv
            kernels while the two dense layers keep `"glorot_uniform"` as the
            notebook's `tf.layers.dense` did. Any other value applies to the
            dense kernels too. Every layer gets its own initializer object.
            Defaults to `"glorot_uniform"` (Keras's and `tf.layers`' default).
        seed: Integer seed for the kernel initializers; layer `k` gets seed
            `seed * 1000 + k`, so layers differ from each other but the whole
            model is reproducible. With `None` the initializers draw from
            Keras's global generator, which `keras.utils.set_random_seed`
            makes reproducible. Defaults to `None`.
        name: Name of the model. Defaults to `"deep_mnist_<variant>"` with the
            variant `none`, `keras`, `manual` or `custom`.

    Returns:
        An uncompiled `keras.Model` mapping images `(batch, 28, 28, 1)` to
        logits `(batch, 10)`. See `compile_like_notebook` for the notebook's
        loss, optimizer and metric.

    Raises:
        ValueError: if `bn`, `data_format` or `kernel_initializer` is not one
            of the accepted values, or `seed` is not an integer.
        TypeError: if a `bn` callable returns something that is not a Keras
            layer.

    Example:

    >>> model = deep_mnist_model(bn="keras", seed=0)
    >>> model.output_shape
    (None, 10)
    >>> sum(layer.name.startswith("conv") for layer in model.layers)
    19
    """
    tag, norm_factory = _resolve_bn(bn)
    data_format = _check_data_format(data_format, tag)
    _check_initializer(kernel_initializer)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ValueError(f"`seed` must be an int or None. Received: seed={seed!r}")
    variant = _Variant(
        bn,
        norm_factory,
        data_format=data_format,
        kernel_initializer=kernel_initializer,
        seed=seed,
    )

    inputs = keras.Input(shape=(28, 28, 1), name="images")
    x = inputs
    if variant.channels_first:
        x = keras.layers.Permute((3, 1, 2), name="to_channels_first")(x)
    for depth in range(1, NUM_CONV_LAYERS + 1):
        conv = functools.partial(
            keras.layers.Conv2D,
            filters=4 * depth,
            kernel_size=3,
            strides=_conv_strides(depth),
            padding="same",
            kernel_initializer=variant.conv_init(depth),
            data_format=data_format,
            name=f"conv{depth}",
        )
        x = variant.block(x, conv, norm_name=f"bn{depth}", relu_name=f"relu{depth}")
    # The last map is 1x1, so flattening gives the same 76 features in either layout.
    x = keras.layers.Flatten(name="flatten")(x)
    dense = functools.partial(
        keras.layers.Dense,
        units=100,
        kernel_initializer=variant.dense_init(NUM_CONV_LAYERS + 1),
        name="dense",
    )
    x = variant.block(x, dense, norm_name="bn_dense", relu_name="relu_dense")
    logits = keras.layers.Dense(
        10, kernel_initializer=variant.dense_init(NUM_CONV_LAYERS + 2), name="logits"
    )(x)
    return keras.Model(inputs, logits, name=name or f"deep_mnist_{tag}")


class _Variant:
    """One variant's layers: its normalization, its kernel initializers, and a block of both.

    Each initializer is made when its layer is, in the order the layers are built, so
    that a model built without a seed draws Keras's global generator as it always did.
    """

    def __init__(self, bn, norm_factory, *, data_format, kernel_initializer, seed):
        self.bn = bn
        self.norm_factory = norm_factory
        self.normalized = norm_factory is not None
        self.channels_first = data_format == "channels_first"
        self.kernel_initializer = kernel_initializer
        self.notebook_init = (
            isinstance(kernel_initializer, str) and kernel_initializer == "notebook"
        )
        self.seed = seed

    def block(self, x, make_layer, *, norm_name, relu_name):
        """Returns `relu(norm(layer(x)))` when normalized, else `layer(x)` with a bias and ReLU.

        `make_layer(use_bias=..., activation=...)` builds the convolution or dense layer.
        """
        x = make_layer(
            use_bias=not self.normalized, activation=None if self.normalized else "relu"
        )(x)
        if self.normalized:
            x = self.norm(norm_name)(x)
            x = keras.layers.Activation("relu", name=relu_name)(x)
        return x

    def norm(self, layer_name):
        """Builds one normalization layer through the factory and checks what came back."""
        if self.channels_first and layer_name != "bn_dense":
            layer = self.norm_factory(name=layer_name, axis=1)
        else:
            layer = self.norm_factory(name=layer_name)
        if not isinstance(layer, keras.layers.Layer):
            raise TypeError(
                "A `bn` callable must return a `keras.layers.Layer`. "
                f"Received: bn={self.bn!r}, which returned {layer!r}"
            )
        return layer

    def conv_init(self, index):
        """Returns the kernel initializer of conv layer `index`."""
        if self.notebook_init:
            return keras.initializers.TruncatedNormal(
                stddev=0.05, seed=_layer_seed(self.seed, index)
            )
        return _make_initializer(self.kernel_initializer, self.seed, index)

    def dense_init(self, index):
        """Returns the kernel initializer of dense layer `index`."""
        spec = "glorot_uniform" if self.notebook_init else self.kernel_initializer
        return _make_initializer(spec, self.seed, index)


def compile_like_notebook(model, learning_rate=0.002):
    """Compiles `model` with the notebook's loss, optimizer and metric, and returns it.

    The notebook minimizes the mean sigmoid cross-entropy of the logits
    against the one-hot labels,
    `mean(max(z, 0) - z * y + log(1 + exp(-|z|)))` over the batch and the 10
    outputs, which is `keras.losses.BinaryCrossentropy(from_logits=True)`.
    The optimizer is Adam with TensorFlow 1's defaults (`beta_1=0.9`,
    `beta_2=0.999`, `epsilon=1e-8`; Keras's default epsilon is `1e-7`).
    Accuracy is the fraction of rows whose arg-max logit is the arg-max label,
    `keras.metrics.CategoricalAccuracy`, reported as `"accuracy"`.

    Args:
        model: The model to compile, e.g. from `deep_mnist_model`. Its labels
            must be one-hot, shape `(batch, 10)`.
        learning_rate: Adam's learning rate; must be positive. Defaults to
            `0.002`.

    Returns:
        The same `model`, compiled.

    Raises:
        ValueError: if `learning_rate` is not a positive finite number.

    Example:

    >>> model = compile_like_notebook(deep_mnist_model(bn="keras"))
    >>> type(model.optimizer).__name__, round(float(model.optimizer.learning_rate), 6)
    ('Adam', 0.002)
    """
    rate = _checks.learning_rate(learning_rate)
    model.compile(
        optimizer=keras.optimizers.Adam(
            learning_rate=rate, beta_1=0.9, beta_2=0.999, epsilon=1e-8
        ),
        loss=keras.losses.BinaryCrossentropy(from_logits=True),
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
    )
    return model
