"""Argument checks run by every GPU kernel wrapper before it launches.

They read only host-side metadata (shape, dtype, flags), never device memory, so they cost no
synchronisation: the contents of a pattern are validated once, when a
:class:`sparsekit.nn.csr.CSR` is built, exactly as on the CPU.  A wrapper given arrays that passed
these checks cannot make a kernel read or write outside them, provided the CSR contents are
valid.
"""

from __future__ import annotations

import numpy as np

from ..nn.csr import array_module


def check_vector(name: str, arr, dtypes=None, length: int | None = None) -> None:
    """``arr`` is a contiguous 1-D device array (of one of ``dtypes``, of ``length``)."""
    if not hasattr(arr, "ndim") or arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array, got shape {getattr(arr, 'shape', None)}")
    if not arr.flags.c_contiguous:
        raise ValueError(f"{name} must be contiguous")
    if dtypes is not None and np.dtype(arr.dtype) not in [np.dtype(d) for d in dtypes]:
        raise ValueError(f"{name} has dtype {arr.dtype}, expected one of "
                         f"{[np.dtype(d).name for d in dtypes]}")
    if length is not None and arr.shape[0] != length:
        raise ValueError(f"{name} has {arr.shape[0]} entries, expected {length}")


def check_pattern(indptr, indices, data) -> int:
    """Structural shape checks of CSR arrays (no device reads); returns the number of rows."""
    check_vector("indptr", indptr, (np.int32, np.int64))
    check_vector("indices", indices, (indptr.dtype,))
    n_rows = indptr.shape[0] - 1
    if n_rows < 0:
        raise ValueError("indptr must have at least one element")
    if data is not None:
        check_vector("data", data, (np.float32, np.float64), indices.shape[0])
        if array_module(data) is not array_module(indices):
            raise ValueError("data lives on another device than indices")
    return n_rows


def check_batch_operand(name: str, arr, n_rows: int | None, n_batch: int, dtype=None) -> None:
    """``arr`` is a C-contiguous (n_rows, n_batch) matrix of ``dtype``."""
    if not hasattr(arr, "ndim") or arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D (features x batch), got shape "
                         f"{getattr(arr, 'shape', None)}")
    if not arr.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous")
    if dtype is not None and arr.dtype != dtype:
        raise ValueError(f"{name} has dtype {arr.dtype}, expected {np.dtype(dtype)}")
    if n_rows is not None and arr.shape[0] != n_rows:
        raise ValueError(f"{name} has {arr.shape[0]} rows, expected {n_rows}")
    if arr.shape[1] != n_batch:
        raise ValueError(f"{name} has batch size {arr.shape[1]}, expected {n_batch}")


def to_host(arr) -> np.ndarray:
    """``arr`` on the host: an explicit device-to-host copy for a CuPy array."""
    return arr.get() if hasattr(arr, "get") else np.asarray(arr)
