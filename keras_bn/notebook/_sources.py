"""Where `load_mnist`'s raw arrays come from, each source checked alike.

A folder given as `data_dir` or in `KERAS_BN_MNIST_DIR`, holding the four IDX files (plain or
gzipped) or Keras's `mnist.npz`; else `keras.datasets.mnist.load_data()`, which downloads
`mnist.npz` into the Keras cache. Whichever it is, each split's images and labels pass the
same check (`_check_pair`) before `load_mnist` scales and splits them.
"""

import io
import os
import zipfile
import zlib

import numpy as np

from keras_bn.notebook.errors import (
    HOW_TO_GET,
    MNIST_DIR_ENV,
    OR_DOWNLOAD,
    MNISTDownloadError,
    MNISTFormatError,
    MNISTNotFoundError,
    as_path,
    read_bytes,
)
from keras_bn.notebook.idx import IMAGES_MAGIC, LABELS_MAGIC, read_idx_file

__all__ = ["NUM_CLASSES", "load_raw"]

#: The digits 0..9.
NUM_CLASSES = 10
_IMAGE_SHAPE = (28, 28)
_IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_NPZ_FILE = "mnist.npz"
_NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
_DOWNLOAD_SOURCE = "keras.datasets.mnist.load_data()"


def load_raw(data_dir):
    """Returns `(x_train, y_train), (x_test, y_test)` as checked integer arrays."""
    if data_dir is not None:
        folder, origin = as_path(data_dir, "data_dir"), "data_dir"
    elif os.environ.get(MNIST_DIR_ENV):
        folder = as_path(os.environ[MNIST_DIR_ENV], MNIST_DIR_ENV)
        origin = f"the {MNIST_DIR_ENV} environment variable"
    else:
        return _download()

    if not os.path.exists(folder):
        raise MNISTNotFoundError(
            f"The MNIST folder {folder} (from {origin}) does not exist. {HOW_TO_GET} "
            f"{OR_DOWNLOAD} Received: {folder}"
        )
    if not os.path.isdir(folder):
        raise MNISTNotFoundError(
            f"The MNIST folder {folder} (from {origin}) is not a folder. Pass the folder that "
            f"holds the MNIST files, not a file. Received: {folder}"
        )

    found, missing = {}, []
    for key, name in _IDX_FILES.items():
        candidates = [os.path.join(folder, name), os.path.join(folder, name + ".gz")]
        present = [path for path in candidates if os.path.exists(path)]
        if present:
            found[key] = present[0]
        else:
            missing.append(name + "[.gz]")
    if not missing:
        return _load_idx_folder(found)
    npz_path = os.path.join(folder, _NPZ_FILE)
    if os.path.exists(npz_path):
        return _load_npz(npz_path)
    names = sorted(os.listdir(folder))
    listing = ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
    raise MNISTNotFoundError(
        f"The MNIST folder {folder} (from {origin}) lacks {', '.join(missing)} and holds no "
        f"{_NPZ_FILE} either. {HOW_TO_GET} "
        f"Received: a folder holding {listing or 'nothing'}"
    )


def _load_idx_folder(paths):
    """Reads and checks the four IDX files named in `paths` (keys of `_IDX_FILES`)."""
    arrays = {
        key: read_idx_file(path, expected_magic=IMAGES_MAGIC if "images" in key else LABELS_MAGIC)
        for key, path in paths.items()
    }
    for split in ("train", "test"):
        _check_pair(
            arrays[f"{split}_images"],
            arrays[f"{split}_labels"],
            images_source=paths[f"{split}_images"],
            labels_source=paths[f"{split}_labels"],
        )
    return (arrays["train_images"], arrays["train_labels"]), (
        arrays["test_images"],
        arrays["test_labels"],
    )


