"""Sparse x dense products on a CSR weight matrix W (rows = output neurons), on the GPU.

The twin of :mod:`sparsekit._cython.spmm`: the same functions, the same argument order (less
``num_threads``), launching the kernels of ``kernels/spmm.cu``.  Activations are feature-major
and C-ordered, so every non-zero of W reads one contiguous batch row; one warp owns each output
row (or row tile), so results need no atomics and do not depend on the launch configuration.
"""

from __future__ import annotations

import numpy as np

from ..nn.csr import array_module
from . import _module as km
from ._checks import check_batch_operand, check_pattern, check_vector


def _types(data, indices) -> tuple[str, str]:
    return (km.c_type(km.VALUE_TYPES, data.dtype, "data"),
            km.c_type(km.INDEX_TYPES, indices.dtype, "indices"))


def _spmm(indptr, indices, data, perm, src, n_rows: int, n_batch: int):
    """``out[r, :] = sum_k data[slot(k)] src[indices[k], :]`` over the rows of a pattern."""
    xp = array_module(data)
    out = xp.empty((n_rows, n_batch), dtype=data.dtype)
    if n_rows == 0 or n_batch == 0:
        return out
    fn = km.get_kernel("spmm.cu", "sk_spmm", *_types(data, indices))
    use_perm = perm is not None
    n_tiles = -(-n_batch // km.TILE)
    # Without a permutation the kernel never reads `perm`; `indices` stands in as a valid
    # pointer of the right type.
    km.launch(fn, n_rows * n_tiles, km.WARPS_PER_BLOCK,
              (indptr, indices, data, perm if use_perm else indices, np.int32(use_perm), src, out,
               np.int64(n_rows), np.int64(n_batch)))
    return out


def matmul(indptr, indices, data, x_ib, n_cols: int):
    """Forward product ``y_ob = W @ x_ib`` for W in CSR of shape (len(indptr) - 1, n_cols).

    Parameters
    ----------
    indptr, indices, data : cupy.ndarray
        Validated CSR arrays of W (rows = output neurons).
    x_ib : cupy.ndarray of shape (n_cols, n_batch)
        Feature-major activations, C-contiguous, same dtype as ``data``.
    n_cols : int
        Number of columns of W (= n_in); every index of W is below it.

    Returns
    -------
    y_ob : cupy.ndarray of shape (n_out, n_batch)
    """
    n_rows = check_pattern(indptr, indices, data)
    n_batch = x_ib.shape[1] if getattr(x_ib, "ndim", 0) == 2 else -1
    check_batch_operand("x_ib", x_ib, n_cols, n_batch, data.dtype)
    return _spmm(indptr, indices, data, None, x_ib, n_rows, n_batch)


def matmul_t(t_indptr, t_rows, t_perm, data, dy_ob, n_rows: int):
    """Backward product to the inputs ``dx_ib = W.T @ dy_ob`` via W's transposed index.

    ``t_indptr, t_rows, t_perm`` come from :func:`transpose_index`: for input neuron i the
    positions ``t_indptr[i]:t_indptr[i + 1]`` list the output rows that read it and, through
    ``t_perm``, the slots of their values in ``data``.
    """
    n_cols = check_pattern(t_indptr, t_rows, None)
    check_vector("t_perm", t_perm, (t_rows.dtype,), t_rows.shape[0])
    check_vector("data", data, (np.float32, np.float64), t_rows.shape[0])
    n_batch = dy_ob.shape[1] if getattr(dy_ob, "ndim", 0) == 2 else -1
    check_batch_operand("dy_ob", dy_ob, n_rows, n_batch, data.dtype)
    return _spmm(t_indptr, t_rows, data, t_perm, dy_ob, n_cols, n_batch)


def backward(t_indptr, t_rows, t_perm, data, x_ib, dy_ob, n_rows: int, need_dx: bool = True,
             t_inv=None):
    """Fused backward pass: ``dx_ib = W.T @ dy_ob`` and the pattern gradient in one sweep.

    Returns ``(dx_ib, grad)`` where ``grad[k] = sum_b dy_ob[row_k, b] * x_ib[col_k, b]`` in W's
    CSR order; ``dx_ib`` is None when ``need_dx`` is false.  ``t_inv`` (t_perm's inverse),
    which the CPU kernel uses to gather the gradient on several threads, is accepted and unused:
    here each slot is written once, through t_perm, by the warp of its column.
    """
    n_cols = check_pattern(t_indptr, t_rows, None)
    nnz = t_rows.shape[0]
    check_vector("t_perm", t_perm, (t_rows.dtype,), nnz)
    check_vector("data", data, (np.float32, np.float64), nnz)
    n_batch = x_ib.shape[1] if getattr(x_ib, "ndim", 0) == 2 else -1
    check_batch_operand("x_ib", x_ib, n_cols, n_batch, data.dtype)
    check_batch_operand("dy_ob", dy_ob, n_rows, n_batch, data.dtype)
    xp = array_module(data)
    if n_cols == 0 or n_batch == 0 or nnz == 0:
        return (xp.zeros((n_cols, n_batch), dtype=data.dtype) if need_dx else None,
                xp.zeros(nnz, dtype=data.dtype))
    # The kernel writes every element of both: each slot of W appears once in the transposed
    # index, and each input neuron's dx row is owned by one warp.
    grad = xp.empty(nnz, dtype=data.dtype)
    dx = xp.empty((n_cols, n_batch), dtype=data.dtype) if need_dx else None
    fn = km.get_kernel("spmm.cu", "sk_backward", *_types(data, t_rows))
    km.launch(fn, n_cols, km.WARPS_PER_BLOCK,
              (t_indptr, t_rows, t_perm, data, x_ib, dy_ob, dx if need_dx else grad,
               np.int32(bool(need_dx)), grad, np.int64(n_cols), np.int64(n_batch)))
    return dx, grad


def transpose_index(indptr, indices, n_cols: int):
    """Column index of a CSR pattern: ``(t_indptr, t_rows, t_perm)``, as on the CPU.

    For column i, ``t_rows[t_indptr[i]:t_indptr[i+1]]`` are the rows holding it, in increasing
    order, and ``t_perm`` the CSR positions of those entries.  One radix sort of the unique
    column-major keys (CuPy's sort), O(nnz) memory; it runs once per pattern change.
    """
    n_rows = check_pattern(indptr, indices, None)
    if n_cols < 0:
        raise ValueError(f"n_cols must be >= 0, got {n_cols}")
    xp = array_module(indices)
    idt = indices.dtype
    nnz = indices.shape[0]
    t_indptr = xp.zeros(n_cols + 1, dtype=idt)
    if nnz == 0:
        return t_indptr, xp.zeros(0, dtype=idt), xp.zeros(0, dtype=idt)
    # Row of every slot: the number of rows that end at or before it.
    rows = xp.searchsorted(indptr[1:], xp.arange(nnz, dtype=idt), side="right")
    keys = indices.astype(xp.int64) * max(n_rows, 1) + rows
    perm = xp.argsort(keys)
    t_indptr[1:] = xp.cumsum(xp.bincount(indices, minlength=n_cols)).astype(idt)
    return t_indptr, rows[perm].astype(idt), perm.astype(idt)
