"""keras-bn: batch normalization for Keras 3, by hand and tested to the last digit.

`ManualBatchNorm` is the seed notebook's hand-written batch normalization as a
drop-in Keras layer; the rest reproduces the notebook's experiment (the deep MNIST
network, its data split and logging cadence) and adds what Keras lacks.
"""

__version__ = "0.1.0"

from keras_bn.batch_norm import ManualBatchNorm
from keras_bn.callbacks import NotebookLogger
from keras_bn.checkpoint import CheckpointCallback, CheckpointError, CheckpointMismatchError
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
from keras_bn.experiment import ExperimentError, run_experiment
from keras_bn.feeder import BatchFeeder
from keras_bn.convert import convert_batch_norm
from keras_bn.folding import FoldedBatchNorm, FoldReport, fold_batch_norm
from keras_bn.interrupt import StopOnSignal, TrainingInterrupted
from keras_bn.models import compile_like_notebook, deep_mnist_model
from keras_bn.progress import ProgressBar

__all__ = [
    "BatchFeeder",
    "CheckpointCallback",
    "CheckpointError",
    "CheckpointMismatchError",
    "DataSplit",
    "ExperimentError",
    "FoldReport",
    "FoldedBatchNorm",
    "MNIST",
    "MNISTDownloadError",
    "MNISTError",
    "MNISTFormatError",
    "MNISTNotFoundError",
    "ManualBatchNorm",
    "NotebookLogger",
    "ProgressBar",
    "StopOnSignal",
    "TrainingInterrupted",
    "__version__",
    "compile_like_notebook",
    "convert_batch_norm",
    "deep_mnist_model",
    "fold_batch_norm",
    "load_mnist",
    "read_idx",
    "run_experiment",
]
