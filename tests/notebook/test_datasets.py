"""Tests for keras_bn.notebook's MNIST loader (`mnist`, `idx`): the MNIST loader, on tiny hand-made files and on the real ones."""

import gzip
import hashlib
import os
import re
import socket
import struct

import numpy as np
import pytest

from keras_bn.notebook import (
    MNIST,
    MNIST_DIR_ENV,
    DataSplit,
    MNISTDownloadError,
    MNISTError,
    MNISTFormatError,
    MNISTNotFoundError,
    load_mnist,
    read_idx,
)

TRAIN_IMAGES = "train-images-idx3-ubyte"
TRAIN_LABELS = "train-labels-idx1-ubyte"
TEST_IMAGES = "t10k-images-idx3-ubyte"
TEST_LABELS = "t10k-labels-idx1-ubyte"
N_TRAIN, N_TEST = 20, 6


# A tiny IDX writer, written from the format description and independent of the module.
def idx_bytes(array, *, dtype_code=0x08, prefix=b"\x00\x00", shape=None):
    """Returns the IDX encoding of a uint8 array (header fields overridable to break it)."""
    array = np.asarray(array, dtype=np.uint8)
    shape = array.shape if shape is None else shape
    header = prefix + struct.pack(">BB", dtype_code, len(shape))
    header += struct.pack(f">{len(shape)}I", *shape)
    return header + array.tobytes()


def write(path, data, *, gz=False):
    """Writes bytes to path, gzipped when gz is true; returns the path."""
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def make_arrays(seed=0, n_train=N_TRAIN, n_test=N_TEST):
    """Returns small random MNIST-like uint8 arrays that include the pixels 0 and 255."""
    rng = np.random.default_rng(seed)
    x_train = rng.integers(0, 256, size=(n_train, 28, 28), dtype=np.uint8)
    x_test = rng.integers(0, 256, size=(n_test, 28, 28), dtype=np.uint8)
    x_train[0, 0, 0], x_train[0, 0, 1] = 0, 255
    y_train = rng.permutation(np.arange(n_train) % 10).astype(np.uint8)
    y_test = (np.arange(n_test) % 10).astype(np.uint8)
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}


