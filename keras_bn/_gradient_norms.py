"""The kernel gradient norms that `LayerStatistics` records, read where `fit` hands the gradients over.

`GradientNorms` wraps the optimizer's `apply` for the duration of `fit`: the
wrapper computes the Euclidean norm of each chosen kernel's gradient, keeps it
where the callback can read it after the batch, and applies the gradients as
before. The step itself is unchanged.
"""

import keras
import numpy as np

from keras_bn import _keras_compat


def _norms(tensors):
    """Returns the Euclidean (Frobenius) norm of each tensor, stacked, computed in float32."""
    return keras.ops.stack(
        [keras.ops.sqrt(keras.ops.sum(keras.ops.square(keras.ops.cast(t, "float32")))) for t in tensors]
    )


def _positions(model, kernels):
    """Returns the index of each kernel among the model's trainable variables, or raises naming it."""
    model_variables = list(model.trainable_variables)
    positions = []
    for kernel in kernels:
        matches = [i for i, v in enumerate(model_variables) if v is kernel]
        if not matches:
            raise ValueError(
                f"`kernels_of` lists a layer whose kernel is not trained. Received: {kernel.path}"
            )
        positions.append(matches[0])
    return positions


class GradientNorms:
    """The norms of the gradients of `layers`' kernels on each batch that `fit` trains.

    `start(model)` at the start of `fit` wraps the optimizer's `apply` and
    retraces the train step; `read()` after a batch returns the norms of that
    batch's gradients, with the weights before the step; `stop(model)` at the
    end puts the optimizer's own `apply` back.
    """

    def __init__(self, layers):
        self.layers = list(layers)
        self._last = None
        self._variable = None
        self._unwrap = None

    def start(self, model):
        """Wraps `model.optimizer.apply` and makes the train step call the wrapper."""
        if keras.backend.backend() == "tensorflow":
            # Written inside the traced step, read here: a variable of no layer.
            self._variable = keras.Variable(np.zeros(len(self.layers)), dtype="float32", trainable=False)
        self._wrap(model)
        # Retrace so that the step calls the wrapped `apply`.
        model.make_train_function(force=True)

    def _wrap(self, model):
        """Makes the optimizer's `apply` record the kernels' gradient norms, then apply as before."""
        optimizer = model.optimizer
        if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
            raise ValueError(
                "LayerStatistics cannot read gradients through a LossScaleOptimizer "
                "(mixed precision): they are scaled. Received: optimizer "
                f"{type(optimizer).__name__}"
            )
        kernels = [layer.kernel for layer in self.layers]
        positions = _positions(model, kernels)
        original = optimizer.apply

        def apply(grads, trainable_variables=None):
            grads = list(grads)
            if trainable_variables is None:
                # JAX's stateless_apply: the grads follow the optimizer's
                # variables, which are the model's trainable variables.
                chosen = [grads[i] for i in positions]
            else:
                index = {id(v): i for i, v in enumerate(trainable_variables)}
                chosen = [grads[index[id(k)]] for k in kernels]
            if chosen:
                self._store(_norms(chosen))
            return original(grads, trainable_variables)

        self._unwrap = _keras_compat.patch_instance(optimizer, "apply", apply)

    def _store(self, norms):
        """Keeps the norms computed inside the train step where `read` finds them."""
        backend = keras.backend.backend()
        if backend == "jax":
            import jax

            # Inside a jitted, stateless step: send the value to the host.
            jax.debug.callback(self._receive, norms)
        elif backend == "tensorflow":
            self._variable.assign(norms)
        else:
            self._receive(norms)

    def _receive(self, norms):
        """Stores the norms of the batch just trained as a NumPy array."""
        self._last = np.array(keras.ops.convert_to_numpy(norms), dtype=np.float64)

    def read(self):
        """Returns the kernel gradient norms of the batch just trained."""
        backend = keras.backend.backend()
        if backend == "jax":
            import jax

            jax.effects_barrier()
        elif backend == "tensorflow":
            return np.array(self._variable.value.read_value().numpy(), dtype=np.float64)
        return self._last

    def stop(self, model):
        """Puts the optimizer's own `apply` back; the next `fit` traces a step without the wrapper."""
        if self._unwrap is not None:
            self._unwrap()  # the class's own method again
            self._unwrap = None
            model.train_function = None
