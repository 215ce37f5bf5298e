"""The MNIST loader that the TensorFlow 1 notebook used, as a library function.

`load_mnist` returns what `input_data.read_data_sets('MNIST_data/', one_hot=True,
reshape=False)` returned: 55,000 training images, a validation set made of the *first* 5,000
images of the training file, and 10,000 test images, each as float32 in `[0, 1]` with shape
`(n, 28, 28, 1)`, with one-hot float32 labels.

The files are read from, in this order: the `data_dir` argument; the folder named by the
`KERAS_BN_MNIST_DIR` environment variable; `keras.datasets.mnist.load_data()`, which downloads
`mnist.npz` once and caches it under `~/.keras/datasets/`. A folder may hold the four IDX files
of the MNIST site (plain or gzipped) or Keras's `mnist.npz`.

Reading the files is `_sources` (which folder, or the download, each checked) and `idx`
(one IDX file); what they raise is in `errors`. This module turns their integer arrays
into the notebook's three splits.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import numpy as np

from keras_bn.notebook._sources import NUM_CLASSES, load_raw

__all__ = ["MNIST", "DataSplit", "load_mnist"]


class DataSplit(NamedTuple):
    """One split of MNIST: images and their labels, row for row.

    Attributes:
        images: float32 array of shape `(n, 28, 28, 1)` with values in `[0, 1]`.
        labels: one-hot float32 array of shape `(n, 10)`, or int64 class indices of shape
            `(n,)` when loaded with `one_hot=False`.
    """

    images: np.ndarray
    labels: np.ndarray


class MNIST(NamedTuple):
    """The three MNIST splits, as TensorFlow 1's `read_data_sets` returned them.

    Attributes:
        train: the training file without its first `validation_size` images (55,000 by
            default).
        validation: the first `validation_size` images of the training file (5,000 by
            default).
        test: the 10,000 images of the test file.
    """

    train: DataSplit
    validation: DataSplit
    test: DataSplit


def load_mnist(
    data_dir: str | os.PathLike | None = None,
    *,
    one_hot: bool = True,
    validation_size: int = 5000,
) -> MNIST:
    """Loads MNIST as TensorFlow 1's `read_data_sets(..., reshape=False)` did.

    The training file's first `validation_size` images become the validation split and the
    rest the training split; the test file is the test split. Pixels are scaled as TensorFlow 1
    scaled them, `float32(pixel) * (1 / 255)`, so `0` maps to `0.0` and `255` to `1.0`.

    The data come from the first of: `data_dir`; the folder in the `KERAS_BN_MNIST_DIR`
    environment variable (when set and not empty); `keras.datasets.mnist.load_data()`, which
    downloads and caches `mnist.npz`. A folder must hold either the four IDX files
    `train-images-idx3-ubyte`, `train-labels-idx1-ubyte`, `t10k-images-idx3-ubyte` and
    `t10k-labels-idx1-ubyte` (each plain or with `.gz`; a plain file wins over its `.gz`) or
    Keras's `mnist.npz` (keys `x_train`, `y_train`, `x_test`, `y_test`). When both are there,
    the IDX files are read.

    Args:
        data_dir: folder with the MNIST files, as a `str` or `os.PathLike`. When None, the
            `KERAS_BN_MNIST_DIR` environment variable is used, then the Keras download.
            Defaults to `None`.
        one_hot: whether labels are one-hot float32 rows of length 10, as the notebook used;
            when False they are int64 class indices. Defaults to `True`.
        validation_size: how many images, taken from the start of the training file, form the
            validation split; an int in `[0, number of training images]`. Defaults to `5000`.

    Returns:
        An `MNIST` named tuple of three `DataSplit`s, `train`, `validation` and `test`, whose
        `images` are float32 of shape `(n, 28, 28, 1)` in `[0, 1]` and whose `labels` are
        float32 `(n, 10)` (or int64 `(n,)` when `one_hot=False`).

    Raises:
        TypeError: if `data_dir` is neither None, a `str` nor an `os.PathLike`.
        ValueError: if `validation_size` is not an int in `[0, number of training images]`.
        MNISTNotFoundError: (a `FileNotFoundError`) if the folder does not exist, is not a
            folder, or holds neither all four IDX files nor `mnist.npz`; the message lists the
            missing files and how to get them.
        MNISTFormatError: (a `ValueError`) if a file is empty or corrupt: not gzip, not IDX,
            wrong magic number (e.g. a labels file where images belong), a dtype other than
            unsigned byte, truncated or with extra bytes, images not 28x28, labels outside
            0..9, image and label counts that disagree, or an `mnist.npz` with missing keys or
            wrong shapes.
        MNISTError: (an `OSError`) if a file exists but cannot be read.
        MNISTDownloadError: (an `MNISTError`) if no folder is given and
            `keras.datasets.mnist.load_data()` fails; the original error is chained.

    Example:

    Real use reads the folder the notebook used:

    >>> mnist = load_mnist("MNIST_data/")  # doctest: +SKIP
    >>> mnist.train.images.shape, mnist.validation.images.shape, mnist.test.images.shape
    ... # doctest: +SKIP
    ((55000, 28, 28, 1), (5000, 28, 28, 1), (10000, 28, 28, 1))

    Any folder of IDX files works; here a tiny one is written to a temporary folder:

    >>> import gzip, os, shutil, tempfile
    >>> import numpy as np
    >>> from keras_bn.notebook import load_mnist
    >>> def write_idx(path, array):
    ...     header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    ...     with gzip.open(path, "wb") as f:
    ...         _ = f.write(header + array.astype(np.uint8).tobytes())
    >>> folder = tempfile.mkdtemp()
    >>> rng = np.random.default_rng(0)
    >>> for prefix, n in [("train", 12), ("t10k", 4)]:
    ...     images = rng.integers(0, 256, size=(n, 28, 28))
    ...     write_idx(os.path.join(folder, f"{prefix}-images-idx3-ubyte.gz"), images)
    ...     write_idx(os.path.join(folder, f"{prefix}-labels-idx1-ubyte.gz"), np.arange(n) % 10)
    >>> mnist = load_mnist(folder, validation_size=2)
    >>> mnist.train.images.shape, mnist.validation.images.shape, mnist.test.images.shape
    ((10, 28, 28, 1), (2, 28, 28, 1), (4, 28, 28, 1))
    >>> mnist.train.images.dtype, float(mnist.train.images.min()) >= 0.0
    (dtype('float32'), True)
    >>> mnist.validation.labels[1]
    array([0., 1., 0., 0., 0., 0., 0., 0., 0., 0.], dtype=float32)
    >>> load_mnist(folder, one_hot=False, validation_size=2).train.labels
    array([2, 3, 4, 5, 6, 7, 8, 9, 0, 1])
    >>> shutil.rmtree(folder)
    """
    _check_validation_size(validation_size, num_train=None)
    (x_train, y_train), (x_test, y_test) = load_raw(data_dir)
    _check_validation_size(validation_size, num_train=len(x_train))

    train_images = _to_float_images(x_train)
    train_labels = _encode_labels(y_train, one_hot=bool(one_hot))
    return MNIST(
        train=DataSplit(
            images=train_images[validation_size:], labels=train_labels[validation_size:]
        ),
        validation=DataSplit(
            images=train_images[:validation_size], labels=train_labels[:validation_size]
        ),
        test=DataSplit(
            images=_to_float_images(x_test), labels=_encode_labels(y_test, one_hot=bool(one_hot))
        ),
    )


def _check_validation_size(validation_size, num_train):
    """Raises ValueError unless `validation_size` is an int in `[0, num_train]`."""
    is_int = isinstance(validation_size, (int, np.integer)) and not isinstance(
        validation_size, (bool, np.bool_)
    )
    if not is_int:
        raise ValueError(
            "validation_size must be an int in [0, number of training images]. "
            f"Received: validation_size={validation_size!r} "
            f"of type {type(validation_size).__name__}"
        )
    upper = "number of training images" if num_train is None else str(num_train)
    if validation_size < 0 or (num_train is not None and validation_size > num_train):
        raise ValueError(
            f"validation_size must be an int in [0, {upper}], since the validation images are "
            f"taken from the training file. Received: validation_size={validation_size}"
        )


def _to_float_images(images):
    """Returns uint8 images `(n, 28, 28)` as float32 `(n, 28, 28, 1)` scaled to `[0, 1]`."""
    out = np.asarray(images).reshape(*np.shape(images), 1).astype(np.float32)
    # TensorFlow 1 multiplied by the float64 scalar 1/255 (rounded to float32), not divided
    # by 255; the two differ by one ulp on some pixels, so match it bit for bit. 255 still
    # maps to exactly 1.0.
    np.multiply(out, np.float32(1.0 / 255.0), out=out)
    return out


def _encode_labels(labels, *, one_hot):
    """Returns labels as one-hot float32 `(n, 10)` or int64 `(n,)`."""
    labels = np.asarray(labels).astype(np.int64)
    if one_hot:
        return np.eye(NUM_CLASSES, dtype=np.float32)[labels]
    return labels
