"""Sparse x dense products on a CSR weight matrix W (rows = output neurons).

Activations are feature-major: ``x_ib`` has one contiguous row of ``n_batch`` values per input
neuron, so every non-zero of W does one contiguous, vectorisable axpy or dot of length n_batch.
Each OpenMP thread owns the output rows it writes; nothing is accumulated with atomics, so a
result does not depend on the thread count.
"""
from cython.parallel cimport prange
from libc.string cimport memset

import numpy as np

from ._types cimport floating, index_t
from ._checks import aligned_empty, check_batch_operand, check_pattern, check_threads


cdef inline void _axpy_row(const index_t* idx, const floating* vals, const index_t* perm,
                           Py_ssize_t start, Py_ssize_t end, const floating* src,
                           floating* out, Py_ssize_t n_batch) noexcept nogil:
    # out[:] = sum_k vals[k] * src[idx[k], :]; four non-zeros per sweep so `out` is loaded and
    # stored a quarter as often.  `perm` (may be NULL) maps pattern positions to value slots.
    cdef Py_ssize_t k = start, b
    cdef floating v0, v1, v2, v3
    cdef const floating* s0
    cdef const floating* s1
    cdef const floating* s2
    cdef const floating* s3
    memset(out, 0, n_batch * sizeof(floating))
    while k + 4 <= end:
        if perm == NULL:
            v0 = vals[k]; v1 = vals[k + 1]; v2 = vals[k + 2]; v3 = vals[k + 3]
        else:
            v0 = vals[perm[k]]; v1 = vals[perm[k + 1]]
            v2 = vals[perm[k + 2]]; v3 = vals[perm[k + 3]]
        s0 = src + <Py_ssize_t>idx[k] * n_batch
        s1 = src + <Py_ssize_t>idx[k + 1] * n_batch
        s2 = src + <Py_ssize_t>idx[k + 2] * n_batch
        s3 = src + <Py_ssize_t>idx[k + 3] * n_batch
        for b in range(n_batch):
            out[b] = out[b] + (v0 * s0[b] + v1 * s1[b]) + (v2 * s2[b] + v3 * s3[b])
        k = k + 4
    while k < end:
        v0 = vals[k] if perm == NULL else vals[perm[k]]
        s0 = src + <Py_ssize_t>idx[k] * n_batch
        for b in range(n_batch):
            out[b] = out[b] + v0 * s0[b]
        k = k + 1


cdef void _spmm(const index_t* indptr, const index_t* indices, const floating* vals,
                const index_t* perm, const floating* src, floating* out,
                Py_ssize_t n_rows, Py_ssize_t n_batch, int num_threads) noexcept nogil:
    cdef Py_ssize_t r
    for r in prange(n_rows, schedule="guided", num_threads=num_threads):
        _axpy_row(indices, vals, perm, indptr[r], indptr[r + 1], src, out + r * n_batch, n_batch)


cdef inline void _backward_row(const index_t* rows_t, const index_t* perm, const floating* vals,
                               Py_ssize_t start, Py_ssize_t end, const floating* dy_ob,
                               const floating* x_row, floating* dx_row, floating* grad,
                               Py_ssize_t n_batch) noexcept nogil:
    # One input neuron i: dx[i, :] = sum_o W[o, i] dy[o, :] and, reading each dy row once,
    # grad[o, i] = dot(dy[o, :], x[i, :]).
    cdef Py_ssize_t k, b, p
    cdef floating v, s
    cdef const floating* d
    if dx_row != NULL:
        memset(dx_row, 0, n_batch * sizeof(floating))
    for k in range(start, end):
        p = perm[k]
        d = dy_ob + <Py_ssize_t>rows_t[k] * n_batch
        s = 0
        # Two sweeps over the same (L1-resident) dy row vectorise better than one mixed sweep.
        for b in range(n_batch):
            s = s + d[b] * x_row[b]
        grad[p] = s
        if dx_row != NULL:
            v = vals[p]
            for b in range(n_batch):
                dx_row[b] = dx_row[b] + v * d[b]


