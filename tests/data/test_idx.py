"""IDX reader/writer: round trips, byte-reproducible gzip, and every malformed-file case."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from visiondeck.data.idx import read_idx, read_idx_bytes, write_idx
from visiondeck.errors import DataError

DTYPES = [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64]
SHAPES = [(7,), (3, 5), (2, 3, 4), (2, 1, 3, 2), (0, 4)]


def _array(dtype: type, shape: tuple[int, ...]) -> np.ndarray:
    rng = np.random.default_rng(0)
    info = np.iinfo(dtype) if np.issubdtype(dtype, np.integer) else None
    if info is not None:
        return rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)
    return rng.normal(scale=1e3, size=shape).astype(dtype)


def _idx(code: int, dims: tuple[int, ...], payload: bytes) -> bytes:
    return bytes([0, 0, code, len(dims)]) + struct.pack(f">{len(dims)}I", *dims) + payload


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_round_trip(tmp_path: Path, dtype: type, shape: tuple[int, ...], suffix: str) -> None:
    original = _array(dtype, shape)
    path = write_idx(original, tmp_path / f"a-idx{suffix}")
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == bool(suffix)
    back = read_idx(path)
    assert back.dtype == np.dtype(dtype) and back.dtype.isnative
    assert back.shape == shape
    np.testing.assert_array_equal(back, original)
    back[...] = 0  # the caller owns a writable copy
    assert list(tmp_path.iterdir()) == [path]  # no temp file left behind


def test_big_endian_layout_matches_the_format(tmp_path: Path) -> None:
    path = write_idx(np.array([1, 256, -2], dtype=np.int16), tmp_path / "s.idx")
    assert path.read_bytes() == bytes([0, 0, 0x0B, 1, 0, 0, 0, 3]) + b"\x00\x01\x01\x00\xff\xfe"


def test_reads_real_header_style_and_bytes_input() -> None:
    data = _idx(0x08, (2, 2, 2), bytes(range(8)))
    np.testing.assert_array_equal(read_idx(data), np.arange(8, dtype=np.uint8).reshape(2, 2, 2))
    np.testing.assert_array_equal(read_idx(gzip.compress(data)), read_idx(data))


def test_compression_is_detected_by_content_not_name(tmp_path: Path) -> None:
    arr = _array(np.int32, (4, 4))
    gz_plain_name = write_idx(arr, tmp_path / "x-idx2-int", compress=True)
    plain_gz_name = write_idx(arr, tmp_path / "y-idx2-int.gz", compress=False)
    assert gz_plain_name.read_bytes()[:2] == b"\x1f\x8b"
    assert plain_gz_name.read_bytes()[:2] == b"\x00\x00"
    np.testing.assert_array_equal(read_idx(gz_plain_name), arr)
    np.testing.assert_array_equal(read_idx(plain_gz_name), arr)
    assert read_idx_bytes(gz_plain_name) == plain_gz_name.read_bytes()


def test_gzip_output_is_byte_reproducible(tmp_path: Path) -> None:
    arr = _array(np.uint8, (10, 28, 28))
    first = write_idx(arr, tmp_path / "one.gz").read_bytes()
    second = write_idx(arr, tmp_path / "other-name.gz").read_bytes()
    assert first == second
    assert first[3] == 0  # no FNAME/FEXTRA flags: the file name is not embedded
    assert first[4:8] == b"\x00\x00\x00\x00"  # mtime 0
    assert gzip.decompress(first)[:4] == bytes([0, 0, 0x08, 3])


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x00\x00\x08", "too short"),
        (b"\x00\x01\x08\x01" + b"\x00\x00\x00\x01" + b"\x00", "bad magic"),
        (b"\x12\x34\x08\x01" + b"\x00\x00\x00\x01" + b"\x00", "bad magic"),
        (_idx(0x0A, (1,), b"\x00"), "unknown IDX dtype code 0x0A"),
        (bytes([0, 0, 0x08, 0]), "zero dimensions"),
        (bytes([0, 0, 0x08, 3]) + b"\x00\x00\x00\x02", "truncated inside its header"),
        (_idx(0x08, (2, 3), bytes(5)), "truncated"),
        (_idx(0x0B, (2, 3), bytes(11)), "needs 12 payload bytes but the file has 11"),
        (_idx(0x08, (2, 3), bytes(7)), "trailing bytes"),
        (gzip.compress(_idx(0x08, (4,), bytes(4)))[:-6], "cannot be decompressed"),
        (b"\x1f\x8b" + b"not really gzip at all", "cannot be decompressed"),
    ],
)
def test_malformed_inputs_raise_data_error(tmp_path: Path, data: bytes, message: str) -> None:
    with pytest.raises(DataError, match=message):
        read_idx(data)
    path = tmp_path / "bad-idx"
    path.write_bytes(data)
    with pytest.raises(DataError, match=message) as info:
        read_idx(path)
    assert str(path) in str(info.value)  # the message names the file


def test_missing_file_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        read_idx(tmp_path / "nope-idx3-ubyte.gz")


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros(3, dtype=np.int64), "cannot store dtype int64"),
        (np.zeros(3, dtype=bool), "cannot store dtype bool"),
        (np.zeros(3, dtype=np.uint16), "cannot store dtype uint16"),
        (np.array(5, dtype=np.uint8), "1 to 255 dimensions"),
    ],
)
def test_write_rejects_what_idx_cannot_hold(
    tmp_path: Path, array: np.ndarray, message: str
) -> None:
    with pytest.raises(DataError, match=message):
        write_idx(array, tmp_path / "x.idx")
    assert not list(tmp_path.iterdir())


def test_write_normalises_byte_order(tmp_path: Path) -> None:
    little = np.arange(6, dtype="<i4").reshape(2, 3)
    big = little.astype(">i4")
    assert (
        write_idx(little, tmp_path / "a").read_bytes()
        == write_idx(big, tmp_path / "b").read_bytes()
    )
