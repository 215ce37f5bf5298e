"""The IDX format of the MNIST site: `read_idx` reads one file, gzipped or not, and checks it.

An IDX file is a big-endian header, then the data: two zero bytes, a dtype code, the
number of dimensions `ndim`, then `ndim` unsigned 32-bit sizes. MNIST uses unsigned bytes
only (dtype code `0x08`), with magic numbers 2051 (images, 3 dimensions) and 2049 (labels,
1 dimension). `read_idx_file` is the same reader that also checks the magic number, for
`load_mnist`, which knows which file holds images and which labels.
"""

from __future__ import annotations

import gzip
import math
import os
import zlib

import numpy as np

from keras_bn.notebook.errors import MNISTFormatError, as_path, read_bytes

__all__ = ["read_idx"]

IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions.
LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension.
_UBYTE_CODE = 0x08
_GZIP_SIGNATURE = b"\x1f\x8b"
_IDX_DTYPE_NAMES = {
    0x08: "unsigned byte",
    0x09: "signed byte",
    0x0B: "short (2 bytes)",
    0x0C: "int (4 bytes)",
    0x0D: "float (4 bytes)",
    0x0E: "double (8 bytes)",
}


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
    return read_idx_file(as_path(path, "path"), expected_magic=None)


def read_idx_file(path, expected_magic):
    """Parses the IDX file at absolute `path`, checking its magic when `expected_magic` is set."""
    raw = _gunzipped(read_bytes(path), path)
    shape, header_size = _header(raw, path, expected_magic)
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


def _gunzipped(raw, path):
    """Returns `raw` decompressed when it starts as gzip does (whatever the file's name)."""
    if not raw.startswith(_GZIP_SIGNATURE):
        return raw
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
    return raw


def _header(raw, path, expected_magic):
    """Returns `(shape, header size)` read from the IDX header of `raw`, raising for a bad one."""
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
    return shape, header_size


def _describe_magic(magic):
    """Returns a readable name for an IDX magic number."""
    if magic == IMAGES_MAGIC:
        return f"{magic} (an MNIST images file: unsigned bytes, 3 dimensions)"
    if magic == LABELS_MAGIC:
        return f"{magic} (an MNIST labels file: unsigned bytes, 1 dimension)"
    return f"{magic} (unsigned bytes, {magic & 0xFF} dimensions)"