cdef void _backward(const index_t* t_indptr, const index_t* t_rows, const index_t* t_perm,
                    const floating* vals, const floating* x_ib, const floating* dy_ob,
                    floating* dx_ib, floating* grad, Py_ssize_t n_cols, Py_ssize_t n_batch,
                    int num_threads) noexcept nogil:
    cdef Py_ssize_t i
    for i in prange(n_cols, schedule="guided", num_threads=num_threads):
        _backward_row(t_rows, t_perm, vals, t_indptr[i], t_indptr[i + 1], dy_ob,
                      x_ib + i * n_batch, <floating*>NULL if dx_ib == NULL else dx_ib + i * n_batch,
                      grad, n_batch)


def matmul(const index_t[::1] indptr, const index_t[::1] indices, const floating[::1] data,
           const floating[:, ::1] x_ib, Py_ssize_t n_cols, int num_threads=0):
    """Forward product ``y_ob = W @ x_ib`` for W in CSR of shape (len(indptr) - 1, len(x_ib)).

    Parameters
    ----------
    indptr, indices, data : ndarray
        Validated CSR arrays of W (rows = output neurons).
    x_ib : ndarray of shape (n_in, n_batch)
        Feature-major activations, C-contiguous, same dtype as ``data``.
    n_cols : int
        Number of columns of W (= n_in); every index of W is below it.
    num_threads : int
        OpenMP threads; 0 means the OpenMP default.

    Returns
    -------
    y_ob : ndarray of shape (n_out, n_batch)
    """
    cdef Py_ssize_t n_rows = check_pattern(indptr, indices, data)
    cdef Py_ssize_t n_batch = x_ib.shape[1]
    check_batch_operand("x_ib", x_ib, n_cols, n_batch)
    cdef int nt = check_threads(num_threads)
    y = aligned_empty((n_rows, n_batch), np.asarray(data).dtype)
    cdef floating[:, ::1] y_ob = y
    if n_rows == 0 or n_batch == 0:
        return y
    with nogil:
        _spmm(&indptr[0], &indices[0],
              &data[0], NULL, &x_ib[0, 0], &y_ob[0, 0],
              n_rows, n_batch, nt)
    return y


def matmul_t(const index_t[::1] t_indptr, const index_t[::1] t_rows, const index_t[::1] t_perm,
             const floating[::1] data, const floating[:, ::1] dy_ob, Py_ssize_t n_rows, int num_threads=0):
    """Backward product to the inputs ``dx_ib = W.T @ dy_ob`` via W's transposed index.

    ``t_indptr, t_rows, t_perm`` come from :func:`transpose_index`: for input neuron i the
    positions ``t_indptr[i]:t_indptr[i + 1]`` list the output rows that read it and, through
    ``t_perm``, the slots of their values in ``data``.
    """
    cdef Py_ssize_t n_cols = t_indptr.shape[0] - 1
    cdef Py_ssize_t n_batch = dy_ob.shape[1]
    if t_perm.shape[0] != data.shape[0]:
        raise ValueError(f"t_perm has {t_perm.shape[0]} entries but data has {data.shape[0]}")
    check_batch_operand("dy_ob", dy_ob, n_rows, n_batch)
    check_pattern(t_indptr, t_rows, t_perm)
    cdef int nt = check_threads(num_threads)
    dx = aligned_empty((n_cols, n_batch), np.asarray(data).dtype)
    cdef floating[:, ::1] dx_ib = dx
    if n_cols == 0 or n_batch == 0:
        return dx
    if data.shape[0] == 0:
        dx[...] = 0
        return dx
    with nogil:
        _spmm(&t_indptr[0], &t_rows[0],
              &data[0], &t_perm[0],
              &dy_ob[0, 0], &dx_ib[0, 0], n_cols, n_batch, nt)
    return dx


