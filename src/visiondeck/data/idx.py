"""Reader and writer for the IDX format (MNIST, Fashion-MNIST and friends).

IDX is the only container those data sets ship in, and parsing it is a few lines of
`struct`, so VisionDeck reads it itself instead of pulling in a deep-learning library for
it. The reader is strict on purpose: a truncated download or a file with trailing junk is
far more often a sign of corruption than a format variant, so every mismatch between the
header and the payload is reported as a `DataError` rather than silently reshaped.

Layout (all integers big-endian)::

    0x00 0x00 <dtype code> <ndim>   uint32 dim_0 ... uint32 dim_{ndim-1}   payload

Files may be gzip-compressed; compression is detected from the content (magic bytes
``1f 8b``), never from the file name, because mirrors and distributions rename and
re-compress freely.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from visiondeck._files import atomic_write_bytes
from visiondeck.errors import DataError

__all__ = [
    "IDX_DTYPES",
    "read_idx",
    "read_idx_bytes",
    "write_idx",
]

#: IDX dtype code -> big-endian numpy dtype
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

# numpy (kind, itemsize) -> IDX dtype code; byte order is normalised on write.
_CODES: dict[tuple[str, int], int] = {
    (dt.kind, dt.itemsize): code for code, dt in IDX_DTYPES.items()
}

_GZIP_MAGIC = b"\x1f\x8b"


def _describe(source: str | os.PathLike[str] | bytes) -> str:
    if isinstance(source, bytes | bytearray | memoryview):
        return f"<{len(source)} bytes>"
    return str(source)


def read_idx_bytes(source: str | os.PathLike[str] | bytes) -> bytes:
    """Return the raw (decompressed) IDX bytes of a file or buffer.

    Exposed separately from `read_idx` so callers that must checksum the content (the
    built-in data sets verify digests of the *decompressed* files, which stay stable when
    a distribution re-gzips them) can decompress once, hash, then parse the same bytes.
    """
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
    else:
        try:
            data = Path(source).read_bytes()
        except FileNotFoundError:
            raise DataError(
                f"IDX file not found: {source}", hint="Check the path and try again."
            ) from None
        except OSError as exc:
            raise DataError(f"Cannot read IDX file {source}: {exc}") from exc
    if data[:2] == _GZIP_MAGIC:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise DataError(
                f"{_describe(source)} looks gzip-compressed but cannot be decompressed: {exc}",
                hint="The file is probably truncated or corrupt; fetch it again.",
            ) from exc
    return data


def read_idx(source: str | os.PathLike[str] | bytes) -> np.ndarray:
    """Read an IDX file (plain or gzip) into a native-byte-order numpy array.

    The result is always a fresh, writable array in native byte order: a read-only view
    on the file buffer, or a big-endian dtype, would surprise downstream code that
    augments in place or hands the array to C extensions.
    """
    data = read_idx_bytes(source)
    name = _describe(source)
    if len(data) < 4:
        raise DataError(
            f"{name} is too short to be an IDX file ({len(data)} bytes).",
            hint="The file is probably truncated; fetch it again.",
        )
    zero0, zero1, code, ndim = data[0], data[1], data[2], data[3]
    if zero0 != 0 or zero1 != 0:
        raise DataError(
            f"{name} is not an IDX file: bad magic number {data[:4].hex()} "
            "(the first two bytes must be zero).",
            hint="Check that you passed an IDX (…-idx3-ubyte) file, not an image or archive.",
        )
    dtype = IDX_DTYPES.get(code)
    if dtype is None:
        known = ", ".join(f"0x{c:02X}" for c in IDX_DTYPES)
        raise DataError(f"{name} has an unknown IDX dtype code 0x{code:02X} (known: {known}).")
    if ndim == 0:
        raise DataError(f"{name} declares zero dimensions; an IDX array needs at least one.")
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise DataError(
            f"{name} is truncated inside its header: {ndim} dimensions need {header_len} "
            f"header bytes but the file has {len(data)}.",
            hint="The file is probably truncated; fetch it again.",
        )
    dims = struct.unpack(f">{ndim}I", data[4:header_len])
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    actual = len(data) - header_len
    if actual != expected:
        shape = "×".join(str(d) for d in dims)
        what = "truncated" if actual < expected else "followed by trailing bytes"
        raise DataError(
            f"{name} is {what}: a {shape} {dtype.name} array needs {expected} payload bytes "
            f"but the file has {actual}.",
            hint="The file is probably corrupt or incomplete; fetch it again.",
        )
    array = np.frombuffer(data, dtype=dtype, offset=header_len).reshape(dims)
    return array.astype(dtype.newbyteorder("="))


def _gzip_bytes(data: bytes, level: int) -> bytes:
    # A hand-built member header (mtime 0, no name, OS byte 255 "unknown") instead of
    # zlib's own, whose OS byte depends on the platform zlib was built for.
    xfl = 2 if level == 9 else 4 if level == 1 else 0
    header = struct.pack("<BBBBIBB", 0x1F, 0x8B, 8, 0, 0, xfl, 255)
    body = zlib.compress(data, level=level, wbits=-15)
    return header + body + struct.pack("<II", zlib.crc32(data), len(data) & 0xFFFFFFFF)


def write_idx(
    array: np.ndarray,
    path: str | os.PathLike[str],
    *,
    compress: bool | None = None,
    compresslevel: int = 9,
) -> Path:
    """Write `array` as an IDX file, gzip-compressed when `path` ends in ``.gz``.

    The gzip header carries mtime 0 and no file name so that the same array always gives
    the same bytes with the same zlib (the bundled sample is regenerated and compared byte
    for byte). The
    file is written to a temporary name and renamed, so a reader never sees half a file.
    `compress` overrides the suffix rule.
    """
    arr = np.asarray(array)
    target = Path(path)
    code = _CODES.get((arr.dtype.kind, arr.dtype.itemsize))
    if code is None:
        raise DataError(
            f"IDX cannot store dtype {arr.dtype}.",
            hint="Cast first, e.g. array.astype(np.int32); IDX holds uint8, int8, int16, "
            "int32, float32 and float64.",
        )
    if arr.ndim == 0 or arr.ndim > 255:
        raise DataError(f"IDX stores arrays with 1 to 255 dimensions, got {arr.ndim}.")
    if any(d > 0xFFFFFFFF for d in arr.shape):
        raise DataError(f"IDX dimensions must fit in 32 bits, got shape {arr.shape}.")
    header = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    payload = np.ascontiguousarray(arr, dtype=IDX_DTYPES[code]).tobytes()
    data = header + payload
    if compress is None:
        compress = target.name.endswith(".gz")
    if compress:
        data = _gzip_bytes(data, compresslevel)
    try:
        atomic_write_bytes(target, data)
    except OSError as exc:
        raise DataError(f"Cannot write IDX file {target}: {exc}") from exc
    return target
