"""keras-bn: batch normalization for Keras 3, by hand and tested to the last digit.

`ManualBatchNorm` is the seed notebook's hand-written batch normalization as a
drop-in Keras layer; beside it are its tools (folding, conversion, recalibration) and the notebook's reusable
pieces (the deep MNIST network, its data split, batch order and logging cadence).
The experiment harness (`run_experiment`, checkpoints, progress, the `keras-bn`
command) lives in the `keras_bn.experiment` subpackage.
"""

__version__ = "0.1.0"

from keras_bn.batch_norm import ManualBatchNorm
from keras_bn.callbacks import NotebookLogger
from keras_bn.datasets import (
    MNIST,
    DataSplit,
    MNISTDownloadError,
    MNISTError,
    MNISTFormatError,
    MNISTNotFoundError,
    load_mnist,
    read_idx,
)
from keras_bn.feeder import BatchFeeder
from keras_bn.convert import convert_batch_norm
from keras_bn.folding import FoldedBatchNorm, FoldReport, fold_batch_norm
from keras_bn.layer_statistics import LayerStatistics
from keras_bn.models import compile_like_notebook, deep_mnist_model
from keras_bn.recalibrate import RecalibrateBatchNorm, recalibrate_batch_norm

__all__ = [
    "BatchFeeder",
    "DataSplit",
    "FoldReport",
    "FoldedBatchNorm",
    "LayerStatistics",
    "MNIST",
    "MNISTDownloadError",
    "MNISTError",
    "MNISTFormatError",
    "MNISTNotFoundError",
    "ManualBatchNorm",
    "NotebookLogger",
    "RecalibrateBatchNorm",
    "__version__",
    "compile_like_notebook",
    "convert_batch_norm",
    "deep_mnist_model",
    "fold_batch_norm",
    "load_mnist",
    "read_idx",
    "recalibrate_batch_norm",
]

#: Harness names that left the top level, and where they live now.
_MOVED = {
    "run_experiment": "keras_bn.experiment",
    "ExperimentError": "keras_bn.experiment",
    "CheckpointError": "keras_bn.experiment",
    "CheckpointMismatchError": "keras_bn.experiment",
    "StopOnSignal": "keras_bn.experiment",
    "TrainingInterrupted": "keras_bn.experiment",
}


def __getattr__(name):
    """Returns a harness name that moved to `keras_bn.experiment`, with a `DeprecationWarning`."""
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