def backward(const index_t[::1] t_indptr, const index_t[::1] t_rows, const index_t[::1] t_perm,
             const floating[::1] data, const floating[:, ::1] x_ib, const floating[:, ::1] dy_ob,
             Py_ssize_t n_rows, bint need_dx=True, int num_threads=0):
    """Fused backward pass: ``dx_ib = W.T @ dy_ob`` and the pattern gradient in one sweep.

    Returns ``(dx_ib, grad)`` where ``grad[k] = sum_b dy_ob[row_k, b] * x_ib[col_k, b]`` in W's
    CSR order; ``dx_ib`` is None when ``need_dx`` is false (the first layer needs no input grad).
    """
    cdef Py_ssize_t n_cols = t_indptr.shape[0] - 1
    cdef Py_ssize_t n_batch = x_ib.shape[1]
    check_batch_operand("x_ib", x_ib, n_cols, n_batch)
    check_batch_operand("dy_ob", dy_ob, n_rows, n_batch)
    check_pattern(t_indptr, t_rows, t_perm)
    if t_perm.shape[0] != data.shape[0]:
        raise ValueError(f"t_perm has {t_perm.shape[0]} entries but data has {data.shape[0]}")
    cdef int nt = check_threads(num_threads)
    dtype = np.asarray(data).dtype
    grad = np.zeros(data.shape[0], dtype=dtype)
    dx = aligned_empty((n_cols, n_batch), dtype) if need_dx else None
    cdef floating[::1] g = grad
    cdef floating[:, ::1] dx_ib
    cdef floating* dx_ptr = NULL
    if need_dx:
        dx_ib = dx
        if n_cols and n_batch:
            dx_ptr = &dx_ib[0, 0]
    if n_cols == 0 or n_batch == 0:
        if need_dx:
            dx[...] = 0
        return dx, grad
    if data.shape[0] == 0:
        if need_dx:
            dx[...] = 0
        return dx, grad
    with nogil:
        _backward(&t_indptr[0], &t_rows[0], &t_perm[0], &data[0], &x_ib[0, 0],
                  &dy_ob[0, 0], dx_ptr, &g[0], n_cols, n_batch, nt)
    return dx, grad


def transpose_index(const index_t[::1] indptr, const index_t[::1] indices, Py_ssize_t n_cols):
    """Column index of a CSR pattern, by counting sort in O(nnz + n_cols).

    Returns ``(t_indptr, t_rows, t_perm)``: for column i, ``t_rows[t_indptr[i]:t_indptr[i+1]]``
    are the rows holding it, in increasing order, and ``t_perm`` the CSR positions of those
    entries.
    """
    cdef Py_ssize_t n_rows = check_pattern(indptr, indices, None)
    cdef Py_ssize_t nnz = indices.shape[0]
    if n_cols < 0:
        raise ValueError(f"n_cols must be >= 0, got {n_cols}")
    # The counting sort writes where indices and indptr point, so bad contents would write out
    # of bounds: this O(nnz) pass is paid once per pattern change, not per product.
    if nnz and (np.asarray(indices).min() < 0 or np.asarray(indices).max() >= n_cols):
        raise ValueError(f"indices must lie in [0, n_cols={n_cols})")
    if n_rows and np.any(np.diff(np.asarray(indptr)) < 0):
        raise ValueError("indptr must be non-decreasing")
    dtype = np.asarray(indices).dtype
    t_indptr_a = np.zeros(n_cols + 1, dtype=dtype)
    t_rows_a = np.empty(nnz, dtype=dtype)
    t_perm_a = np.empty(nnz, dtype=dtype)
    cdef index_t[::1] t_indptr = t_indptr_a
    cdef index_t[::1] t_rows = t_rows_a
    cdef index_t[::1] t_perm = t_perm_a
    cdef Py_ssize_t r, k, c, pos
    if n_cols and nnz:
        with nogil:
            for k in range(nnz):
                t_indptr[indices[k] + 1] += 1
            for c in range(n_cols):
                t_indptr[c + 1] += t_indptr[c]
            # t_indptr[c] doubles as the fill cursor of column c, then is shifted back.
            for r in range(n_rows):
                for k in range(indptr[r], indptr[r + 1]):
                    c = indices[k]
                    pos = t_indptr[c]
                    t_rows[pos] = <index_t>r
                    t_perm[pos] = <index_t>k
                    t_indptr[c] = <index_t>(pos + 1)
            for c in range(n_cols, 0, -1):
                t_indptr[c] = t_indptr[c - 1]
            t_indptr[0] = 0
    return t_indptr_a, t_rows_a, t_perm_a
