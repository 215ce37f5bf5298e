"""The seed notebook's reusable pieces: its data, its batch order, its network and its log.

- `mnist`: [`load_mnist`][keras_bn.load_mnist] and the [`MNIST`][keras_bn.MNIST] and
  [`DataSplit`][keras_bn.DataSplit] it returns, the real MNIST split as the notebook
  split it; the files come through `_sources` (a folder or Keras's download).
- `idx`: [`read_idx`][keras_bn.read_idx], one IDX file.
- `errors`: [`MNISTError`][keras_bn.notebook.MNISTError] and its subclasses, what a
  missing or bad data file raises, and `MNIST_DIR_ENV`.
- `feeder`: [`BatchFeeder`][keras_bn.BatchFeeder], the notebook's `next_batch`.
- `model`: [`deep_mnist_model`][keras_bn.deep_mnist_model] and
  [`compile_like_notebook`][keras_bn.compile_like_notebook].
- `logger`: [`NotebookLogger`][keras_bn.NotebookLogger], the notebook's log as a callback.

The public names are importable from `keras_bn` itself (the MNIST errors from here);
the layer and its tools never import this package.
"""

from keras_bn.notebook.errors import (
    MNIST_DIR_ENV,
    MNISTDownloadError,
    MNISTError,
    MNISTFormatError,
    MNISTNotFoundError,
)
from keras_bn.notebook.feeder import BatchFeeder
from keras_bn.notebook.idx import read_idx
from keras_bn.notebook.logger import NotebookLogger
from keras_bn.notebook.mnist import MNIST, DataSplit, load_mnist
from keras_bn.notebook.model import compile_like_notebook, deep_mnist_model

__all__ = [
    "BatchFeeder",
    "DataSplit",
    "MNIST",
    "MNISTDownloadError",
    "MNISTError",
    "MNISTFormatError",
    "MNISTNotFoundError",
    "MNIST_DIR_ENV",
    "NotebookLogger",
    "compile_like_notebook",
    "deep_mnist_model",
    "load_mnist",
    "read_idx",
]
