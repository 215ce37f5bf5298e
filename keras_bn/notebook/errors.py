"""What a missing or bad MNIST file raises, and the advice every such error gives.

`MNISTError` and its subclasses are what `load_mnist` and `read_idx` raise about the data;
the messages name the file, what is wrong with it and, where a file is missing, how to get
the four IDX files and point keras-bn at them (`data_dir` or `KERAS_BN_MNIST_DIR`). The two
first steps of reading any data file live here too, since they raise these errors first:
a path checked (`as_path`), a file's bytes read (`read_bytes`).
"""

import os

__all__ = [
    "MNIST_DIR_ENV",
    "MNISTDownloadError",
    "MNISTError",
    "MNISTFormatError",
    "MNISTNotFoundError",
]

MNIST_DIR_ENV = "KERAS_BN_MNIST_DIR"
"""Environment variable naming a folder with the MNIST files, read when `data_dir` is None."""

#: How to get the files, said by every error about a missing file.
HOW_TO_GET = (
    "Download train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
    "t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz from "
    "https://yann.lecun.com/exdb/mnist/ (or a mirror such as "
    "https://storage.googleapis.com/cvdf-datasets/mnist/) into one folder, then pass that "
    f"folder as `data_dir` or set the {MNIST_DIR_ENV} environment variable to it."
)
#: Added where `load_mnist` would have downloaded had no folder been named.
OR_DOWNLOAD = "With neither set, load_mnist() downloads mnist.npz through Keras instead."


class MNISTError(OSError):
    """Base class of every error `load_mnist` and `read_idx` raise about the data.

    Raised as such when a file exists but cannot be read (no permission, a folder where a file
    should be) and, through `MNISTDownloadError`, when Keras cannot download MNIST.
    """


class MNISTNotFoundError(MNISTError, FileNotFoundError):
    """The data folder, or a file MNIST needs inside it, does not exist."""


class MNISTFormatError(MNISTError, ValueError):
    """A file exists but its content is not valid MNIST (corrupt, truncated, wrong kind)."""


class MNISTDownloadError(MNISTError):
    """`keras.datasets.mnist.load_data()` failed, typically because there is no internet."""


def as_path(path, name):
    """Returns `path` as an absolute `str`, raising TypeError when it is not path-like."""
    try:
        return os.path.abspath(os.path.expanduser(os.fspath(path)))
    except TypeError:
        raise TypeError(
            f"{name} must be a str or os.PathLike. "
            f"Received: {name}={path!r} of type {type(path).__name__}"
        ) from None


def read_bytes(path):
    """Returns the bytes of `path`, raising MNIST errors for missing, unreadable or empty files."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError as error:
        raise MNISTNotFoundError(
            f"The MNIST file {path} does not exist. {HOW_TO_GET} Received: {path}"
        ) from error
    except OSError as error:
        raise MNISTError(
            f"The MNIST file {path} cannot be read ({type(error).__name__}: "
            f"{error.strerror or error}). Check that it is a file you may read. "
            f"Received: {path}"
        ) from error
    if not raw:
        raise MNISTFormatError(
            f"The MNIST file {path} is empty; it was probably cut off while downloading. "
            "Download it again. Received: 0 bytes"
        )
    return raw
