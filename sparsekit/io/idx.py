"""The IDX file format (MNIST, Fashion-MNIST): a reader that trusts no header.

An IDX file is a 4-byte magic number (two zero bytes, a type byte, the number of dimensions),
one big-endian uint32 per dimension, then the values in C order; files are often gzip-compressed.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np

__all__ = ["read_idx"]

# IDX type byte -> big-endian dtype, the format's own table.
_IDX_DTYPES = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"),
               0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file, plain or gzip-compressed, checking its header against its size.

    Raises
    ------
    ValueError
        The file is corrupt or truncated; the message names it.
    """
    path = Path(path)
    with open(path, "rb") as raw:  # outside the try: a missing file stays FileNotFoundError
        is_gz = raw.read(2) == b"\x1f\x8b"
        size = raw.seek(0, os.SEEK_END)
        raw.seek(max(size - 4, 0))
        isize = int.from_bytes(raw.read(4), "little")  # gzip trailer: uncompressed size % 2**32
    try:
        with gzip.open(path, "rb") if is_gz else open(path, "rb") as f:
            head = f.read(4)
            if len(head) < 4 or head[:2] != b"\0\0" or head[2] not in _IDX_DTYPES or not head[3]:
                raise ValueError(f"{path}: not an IDX file (magic number {head.hex()!r})")
            dtype, ndim = _IDX_DTYPES[head[2]], head[3]
            dbytes = f.read(4 * ndim)
            if len(dbytes) < 4 * ndim:
                raise ValueError(f"{path}: truncated IDX header")
            dims = tuple(int(d) for d in np.frombuffer(dbytes, ">u4"))
            expected = 4 + 4 * ndim + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
            # Checked before allocating, so a corrupt header cannot ask for terabytes.
            actual, want = (isize, expected % 2**32) if is_gz else (size, expected)
            if actual != want:
                raise ValueError(f"{path}: truncated or corrupt IDX file (header {dims} needs "
                                 f"{expected} bytes, file holds {actual % 2**32 if is_gz else actual})")
            out = np.empty(dims, dtype=dtype)
            # (an empty array has nothing to read, and its memoryview cannot be cast)
            view, got = memoryview(out.reshape(-1)).cast("B"), 0
            while got < out.nbytes:
                n = f.readinto(view[got:])
                if not n:
                    raise ValueError(f"{path}: truncated IDX file ({got} of {out.nbytes} bytes)")
                got += n
            if f.read(1):
                raise ValueError(f"{path}: IDX file is longer than its header says")
    except (OSError, EOFError, zlib.error) as exc:
        raise ValueError(f"{path}: corrupt or truncated file ({exc})") from exc
    return out.astype(dtype.newbyteorder("="), copy=False)
