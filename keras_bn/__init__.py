"""keras-bn: batch normalization for Keras 3, by hand and tested to the last digit.

`ManualBatchNorm` is the seed notebook's hand-written batch normalization as a
drop-in Keras layer; beside it are its tools (folding, conversion, recalibration)
and the notebook's reusable pieces (the deep MNIST network, its data split, batch
order and logging cadence). The experiment harness (`run_experiment`, checkpoints,
progress, the `keras-bn` command) lives in the `keras_bn.experiment` subpackage.

The layer and its tools:

- [`ManualBatchNorm`][keras_bn.ManualBatchNorm]: the batch normalization layer, a
  drop-in for `keras.layers.BatchNormalization`, with ghost batches, renorm,
  PyTorch's conventions and synchronized statistics on every backend.
- [`fold_batch_norm`][keras_bn.fold_batch_norm]: folds each batch normalization of
  a model into the layer before it, for inference; it returns a
  [`FoldReport`][keras_bn.FoldReport] and leaves a
  [`FoldedBatchNorm`][keras_bn.FoldedBatchNorm] where each one was.
- [`convert_batch_norm`][keras_bn.convert_batch_norm]: replaces the
  `keras.layers.BatchNormalization` layers of a model with `ManualBatchNorm`, weights
  included.
- [`freeze_batch_norm`][keras_bn.freeze_batch_norm] and
  [`unfreeze_batch_norm`][keras_bn.unfreeze_batch_norm]: swap chosen batch norms
  for a [`FrozenBatchNorm`][keras_bn.FrozenBatchNorm], which stays in inference
  mode whatever `trainable` and `training` say, and back.
- [`recalibrate_batch_norm`][keras_bn.recalibrate_batch_norm]: recomputes the
  moving statistics with the current weights on given batches (PreciseBN), and
  [`RecalibrateBatchNorm`][keras_bn.RecalibrateBatchNorm], the callback that does it
  before each evaluation during `fit`.
- [`adapt_batch_norm`][keras_bn.adapt_batch_norm] and
  [`BatchNormAdapter`][keras_bn.BatchNormAdapter]: test-time adaptation of the
  batch norms to unlabeled shifted data, by their statistics (with a prior on
  the source ones) or by TENT's entropy minimization, over a data set or online.
- [`from_torch_state_dict`][keras_bn.from_torch_state_dict],
  [`load_torch_state_dict`][keras_bn.load_torch_state_dict] and
  [`to_torch_state_dict`][keras_bn.to_torch_state_dict]: a PyTorch
  `nn.BatchNorm{1,2,3}d` state dict into `ManualBatchNorm` and back.
- [`LayerStatistics`][keras_bn.LayerStatistics]: a callback that records input
  percentiles and kernel gradient norms of chosen layers during training.

The notebook's pieces:

- [`deep_mnist_model`][keras_bn.deep_mnist_model] and
  [`compile_like_notebook`][keras_bn.compile_like_notebook]: the notebook's 19-layer
  network, with no batch normalization, Keras's or `ManualBatchNorm`, and its
  optimizer and loss.
- [`load_mnist`][keras_bn.load_mnist], [`MNIST`][keras_bn.MNIST] and
  [`DataSplit`][keras_bn.DataSplit]: the real MNIST, split as the notebook split it;
  [`read_idx`][keras_bn.read_idx] reads one IDX file; [`MNISTError`][keras_bn.notebook.MNISTError] and its
  subclasses say what is missing or wrong.
- [`BatchFeeder`][keras_bn.BatchFeeder]: the notebook's `next_batch`, a seeded,
  resumable batch order.
- [`NotebookLogger`][keras_bn.NotebookLogger]: a callback that logs as the notebook
  did, every so many batches.

The experiment harness, in `keras_bn.experiment`:

- [`run_experiment`][keras_bn.experiment.run_experiment] and
  [`RunConfig`][keras_bn.experiment.RunConfig]: rerun the notebook's comparison,
  over several seeds, with checkpoints and progress; the `keras-bn` command
  calls it.
"""

__version__ = "0.1.0"

from keras_bn.adapt import BatchNormAdapter, adapt_batch_norm
from keras_bn.batch_norm import ManualBatchNorm
from keras_bn.convert import convert_batch_norm
from keras_bn.folding import FoldedBatchNorm, FoldReport, fold_batch_norm
from keras_bn.frozen import FrozenBatchNorm, freeze_batch_norm, unfreeze_batch_norm
from keras_bn.layer_statistics import LayerStatistics
from keras_bn.notebook import (
    MNIST,
    BatchFeeder,
    DataSplit,
    NotebookLogger,
    compile_like_notebook,
    deep_mnist_model,
    load_mnist,
    read_idx,
)
from keras_bn.porting import from_torch_state_dict, load_torch_state_dict, to_torch_state_dict
from keras_bn.recalibrate import RecalibrateBatchNorm, recalibrate_batch_norm

__all__ = [
    "BatchFeeder",
    "BatchNormAdapter",
    "DataSplit",
    "FoldReport",
    "FoldedBatchNorm",
    "FrozenBatchNorm",
    "LayerStatistics",
    "MNIST",
    "ManualBatchNorm",
    "NotebookLogger",
    "RecalibrateBatchNorm",
    "__version__",
    "adapt_batch_norm",
    "compile_like_notebook",
    "convert_batch_norm",
    "deep_mnist_model",
    "fold_batch_norm",
    "freeze_batch_norm",
    "from_torch_state_dict",
    "load_mnist",
    "load_torch_state_dict",
    "read_idx",
    "recalibrate_batch_norm",
    "to_torch_state_dict",
    "unfreeze_batch_norm",
]

#: Names that left the top level, and where they live now: the harness's, and the
#: MNIST loader's errors (the top level lists the library's tools).
_MOVED = {
    "run_experiment": "keras_bn.experiment",
    "ExperimentError": "keras_bn.experiment",
    "CheckpointError": "keras_bn.experiment",
    "CheckpointMismatchError": "keras_bn.experiment",
    "StopOnSignal": "keras_bn.experiment",
    "TrainingInterrupted": "keras_bn.experiment",
    "MNISTError": "keras_bn.notebook",
    "MNISTNotFoundError": "keras_bn.notebook",
    "MNISTFormatError": "keras_bn.notebook",
    "MNISTDownloadError": "keras_bn.notebook",
}


def __getattr__(name):
    """Returns a name that moved to a subpackage or module (`_MOVED`), with a `DeprecationWarning`."""
    if name not in _MOVED:
        raise AttributeError(f"module 'keras_bn' has no attribute {name!r}")
    import importlib
    import warnings

    warnings.warn(
        f"`keras_bn.{name}` moved to `{_MOVED[name]}.{name}`; import it from there. "
        "The top-level name will be removed in keras-bn 0.3.",
        DeprecationWarning,
        stacklevel=2,
    )
    return getattr(importlib.import_module(_MOVED[name]), name)