def write_idx_dir(folder, arrays, *, gz=False, skip=(), replace=None):
    """Writes the four IDX files for arrays into folder; replace maps a file name to raw bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    contents = {
        TRAIN_IMAGES: idx_bytes(arrays["x_train"]),
        TRAIN_LABELS: idx_bytes(arrays["y_train"]),
        TEST_IMAGES: idx_bytes(arrays["x_test"]),
        TEST_LABELS: idx_bytes(arrays["y_test"]),
    }
    contents.update(replace or {})
    paths = {}
    for name, data in contents.items():
        if name in skip:
            continue
        paths[name] = write(folder / (name + ".gz" if gz else name), data, gz=gz)
    return paths


@pytest.fixture
def arrays():
    return make_arrays()


@pytest.fixture
def idx_dir(tmp_path, arrays):
    folder = tmp_path / "mnist"
    write_idx_dir(folder, arrays)
    return folder


def in_message(path):
    """Returns a regex that matches the full path anywhere in an error message."""
    return re.escape(str(path))


# --- Valid data ---------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True])
def test_idx_folder_loads_splits_with_tf1_layout(tmp_path, arrays, gz):
    write_idx_dir(tmp_path, arrays, gz=gz)
    mnist = load_mnist(tmp_path, validation_size=5)
    assert isinstance(mnist, MNIST)
    assert all(isinstance(split, DataSplit) for split in mnist)
    assert mnist.train.images.shape == (N_TRAIN - 5, 28, 28, 1)
    assert mnist.validation.images.shape == (5, 28, 28, 1)
    assert mnist.test.images.shape == (N_TEST, 28, 28, 1)
    for split in mnist:
        assert split.images.dtype == np.float32
        assert split.labels.dtype == np.float32
        assert split.labels.shape == (len(split.images), 10)
        assert split.images.min() >= 0.0 and split.images.max() <= 1.0
    expected_train = arrays["x_train"].astype(np.float64)[..., None] / 255.0
    np.testing.assert_allclose(mnist.train.images, expected_train[5:], rtol=1e-6, atol=0)
    np.testing.assert_allclose(mnist.validation.images, expected_train[:5], rtol=1e-6, atol=0)
    np.testing.assert_allclose(
        mnist.test.images, arrays["x_test"][..., None] / 255.0, rtol=1e-6, atol=0
    )
    assert mnist.validation.images[0, 0, 0, 0] == 0.0
    assert mnist.validation.images[0, 0, 1, 0] == 1.0


def test_mixed_plain_and_gzipped_files(tmp_path, arrays):
    write_idx_dir(tmp_path, arrays, skip=(TRAIN_IMAGES, TEST_LABELS))
    write(tmp_path / (TRAIN_IMAGES + ".gz"), idx_bytes(arrays["x_train"]), gz=True)
    write(tmp_path / (TEST_LABELS + ".gz"), idx_bytes(arrays["y_test"]), gz=True)
    mnist = load_mnist(tmp_path, one_hot=False, validation_size=0)
    np.testing.assert_array_equal(mnist.train.labels, arrays["y_train"])
    np.testing.assert_array_equal(mnist.test.labels, arrays["y_test"])


def test_plain_file_wins_over_its_gz(idx_dir, arrays):
    write(idx_dir / (TRAIN_IMAGES + ".gz"), b"not even gzip")
    mnist = load_mnist(idx_dir, validation_size=0)
    assert mnist.train.images.shape == (N_TRAIN, 28, 28, 1)


def test_gzip_is_recognised_by_content_not_name(idx_dir, arrays):
    write(idx_dir / TRAIN_LABELS, idx_bytes(arrays["y_train"]), gz=True)
    labels = load_mnist(idx_dir, one_hot=False, validation_size=0).train.labels
    np.testing.assert_array_equal(labels, arrays["y_train"])


@pytest.mark.parametrize("validation_size", [0, 1, 7, N_TRAIN])
def test_validation_is_the_first_images_of_the_training_file(idx_dir, arrays, validation_size):
    mnist = load_mnist(idx_dir, one_hot=False, validation_size=validation_size)
    x = arrays["x_train"][..., None] / 255.0
    np.testing.assert_allclose(mnist.validation.images, x[:validation_size], rtol=1e-6)
    np.testing.assert_allclose(mnist.train.images, x[validation_size:], rtol=1e-6)
    np.testing.assert_array_equal(mnist.validation.labels, arrays["y_train"][:validation_size])
    np.testing.assert_array_equal(mnist.train.labels, arrays["y_train"][validation_size:])
    assert len(mnist.train.images) + len(mnist.validation.images) == N_TRAIN


def test_default_validation_size_is_5000(tmp_path):
    write_idx_dir(tmp_path, make_arrays(n_train=5003, n_test=2))
    mnist = load_mnist(tmp_path)
    assert len(mnist.validation.images) == 5000
    assert len(mnist.train.images) == 3


def test_one_hot_labels(idx_dir, arrays):
    labels = load_mnist(idx_dir, validation_size=0).train.labels
    expected = np.zeros((N_TRAIN, 10), dtype=np.float32)
    expected[np.arange(N_TRAIN), arrays["y_train"]] = 1.0
    assert labels.dtype == np.float32
    np.testing.assert_array_equal(labels, expected)


def test_integer_labels(idx_dir, arrays):
    mnist = load_mnist(idx_dir, one_hot=False, validation_size=3)
    for split in mnist:
        assert split.labels.dtype == np.int64
        assert split.labels.ndim == 1
    np.testing.assert_array_equal(mnist.test.labels, arrays["y_test"])


def test_npz_folder(tmp_path, arrays):
    np.savez(tmp_path / "mnist.npz", **arrays)
    mnist = load_mnist(tmp_path, one_hot=False, validation_size=4)
    np.testing.assert_array_equal(mnist.validation.labels, arrays["y_train"][:4])
    np.testing.assert_allclose(mnist.test.images, arrays["x_test"][..., None] / 255.0, rtol=1e-6)


def test_idx_files_win_over_npz(idx_dir, arrays):
    np.savez(idx_dir / "mnist.npz", **make_arrays(seed=1, n_train=3, n_test=3))
    mnist = load_mnist(idx_dir, one_hot=False, validation_size=0)
    np.testing.assert_array_equal(mnist.train.labels, arrays["y_train"])


def test_npz_used_when_idx_set_is_incomplete(tmp_path, arrays):
    write_idx_dir(tmp_path, make_arrays(seed=1), skip=(TEST_LABELS,))
    np.savez(tmp_path / "mnist.npz", **arrays)
    mnist = load_mnist(tmp_path, one_hot=False, validation_size=0)
    np.testing.assert_array_equal(mnist.train.labels, arrays["y_train"])


def test_str_and_pathlike_data_dir(idx_dir):
    from_str = load_mnist(str(idx_dir), validation_size=0)
    from_path = load_mnist(idx_dir, validation_size=0)
    np.testing.assert_array_equal(from_str.train.images, from_path.train.images)


def test_env_var_source(monkeypatch, idx_dir, arrays):
    monkeypatch.setenv(MNIST_DIR_ENV, str(idx_dir))
    mnist = load_mnist(one_hot=False, validation_size=0)
    np.testing.assert_array_equal(mnist.train.labels, arrays["y_train"])


def test_explicit_data_dir_beats_env_var(monkeypatch, tmp_path, arrays):
    write_idx_dir(tmp_path / "explicit", arrays)
    write_idx_dir(tmp_path / "from_env", make_arrays(seed=1, n_train=3, n_test=3))
    monkeypatch.setenv(MNIST_DIR_ENV, str(tmp_path / "from_env"))
    mnist = load_mnist(tmp_path / "explicit", one_hot=False, validation_size=0)
    np.testing.assert_array_equal(mnist.train.labels, arrays["y_train"])
    monkeypatch.setenv(MNIST_DIR_ENV, str(tmp_path / "missing"))
    assert len(load_mnist(tmp_path / "explicit", validation_size=0).train.images) == N_TRAIN


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx(tmp_path, gz):
    data = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = write(tmp_path / "x.idx", idx_bytes(data), gz=gz)
    out = read_idx(path)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, data)
    np.testing.assert_array_equal(read_idx(str(path)), data)


def test_exception_types():
    assert issubclass(MNISTNotFoundError, FileNotFoundError)
    assert issubclass(MNISTFormatError, ValueError)
    for cls in (MNISTNotFoundError, MNISTFormatError, MNISTDownloadError):
        assert issubclass(cls, MNISTError)
    assert issubclass(MNISTError, OSError)


# --- Folder errors ------------------------------------------------------------------------


def test_missing_folder(tmp_path):
    folder = tmp_path / "nowhere"
    with pytest.raises(MNISTNotFoundError, match=in_message(folder)) as info:
        load_mnist(folder)
    assert "does not exist" in str(info.value)
    assert MNIST_DIR_ENV in str(info.value)


def test_missing_folder_from_env_var_names_the_variable(monkeypatch, tmp_path):
    folder = tmp_path / "nowhere"
    monkeypatch.setenv(MNIST_DIR_ENV, str(folder))
    with pytest.raises(MNISTNotFoundError, match=in_message(folder)) as info:
        load_mnist()
    assert f"from the {MNIST_DIR_ENV} environment variable" in str(info.value)


def test_folder_is_a_file(tmp_path):
    path = write(tmp_path / "file", b"x")
    with pytest.raises(MNISTNotFoundError, match=in_message(path) + ".*is not a folder"):
        load_mnist(path)


def test_missing_files_are_listed_with_how_to_get_them(tmp_path, arrays):
    write_idx_dir(tmp_path, arrays, skip=(TEST_IMAGES, TRAIN_LABELS))
    with pytest.raises(MNISTNotFoundError, match=in_message(tmp_path)) as info:
        load_mnist(tmp_path)
    message = str(info.value)
    assert TEST_IMAGES in message and TRAIN_LABELS in message
    assert "lacks train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz] and" in message
    assert "lacks " + TRAIN_IMAGES not in message
    for hint in ("data_dir", MNIST_DIR_ENV, "yann.lecun.com", "mnist.npz", "Received:"):
        assert hint in message


def test_empty_folder(tmp_path):
    with pytest.raises(MNISTNotFoundError, match=in_message(tmp_path) + ".*lacks"):
        load_mnist(tmp_path)


def test_data_dir_of_wrong_type():
    with pytest.raises(TypeError, match="data_dir must be a str or os.PathLike. Received"):
        load_mnist(123)


# --- File errors --------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True])
def test_empty_file(tmp_path, arrays, gz):
    paths = write_idx_dir(tmp_path, arrays, gz=gz)
    path = paths[TRAIN_LABELS]
    path.write_bytes(b"")
    with pytest.raises(MNISTFormatError, match=in_message(path) + " is empty.*Received: 0 bytes"):
        load_mnist(tmp_path)


def test_gzip_of_nothing(tmp_path, arrays):
    paths = write_idx_dir(tmp_path, arrays, gz=True)
    write(paths[TEST_LABELS], b"", gz=True)
    with pytest.raises(MNISTFormatError, match=in_message(paths[TEST_LABELS])):
        load_mnist(tmp_path)


def test_folder_in_place_of_a_file_is_unreadable(tmp_path, arrays):
    write_idx_dir(tmp_path, arrays, skip=(TEST_IMAGES,))
    (tmp_path / TEST_IMAGES).mkdir()
    with pytest.raises(MNISTError, match=in_message(tmp_path / TEST_IMAGES) + " cannot be read"):
        load_mnist(tmp_path)
    with pytest.raises(MNISTError, match="cannot be read.*IsADirectoryError"):
        read_idx(tmp_path / TEST_IMAGES)


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0,
    reason="needs a POSIX user that file permissions apply to (root reads any file)",
)
def test_unreadable_file(idx_dir):
    path = idx_dir / TRAIN_IMAGES
    path.chmod(0)
    try:
        with pytest.raises(MNISTError, match=in_message(path) + " cannot be read.*Permission"):
            load_mnist(idx_dir)
    finally:
        path.chmod(0o644)


@pytest.mark.parametrize(
    "corrupt",
    [
        pytest.param(lambda data: b"\x1f\x8b" + b"definitely not deflate" * 3, id="garbage"),
        pytest.param(lambda data: gzip.compress(data)[:-30], id="truncated"),
        pytest.param(lambda data: gzip.compress(data)[:-4] + b"\x00\x00\x00\x00", id="bad-size"),
    ],
)
def test_corrupt_gzip(tmp_path, arrays, corrupt):
    paths = write_idx_dir(tmp_path, arrays, gz=True)
    path = paths[TRAIN_IMAGES]
    path.write_bytes(corrupt(idx_bytes(arrays["x_train"])))
    with pytest.raises(MNISTFormatError, match=in_message(path) + " is not a valid gzip stream"):
        load_mnist(tmp_path)


def test_missing_file_passed_to_read_idx(tmp_path):
    path = tmp_path / "absent"
    with pytest.raises(MNISTNotFoundError, match=in_message(path) + " does not exist"):
        read_idx(path)


@pytest.mark.parametrize(
    ("name", "got", "expected"),
    [(TRAIN_IMAGES, 2049, 2051), (TEST_LABELS, 2051, 2049)],
)
def test_swapped_files_have_wrong_magic(tmp_path, arrays, name, got, expected):
    swapped = {
        TRAIN_IMAGES: idx_bytes(arrays["y_train"]),
        TEST_LABELS: idx_bytes(arrays["x_test"]),
    }
    write_idx_dir(tmp_path, arrays, replace={name: swapped[name]})
    pattern = in_message(tmp_path / name) + f" has the wrong magic number: expected {expected}"
    with pytest.raises(MNISTFormatError, match=pattern) as info:
        load_mnist(tmp_path)
    assert f"got {got}" in str(info.value)
    assert "labels file" in str(info.value) and "images file" in str(info.value)
    assert f"Received: magic number {got}" in str(info.value)


def test_images_with_two_dimensions_have_wrong_magic(tmp_path, arrays):
    write_idx_dir(tmp_path, arrays, replace={TEST_IMAGES: idx_bytes(np.zeros((N_TEST, 784)))})
    with pytest.raises(MNISTFormatError, match=in_message(tmp_path / TEST_IMAGES) + ".*got 2050"):
        load_mnist(tmp_path)


def test_not_an_idx_file(tmp_path, arrays):
    data = idx_bytes(arrays["y_train"], prefix=b"PK")
    write_idx_dir(tmp_path, arrays, replace={TRAIN_LABELS: data})
    pattern = in_message(tmp_path / TRAIN_LABELS) + " is not an IDX file.*Received: first"
    with pytest.raises(MNISTFormatError, match=pattern):
        load_mnist(tmp_path)


@pytest.mark.parametrize(("code", "kind"), [(0x0D, "float"), (0x09, "signed byte"), (0x42, "not")])
def test_unsupported_dtype_code(tmp_path, arrays, code, kind):
    data = idx_bytes(arrays["x_test"], dtype_code=code)
    write_idx_dir(tmp_path, arrays, replace={TEST_IMAGES: data})
    pattern = in_message(tmp_path / TEST_IMAGES) + " has an unsupported IDX dtype code"
    with pytest.raises(MNISTFormatError, match=pattern) as info:
        load_mnist(tmp_path)
    assert f"Received: dtype code 0x{code:02X} ({kind}" in str(info.value)


@pytest.mark.parametrize("gz", [False, True])
def test_truncated_data(tmp_path, arrays, gz):
    data = idx_bytes(arrays["x_train"])[:-100]
    paths = write_idx_dir(tmp_path, arrays, gz=gz, replace={TRAIN_IMAGES: data})
    expected, found = N_TRAIN * 784, N_TRAIN * 784 - 100
    pattern = in_message(paths[TRAIN_IMAGES]) + " is truncated"
    with pytest.raises(MNISTFormatError, match=pattern) as info:
        load_mnist(tmp_path)
    assert f"Received: {found} data bytes, expected {expected}" in str(info.value)
    assert f"shape ({N_TRAIN}, 28, 28)" in str(info.value)


def test_header_claims_more_items_than_present(tmp_path, arrays):
    data = idx_bytes(arrays["y_test"], shape=(10000,))
    write_idx_dir(tmp_path, arrays, replace={TEST_LABELS: data})
    with pytest.raises(MNISTFormatError, match=in_message(tmp_path / TEST_LABELS)) as info:
        load_mnist(tmp_path)
    assert f"Received: {N_TEST} data bytes, expected 10000" in str(info.value)


@pytest.mark.parametrize("data", [b"\x00\x00\x08", b"\x00\x00\x08\x03" + b"\x00" * 8])
def test_truncated_header(tmp_path, data):
    path = write(tmp_path / "short-idx", data)
    pattern = in_message(path) + " is (too short|truncated inside)"
    with pytest.raises(MNISTFormatError, match=pattern):
        read_idx(path)


def test_trailing_bytes(tmp_path, arrays):
    data = idx_bytes(arrays["y_train"]) + b"\x01\x02\x03"
    write_idx_dir(tmp_path, arrays, replace={TRAIN_LABELS: data})
    pattern = in_message(tmp_path / TRAIN_LABELS) + " has 3 extra bytes after its data"
    with pytest.raises(MNISTFormatError, match=pattern) as info:
        load_mnist(tmp_path)
    assert f"Received: {N_TRAIN + 3} data bytes, expected {N_TRAIN}" in str(info.value)


def test_images_not_28_by_28(tmp_path, arrays):
    data = idx_bytes(np.zeros((N_TEST, 28, 27)))
    write_idx_dir(tmp_path, arrays, replace={TEST_IMAGES: data})
    pattern = in_message(tmp_path / TEST_IMAGES) + r" must have shape \(n, 28, 28\)"
    with pytest.raises(MNISTFormatError, match=pattern + r".*Received: shape \(6, 28, 27\)"):
        load_mnist(tmp_path)


def test_labels_outside_0_to_9(tmp_path, arrays):
    labels = arrays["y_train"].copy()
    labels[3] = 10
    write_idx_dir(tmp_path, arrays, replace={TRAIN_LABELS: idx_bytes(labels)})
    pattern = in_message(tmp_path / TRAIN_LABELS) + " must be digits 0..9"
    with pytest.raises(MNISTFormatError, match=pattern + ".*index 3.*Received: label 10"):
        load_mnist(tmp_path)


@pytest.mark.parametrize(
    ("images", "labels"), [(TRAIN_IMAGES, TRAIN_LABELS), (TEST_IMAGES, TEST_LABELS)]
)
def test_image_and_label_counts_disagree(tmp_path, arrays, images, labels):
    key = "y_train" if labels == TRAIN_LABELS else "y_test"
    write_idx_dir(tmp_path, arrays, replace={labels: idx_bytes(arrays[key][:-1])})
    with pytest.raises(MNISTFormatError, match="disagree in number") as info:
        load_mnist(tmp_path)
    message = str(info.value)
    assert str(tmp_path / images) in message and str(tmp_path / labels) in message
    n = len(arrays[key])
    assert f"Received: {n} images, {n - 1} labels" in message


# --- npz errors ---------------------------------------------------------------------------


def test_npz_missing_keys(tmp_path, arrays):
    path = tmp_path / "mnist.npz"
    np.savez(path, x_train=arrays["x_train"], y_train=arrays["y_train"], x_test=arrays["x_test"])
    with pytest.raises(MNISTFormatError, match=in_message(path) + " lacks the key.*y_test"):
        load_mnist(tmp_path)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("x_train", np.zeros((N_TRAIN, 784), np.uint8), r"must have shape \(n, 28, 28\)"),
        ("x_test", np.zeros((N_TEST, 28, 28), np.float32), "must be integers in 0..255"),
        ("x_test", np.full((N_TEST, 28, 28), 256, np.int32), "must be integers in 0..255"),
        ("y_train", np.zeros((N_TRAIN, 10), np.uint8), r"must be integers of shape \(n,\)"),
        ("y_test", np.full(N_TEST, -1, np.int64), "must be digits 0..9"),
        ("y_train", np.zeros(N_TRAIN + 1, np.uint8), "disagree in number"),
    ],
)
def test_npz_wrong_content(tmp_path, arrays, key, value, message):
    path = tmp_path / "mnist.npz"
    np.savez(path, **{**arrays, key: value})
    with pytest.raises(MNISTFormatError, match=message) as info:
        load_mnist(tmp_path)
    assert f"{path} [{key}]" in str(info.value)


def test_npz_with_integer_images_in_range_loads(tmp_path, arrays):
    np.savez(tmp_path / "mnist.npz", **{**arrays, "x_train": arrays["x_train"].astype(np.int64)})
    images = load_mnist(tmp_path, validation_size=0).train.images
    np.testing.assert_allclose(images, arrays["x_train"][..., None] / 255.0, rtol=1e-6)


@pytest.mark.parametrize("data", [b"", b"this is no zip archive", b"PK\x03\x04broken"])
def test_corrupt_npz(tmp_path, data):
    path = write(tmp_path / "mnist.npz", data)
    with pytest.raises(MNISTFormatError, match=in_message(path)):
        load_mnist(tmp_path)


def test_npz_holding_a_single_array(tmp_path):
    path = tmp_path / "mnist.npz"
    with open(path, "wb") as f:
        np.save(f, np.zeros(3))
    with pytest.raises(MNISTFormatError, match=in_message(path) + " holds a single array"):
        load_mnist(tmp_path)


# --- validation_size ----------------------------------------------------------------------


@pytest.mark.parametrize("validation_size", [-1, N_TRAIN + 1, 2.0, True, "5", None])
def test_bad_validation_size(idx_dir, validation_size):
    with pytest.raises(ValueError, match=r"validation_size must be an int in \[0, .*Received"):
        load_mnist(idx_dir, validation_size=validation_size)


def test_validation_size_bound_names_the_training_count(idx_dir):
    with pytest.raises(ValueError, match=rf"\[0, {N_TRAIN}\].*validation_size={N_TRAIN + 1}"):
        load_mnist(idx_dir, validation_size=N_TRAIN + 1)


def test_numpy_integer_validation_size(idx_dir):
    assert len(load_mnist(idx_dir, validation_size=np.int64(2)).validation.images) == 2


def test_bad_validation_size_fails_before_any_download(monkeypatch):
    monkeypatch.delenv(MNIST_DIR_ENV, raising=False)
    with pytest.raises(ValueError, match="validation_size"):
        load_mnist(validation_size=-5)


# --- Keras download fallback --------------------------------------------------------------


def test_failed_download_is_a_clear_error(monkeypatch, tmp_path):
    from keras.src.backend import config as keras_config

    # An empty Keras home, so no cached mnist.npz is found. Keras reads KERAS_HOME when it is
    # imported, so the already-computed location is pointed there too.
    monkeypatch.delenv(MNIST_DIR_ENV, raising=False)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    if hasattr(keras_config, "_KERAS_DIR"):
        monkeypatch.setattr(keras_config, "_KERAS_DIR", str(tmp_path))

    # Name resolution fails, as on a machine without internet, so that the real
    # keras.datasets.mnist.load_data() fails fast and no test ever downloads.
    def no_dns(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known (blocked by test)")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    with pytest.raises(MNISTDownloadError, match="keras.datasets.mnist.load_data()") as info:
        load_mnist()
    message = str(info.value)
    assert "data_dir" in message and MNIST_DIR_ENV in message and "Received:" in message
    assert info.value.__cause__ is not None
    assert isinstance(info.value, OSError)
    assert not (tmp_path / "datasets" / "mnist.npz").exists()


# --- Real MNIST ---------------------------------------------------------------------------

README_SHA256 = {
    TRAIN_IMAGES: "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    TRAIN_LABELS: "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    TEST_IMAGES: "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    TEST_LABELS: "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def read_raw(folder, name):
    """Returns the uncompressed bytes of a real MNIST file, plain or gzipped."""
    plain = folder / name
    if plain.exists():
        return plain.read_bytes()
    return gzip.decompress((folder / (name + ".gz")).read_bytes())


@pytest.mark.mnist
def test_real_mnist(mnist_dir):
    raw = {name: read_raw(mnist_dir, name) for name in README_SHA256}
    for name, data in raw.items():
        assert hashlib.sha256(data).hexdigest() == README_SHA256[name], name
    train_pixels = np.frombuffer(raw[TRAIN_IMAGES], np.uint8, offset=16).reshape(60000, 28, 28)

    mnist = load_mnist(mnist_dir, one_hot=True)
    assert mnist.train.images.shape == (55000, 28, 28, 1)
    assert mnist.validation.images.shape == (5000, 28, 28, 1)
    assert mnist.test.images.shape == (10000, 28, 28, 1)
    assert mnist.train.labels.shape == (55000, 10)
    for split in mnist:
        assert split.images.dtype == np.float32 and split.labels.dtype == np.float32
        assert split.images.min() == 0.0 and split.images.max() == 1.0

    all_train = np.concatenate([mnist.validation.labels, mnist.train.labels]).argmax(axis=1)
    np.testing.assert_array_equal(np.bincount(all_train, minlength=10), TRAIN_COUNTS)
    test_labels = mnist.test.labels.argmax(axis=1)
    np.testing.assert_array_equal(np.bincount(test_labels, minlength=10), TEST_COUNTS)

    np.testing.assert_allclose(
        mnist.validation.images[..., 0], train_pixels[:5000] / 255.0, rtol=1e-6, atol=0
    )
    np.testing.assert_array_equal(
        mnist.validation.labels.argmax(axis=1),
        np.frombuffer(raw[TRAIN_LABELS], np.uint8, offset=8)[:5000],
    )
    np.testing.assert_allclose(
        mnist.train.images[:3, ..., 0], train_pixels[5000:5003] / 255.0, rtol=1e-6, atol=0
    )

    integer = load_mnist(mnist_dir, one_hot=False)
    assert integer.test.labels.dtype == np.int64
    np.testing.assert_array_equal(integer.test.labels, test_labels)


@pytest.mark.mnist
def test_real_mnist_from_env_var(monkeypatch, mnist_dir):
    monkeypatch.setenv(MNIST_DIR_ENV, str(mnist_dir))
    mnist = load_mnist(one_hot=False, validation_size=0)
    assert mnist.train.labels.shape == (60000,)
    np.testing.assert_array_equal(np.bincount(mnist.train.labels, minlength=10), TRAIN_COUNTS)


@pytest.mark.parametrize("name", ["MNISTError", "MNISTNotFoundError", "MNISTFormatError",
                                  "MNISTDownloadError"])
def test_the_error_classes_left_the_top_level_with_a_deprecation_path(name):
    import keras_bn
    import keras_bn.notebook

    assert name not in keras_bn.__all__
    assert name in keras_bn.notebook.__all__
    with pytest.warns(DeprecationWarning, match=rf"`keras_bn.{name}` moved to `keras_bn.notebook.{name}`"):
        moved = getattr(keras_bn, name)
    assert moved is getattr(keras_bn.notebook, name)
