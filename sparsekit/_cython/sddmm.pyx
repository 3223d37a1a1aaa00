"""Weight gradients restricted to a set of positions (SDDMM).

``grad[k] = sum_b dy_ob[row_k, b] * x_ib[col_k, b]``: on W's own pattern (:func:`weight_grad`,
threads own rows of W) or on an arbitrary candidate list (:func:`sampled_grad`, threads own
contiguous slices of the list).  Both operands are feature-major, so each dot product reads two
contiguous rows of length n_batch.
"""
from cython.parallel cimport prange

import numpy as np

from ._types cimport floating, index_t
from ._checks import check_batch_operand, check_pattern, check_threads
from .spmm import _pattern_grad


cdef inline floating _dot(const floating* a, const floating* b, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    cdef floating s = 0
    for i in range(n):
        s = s + a[i] * b[i]
    return s


def weight_grad(const index_t[::1] indptr, const index_t[::1] indices, const floating[:, ::1] x_ib,
                const floating[:, ::1] dy_ob, Py_ssize_t n_cols, int num_threads=0):
    """Gradient of W on its own CSR pattern.

    Parameters
    ----------
    indptr, indices : ndarray
        Validated CSR pattern of W, shape (n_out, n_in).
    x_ib : ndarray of shape (n_in, n_batch)
        Layer input, feature-major.
    dy_ob : ndarray of shape (n_out, n_batch)
        Gradient of the loss with respect to the layer output, feature-major.
    n_cols : int
        Number of columns of W (= n_in).

    Returns
    -------
    grad : ndarray of shape (nnz,)
        In W's CSR order.
    """
    cdef Py_ssize_t n_rows = check_pattern(indptr, indices, None)
    cdef Py_ssize_t n_batch = x_ib.shape[1]
    check_batch_operand("dy_ob", dy_ob, n_rows, n_batch)
    check_batch_operand("x_ib", x_ib, n_cols, n_batch)
    cdef int nt = check_threads(num_threads)
    cdef Py_ssize_t nnz = indices.shape[0]
    if nnz == 0 or n_batch == 0:
        return np.zeros(nnz, dtype=np.asarray(x_ib).dtype)
    # Every entry is written: dy_ob's row held in registers, the rows of x_ib gathered past it
    # (the register-tiled kernel shared with the fused backward in spmm).
    out = np.empty(nnz, dtype=np.asarray(x_ib).dtype)
    _pattern_grad(indptr, indices, x_ib, dy_ob, out, nt)
    return out


def sampled_grad(const floating[:, ::1] x_ib, const floating[:, ::1] dy_ob, const index_t[::1] rows,
                 const index_t[::1] cols, int num_threads=0):
    """Gradient at an arbitrary list of (row, col) positions (candidate connections).

    ``rows`` index output neurons (rows of ``dy_ob``) and ``cols`` input neurons (rows of
    ``x_ib``).  Sorting the list by row lets consecutive dots reuse the cached ``dy_ob`` row.
    """
    cdef Py_ssize_t n_batch = x_ib.shape[1]
    check_batch_operand("dy_ob", dy_ob, None, n_batch)
    cdef int nt = check_threads(num_threads)
    cdef Py_ssize_t m = rows.shape[0], k
    if cols.shape[0] != m:
        raise ValueError(f"rows has {m} entries but cols has {cols.shape[0]}")
    if m:
        r_np, c_np = np.asarray(rows), np.asarray(cols)
        if r_np.min() < 0 or r_np.max() >= dy_ob.shape[0]:
            raise ValueError(f"rows must lie in [0, {dy_ob.shape[0]})")
        if c_np.min() < 0 or c_np.max() >= x_ib.shape[0]:
            raise ValueError(f"cols must lie in [0, {x_ib.shape[0]})")
    out = np.zeros(m, dtype=np.asarray(x_ib).dtype)
    cdef floating[::1] grad = out
    if m == 0 or n_batch == 0:
        return out
    with nogil:
        for k in prange(m, schedule="static", num_threads=nt):
            grad[k] = _dot(&dy_ob[0, 0] + <Py_ssize_t>rows[k] * n_batch,
                           &x_ib[0, 0] + <Py_ssize_t>cols[k] * n_batch, n_batch)
    return out
