"""keras-bn: batch normalization for Keras 3, by hand and tested to the last digit."""

__version__ = "0.1.0"

from keras_bn.batch_norm import ManualBatchNorm
from keras_bn.folding import FoldedBatchNorm, fold_batch_norm
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

__all__ = [
    "FoldedBatchNorm",
    "MNIST",
    "DataSplit",
    "MNISTDownloadError",
    "MNISTError",
    "MNISTFormatError",
    "MNISTNotFoundError",
    "ManualBatchNorm",
    "__version__",
    "fold_batch_norm",
    "load_mnist",
    "read_idx",
]
