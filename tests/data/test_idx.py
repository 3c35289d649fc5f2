"""IDX reader: exact round trips of hand-written files, and every way a file can be bad."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from nettrain.data.idx import read_idx
from nettrain.errors import DataError


def idx_bytes(array: np.ndarray, code: int, big_endian_dtype: str) -> bytes:
    """An IDX file written by hand from the specification, independent of the reader."""
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(big_endian_dtype).tobytes()


def write(path: Path, data: bytes, *, compress: bool = False) -> Path:
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


@pytest.fixture
def images() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(7, 5, 3), dtype=np.uint8)


@pytest.mark.parametrize("compress", [False, True])
def test_uint8_images_round_trip_exactly(tmp_path: Path, images: np.ndarray, compress: bool):
    path = write(tmp_path / "images", idx_bytes(images, 0x08, "u1"), compress=compress)
    out = read_idx(path)
    assert out.dtype == np.uint8
    assert out.shape == (7, 5, 3)
    np.testing.assert_array_equal(out, images)
    assert out.flags.writeable


@pytest.mark.parametrize("compress", [False, True])
def test_uint8_labels_round_trip_exactly(tmp_path: Path, compress: bool):
    labels = np.array([9, 0, 0, 3, 255, 7], dtype=np.uint8)
    path = write(tmp_path / "labels.gz", idx_bytes(labels, 0x08, "u1"), compress=compress)
    np.testing.assert_array_equal(read_idx(str(path)), labels)


@pytest.mark.parametrize(
    ("code", "stored", "values"),
    [
        (0x09, "i1", [-128, -1, 0, 127]),
        (0x0B, ">i2", [-32768, -2, 1, 32767]),
        (0x0C, ">i4", [-(2**31), -2, 70000, 2**31 - 1]),
        (0x0D, ">f4", [-1.5, 0.0, 3.25, 1e30]),
        (0x0E, ">f8", [-1.5, 0.1, 3.25, 1e300]),
    ],
)
def test_multibyte_dtypes_are_big_endian_and_returned_native(
    tmp_path: Path, code: int, stored: str, values: list[float]
):
    array = np.array(values, dtype=stored).reshape(2, 2)
    out = read_idx(write(tmp_path / "f", idx_bytes(array, code, stored)))
    assert out.dtype.isnative
    np.testing.assert_array_equal(out, array)


def test_truncated_file_raises(tmp_path: Path, images: np.ndarray):
    data = idx_bytes(images, 0x08, "u1")
    with pytest.raises(DataError, match="truncated"):
        read_idx(write(tmp_path / "short", data[:-1]))


@pytest.mark.parametrize("n_bytes", [0, 3, 9])
def test_truncated_header_raises(tmp_path: Path, images: np.ndarray, n_bytes: int):
    data = idx_bytes(images, 0x08, "u1")
    with pytest.raises(DataError, match="truncated"):
        read_idx(write(tmp_path / "short", data[:n_bytes]))


def test_trailing_bytes_raise(tmp_path: Path, images: np.ndarray):
    data = idx_bytes(images, 0x08, "u1") + b"\x00"
    with pytest.raises(DataError, match="trailing"):
        read_idx(write(tmp_path / "long", data))


@pytest.mark.parametrize("magic", [b"\x01\x00\x08\x03", b"\x00\x00\x07\x03", b"\x00\x00\x08\x00"])
def test_wrong_magic_raises(tmp_path: Path, images: np.ndarray, magic: bytes):
    data = magic + idx_bytes(images, 0x08, "u1")[4:]
    with pytest.raises(DataError, match="not an IDX file"):
        read_idx(write(tmp_path / "bad", data))


def test_truncated_gzip_raises(tmp_path: Path, images: np.ndarray):
    data = gzip.compress(idx_bytes(images, 0x08, "u1"))
    with pytest.raises(DataError, match="gzip"):
        read_idx(write(tmp_path / "bad.gz", data[: len(data) // 2]))


def test_missing_file_raises(tmp_path: Path):
    with pytest.raises(DataError, match="cannot read"):
        read_idx(tmp_path / "absent")
