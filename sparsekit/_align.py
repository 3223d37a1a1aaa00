"""64-byte-aligned host arrays for the batches the CPU kernels read and write."""

from __future__ import annotations

import math

import numpy as np

#: Byte alignment of the batch arrays the kernels return: a cache line and an AVX-512 vector.
ALIGNMENT = 64


def aligned_empty(shape, dtype, zero: bool = False) -> np.ndarray:
    """An uninitialised (or zeroed) C-contiguous array whose first byte is 64-byte aligned.

    Large NumPy arrays come from ``mmap`` via malloc and start 16 bytes into a page, so every
    row of a feature-major batch straddles cache lines; the products then run 1.5-1.8x slower
    (measured in benchmarks/results/cpu-kernels.md).  With a batch of a multiple of 16 floats,
    every row of an aligned array is aligned too.
    """
    dtype = np.dtype(dtype)
    shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
    if any(n < 0 for n in shape):
        raise ValueError(f"negative dimensions are not allowed: {shape}")
    nbytes = math.prod(int(n) for n in shape) * dtype.itemsize  # np.prod: 2 us a call
    raw = (np.zeros if zero else np.empty)(nbytes + ALIGNMENT, dtype=np.uint8)
    start = -raw.ctypes.data % ALIGNMENT
    return raw[start:start + nbytes].view(dtype).reshape(shape)


def feature_major_batch(x, idx, dtype) -> np.ndarray:
    """Rows ``idx`` of ``x`` (dense, or ``scipy.sparse`` CSR: only these rows are densified) as
    an aligned C-contiguous ``(n_features, len(idx))`` array, in one copy."""
    part = x[idx]
    if hasattr(part, "toarray"):
        part = part.toarray()
    out = aligned_empty((part.shape[1], part.shape[0]), dtype)
    with np.errstate(over="ignore"):  # values beyond dtype's range become inf: callers check
        np.copyto(out, part.T, casting="unsafe")
    return out
