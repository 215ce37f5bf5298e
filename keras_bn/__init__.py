"""keras-bn: batch normalization for Keras 3, by hand and tested to the last digit."""

__version__ = "0.1.0"

from keras_bn.batch_norm import ManualBatchNorm

__all__ = ["ManualBatchNorm", "__version__"]
