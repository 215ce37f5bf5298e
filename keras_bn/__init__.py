"""keras-bn: batch normalization for Keras 3, by hand and tested to the last digit."""

__version__ = "0.1.0"

from keras_bn.batch_norm import ManualBatchNorm
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
    "MNIST",
    "DataSplit",
    "MNISTDownloadError",
    "MNISTError",
    "MNISTFormatError",
    "MNISTNotFoundError",
    "ManualBatchNorm",
    "__version__",
    "load_mnist",
    "read_idx",
]
