"""The MNIST loader that the TensorFlow 1 notebook used, as a library function.

`load_mnist` returns what `input_data.read_data_sets('MNIST_data/', one_hot=True,
reshape=False)` returned: 55,000 training images, a validation set made of the *first* 5,000
images of the training file, and 10,000 test images, each as float32 in `[0, 1]` with shape
`(n, 28, 28, 1)`, with one-hot float32 labels.

The files are read from, in this order: the `data_dir` argument; the folder named by the
`KERAS_BN_MNIST_DIR` environment variable; `keras.datasets.mnist.load_data()`, which downloads
`mnist.npz` once and caches it under `~/.keras/datasets/`. A folder may hold the four IDX files
of the MNIST site (plain or gzipped) or Keras's `mnist.npz`.
"""

from __future__ import annotations

import gzip
import io
import math
import os
import zipfile
import zlib
from typing import NamedTuple

import numpy as np

__all__ = [
    "MNIST",
    "MNIST_DIR_ENV",
    "DataSplit",
    "MNISTDownloadError",
    "MNISTError",
    "MNISTFormatError",
    "MNISTNotFoundError",
    "load_mnist",
    "read_idx",
]

MNIST_DIR_ENV = "KERAS_BN_MNIST_DIR"
"""Environment variable naming a folder with the MNIST files, read when `data_dir` is None."""