def _load_npz(path):
    """Reads and checks Keras's `mnist.npz` at `path`."""
    raw = read_bytes(path)
    try:
        archive = np.load(io.BytesIO(raw), allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
        raise MNISTFormatError(
            f"The MNIST file {path} is not a valid .npz archive ({error}). Re-download it or "
            f"delete it and use the four IDX files instead. Received: {len(raw)} bytes "
            f"starting with {raw[:8]!r}"
        ) from error
    if not hasattr(archive, "files"):
        raise MNISTFormatError(
            f"The MNIST file {path} holds a single array, not an .npz archive with keys "
            f"{', '.join(_NPZ_KEYS)}. Received: an array of shape {archive.shape}"
        )
    with archive:
        missing = [key for key in _NPZ_KEYS if key not in archive.files]
        if missing:
            raise MNISTFormatError(
                f"The MNIST file {path} lacks the key(s) {', '.join(missing)}; Keras's "
                f"mnist.npz holds {', '.join(_NPZ_KEYS)}. Received: keys {archive.files}"
            )
        try:
            x_train, y_train, x_test, y_test = (archive[key] for key in _NPZ_KEYS)
        except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as error:
            raise MNISTFormatError(
                f"The MNIST file {path} has an entry that cannot be read ({error}). "
                f"Received: keys {archive.files}"
            ) from error
    for x, y, split in ((x_train, y_train, "train"), (x_test, y_test, "test")):
        _check_pair(
            x, y, images_source=f"{path} [x_{split}]", labels_source=f"{path} [y_{split}]"
        )
    return (x_train, y_train), (x_test, y_test)


def _download():
    """Returns MNIST from `keras.datasets.mnist.load_data()`, raising MNISTDownloadError."""
    try:
        import keras

        (x_train, y_train), (x_test, y_test) = keras.datasets.mnist.load_data()
    except Exception as error:
        raise MNISTDownloadError(
            f"No MNIST folder was given (data_dir=None and {MNIST_DIR_ENV} is not set), and "
            f"{_DOWNLOAD_SOURCE} could not download mnist.npz into the Keras cache "
            "(~/.keras/datasets/, or $KERAS_HOME/datasets/). Without internet, use local "
            f"files instead. {HOW_TO_GET} "
            f"Received: {type(error).__name__}: {error}"
        ) from error
    for split, (x, y) in (("train", (x_train, y_train)), ("test", (x_test, y_test))):
        _check_pair(
            x,
            y,
            images_source=f"{_DOWNLOAD_SOURCE} [x_{split}]",
            labels_source=f"{_DOWNLOAD_SOURCE} [y_{split}]",
        )
    return (x_train, y_train), (x_test, y_test)


def _check_pair(images, labels, *, images_source, labels_source):
    """Checks one split's images `(n, 28, 28)` in 0..255 and labels `(n,)` in 0..9."""
    images, labels = np.asarray(images), np.asarray(labels)
    if images.ndim != 3 or images.shape[1:] != _IMAGE_SHAPE:
        raise MNISTFormatError(
            f"The MNIST images in {images_source} must have shape (n, 28, 28). "
            f"Received: shape {images.shape}"
        )
    if images.dtype != np.uint8:
        in_range = np.issubdtype(images.dtype, np.integer) and (
            images.size == 0 or (images.min() >= 0 and images.max() <= 255)
        )
        if not in_range:
            raise MNISTFormatError(
                f"The MNIST images in {images_source} must be integers in 0..255. "
                f"Received: dtype {images.dtype}"
            )
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise MNISTFormatError(
            f"The MNIST labels in {labels_source} must be integers of shape (n,). "
            f"Received: dtype {labels.dtype}, shape {labels.shape}"
        )
    bad = np.flatnonzero((labels < 0) | (labels >= NUM_CLASSES))
    if bad.size:
        raise MNISTFormatError(
            f"The MNIST labels in {labels_source} must be digits 0..9, but {bad.size} of "
            f"them are not; the first is at index {bad[0]}. Received: label {labels[bad[0]]}"
        )
    if len(images) != len(labels):
        raise MNISTFormatError(
            f"The MNIST images in {images_source} and labels in {labels_source} disagree in "
            f"number; they must match one to one. Received: {len(images)} images, "
            f"{len(labels)} labels"
        )
