"""The device-neutral sparse weight container.

A :class:`CSR` holds one layer's weight matrix W of shape ``(n_out, n_in)`` (rows are output
neurons) as ``indptr``, ``indices`` and ``data`` arrays that live on one device (NumPy or CuPy).
Indices are sorted and unique within each row and in bounds; int32 unless the matrix needs int64.
Construction validates all of that once, so the kernels never have to.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

INT32_MAX = np.iinfo(np.int32).max
VALUE_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _check_shape(shape) -> tuple[int, int]:
    """``(n_out, n_in)``: two integers >= 0 whose positions an int64 can number."""
    if (not isinstance(shape, (tuple, list)) or len(shape) != 2
            or not all(isinstance(n, (int, np.integer)) and not isinstance(n, (bool, np.bool_))
                       for n in shape)):
        raise ValueError(f"shape must be two integers (n_out, n_in), got {shape!r}")
    n_rows, n_cols = int(shape[0]), int(shape[1])
    if n_rows < 0 or n_cols < 0:
        raise ValueError(f"shape must be non-negative, got {(n_rows, n_cols)}")
    if n_rows * n_cols >= 2**63:
        raise ValueError(f"shape {(n_rows, n_cols)} has more positions than int64 can number")
    return n_rows, n_cols


def index_dtype_for(nnz: int, shape: tuple[int, int]) -> np.dtype:
    """int32 when every index and offset fits, int64 otherwise."""
    if max(nnz, shape[0], shape[1]) <= INT32_MAX:
        return np.dtype(np.int32)
    return np.dtype(np.int64)


def array_module(arr: Any):
    """NumPy or CuPy, whichever owns ``arr``."""
    mod = type(arr).__module__
    if mod.startswith("cupy"):
        from .._compat import cupy

        return cupy
    return np


@dataclass(eq=False)
class CSR:
    """Validated CSR weight matrix of shape ``(n_out, n_in)``.

    Parameters
    ----------
    indptr : array of shape (n_out + 1,)
    indices : array of shape (nnz,)
        Column (input neuron) of each stored weight, sorted and unique within a row.
    data : array of shape (nnz,)
        float32 or float64 values.
    shape : (int, int)
        ``(n_out, n_in)``.
    check : bool, default True
        Validate structure and values. Only internal code that builds a CSR from already
        validated parts passes False.
    """

    indptr: Any
    indices: Any
    data: Any
    shape: tuple[int, int]
    check: bool = field(default=True, repr=False)
    _transpose: Any = field(default=None, init=False, repr=False)
    #: the inverse of the transpose index's permutation (a backend's cache, like ``_transpose``)
    _transpose_inv: Any = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.shape = _check_shape(self.shape)
        if self.check:
            self.validate()
        self._freeze_pattern()

    def _freeze_pattern(self) -> None:
        # The kernels trust a validated pattern (no bounds checks in their loops): the CSR's
        # own index arrays are read-only views, so that writing into w.indices raises instead
        # of sending a kernel out of bounds.  (The values stay writable: optimizers update them
        # in place.)
        for name in ("indptr", "indices"):
            arr = getattr(self, name)
            if isinstance(arr, np.ndarray) and arr.flags.writeable:
                view = arr.view()
                view.flags.writeable = False
                setattr(self, name, view)

    def __setstate__(self, state: dict) -> None:
        # pickle and copy.deepcopy restore the arrays writable
        self.__dict__.update(state)
        self._freeze_pattern()

    @property
    def nnz(self) -> int:
        """Number of stored connections."""
        return int(self.indices.shape[0])

    @property
    def xp(self):
        """The array module (NumPy or CuPy) that owns the arrays."""
        return array_module(self.data)

    @property
    def dtype(self) -> np.dtype:
        """Value dtype (float32 or float64)."""
        return self.data.dtype

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first problem found; O(nnz + n_out)."""
        xp = self.xp
        n_rows, n_cols = self.shape  # checked at construction (_check_shape)
        for name in ("indptr", "indices", "data"):
            arr = getattr(self, name)
            if array_module(arr) is not xp:
                raise ValueError(f"{name} lives on another device than data")
            if arr.ndim != 1:
                raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
            if not arr.flags.c_contiguous:
                raise ValueError(f"{name} must be contiguous; pass xp.ascontiguousarray({name})")
        if self.data.dtype not in VALUE_DTYPES:
            raise ValueError(f"data must be float32 or float64, got {self.data.dtype}")
        idt = self.indices.dtype
        if idt not in (np.dtype(np.int32), np.dtype(np.int64)) or self.indptr.dtype != idt:
            raise ValueError(
                f"indptr and indices must share int32 or int64, got {self.indptr.dtype} "
                f"and {idt}"
            )
        if idt == np.int32 and index_dtype_for(self.nnz, self.shape) == np.int64:
            raise ValueError("this matrix needs int64 indices (nnz or a dimension >= 2**31)")
        if self.indptr.shape[0] != n_rows + 1:
            raise ValueError(f"indptr has {self.indptr.shape[0]} entries, expected {n_rows + 1}")
        nnz = self.nnz
        if self.data.shape[0] != nnz:
            raise ValueError(f"data has {self.data.shape[0]} values but indices has {nnz}")
        if int(self.indptr[0]) != 0 or int(self.indptr[-1]) != nnz:
            raise ValueError(f"indptr must start at 0 and end at nnz={nnz}")
        if n_rows and bool(xp.any(self.indptr[1:] < self.indptr[:-1])):
            raise ValueError("indptr must be non-decreasing")
        if nnz:
            if int(self.indices.min()) < 0 or int(self.indices.max()) >= n_cols:
                raise ValueError(f"indices must lie in [0, {n_cols})")
            # Within a row, indices must strictly increase; a row start may go down.
            step_ok = self.indices[1:] > self.indices[:-1]
            row_start = xp.zeros(nnz, dtype=bool)
            starts = self.indptr[1:-1]
            row_start[starts[starts < nnz]] = True
            if not bool(xp.all(step_ok | row_start[1:])):
                raise ValueError("indices must be sorted and unique within each row")
            if not bool(xp.all(xp.isfinite(self.data))):
                raise ValueError("data contains NaN or infinite values")

    # --- conversions ----------------------------------------------------------------------
    @classmethod
    def from_scipy(cls, matrix, dtype=None) -> CSR:
        """Build from any ``scipy.sparse`` matrix or array of shape (n_out, n_in)."""
        import scipy.sparse as sp

        if not sp.issparse(matrix):
            raise ValueError(f"expected a scipy.sparse matrix, got {type(matrix).__name__}")
        m = sp.csr_matrix(matrix, copy=True)
        m.sum_duplicates()
        m.sort_indices()
        dtype = np.dtype(dtype or (m.dtype if m.dtype in VALUE_DTYPES else np.float32))
        idt = index_dtype_for(m.nnz, m.shape)
        return cls(m.indptr.astype(idt), m.indices.astype(idt), m.data.astype(dtype), m.shape)

    def to_scipy(self):
        """A ``scipy.sparse.csr_matrix`` copy on the host (explicit device-to-host copy)."""
        import scipy.sparse as sp

        def host(a):
            return a.get() if hasattr(a, "get") else np.asarray(a)

        return sp.csr_matrix(
            (host(self.data).copy(), host(self.indices).copy(), host(self.indptr).copy()),
            shape=self.shape,
        )

    def row_ids(self):
        """Row of every stored entry, in CSR order (length nnz)."""
        xp = self.xp
        counts = xp.diff(self.indptr)
        return xp.repeat(xp.arange(self.shape[0], dtype=self.indices.dtype), counts)

    def with_data(self, data) -> CSR:
        """Same pattern (and cached transpose), new values (checked in O(1): one float32 or
        float64 array of nnz values, contiguous, on the pattern's device)."""
        shape, dtype = getattr(data, "shape", None), getattr(data, "dtype", None)
        if (shape is None or len(shape) != 1 or shape[0] != self.nnz
                or dtype not in VALUE_DTYPES or array_module(data) is not self.xp
                or not data.flags.c_contiguous):
            raise ValueError(f"data must be a contiguous 1-D float32 or float64 array of "
                             f"{self.nnz} values on the pattern's device, got "
                             f"{type(data).__name__} of shape {shape} and dtype {dtype}")
        out = CSR(self.indptr, self.indices, data, self.shape, check=False)
        out._transpose, out._transpose_inv = self._transpose, self._transpose_inv
        return out

    def copy(self) -> CSR:
        """Deep copy on the same device (the cached transpose is not copied)."""
        return CSR(self.indptr.copy(), self.indices.copy(), self.data.copy(), self.shape,
                   check=False)

    def __repr__(self) -> str:
        n_rows, n_cols = self.shape
        dens = self.nnz / (n_rows * n_cols) if n_rows and n_cols else 0.0
        return (f"CSR(shape={self.shape}, nnz={self.nnz}, density={dens:.3g}, "
                f"dtype={self.data.dtype}, index={self.indices.dtype})")
