"""Porting batch norms from PyTorch: an `nn.BatchNorm{1,2,3}d` state dict into `ManualBatchNorm` and back.

PyTorch and Keras keep the same four arrays under other names, with two
conventions that differ:

| PyTorch (`state_dict()` key) | `ManualBatchNorm` weight | Convention |
|---|---|---|
| `weight` | `gamma` | same values |
| `bias` | `beta` | same values |
| `running_mean` | `moving_mean` | same values |
| `running_var` | `moving_variance` | unbiased batch variance: `unbiased_variance=True` |
| `num_batches_tracked` | `num_batches_tracked` (with `momentum=None`) | same count |
| `momentum=m` (constructor) | `momentum=1 - m` | weight of the new batch vs of the old average |
| `momentum=None` (constructor) | `momentum=None` | cumulative average, counted by `num_batches_tracked` |
| `eps=1e-5` (constructor) | `epsilon` | same value; Keras's default is `1e-3` |

`from_torch_state_dict` makes a built layer with PyTorch's conventions,
`load_torch_state_dict` fills a layer of a model being ported, and
`to_torch_state_dict` gives a state dict that `nn.BatchNorm2d.load_state_dict`
takes.
"""

import collections

import numpy as np

from keras_bn.batch_norm import ManualBatchNorm

__all__ = ["from_torch_state_dict", "load_torch_state_dict", "to_torch_state_dict"]

# PyTorch's key of each ManualBatchNorm weight, in PyTorch's order.
_TORCH_KEYS = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean",
               "moving_variance": "running_var"}


def _as_array(name, value):
    """Returns a state-dict entry (a torch tensor, an array) as a NumPy array."""
    if hasattr(value, "detach"):  # a torch.Tensor: NumPy cannot read one on a GPU or with a graph
        value = value.detach().cpu().numpy()
    try:
        return np.asarray(value)
    except (TypeError, ValueError):
        raise TypeError(
            f"state_dict[{name!r}] must be a tensor or an array. Received: {type(value).__name__}"
        ) from None


def _entries(state_dict, prefix):
    """Returns `{key: array}` for the keys of `state_dict` that are directly under `prefix`."""
    if not isinstance(state_dict, collections.abc.Mapping):
        raise TypeError(
            "`state_dict` must be a mapping of names to tensors, as `module.state_dict()` "
            f"returns. Received: state_dict of type {type(state_dict).__name__}"
        )
    if not isinstance(prefix, str):
        raise TypeError(f"`prefix` must be a str, such as 'layer1.0.bn1.'. Received: prefix={prefix!r}")
    entries = {}
    for key, value in state_dict.items():
        if isinstance(key, str) and key.startswith(prefix) and "." not in key[len(prefix):]:
            entries[key[len(prefix):]] = _as_array(key, value)
    return entries


def _expected_keys(layer):
    """Returns `{torch key: variable}` for the weights `layer` has, in PyTorch's order."""
    variables = {v.name.split("/")[-1]: v for v in layer.weights}
    return {torch_key: variables[name] for name, torch_key in _TORCH_KEYS.items() if name in variables}


def _check_layer(layer):
    """Raises unless `layer` is a built `ManualBatchNorm` with one channel axis and no renorm."""
    if not isinstance(layer, ManualBatchNorm):
        raise TypeError(f"`layer` must be a keras_bn.ManualBatchNorm. Received: {type(layer).__name__}")
    if not layer.built:
        raise ValueError(
            "`layer` must be built (called once, or `layer.build(input_shape)`) before its "
            f"weights can be loaded. Received: layer {layer.name!r}, not built"
        )
    if layer.renorm:
        raise ValueError(
            "Batch Renormalization has no PyTorch counterpart (no renorm_mean, renorm_stddev "
            f"in a state dict). Received: layer {layer.name!r} with renorm=True"
        )
    if len(layer.moving_mean.shape) != 1:
        raise ValueError(
            "PyTorch keeps one statistic per channel along one axis; `layer` has several "
            f"channel axes. Received: layer {layer.name!r} with axis={layer.axis!r}"
        )


