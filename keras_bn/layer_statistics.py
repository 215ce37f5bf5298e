"""`LayerStatistics`: what batch norm changes inside a network, recorded while it trains.

Two measurements from Ioffe and Szegedy's story: how the distribution of a
layer's pre-activation input moves during training (their Figure 1(b, c), the
15th, 50th and 85th percentiles over training steps), and how much gradient
reaches each layer's kernel (why a deep network without batch norm can stay at
chance).
"""

import keras
import numpy as np

from keras_bn import _graph, _keras_compat
from keras_bn._batch_statistics import no_grad, saved_state
from keras_bn._gradient_norms import GradientNorms

__all__ = ["LayerStatistics"]


def _has_nonlinearity(layer):
    """Returns whether `layer` applies an activation: an `Activation` layer or a non-linear `activation`."""
    if isinstance(layer, keras.layers.Activation):
        return True
    activation = getattr(layer, "activation", None)
    return activation is not None and activation is not keras.activations.linear


def _resolve(by_path, layers, name, default):
    """Returns `{path: layer}` for the layers named or given in `layers` (or the `default` ones)."""
    if layers is None:
        return default
    if isinstance(layers, (str, keras.layers.Layer)):
        layers = [layers]
    paths = {id(layer): path for path, layer in reversed(by_path.items())}
    resolved = {}
    for layer in layers:
        if isinstance(layer, str):
            if layer not in by_path:
                raise ValueError(
                    f"`{name}` names a layer that `model` does not have (a layer of a nested "
                    f"model is named by its path, e.g. 'backbone/conv1'). Received: {name} "
                    f"containing {layer!r}"
                )
            resolved[layer] = by_path[layer]
        elif isinstance(layer, keras.layers.Layer):
            resolved[paths.get(id(layer), layer.name)] = layer
        else:
            raise TypeError(
                f"`{name}` must list layers or layer names. Received: {name} containing {layer!r}"
            )
    return resolved


