"""Reader for IDX files, the array format of MNIST and Fashion-MNIST.

An IDX file is a big-endian header followed by the raw array, in C order::

    magic   4 bytes   0x00 0x00 <dtype code> <ndim>
    dims    ndim x 4 bytes, unsigned big-endian int32 each
    data    prod(dims) items of the dtype, big-endian

Dtype codes (LeCun's specification): 0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32,
0x0D float32, 0x0E float64. Image files of (Fashion-)MNIST are ``0x00000803``
(uint8, 3 dims: n, rows, cols) and label files ``0x00000801`` (uint8, 1 dim: n).

Files may be gzip-compressed (as Debian's ``dataset-fashion-mnist`` installs them);
compression is recognised by the gzip magic bytes, whatever the file name.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np

from nettrain.errors import DataError

__all__ = ["read_idx"]

_GZIP_MAGIC = b"\x1f\x8b"

# dtype code -> big-endian dtype as stored in the file
_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (plain or gzip-compressed) into a writable numpy array.

    The array has the file's shape and a native-endian dtype (``uint8`` for
    (Fashion-)MNIST). Decoding is one ``np.frombuffer`` over the payload, so 60000
    images of 28 x 28 take well under a second.

    Raises:
        DataError: the file cannot be read, is not valid gzip, has a wrong magic
            number, or its size disagrees with the dimensions in its header
            (truncated or with trailing bytes).
    """
    path = Path(path)
    return _parse(_read_bytes(path), path)


def _read_bytes(path: Path) -> bytes:
    """The file's content, decompressed when it starts with the gzip magic bytes."""
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise DataError(f"cannot read IDX file {path}: {err}") from err
    if not raw.startswith(_GZIP_MAGIC):
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(
            f"IDX file {path} is a corrupt or truncated gzip file ({err}); "
            "delete it and install or copy it again"
        ) from err


def _parse(raw: bytes, path: Path) -> np.ndarray:
    """Decode header and payload of an uncompressed IDX byte string."""
    dtype, shape = _parse_header(raw, path)
    offset = 4 + 4 * len(shape)
    expected = math.prod(shape) * dtype.itemsize
    actual = len(raw) - offset
    if actual != expected:
        problem = "truncated" if actual < expected else "has trailing bytes"
        raise DataError(
            f"IDX file {path} is {problem}: header says shape {shape} ({expected} bytes of "
            f"data) but the file holds {max(actual, 0)}; the file is corrupt, "
            "install or copy it again"
        )
    data = np.frombuffer(raw, dtype=dtype, count=math.prod(shape), offset=offset)
    return data.reshape(shape).astype(dtype.newbyteorder("="))  # astype copies: writable


def _parse_header(raw: bytes, path: Path) -> tuple[np.dtype, tuple[int, ...]]:
    """Check the magic number and return (dtype, shape) from the header."""
    if len(raw) < 4:
        raise DataError(f"IDX file {path} is truncated: {len(raw)} bytes, no complete header")
    zero0, zero1, code, ndim = raw[:4]
    if zero0 != 0 or zero1 != 0 or code not in _DTYPES or ndim == 0:
        magic = int.from_bytes(raw[:4], "big")
        raise DataError(
            f"{path} is not an IDX file: magic number 0x{magic:08X}, expected 0x0000TTNN "
            f"with a dtype code TT in {{{', '.join(f'{c:02X}' for c in _DTYPES)}}} and "
            "NN >= 1 dimensions (0x00000803 for images, 0x00000801 for labels)"
        )
    if len(raw) < 4 + 4 * ndim:
        raise DataError(f"IDX file {path} is truncated inside its header ({len(raw)} bytes)")
    shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    return _DTYPES[code], tuple(int(d) for d in shape)