def load_torch_state_dict(layer, state_dict, *, prefix=""):
    """Loads a PyTorch batch norm's state dict into a built `ManualBatchNorm`, in place.

    The keys are PyTorch's (`weight`, `bias`, `running_mean`, `running_var`,
    `num_batches_tracked`), each under `prefix`, so a whole network's state
    dict serves every layer: `prefix="layer1.0.bn1."`. As PyTorch's
    `load_state_dict(strict=True)` does, every weight the layer has must be
    there and nothing else: `weight` and `bias` exactly when the layer has
    `gamma` (`scale=True`) and `beta` (`center=True`), as PyTorch's `affine`.
    `num_batches_tracked` may be missing (state dicts older than PyTorch 0.4.1);
    it is loaded into a layer with `momentum=None`, whose cumulative average
    it counts, and ignored otherwise, since PyTorch uses it only then.

    The layer's constructor arguments are not in a state dict: for PyTorch's
    numbers, the layer needs `unbiased_variance=True`, `momentum = 1 - m` for
    PyTorch's `momentum=m` (or `None` for `None`) and `epsilon` = PyTorch's
    `eps`, as `from_torch_state_dict` sets them.

    Args:
        layer: A built `ManualBatchNorm` with one channel axis and no renorm.
        state_dict: A mapping of names to `torch.Tensor`s or arrays, as
            `module.state_dict()` returns.
        prefix: The start of the layer's keys in `state_dict`. Defaults to `""`.

    Raises:
        TypeError: `layer` is not a `ManualBatchNorm`, or `state_dict` not a
            mapping of tensors.
        ValueError: `layer` is not built or has renorm or several channel
            axes; a key is missing or unexpected; an entry has the wrong shape.
    """
    _check_layer(layer)
    entries = _entries(state_dict, prefix)
    expected = _expected_keys(layer)
    missing = [prefix + key for key in expected if key not in entries]
    unexpected = [prefix + key for key in entries if key not in expected and key != "num_batches_tracked"]
    if missing or unexpected:
        raise ValueError(
            f"`state_dict` does not match layer {layer.name!r} (center={layer.center}, "
            f"scale={layer.scale}, PyTorch's affine). Missing keys: {missing}; unexpected "
            f"keys: {unexpected}. Received keys under prefix={prefix!r}: {sorted(entries)}"
        )
    for key, variable in expected.items():
        if entries[key].shape != tuple(variable.shape):
            raise ValueError(
                f"state_dict[{prefix + key!r}] must have shape {tuple(variable.shape)} to match "
                f"layer {layer.name!r}. Received: shape {entries[key].shape}"
            )
    count = entries.get("num_batches_tracked")
    if count is not None and count.shape != ():
        raise ValueError(
            f"state_dict[{prefix + 'num_batches_tracked'!r}] must be a scalar. "
            f"Received: shape {count.shape}"
        )
    for key, variable in expected.items():
        variable.assign(entries[key].astype("float32"))
    if count is not None and layer.momentum is None:
        layer.num_batches_tracked.assign(int(count))


