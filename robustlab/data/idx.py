"""Reader for the IDX format used by MNIST-like datasets (``*-ubyte`` files, optionally gzip-compressed)."""

from __future__ import annotations

import gzip
import os
import struct
import zlib

import numpy as np

from robustlab.errors import DatasetError

# IDX type code -> big-endian numpy dtype (http://yann.lecun.com/exdb/mnist/, "THE IDX FILE FORMAT").
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

_GZIP_MAGIC = b"\x1f\x8b"


def _read_bytes(path: str | os.PathLike) -> bytes:
    """The decompressed bytes of ``path``; gzip is detected by its magic number, not the file name."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise DatasetError(f"cannot read IDX file {os.fspath(path)}: {e.strerror or e}") from e
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as e:
        raise DatasetError(f"IDX file {os.fspath(path)} is not a valid gzip stream (truncated or corrupt): {e}") from e


def parse_idx(data: bytes, source: str = "<bytes>") -> np.ndarray:
    """Parse IDX ``data``; ``source`` names the file in error messages. Returns a native-endian array."""
    if len(data) < 4:
        raise DatasetError(f"IDX file {source} is truncated: {len(data)} bytes, too short for the 4-byte magic number")
    zero, code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0:
        raise DatasetError(f"IDX file {source} has a bad magic number 0x{data[:4].hex()} "
                           "(must start with two zero bytes); is it really an IDX file?")
    if code not in IDX_DTYPES:
        raise DatasetError(f"IDX file {source} has an unknown data type code 0x{code:02x} "
                           f"(known: {', '.join(f'0x{c:02x}' for c in IDX_DTYPES)})")
    if ndim == 0:
        raise DatasetError(f"IDX file {source} declares 0 dimensions")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetError(f"IDX file {source} is truncated: header needs {header} bytes, file has {len(data)}")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    dtype = IDX_DTYPES[code]
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    got = len(data) - header
    if got != expected:
        what = "truncated" if got < expected else "too long"
        raise DatasetError(f"IDX file {source} is {what}: dims {tuple(dims)} of {dtype.name} need "
                           f"{expected} payload bytes, found {got}")
    arr = np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)
    return arr.astype(dtype.newbyteorder("="), copy=True)


def read_idx(path: str | os.PathLike, ndim: int | None = None) -> np.ndarray:
    """Read an IDX file (gzip or plain) into a numpy array, checking ``ndim`` when given."""
    arr = parse_idx(_read_bytes(path), os.fspath(path))
    if ndim is not None and arr.ndim != ndim:
        raise DatasetError(f"IDX file {os.fspath(path)} has {arr.ndim} dimensions, expected {ndim}")
    return arr