_IMAGE_SHAPE = (28, 28)
_NUM_CLASSES = 10
_UBYTE_CODE = 0x08
_IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions.
_LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension.
_GZIP_SIGNATURE = b"\x1f\x8b"
_IDX_DTYPE_NAMES = {
    0x08: "unsigned byte",
    0x09: "signed byte",
    0x0B: "short (2 bytes)",
    0x0C: "int (4 bytes)",
    0x0D: "float (4 bytes)",
    0x0E: "double (8 bytes)",
}
_IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_NPZ_FILE = "mnist.npz"
_NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
_DOWNLOAD_SOURCE = "keras.datasets.mnist.load_data()"
_HOW_TO_GET = (
    "Download train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
    "t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz from "
    "https://yann.lecun.com/exdb/mnist/ (or a mirror such as "
    "https://storage.googleapis.com/cvdf-datasets/mnist/) into one folder, then pass that "
    f"folder as `data_dir` or set the {MNIST_DIR_ENV} environment variable to it."
)
_OR_DOWNLOAD = "With neither set, load_mnist() downloads mnist.npz through Keras instead."


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


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Parses one IDX file of unsigned bytes, gzipped or not, into a NumPy array.

    The IDX format (used by the MNIST site) is a big-endian header followed by the data: two
    zero bytes, a dtype code (`0x08` for unsigned bytes, the only one MNIST uses and the only
    one read here), the number of dimensions `ndim`, then `ndim` unsigned 32-bit sizes. The
    magic number is the first four bytes as one integer: 2051 for MNIST images (`ndim = 3`),
    2049 for labels (`ndim = 1`). The data must hold exactly the product of the sizes in
    bytes. A gzipped file is recognised by its content, whatever its name.

    Args:
        path: the file to read, as a `str` or `os.PathLike`.

    Returns:
        A read-only `uint8` array of the shape the header declares, e.g. `(60000, 28, 28)` for
        the training images.

    Raises:
        MNISTNotFoundError: if `path` does not exist.
        MNISTError: if `path` cannot be read (no permission, a folder).
        MNISTFormatError: if the file is empty, is not a valid gzip stream, does not start with
            an IDX header, declares a dtype other than unsigned byte, or holds fewer or more
            data bytes than its header declares.

    Example:

    >>> import os, tempfile
    >>> import numpy as np
    >>> from keras_bn.notebook import read_idx
    >>> path = os.path.join(tempfile.mkdtemp(), "labels-idx1-ubyte")
    >>> with open(path, "wb") as f:
    ...     _ = f.write(bytes([0, 0, 0x08, 1]) + (3).to_bytes(4, "big") + bytes([7, 2, 1]))
    >>> read_idx(path)
    array([7, 2, 1], dtype=uint8)
    >>> os.remove(path)
    """
    return _read_idx(_abspath(path, "path"), expected_magic=None)


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
    (x_train, y_train), (x_test, y_test) = _load_raw(data_dir)
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


def _abspath(path, name):
    """Returns `path` as an absolute `str`, raising TypeError when it is not path-like."""
    try:
        return os.path.abspath(os.path.expanduser(os.fspath(path)))
    except TypeError:
        raise TypeError(
            f"{name} must be a str or os.PathLike. "
            f"Received: {name}={path!r} of type {type(path).__name__}"
        ) from None


def _load_raw(data_dir):
    """Returns `(x_train, y_train), (x_test, y_test)` as checked integer arrays."""
    if data_dir is not None:
        folder, origin = _abspath(data_dir, "data_dir"), "data_dir"
    elif os.environ.get(MNIST_DIR_ENV):
        folder = _abspath(os.environ[MNIST_DIR_ENV], MNIST_DIR_ENV)
        origin = f"the {MNIST_DIR_ENV} environment variable"
    else:
        return _download()

    if not os.path.exists(folder):
        raise MNISTNotFoundError(
            f"The MNIST folder {folder} (from {origin}) does not exist. {_HOW_TO_GET} "
            f"{_OR_DOWNLOAD} Received: {folder}"
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
        f"{_NPZ_FILE} either. {_HOW_TO_GET} "
        f"Received: a folder holding {listing or 'nothing'}"
    )


def _load_idx_folder(paths):
    """Reads and checks the four IDX files named in `paths` (keys of `_IDX_FILES`)."""
    arrays = {
        key: _read_idx(path, expected_magic=_IMAGES_MAGIC if "images" in key else _LABELS_MAGIC)
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
    raw = _read_bytes(path)
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
            f"files instead. {_HOW_TO_GET} "
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


def _read_bytes(path):
    """Returns the bytes of `path`, raising MNIST errors for missing, unreadable or empty files."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError as error:
        raise MNISTNotFoundError(
            f"The MNIST file {path} does not exist. {_HOW_TO_GET} Received: {path}"
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


def _describe_magic(magic):
    """Returns a readable name for an IDX magic number."""
    if magic == _IMAGES_MAGIC:
        return f"{magic} (an MNIST images file: unsigned bytes, 3 dimensions)"
    if magic == _LABELS_MAGIC:
        return f"{magic} (an MNIST labels file: unsigned bytes, 1 dimension)"
    return f"{magic} (unsigned bytes, {magic & 0xFF} dimensions)"


def _read_idx(path, expected_magic):
    """Parses the IDX file at absolute `path`, checking its magic when `expected_magic` is set."""
    raw = _read_bytes(path)
    if raw.startswith(_GZIP_SIGNATURE):
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as error:
            raise MNISTFormatError(
                f"The MNIST file {path} is not a valid gzip stream ({error}); it is corrupt "
                f"or was cut off while downloading. Download it again. Received: {len(raw)} "
                "compressed bytes"
            ) from error
        if not raw:
            raise MNISTFormatError(
                f"The MNIST file {path} decompresses to nothing. Download it again. "
                "Received: 0 bytes after gunzip"
            )
    if len(raw) < 4:
        raise MNISTFormatError(
            f"The MNIST file {path} is too short to hold an IDX header (4 bytes of magic "
            f"number, then the sizes). Received: {len(raw)} bytes {raw!r}"
        )
    if raw[0] != 0 or raw[1] != 0:
        raise MNISTFormatError(
            f"The MNIST file {path} is not an IDX file: its first two bytes must be zero. "
            f"Received: first four bytes {raw[:4].hex(' ')} (magic number "
            f"{int.from_bytes(raw[:4], 'big')})"
        )
    dtype_code, ndim = raw[2], raw[3]
    if dtype_code != _UBYTE_CODE:
        kind = _IDX_DTYPE_NAMES.get(dtype_code, "not a valid IDX dtype code")
        raise MNISTFormatError(
            f"The MNIST file {path} has an unsupported IDX dtype code: only 0x08 (unsigned "
            f"byte), the one MNIST uses, is read. Received: dtype code 0x{dtype_code:02X} "
            f"({kind})"
        )
    magic = int.from_bytes(raw[:4], "big")
    if expected_magic is not None and magic != expected_magic:
        raise MNISTFormatError(
            f"The MNIST file {path} has the wrong magic number: expected "
            f"{_describe_magic(expected_magic)}, got {_describe_magic(magic)}. Check that the "
            f"files are not swapped or renamed. Received: magic number {magic}"
        )
    header_size = 4 + 4 * ndim
    if len(raw) < header_size:
        raise MNISTFormatError(
            f"The MNIST file {path} is truncated inside its header: {ndim} dimensions need "
            f"{header_size} header bytes. Download it again. Received: {len(raw)} bytes"
        )
    shape = tuple(int(size) for size in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = math.prod(shape)
    found = len(raw) - header_size
    if found != expected:
        problem = (
            f"is truncated: {expected - found} data bytes are missing"
            if found < expected
            else f"has {found - expected} extra bytes after its data"
        )
        raise MNISTFormatError(
            f"The MNIST file {path} {problem}. Its header declares shape {shape}, which needs "
            f"{expected} data bytes, but {found} follow the header; the file is damaged or "
            f"not an MNIST file. Download it again. "
            f"Received: {found} data bytes, expected {expected}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header_size).reshape(shape)


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
    bad = np.flatnonzero((labels < 0) | (labels >= _NUM_CLASSES))
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
        return np.eye(_NUM_CLASSES, dtype=np.float32)[labels]
    return labels