def from_torch_state_dict(state_dict, *, ndim=4, momentum=0.1, eps=1e-5, axis=1, prefix="",
                          **kwargs):
    """Returns a built `ManualBatchNorm` that computes what a PyTorch batch norm computes.

    The layer has PyTorch's conventions: `unbiased_variance=True` (PyTorch's
    `running_var` follows the unbiased batch variance), `momentum = 1 - m`
    for PyTorch's `momentum=m` (PyTorch weighs the new batch by `m`, Keras
    the old average by `momentum`), `None` for PyTorch's cumulative average,
    and `epsilon=eps`. `center` and `scale` follow PyTorch's `affine`: they
    are true when the state dict has `weight` and `bias`. Its weights are
    then loaded by `load_torch_state_dict`. Training and inference, step for
    step, give PyTorch's outputs and running statistics to float32 round-off.

    Args:
        state_dict: An `nn.BatchNorm{1,2,3}d` state dict (`module.state_dict()`),
            or a whole network's with `prefix`.
        ndim: The rank of the inputs, batch axis included: 2 or 3 for
            `BatchNorm1d`, 4 for `BatchNorm2d`, 5 for `BatchNorm3d`.
            Defaults to `4`.
        momentum: PyTorch's `momentum` of the module (a float in `[0, 1]`, or
            `None`). Defaults to `0.1`, PyTorch's default.
        eps: PyTorch's `eps` of the module. Defaults to `1e-5`, PyTorch's
            default.
        axis: The channel axis: `1` for PyTorch's channels-first inputs, `-1`
            for a channels-last Keras model. Defaults to `1`.
        prefix: The start of the layer's keys in `state_dict`. Defaults to `""`.
        **kwargs: Other `ManualBatchNorm` arguments, such as `name`.

    Returns:
        A built `ManualBatchNorm` holding the state dict's values.

    Raises:
        TypeError: as `load_torch_state_dict`, or `ndim` not an int.
        ValueError: as `load_torch_state_dict`; `ndim` below 2, `axis`
            outside it, a `running_mean` that is not one-dimensional, or a
            `momentum` outside `[0, 1]`.

    Example:

    >>> import numpy as np
    >>> import torch
    >>> from keras_bn import from_torch_state_dict
    >>> torch_bn = torch.nn.BatchNorm2d(3)
    >>> layer = from_torch_state_dict(torch_bn.state_dict(), ndim=4)
    >>> layer.momentum, layer.epsilon, layer.unbiased_variance
    (0.9, 1e-05, True)
    """
    if isinstance(ndim, bool) or not isinstance(ndim, (int, np.integer)):
        raise TypeError(f"`ndim` must be an int, the inputs' rank. Received: ndim={ndim!r}")
    if ndim < 2:
        raise ValueError(
            f"`ndim` must be at least 2 (batch and channels). Received: ndim={ndim!r}"
        )
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)) or not -ndim <= axis < ndim:
        raise ValueError(f"`axis` must be an int in [-{ndim}, {ndim}). Received: axis={axis!r}")
    entries = _entries(state_dict, prefix)
    mean = entries.get("running_mean")
    if mean is None or mean.ndim != 1:
        raise ValueError(
            f"`state_dict` must hold {prefix + 'running_mean'!r}, one value per channel. "
            f"Received: {None if mean is None else f'shape {mean.shape}'}"
        )
    if momentum is not None and not (isinstance(momentum, (int, float)) and 0 <= momentum <= 1):
        raise ValueError(
            f"`momentum` (PyTorch's) must be in [0, 1] or None. Received: momentum={momentum!r}"
        )
    affine = "weight" in entries or "bias" in entries
    layer = ManualBatchNorm(
        axis=int(axis),
        momentum=None if momentum is None else 1.0 - momentum,
        epsilon=eps,
        center=affine,
        scale=affine,
        unbiased_variance=True,
        **kwargs,
    )
    shape = [None] * int(ndim)
    shape[axis] = mean.shape[0]
    layer.build(tuple(shape))
    load_torch_state_dict(layer, state_dict, prefix=prefix)
    return layer


def to_torch_state_dict(layer, *, prefix=""):
    """Returns the state dict of the PyTorch batch norm that `layer` corresponds to.

    The keys are PyTorch's, in PyTorch's order, each under `prefix`;
    the values are float32 `torch.Tensor`s, and `num_batches_tracked` a
    `torch.long` scalar: the layer's count with `momentum=None`, else `0`
    (PyTorch counts batches with any momentum but uses the count only
    then). The result loads into `nn.BatchNorm{1,2,3}d(num_features,
    eps=layer.epsilon, momentum=1 - layer.momentum, affine=layer.scale)`
    with `load_state_dict`, strict.

    Args:
        layer: A built `ManualBatchNorm` with one channel axis and no renorm.
        prefix: Put before every key. Defaults to `""`.

    Returns:
        A `collections.OrderedDict` of `torch.Tensor`s.

    Raises:
        TypeError: `layer` is not a `ManualBatchNorm`.
        ValueError: `layer` is not built or has renorm or several channel axes.
        ImportError: PyTorch is not installed.
    """
    _check_layer(layer)
    import torch

    result = collections.OrderedDict()
    for key, variable in _expected_keys(layer).items():
        value = np.array(variable.numpy(), dtype=np.float32)
        result[prefix + key] = torch.from_numpy(value)
    count = layer.num_batches_tracked.numpy() if layer.momentum is None else 0
    result[prefix + "num_batches_tracked"] = torch.tensor(int(count), dtype=torch.long)
    return result