class LayerStatistics(keras.callbacks.Callback):
    """Records input percentiles and kernel gradient norms of chosen layers every `every` batches.

    After every `every`-th training batch of `model.fit` (counting from 1
    across epochs), it appends to `history`:

    - **Pre-activation percentiles** (Ioffe and Szegedy's Figure 1(b, c)): the
      model is run in inference mode on the fixed `probe` batch, and for each
      layer of `inputs_of` the `percentiles` of what enters its nonlinearity,
      pooled over the probe's examples and the layer's units: the input of an
      `Activation` layer, or the output before the activation of a layer with
      an `activation` argument (`Dense(..., activation="relu")`). The pass is
      in inference mode (batch norms use their moving statistics, which can
      be stale early in training), or with `training=True` in training mode
      (batch norms use the probe's own statistics, as in a training step).
      Only these
      forward passes on the probe are added; the training data is never read
      a second time.
    - **Kernel gradient norms**: for each layer of `kernels_of`, the Euclidean
      (Frobenius) norm of the gradient of the training loss with respect to
      its `kernel` on the batch just trained, with the weights before the
      step: exactly the gradient `fit` computed and handed to the optimizer
      (before any clipping), not a recomputation. The callback reads it by
      wrapping the optimizer's `apply` for the duration of `fit`; the step
      itself is unchanged. (A difference of kernels before and after the step
      would not do: Adam's step is not proportional to the gradient.)

    Recording does not change training: after each probe pass every
    non-trainable variable (moving statistics, random states) is put back as
    it was, and the optimizer receives the same gradients. The train function is rebuilt once at the start and at the end
    of `fit`, to trace the optimizer with and then without the wrapper.

    `history` holds plain lists, ready for `json.dump`:

        {"step": [50, 100, ...],
         "percentiles": [15.0, 50.0, 85.0],
         "inputs": {"relu5": [[p15, p50, p85], ...], ...},
         "gradient_norms": {"conv1": [g, ...], ...}}

    !!! warning
        With `steps_per_execution > 1`, Keras calls the callback once per
        execution; the gradient recorded is that of the last batch of it. A
        `keras.optimizers.LossScaleOptimizer` (mixed precision) is not
        supported: its gradients are scaled.

    Args:
        probe: A fixed batch of model inputs `x` (or `(x, y)`), e.g. the first
            1,000 validation images.
        inputs_of: Layers, or their names, whose pre-activation input is
            recorded; they must apply a nonlinearity (see above). A layer of a
            nested model (a keras-hub task's backbone, a block) is named by its
            path, `"backbone/conv1_relu"`, and recorded under it. `None` takes
            every such layer of the model, nested models included. Defaults to
            `None`.
        kernels_of: Layers (or names or paths) whose kernel gradient norm is
            recorded; each must have a trainable `kernel`. `None` takes every
            layer of the model with one, nested models included, in order.
            Defaults to `None`.
        every: Record after every `every`-th batch, a positive int. Defaults
            to `50`.
        percentiles: The percentiles to record, numbers in [0, 100].
            Defaults to `(15, 50, 85)`.
        training: Whether the probe pass runs in training mode (see above).
            Defaults to `False`.
        start: Batches trained before this `fit` (a resumed run): steps count
            on from it, so a resumed run records at the same steps. Defaults
            to `0`.

    Raises:
        ValueError: for an empty probe, a bad `every` or percentile, or a layer
            without a nonlinearity or a kernel (when the model is set).
        TypeError: for a layer list holding something else than layers or
            names, or a `training` that is not a bool.

    Example:

    >>> import numpy as np
    >>> import keras
    >>> from keras_bn import LayerStatistics
    >>> model = keras.Sequential([
    ...     keras.Input((4,)),
    ...     keras.layers.Dense(8, activation="relu", name="hidden"),
    ...     keras.layers.Dense(1, name="out"),
    ... ])
    >>> model.compile(optimizer="adam", loss="mse")
    >>> x = np.random.default_rng(0).normal(size=(64, 4))
    >>> stats = LayerStatistics(x[:16], every=2)
    >>> _ = model.fit(x, x[:, :1], batch_size=16, callbacks=[stats], verbose=0)
    >>> stats.history["step"], list(stats.history["inputs"]), list(stats.history["gradient_norms"])
    ([2, 4], ['hidden'], ['hidden', 'out'])
    >>> len(stats.history["inputs"]["hidden"][0])
    3

    Reference:
        Sergey Ioffe and Christian Szegedy, "Batch Normalization: Accelerating
        Deep Network Training by Reducing Internal Covariate Shift", 2015,
        Figure 1, [arXiv:1502.03167](https://arxiv.org/abs/1502.03167).
    """

    def __init__(
        self, probe, *, inputs_of=None, kernels_of=None, every=50, percentiles=(15, 50, 85), training=False,
        start=0
    ):
        super().__init__()
        if not isinstance(training, bool):
            raise TypeError(f"`training` must be a bool. Received: training={training!r}")
        self.training = training
        probe = keras.utils.unpack_x_y_sample_weight(probe)[0]
        if probe is None or len(keras.tree.flatten(probe)) == 0 or len(keras.tree.flatten(probe)[0]) == 0:
            raise ValueError("`probe` must hold at least one example. Received: an empty probe")
        self.probe = probe
        if isinstance(every, bool) or not isinstance(every, (int, np.integer)) or every < 1:
            raise ValueError(f"`every` must be a positive int. Received: every={every!r}")
        self.every = int(every)
        try:
            self.percentiles = [float(q) for q in percentiles]
        except (TypeError, ValueError):
            raise TypeError(
                f"`percentiles` must be a list of numbers in [0, 100]. Received: percentiles={percentiles!r}"
            ) from None
        if not self.percentiles or not all(0.0 <= q <= 100.0 for q in self.percentiles):
            raise ValueError(
                f"`percentiles` must be a non-empty list of numbers in [0, 100]. "
                f"Received: percentiles={percentiles!r}"
            )
        self._inputs_of = inputs_of
        self._kernels_of = kernels_of
        self.history = {"step": [], "percentiles": list(self.percentiles), "inputs": {}, "gradient_norms": {}}
        if isinstance(start, bool) or not isinstance(start, (int, np.integer)) or start < 0:
            raise ValueError(f"`start` must be an int >= 0. Received: start={start!r}")
        self._step = int(start)
        self._gradients = None

    # -- the layers -------------------------------------------------------------------

    def set_model(self, model):
        super().set_model(model)
        by_path = _graph.layers_by_path(model, inner=True)  # the defaults: the graph's own layers
        visible = _graph.layers_by_path(model)
        inputs = _resolve(
            by_path, self._inputs_of, "inputs_of",
            {path: layer for path, layer in visible.items() if _has_nonlinearity(layer)},
        )
        for path, layer in inputs.items():
            if not _has_nonlinearity(layer):
                raise ValueError(
                    "`inputs_of` must list layers that apply a nonlinearity (an Activation "
                    "layer, or a layer with a non-linear `activation`). "
                    f"Received: layer {path!r}"
                )
        with_kernel = {path: layer for path, layer in visible.items()
                       if getattr(layer, "kernel", None) is not None and layer.trainable}
        kernels = _resolve(by_path, self._kernels_of, "kernels_of", with_kernel)
        for path, layer in kernels.items():
            if getattr(layer, "kernel", None) is None:
                raise ValueError(
                    f"`kernels_of` must list layers with a `kernel`. Received: layer {path!r}"
                )
        # Layers, and the paths that name them in `history` ("outer/inner" in a nested model).
        self.input_layers, self.input_paths = list(inputs.values()), list(inputs)
        self.kernel_layers, self.kernel_paths = list(kernels.values()), list(kernels)
        for path in self.input_paths:
            self.history["inputs"].setdefault(path, [])
        for path in self.kernel_paths:
            self.history["gradient_norms"].setdefault(path, [])
        self._extractor = None

    def _make_extractor(self):
        """Returns a model from the model's inputs to the input of each `inputs_of` layer."""
        model = self.model
        if not _graph.is_graph_model(model):
            inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
            return keras.Model(inputs, [layer.input for layer in self.input_layers])
        return _graph.inputs_of(model, self.input_paths)  # the model's own layers and weights

    def _pre_activations(self):
        """Returns the pre-activation input of each `inputs_of` layer on the probe, as NumPy arrays."""
        model = self.model  # on JAX, this puts the trained weights back into the variables
        if self._extractor is None:
            self._extractor = self._make_extractor()
        with no_grad(), saved_state(model):
            # In training mode the batch norms update their moving statistics
            # (and dropout its random state): all of it is put back.
            outputs = self._extractor(self.probe, training=self.training)
        if not isinstance(outputs, (list, tuple)):
            outputs = [outputs]
        results = []
        for layer, x in zip(self.input_layers, outputs):
            if not isinstance(layer, keras.layers.Activation):
                # The layer's own computation without its activation.
                with _keras_compat.patched(layer, "activation", keras.activations.linear):
                    x = layer(x, training=False)
            results.append(np.asarray(keras.ops.convert_to_numpy(x), dtype=np.float64))
        return results

    # -- the callback -----------------------------------------------------------------

    def on_train_begin(self, logs=None):
        if self.kernel_layers:
            self._gradients = GradientNorms(self.kernel_layers)
            self._gradients.start(self.model)

    def on_train_batch_end(self, batch, logs=None):
        self._step += 1
        if self._step % self.every:
            return
        self.history["step"].append(self._step)
        if self.kernel_layers:
            norms = self._gradients.read()
            for path, norm in zip(self.kernel_paths, norms):
                self.history["gradient_norms"][path].append(float(norm))
        if self.input_layers:
            for path, values in zip(self.input_paths, self._pre_activations()):
                self.history["inputs"][path].append(
                    [float(p) for p in np.percentile(values.ravel(), self.percentiles)]
                )

    def on_train_end(self, logs=None):
        if self._gradients is not None:
            self._gradients.stop(self.model)
            self._gradients = None
